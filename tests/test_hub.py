"""Hub export: timm round trip of the classifier, full TCL state, model card, push (HfApi patched), export CLI."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.hf_api import CommitInfo, RepoUrl
from sklearn.metrics import roc_auc_score

from tcl_hf import export, hub, tcl_state
from tcl_hf.card import LOCAL_LOAD_REF, model_card, public_config
from tcl_hf.config import Config, load_config, to_dict
from tcl_hf.data.contract import InputContract
from tcl_hf.errors import TCLError
from tcl_hf.models import TCLModel

REPO_ROOT = Path(__file__).resolve().parents[1]
HUB_FILES = {"model.safetensors", "config.json", "README.md", tcl_state.TCL_WEIGHTS, tcl_state.TCL_CONFIG}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")


def trained_like(backbone: str, num_classes: int = 4, size: int = 16, seed: int = 0) -> TCLModel:
    """A TCLModel with non-trivial batch-norm statistics, as after training."""
    torch.manual_seed(seed)
    model = TCLModel(backbone, num_classes, proj_dim=8, dropout=0.25)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size) * 2 + 0.5)
    return model.eval()


def run_config(**changes) -> dict:
    tree = to_dict(Config())
    for dotted, value in changes.items():
        node = tree
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return tree


SMALL = InputContract(size=16, storage_size=16, crop_pct=1.0, interpolation="bilinear", mean=(0.5,) * 3,
                      std=(0.25,) * 3)
METRICS = {"test_acc": 0.8125, "knn_acc": 0.75, "noise_auc": 0.9375, "noise_precision": 0.6, "noise_recall": 0.7,
           "noise_acc": 0.85, "noise_rate": 0.4, "clean_ratio_est": 0.55, "epochs_completed": 3}


# ---- classifier round trip -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["preact_resnet_mini", "resnet18"])
def test_local_dir_round_trip_gives_the_trained_logits(tmp_path, backbone):
    model = trained_like(backbone)
    names = ["cat", "dog", "frog", "ship"]
    out = export.export_classifier(model, tmp_path / "hub", backbone=backbone, label_names=names,
                                contract=SMALL.with_stats((0.4, 0.5, 0.6), (0.2, 0.25, 0.3)))
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x)[1])
        # Built without the weights, the same architecture gives other logits: the weights did travel.
        fresh = timm.create_model(f"local-dir:{out}", pretrained=False).eval()
        assert not torch.allclose(fresh(x), model(x)[1])

    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "tcl_classifier"
    assert config["model_args"]["backbone"] == backbone
    assert config["num_classes"] == 4 and config["label_names"] == names
    pcfg = config["pretrained_cfg"]
    assert pcfg["input_size"] == [3, 16, 16] and pcfg["mean"] == [0.4, 0.5, 0.6] and pcfg["std"] == [0.2, 0.25, 0.3]
    assert pcfg["interpolation"] == "bilinear" and pcfg["crop_pct"] == 1.0
    data_cfg = timm.data.resolve_data_config({}, model=loaded)
    assert data_cfg["input_size"] == (3, 16, 16) and tuple(data_cfg["mean"]) == (0.4, 0.5, 0.6)
    assert list(loaded.pretrained_cfg["label_names"]) == names


def test_export_loads_with_other_class_counts_for_fine_tuning(tmp_path):
    model = trained_like("preact_resnet_mini")
    out = export.export_classifier(model, tmp_path, backbone="preact_resnet_mini", label_names=list("abcd"),
                                contract=SMALL)
    x = torch.randn(3, 3, 16, 16)
    three = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=3).eval()
    features = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=0).eval()
    with torch.no_grad():
        assert three(x).shape == (3, 3)
        for key, value in model.encoder.state_dict().items():
            assert torch.equal(three.encoder.state_dict()[key], value), key
        # Without class layers the output is the head's hidden layer: Linear-BN-ReLU(-Dropout) of the features.
        assert torch.allclose(features(x), model.classifier[:4](model.encoder(x)), atol=1e-6)


@pytest.mark.slow
def test_import_tcl_hf_is_enough_to_load_an_export(tmp_path):
    model = trained_like("preact_resnet_mini")
    out = export.export_classifier(model, tmp_path / "hub", backbone="preact_resnet_mini", label_names=list("abcd"),
                                contract=SMALL)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 16, 16)
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch, timm, tcl_hf\n"
            f"m = timm.create_model('local-dir:{out}', pretrained=True).eval()\n"
            f"torch.save(m(torch.load('{tmp_path / 'x.pt'}')).detach(), '{tmp_path / 'y.pt'}')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "y.pt"), model(x)[1])


# ---- full TCL state --------------------------------------------------------------------------------------------
def test_full_state_round_trip(tmp_path):
    model = trained_like("preact_resnet_mini", num_classes=3)
    prototypes = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    cfg = run_config(model__backbone="preact_resnet_mini", model__proj_dim=8)
    tcl_state.save_tcl_state(model, prototypes, tmp_path, cfg, class_names=["a", "b", "c"])
    loaded, loaded_prototypes, config = hub.load_tcl_pretrained(tmp_path)
    assert set(loaded.state_dict()) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(loaded_prototypes, prototypes)
    assert config["class_names"] == ["a", "b", "c"] and config["run_config"] == cfg
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        for got, want in zip(loaded.eval()(x), model(x)):
            assert torch.equal(got, want)


def test_full_state_from_a_hub_repo_downloads_the_two_files(tmp_path, monkeypatch):
    model = trained_like("preact_resnet_mini", num_classes=3)
    tcl_state.save_tcl_state(model, torch.zeros(3, 8), tmp_path, run_config(model__backbone="preact_resnet_mini"))
    calls = []

    def fake_download(repo_id, filename, revision=None):
        calls.append((repo_id, filename, revision))
        return str(tmp_path / filename)

    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    loaded = hub.load_tcl_pretrained("hf-hub:user/tcl-run", revision="v1")
    files = (tcl_state.TCL_WEIGHTS, tcl_state.TCL_CONFIG)
    assert sorted(calls) == sorted(("user/tcl-run", name, "v1") for name in files)
    assert torch.equal(loaded.model.classifier[4].weight, model.classifier[4].weight)


def test_full_state_errors_are_one_line(tmp_path):
    with pytest.raises(TCLError, match="missing tcl_model.safetensors, tcl_config.json") as info:
        hub.load_tcl_pretrained(tmp_path)
    assert "\n" not in str(info.value)
    # Offline (HF_HUB_OFFLINE=1) and not cached: the real download fails, reported in one line.
    with pytest.raises(TCLError, match="cannot load TCL state from 'user/not-cached'") as info:
        hub.load_tcl_pretrained("user/not-cached")
    assert "\n" not in str(info.value)


# ---- model card ------------------------------------------------------------------------------------------------
def test_model_card_parses_with_metadata_and_metrics(tmp_path):
    model = trained_like("preact_resnet_mini", num_classes=10)
    cfg = run_config(model__backbone="preact_resnet_mini", data__path="uoft-cs/cifar10", noise__type="sym",
                     noise__rate=0.4)
    out = export.export_hub_folder(model, torch.zeros(10, 8), tmp_path / "hub", run_config=cfg, metrics=METRICS,
                                label_names=[f"c{k}" for k in range(10)], contract=SMALL, repo_id="user/tcl-cifar10")
    assert {p.name for p in out.iterdir()} == HUB_FILES
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "timm"
    assert {"noisy-labels", "tcl", "timm", "cifar10"} <= set(card.data.tags)
    assert card.data.datasets == ["uoft-cs/cifar10"]
    results = {(r.metric_type, r.metric_name): r for r in card.data.eval_results}
    assert results[("accuracy", "Test accuracy")].metric_value == METRICS["test_acc"]
    assert results[("accuracy", "Test accuracy")].dataset_split == "test"
    assert results[("roc_auc", "Noise detection AUC")].metric_value == METRICS["noise_auc"]
    assert results[("roc_auc", "Noise detection AUC")].dataset_split == "train"
    assert {"accuracy", "roc_auc"} <= set(card.data.metrics)
    assert "40% symmetric" in card.text and "0.8125" in card.text and "0.9375" in card.text
    assert 'timm.create_model("hf-hub:user/tcl-cifar10", pretrained=True)' in card.text


def test_model_card_without_clean_labels_has_no_detection_metrics():
    cfg = run_config(model__backbone="resnet18", data__format="digits")
    card = model_card(cfg, {"test_acc": 0.5, "knn_acc": 0.4, "clean_ratio_est": 0.9}, load_ref="local-dir:x")
    parsed = ModelCard(str(card))
    assert [r.metric_type for r in parsed.data.eval_results] == ["accuracy", "accuracy"]
    assert parsed.data.datasets is None  # the digits are not a Hub dataset
    assert "detection quality was not measured" in parsed.text


@pytest.mark.parametrize("verdict, says", [("collapsed at epoch 4", "the classifier degenerated"),
                                            ("never left warm-up", "plain warm-up classifier")])
def test_model_card_of_a_failed_run_opens_with_a_warning(verdict, says):
    cfg = run_config(model__backbone="resnet18", data__format="digits")
    body = ModelCard(str(model_card(cfg, {**METRICS, "verdict": verdict}, load_ref="local-dir:x"))).text
    lines = body.strip().splitlines()
    assert lines[0].startswith("# ") and lines[1] == ""
    assert lines[2].startswith(f"> **Warning: this run failed (TCL {verdict}).** What happened: ")
    assert says in body and "train" in lines[2]
    healthy = ModelCard(str(model_card(cfg, {**METRICS, "verdict": "ok"}, load_ref="local-dir:x"))).text
    assert "Warning" not in healthy and healthy.strip().splitlines()[2].startswith("An image classifier")


def test_model_card_of_a_run_that_fell_back_to_ce_says_whose_model_it_is():
    cfg = run_config(model__backbone="resnet18", data__format="digits")
    verdict = "fell back to CE at epoch 5"
    lines = ModelCard(str(model_card(cfg, {**METRICS, "verdict": verdict}, load_ref="local-dir:x"))).text.strip(
        ).splitlines()
    assert lines[2].startswith(f"> **Note: TCL {verdict}.** What happened: TCL's classifier degenerated, so the run "
                               f"went back to its checkpoint from before TCL began")
    assert lines[3] == "> This model and the run's label verdicts are those of the cross-entropy baseline, not of TCL."
    assert lines[5].startswith("An image classifier trained with plain cross-entropy (the baseline of the tcl_hf "
                               "project), continued from the warm-up of a TCL run whose TCL phase collapsed")
    assert not any("Warning" in line for line in lines)


# ---- push ------------------------------------------------------------------------------------------------------
@pytest.fixture
def hub_folder(tmp_path):
    model = trained_like("preact_resnet_mini", num_classes=3)
    return export.export_hub_folder(model, torch.zeros(3, 8), tmp_path / "hub", metrics=METRICS,
                                 run_config=run_config(model__backbone="preact_resnet_mini"),
                                 label_names=["a", "b", "c"], contract=SMALL)


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


class FakeHub:
    """Stands in for the Hub's HTTP endpoints: records what would be created and uploaded."""

    def __init__(self, monkeypatch, fail_with: Exception | None = None, fail_at: str = "create_repo"):
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, str] = {}
        self.fail_with, self.fail_at = fail_with, fail_at
        for name in ("create_repo", "create_branch", "upload_folder"):
            monkeypatch.setattr(HfApi, name, self._method(name))

    def _method(self, name):
        def method(api, *args, **kwargs):
            self.calls.append((name, {"args": args, **kwargs, "token": api.token}))
            if self.fail_with is not None and name == self.fail_at:
                raise self.fail_with
            if name == "create_repo":
                return RepoUrl(f"https://huggingface.co/{args[0]}")
            if name == "upload_folder":
                self.uploaded = folder_digest(Path(kwargs["folder_path"]))
                return CommitInfo(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc123",
                                  commit_message=kwargs.get("commit_message", ""), commit_description="", oid="abc123")
            return None
        return method


def test_push_creates_the_repo_and_uploads_the_folder(hub_folder, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    fake = FakeHub(monkeypatch)
    url = hub.push_folder(hub_folder, "user/tcl-run", private=True, revision="exp-1")
    assert url == "https://huggingface.co/user/tcl-run/commit/abc123"
    names = [name for name, _ in fake.calls]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    create, branch, upload = (kwargs for _, kwargs in fake.calls)
    assert create["args"] == ("user/tcl-run",) and create["private"] is True and create["exist_ok"] is True
    assert create["token"] == "hf_test_token"
    assert branch["args"] == ("user/tcl-run",) and branch["branch"] == "exp-1"
    assert upload["repo_id"] == "user/tcl-run" and upload["revision"] == "exp-1"
    assert fake.uploaded == folder_digest(hub_folder) and set(fake.uploaded) == HUB_FILES


def test_push_to_main_does_not_create_a_branch(hub_folder, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    fake = FakeHub(monkeypatch)
    hub.push_folder(hub_folder, "user/tcl-run")
    assert [name for name, _ in fake.calls] == ["create_repo", "upload_folder"]
    assert fake.calls[0][1]["private"] is False and fake.calls[1][1]["revision"] is None


def http_error(status: int, message: str):
    """The error huggingface_hub itself raises for an HTTP status, from a real response object."""
    from huggingface_hub.utils import hf_raise_for_status

    client = pytest.importorskip("httpx2")
    response = client.Response(status, json={"error": message},
                               request=client.Request("POST", "https://huggingface.co/api/repos/create"))
    with pytest.raises(Exception) as info:
        hf_raise_for_status(response)
    return info.value


def assert_push_failure(exc_info, folder: Path, before: dict, *needles: str):
    text = str(exc_info.value)
    assert "\n" not in text
    assert "push" in text and "failed" in text and str(folder) in text
    for needle in needles:
        assert needle in text
    assert folder_digest(folder) == before  # local export untouched


@pytest.mark.parametrize("status", [401, 403])
def test_push_refused_by_the_hub(hub_folder, monkeypatch, status):
    monkeypatch.setenv("HF_TOKEN", "hf_bad_token")
    before = folder_digest(hub_folder)
    FakeHub(monkeypatch, fail_with=http_error(status, "Invalid credentials in Authorization header"))
    with pytest.raises(TCLError) as info:
        hub.push_folder(hub_folder, "user/tcl-run")
    assert_push_failure(info, hub_folder, before, f"HTTP {status}", "Invalid credentials", "write access")


def test_push_network_failure_during_upload(hub_folder, monkeypatch):
    client = pytest.importorskip("httpx2")
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    before = folder_digest(hub_folder)
    FakeHub(monkeypatch, fail_with=client.ConnectError("[Errno 111] Connection refused"), fail_at="upload_folder")
    with pytest.raises(TCLError) as info:
        hub.push_folder(hub_folder, "user/tcl-run")
    assert_push_failure(info, hub_folder, before, "Connection refused")


def test_push_offline_fails_before_any_request(hub_folder, monkeypatch):
    import huggingface_hub.constants

    # Unpatched HfApi: huggingface_hub's own offline guard refuses the request.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    before = folder_digest(hub_folder)
    with pytest.raises(TCLError) as info:
        hub.push_folder(hub_folder, "user/tcl-run")
    assert_push_failure(info, hub_folder, before, "offline", "HF_HUB_OFFLINE")


def test_push_without_a_token(hub_folder, monkeypatch, tmp_path):
    import huggingface_hub.constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    fake = FakeHub(monkeypatch)
    before = folder_digest(hub_folder)
    with pytest.raises(TCLError) as info:
        hub.push_folder(hub_folder, "user/tcl-run")
    assert_push_failure(info, hub_folder, before, "no Hugging Face token", "HF_TOKEN")
    assert fake.calls == []


# ---- a real tiny run, re-exported by the command line --------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tcl_hf.trainer import Trainer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("WANDB_MODE", "disabled")
        run_dir = tmp_path_factory.mktemp("tiny") / "run"
        cfg = load_config(None, ["data.format=digits", "data.limit=120", "data.image_size=16",
                                 "model.backbone=preact_resnet_mini", "model.proj_dim=16", "train.epochs=1",
                                 "train.batch_size=16", "log.progress=false", "noise.type=sym", "noise.rate=0.4",
                                 f"output_dir={run_dir}"])
        trainer = Trainer(cfg)
        summary = trainer.train()
    return run_dir, trainer, summary


@pytest.mark.slow
def test_export_cli_reexports_a_finished_run(tiny_run, capsys):
    run_dir, trainer, summary = tiny_run
    assert export.main([str(run_dir)]) == 0
    printed = capsys.readouterr().out
    assert "exported" in printed
    # One epoch inside the default 20-epoch warm-up: TCL never started, and the re-export says so.
    assert summary["verdict"] == "never left warm-up"
    assert "warning: label_issues.csv and the model are not to be trusted: TCL never left warm-up" in printed
    hub_dir = run_dir / "hub"
    assert "> **Warning: this run failed (TCL never left warm-up)" in (hub_dir / "README.md").read_text()
    assert HUB_FILES <= {p.name for p in hub_dir.iterdir()}

    # The exported classifier reproduces the trained model on the test images, through timm's loader.
    trained = trainer.accelerator.unwrap_model(trainer.model).eval()
    images = trainer.feed.test_view.test(trainer.data.test.images[:8])
    loaded = timm.create_model(f"local-dir:{hub_dir}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(images), trained(images)[1], atol=1e-5)
    assert json.loads((hub_dir / "config.json").read_text())["label_names"] == trainer.data.class_names

    # The label report covers every training sample and agrees with the trainer's detector.
    import pandas as pd

    issues = pd.read_csv(run_dir / "label_issues.csv")
    assert len(issues) == len(trainer.data.train) and sorted(issues["index"]) == list(range(len(issues)))
    given, clean = trainer.given_labels.cpu().numpy(), trainer.clean_labels
    want_auc = roc_auc_score(clean == given, trainer.state.confidences.numpy())
    got_auc = roc_auc_score(issues["clean_label"] == issues["given_label"], issues["clean_prob"])
    assert got_auc == pytest.approx(want_auc, abs=1e-6)
    assert summary["noise_auc"] == pytest.approx(want_auc, abs=1e-6)
    assert np.array_equal(issues.sort_values("index")["given_label"].to_numpy(), given)
    card = ModelCard.load(hub_dir / "README.md")
    accuracy = {r.metric_name: r.metric_value for r in card.data.eval_results}["Test accuracy"]
    assert accuracy == pytest.approx(summary["test_acc"])
    assert {p.name for p in (run_dir / "plots").iterdir()} == {"clean_prob.png", "curves.png"}


@pytest.mark.slow
def test_export_cli_push_failure_exits_2_with_one_line(tiny_run, monkeypatch, capsys):
    run_dir, _, _ = tiny_run
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    fake = FakeHub(monkeypatch, fail_with=http_error(403, "You don't have the rights to create a model here"))
    assert export.main([str(run_dir), "--push", "someone-else/tcl", "--private"]) == 2
    assert fake.calls[0][1]["args"] == ("someone-else/tcl",) and fake.calls[0][1]["private"] is True
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "push" in err and "failed" in err and "HTTP 403" in err
    assert str(run_dir / "hub") in err
    assert HUB_FILES <= {p.name for p in (run_dir / "hub").iterdir()} and (run_dir / "label_issues.csv").is_file()


@pytest.mark.slow
def test_export_cli_errors_for_a_folder_without_a_run(tmp_path, capsys):
    assert export.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "config.yaml" in err


def test_export_cli_checks_the_repo_id_before_reexporting(tmp_path, monkeypatch, capsys):
    def no_reexport(run_dir):
        raise AssertionError("re-exported before checking --push")

    monkeypatch.setattr(export, "finished_run", no_reexport)
    with pytest.raises(SystemExit) as info:
        export.main([str(tmp_path), "--push", "not a repo"])
    assert info.value.code == 2 and "not a valid Hub repo id" in capsys.readouterr().err


@pytest.mark.slow
def test_export_cli_with_a_file_named_hub_is_one_line_and_keeps_it(tiny_run, tmp_path, capsys):
    import shutil

    run_dir, _, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "hub", ignore_errors=True)  # an earlier test's re-export
    (copy / "hub").write_text("mine")

    def files():
        return {str(p.relative_to(copy)): p.read_bytes() for p in sorted(copy.rglob("*")) if p.is_file()}

    before = files()
    try:
        code = export.main([str(copy)])
    except OSError as exc:
        pytest.fail(f"the error escaped the command: {exc!r}")
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("error: ")
    assert str(copy / "hub") in err and "not a folder" in err
    assert files() == before


# ---- nothing local is published; a push bound to fail stops the run before training -------------------------
def files_containing(folder: Path, text: str) -> list[str]:
    """Files under `folder` whose bytes contain `text` (binary-safe: weights included)."""
    needle = text.encode()
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes())


def test_export_carries_no_local_path(tmp_path):
    local = tmp_path / "home" / "alice"
    for folder in ("data/food", "webvision", "ilsvrc_val"):
        (local / folder).mkdir(parents=True)
    for name in ("labels.npy", "resnet.safetensors"):
        (local / name).write_bytes(b"x")
    cfg = run_config(output_dir=str(local / "runs" / "food"), data__path=str(local / "data" / "food"),
                     data__root=str(local / "webvision"), data__imagenet_val=str(local / "ilsvrc_val"),
                     noise__type="file", noise__file=str(local / "labels.npy"), model__backbone="preact_resnet_mini",
                     model__pretrained_file=str(local / "resnet.safetensors"))
    model = trained_like("preact_resnet_mini", num_classes=3)
    out = export.export_hub_folder(model, torch.zeros(3, 8), tmp_path / "hub", run_config=cfg, metrics=METRICS,
                                label_names=["a", "b", "c"], contract=SMALL)
    assert files_containing(out, str(tmp_path)) == []
    assert files_containing(out, "alice") == []
    published = json.loads((out / tcl_state.TCL_CONFIG).read_text())["run_config"]
    assert published["output_dir"] == "food" and published["data"]["path"] == "./food"
    assert published["noise"]["file"] == "labels.npy" and published["model"]["pretrained_file"] == "resnet.safetensors"
    assert (published["data"]["root"], published["data"]["imagenet_val"]) == ("webvision", "ilsvrc_val")
    card = ModelCard.load(out / "README.md")
    assert card.data.datasets is None  # a local folder is not a Hub dataset
    assert f'timm.create_model("{LOCAL_LOAD_REF}", pretrained=True)' in card.text
    # The caller's config is left as it was.
    assert cfg["data"]["path"] == str(local / "data" / "food")


def test_export_keeps_hub_dataset_ids():
    public = public_config(run_config(data__path="uoft-cs/cifar10", output_dir="runs/x"))
    assert public["data"]["path"] == "uoft-cs/cifar10" and public["output_dir"] == "x"


@pytest.mark.slow
def test_trained_run_publishes_no_local_path(tiny_run):
    run_dir, _, _ = tiny_run
    assert files_containing(run_dir / "hub", str(run_dir.parent)) == []


@pytest.fixture
def online(monkeypatch):
    """The network allowed (as without HF_HUB_OFFLINE); every Hub call must still be patched."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = []

    def whoami_answers(answer):
        def whoami(api, *args, **kwargs):
            calls.append(api.token)
            if isinstance(answer, Exception):
                raise answer
            return answer
        monkeypatch.setattr(HfApi, "whoami", whoami)
        return calls
    return whoami_answers


def no_token(monkeypatch, tmp_path):
    import huggingface_hub.constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


WRITE_TOKEN = {"name": "me", "auth": {"accessToken": {"role": "write"}}}


def test_token_check_accepts_a_write_token(online, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_good")
    calls = online(WRITE_TOKEN)
    hub.check_push_token("me/tcl-run")
    assert calls == ["hf_good"]


@pytest.mark.parametrize("answer, needles", [
    (lambda: http_error(401, "Invalid user token."), ["HTTP 401", "Invalid user token"]),
    (lambda: {"name": "me", "auth": {"accessToken": {"role": "read"}}}, ["read-only"]),
])
def test_token_check_refuses_what_the_hub_rejects(online, monkeypatch, answer, needles):
    monkeypatch.setenv("HF_TOKEN", "hf_bad")
    online(answer())
    with pytest.raises(TCLError) as info:
        hub.check_push_token("me/tcl-run")
    message = str(info.value)
    assert "\n" not in message and message.startswith("hub.repo_id: cannot push to 'me/tcl-run'")
    assert "HF_HUB_OFFLINE=1" in message and all(needle in message for needle in needles)


def test_token_check_without_a_token_needs_no_request(online, monkeypatch, tmp_path):
    no_token(monkeypatch, tmp_path)
    calls = online(WRITE_TOKEN)
    with pytest.raises(TCLError, match=r"^hub.repo_id: pushing to 'me/tcl-run' needs a Hugging Face token"):
        hub.check_push_token("me/tcl-run")
    assert calls == []


def test_token_check_is_skipped_offline_or_without_a_repo(monkeypatch, tmp_path):
    import huggingface_hub.constants

    no_token(monkeypatch, tmp_path)
    monkeypatch.setattr(HfApi, "whoami", lambda *a, **k: pytest.fail("no request offline"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub.check_push_token("me/tcl-run")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hub.check_push_token(None)


def test_job_checks_the_token_before_any_work(online, monkeypatch, tmp_path):
    from tcl_hf.job import run_job

    monkeypatch.setenv("HF_TOKEN", "hf_bad")
    online(http_error(401, "Invalid user token."))
    out = tmp_path / "run"
    cfg = load_config(None, ["data.format=digits", "model.backbone=preact_resnet_mini", "hub.repo_id=me/tcl-run",
                             f"output_dir={out}"])
    with pytest.raises(TCLError, match="HTTP 401"):
        run_job(cfg)
    assert not out.exists()  # refused before the run folder, the data or the model


@pytest.mark.slow
def test_the_trainer_itself_never_asks_the_hub(online, monkeypatch, tmp_path):
    # The token check is the job's: a re-export or a test may build a trainer for a run with a repo id.
    from tcl_hf.trainer import Trainer

    monkeypatch.setenv("HF_TOKEN", "hf_bad")
    calls = online(http_error(401, "Invalid user token."))
    cfg = load_config(None, ["data.format=digits", "data.limit=64", "data.image_size=16",
                             "model.backbone=preact_resnet_mini", "model.proj_dim=16", "train.batch_size=16",
                             "log.progress=false", "hub.repo_id=me/tcl-run", f"output_dir={tmp_path / 'run'}"])
    Trainer(cfg)
    assert calls == []


@pytest.mark.slow
def test_offline_run_still_trains_exports_then_fails_the_push(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "HF_TOKEN": "hf_test_token"}
    proc = subprocess.run([sys.executable, "train.py", "data.format=digits", "data.limit=64", "data.image_size=16",
                           "model.backbone=preact_resnet_mini", "model.proj_dim=16", "train.epochs=1",
                           "train.batch_size=16", "eval.knn_k=5", "log.progress=false", "hub.repo_id=me/tcl-run",
                           f"output_dir={out}"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "push to 'me/tcl-run' failed" in errors[0] and str(out / "hub") in errors[0]
    assert (out / "summary.json").is_file() and HUB_FILES <= {p.name for p in (out / "hub").iterdir()}


@pytest.mark.slow
def test_reexport_without_push_needs_no_token_for_the_saved_repo(tiny_run, online, tmp_path):
    import shutil

    import yaml

    run_dir, _, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    saved["hub"]["repo_id"] = "me/tcl-run"
    (copy / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    calls = online(http_error(401, "Invalid user token."))
    assert export.main([str(copy)]) == 0
    assert calls == []
