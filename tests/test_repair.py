"""The repaired dataset: a run's training split with its verdicts, through datasets.load_dataset and back.

Most tests make up a finished run (config.yaml, label_issues.csv, summary.json) with verdicts chosen here, so
every expected value is known without the code under test; one trains a tiny run end to end (slow).
"""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from fixtures import make_webvision, review_data, thumbnail_pixels, tiny_digits
from huggingface_hub import DatasetCard, HfApi
from huggingface_hub.hf_api import CommitInfo, RepoUrl
from PIL import Image

from tcl_hf import repair
from tcl_hf.config import load_config, save_config
from tcl_hf.data.hf import digits_dataset_dict
from tcl_hf.feeding.sampler import stratified_sample
from tcl_hf.noise import symmetric_noise
from tcl_hf.report import label_issues
from tcl_hf.rundir import (CONFIG_FILE, LABEL_ISSUES_FILE, LABEL_REVIEW_FILE, REPAIRED_DIR, RUN_OUTPUTS,
                          SUMMARY_FILE)

LIMIT = 60
UNREADABLE = (5, 17, 42)  # training rows the made-up run "could not read": no row in its report
SUMMARY = {"test_acc": 0.8125, "noise_auc": 0.9375, "noise_precision": 0.6, "noise_recall": 0.7, "noise_acc": 0.85,
           "noise_rate": 0.4, "label_acc": 0.75, "epochs_completed": 3}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    # datasets' progress bars share stderr with the one error line the tests read.
    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


def load_repaired(folder: Path):
    return datasets.load_dataset(str(folder), split="train")


def files_containing(folder: Path, text: str) -> list[str]:
    """Files under ``folder`` whose bytes contain ``text`` (binary-safe: parquet included)."""
    needle = text.encode()
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes())


def write_run(run_dir: Path, overrides: list[str], given: np.ndarray, clean: np.ndarray | None, seed: int = 0,
              unreadable=UNREADABLE, summary: dict | None = None, predicted: np.ndarray | None = None) -> pd.DataFrame:
    """A finished run made up here: its config, a report with chosen verdicts (rows ``unreadable`` left out)
    and a summary. Returns the report as written, most suspect first, as the trainer writes it."""
    run_dir.mkdir(parents=True)
    save_config(load_config(None, [*overrides, f"output_dir={run_dir}"]), run_dir / CONFIG_FILE)
    rng = np.random.default_rng(seed)
    n = len(given)
    clean_prob = rng.uniform(0.0, 1.0, n).round(6)
    clean_prob[:4] = [0.3, 0.29999, 0.5, 0.49999]  # the --drop-below and is_noisy boundaries
    flipped = np.where(rng.uniform(size=n) < 0.5, (given + 1) % 10, given)
    predicted = flipped if predicted is None else predicted
    table = label_issues(given, predicted, clean_prob, clean)
    table = table[~table["index"].isin(unreadable)].reset_index(drop=True)
    table.to_csv(run_dir / LABEL_ISSUES_FILE, index=False)
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary if summary is not None else SUMMARY))
    return table


DIGITS = ["data.format=digits", f"data.limit={LIMIT}", "data.image_size=16", "model.backbone=preact_resnet_mini",
          "noise.type=sym", "noise.rate=0.4"]


def drawn_rows() -> np.ndarray:
    """The rows of the digits' training split that data.limit=LIMIT draws with the run's seed (0)."""
    return stratified_sample(np.asarray(digits_dataset_dict()["train"]["label"]), LIMIT, seed=0)


@pytest.fixture
def digits_run(tmp_path):
    """A made-up digits run with 40 % symmetric noise: (run folder, its report, true labels, given labels)."""
    truth = np.asarray(digits_dataset_dict()["train"]["label"], dtype=np.int64)[drawn_rows()]
    given = symmetric_noise(truth, 0.4, 10, seed=0)  # the run's noise: noise.seed defaults to seed=0
    assert (given != truth).any()
    table = write_run(tmp_path / "run", DIGITS, given, truth)
    return tmp_path / "run", table, truth, given


def expected_rows(table: pd.DataFrame, drop_below: float = 0.0) -> pd.DataFrame:
    """The rows the repaired dataset must hold, computed from the report by the rule the card states."""
    rows = table.sort_values("index").reset_index(drop=True)
    rows["tcl"] = np.where(rows["clean_prob"] < 0.5, rows["predicted_label"], rows["given_label"])
    return rows[rows["clean_prob"] >= drop_below].reset_index(drop=True)


# ---- round trip --------------------------------------------------------------------------------------------------
def test_digits_round_trip_through_load_dataset(digits_run, capsys):
    run_dir, table, truth, given = digits_run
    assert repair.main([str(run_dir)]) == 0
    out = run_dir / REPAIRED_DIR
    assert "57 of 60 training samples" in capsys.readouterr().out
    ds = load_repaired(out)
    assert ds.column_names == ["image", "label", "clean_label", "tcl_label", "clean_prob", "is_noisy"]
    want = expected_rows(table)
    assert len(ds) == LIMIT - len(UNREADABLE) == len(want)
    assert ds["label"] == want["given_label"].tolist() == given[want["index"]].tolist()
    assert ds["clean_label"] == truth[want["index"]].tolist()
    assert ds["tcl_label"] == want["tcl"].tolist()
    assert ds["clean_prob"] == want["clean_prob"].tolist()  # exactly the report's values
    assert ds["is_noisy"] == want["is_noisy"].tolist() == (want["clean_prob"] < 0.5).tolist()
    assert ds.features["tcl_label"].names == [str(k) for k in range(10)]
    # The images are the training split's own, row for row (the digits' 8x8 scans).
    source = digits_dataset_dict()["train"].select(drawn_rows())
    for position in (0, 6, len(ds) - 1):
        row = int(want["index"][position])
        assert np.array_equal(np.asarray(ds[position]["image"]), np.asarray(source[row]["image"]))


def test_repair_writes_the_review_page_of_the_report(digits_run):
    run_dir, table, _, _ = digits_run
    assert repair.main([str(run_dir)]) == 0
    rows = review_data(run_dir / REPAIRED_DIR / LABEL_REVIEW_FILE)["rows"]
    assert [r["row"] for r in rows] == table["index"].tolist()  # all 57 readable rows, most suspect first
    assert [r["score"] for r in rows] == pytest.approx((1 - table["clean_prob"]).tolist())
    source = digits_dataset_dict()["train"].select(drawn_rows())
    for r in rows[:5]:
        # The 64 px thumbnail, averaged back over each 8 x 8 block, is the digit's own 8 x 8 scan.
        blocks = thumbnail_pixels(r["thumb"]).astype(float).mean(axis=2).reshape(8, 8, 8, 8).mean(axis=(1, 3))
        assert np.abs(blocks - np.asarray(source[r["row"]]["image"], dtype=float)).max() < 12


def test_drop_below_leaves_out_exactly_the_rows_below(digits_run):
    run_dir, table, _, _ = digits_run
    out = run_dir.parent / "kept"
    assert repair.main([str(run_dir), "--out", str(out), "--drop-below", "0.3"]) == 0
    ds = load_repaired(out)
    want = expected_rows(table, drop_below=0.3)
    assert ds["clean_prob"] == want["clean_prob"].tolist()
    assert 0.3 in ds["clean_prob"] and 0.29999 not in ds["clean_prob"]
    assert min(ds["clean_prob"]) >= 0.3
    dropped = int((table["clean_prob"] < 0.3).sum())
    relabelled = int((want["tcl"] != want["given_label"]).sum())
    card = DatasetCard.load(out / "README.md")
    row = f"| {LIMIT} | {len(want)} | {dropped} | {len(UNREADABLE)} | {relabelled} |"
    assert row in card.text


def test_card_metadata_parses_and_no_local_path_is_written(digits_run, tmp_path):
    run_dir, table, truth, _ = digits_run
    assert repair.main([str(run_dir)]) == 0
    out = run_dir / REPAIRED_DIR
    assert files_containing(out, str(tmp_path)) == [] and files_containing(out, "pytest-") == []
    card = DatasetCard.load(out / "README.md")
    assert {"noisy-labels", "label-correction", "tcl_hf"} <= set(card.data.tags)
    assert [p.name for p in (out / "data").iterdir()] == ["train-00000-of-00001.parquet"]  # the Hub's layout
    assert card.data.source_datasets is None  # the digits are not a Hub dataset
    assert "the model's prediction where `is_noisy` is true, else the given label" in card.text
    assert "| 0.4000 | 0.9375 | 0.6000 | 0.7000 | 0.8500 | 0.7500 | 0.8125 |" in card.text  # summary.json
    want = expected_rows(table)
    right = int((want["given_label"] == truth[want["index"]]).sum())
    assert f"the given labels are right for {right / len(want):.4f} ({right}/{len(want)})" in card.text
    assert "output_dir: run\n" in card.text  # the recipe, local paths cut to base names
    assert 'load_dataset("path/to/this/folder"' in card.text


def test_two_repaired_folders_load_as_themselves(digits_run, tmp_path):
    # Same folder name, same layout, other verdicts: datasets' cache must not hand back the first one.
    first, table, truth, given = digits_run
    second = tmp_path / "again" / "run"
    other = write_run(second, DIGITS, given, truth, seed=1)
    for run_dir, report in ((first, table), (second, other), (first, table)):
        assert repair.main([str(run_dir)]) == 0
        assert load_repaired(run_dir / REPAIRED_DIR)["clean_prob"] == expected_rows(report)["clean_prob"].tolist()


def test_a_second_repair_replaces_the_first_and_nothing_else(digits_run):
    run_dir, _, _, _ = digits_run
    assert repair.main([str(run_dir)]) == 0
    assert repair.main([str(run_dir), "--drop-below", "0.5"]) == 0
    assert min(load_repaired(run_dir / REPAIRED_DIR)["clean_prob"]) >= 0.5
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".repaired")) == []
    other = run_dir.parent / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    assert repair.main([str(run_dir), "--out", str(other)]) == 2
    assert (other / "mine.txt").read_text() == "keep me"
    assert REPAIRED_DIR in RUN_OUTPUTS  # overwrite=true clears a repair made from the replaced run's report


# ---- refusals ----------------------------------------------------------------------------------------------------
def test_report_of_other_labels_is_refused_in_one_line(digits_run, capsys):
    run_dir, table, _, _ = digits_run
    changed = table.copy()
    row = changed.index[changed["index"] == 7][0]
    changed.loc[row, "given_label"] = (changed.loc[row, "given_label"] + 1) % 10
    changed.to_csv(run_dir / LABEL_ISSUES_FILE, index=False)
    assert repair.main([str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ")
    assert "given labels differ" in err and "at 1 of 57 rows" in err and "row 7" in err
    assert not (run_dir / REPAIRED_DIR).exists()
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".")] in ([], [".tcl_hf.lock"])


def test_a_run_with_other_noise_is_refused(digits_run, capsys):
    run_dir, _, _, _ = digits_run
    # The same data with another noise seed: the rebuilt given labels are not the report's.
    save_config(load_config(None, [*DIGITS, "noise.seed=1", f"output_dir={run_dir}"]), run_dir / CONFIG_FILE)
    assert repair.main([str(run_dir)]) == 2
    assert "given labels differ" in capsys.readouterr().err


def test_a_folder_without_a_run_is_one_line(tmp_path, capsys):
    assert repair.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "config.yaml does not exist" in err


@pytest.mark.parametrize("verdict", ["collapsed at epoch 2", "never left warm-up"])
def test_a_failed_run_is_refused_unless_accepted_and_then_says_so(tmp_path, capsys, verdict):
    truth = np.asarray(digits_dataset_dict()["train"]["label"], dtype=np.int64)[drawn_rows()]
    given = symmetric_noise(truth, 0.4, 10, seed=0)
    run_dir = tmp_path / "run"
    write_run(run_dir, DIGITS, given, truth, summary={**SUMMARY, "verdict": verdict}, predicted=truth)
    assert repair.main([str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"failed run (TCL {verdict}" in err and "--accept-failed" in err
    assert not (run_dir / REPAIRED_DIR).exists()
    assert repair.main([str(run_dir), "--accept-failed"]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and f"failed (TCL {verdict})" in warnings[0]
    body = DatasetCard.load(run_dir / REPAIRED_DIR / "README.md").text.strip().splitlines()
    assert body[0].startswith("# ") and body[2].startswith(f"> **Warning: the run that repaired these labels failed "
                                                            f"(TCL {verdict})")
    assert f"failed (TCL {verdict})" in review_data(run_dir / REPAIRED_DIR / LABEL_REVIEW_FILE)["warning"]


def test_a_run_that_fell_back_to_ce_is_repaired_and_says_whose_verdicts_they_are(tmp_path, capsys):
    truth = np.asarray(digits_dataset_dict()["train"]["label"], dtype=np.int64)[drawn_rows()]
    given = symmetric_noise(truth, 0.4, 10, seed=0)
    run_dir = tmp_path / "run"
    write_run(run_dir, DIGITS, given, truth, summary={**SUMMARY, "verdict": "fell back to CE at epoch 4"},
              predicted=truth)
    assert repair.main([str(run_dir)]) == 0  # no --accept-failed needed: CE's verdicts are sound
    said = [line for line in capsys.readouterr().out.splitlines() if "fell back" in line]
    assert len(said) == 1 and said[0].startswith("warning: these verdicts are the cross-entropy baseline's, not "
                                                 "TCL's: TCL fell back to CE at epoch 4: ")
    body = DatasetCard.load(run_dir / REPAIRED_DIR / "README.md").text.strip().splitlines()
    assert body[2].startswith("> **Warning: these verdicts are the cross-entropy baseline's, not TCL's")


def test_a_run_that_never_finished_is_refused_unless_accepted(digits_run, capsys):
    run_dir, _, _, _ = digits_run
    (run_dir / SUMMARY_FILE).unlink()  # e.g. stopped for a collapse, then re-exported from its checkpoint
    assert repair.main([str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "never finished (no summary.json)" in err and "--accept-failed" in err
    assert not (run_dir / REPAIRED_DIR).exists()
    assert repair.main([str(run_dir), "--accept-failed"]) == 0
    assert "warning: the run that repaired these labels never finished" in capsys.readouterr().out


def test_a_repair_that_makes_the_labels_worse_says_so(digits_run, tmp_path, capsys):
    run_dir, table, truth, _ = digits_run
    want = expected_rows(table)
    given_right = int((want["given_label"] == truth[want["index"]]).sum())
    repaired_right = int((want["tcl"] == truth[want["index"]]).sum())
    assert repaired_right < given_right  # the made-up run predicts given + 1 for half the samples
    assert repair.main([str(run_dir)]) == 0
    warning = (f"the repaired labels are less accurate than the given ones: tcl_label is right for {repaired_right}, "
               f"the given label for {given_right} of the {len(want)} kept samples")
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")] == [
        f"warning: {warning} (true labels known); use the given labels"]
    body = DatasetCard.load(run_dir / REPAIRED_DIR / "README.md").text.strip().splitlines()
    assert body[2].startswith(f"> **Warning: {warning}")
    # A repair that predicts the true labels makes them better: nothing to warn about.
    better = tmp_path / "better"
    write_run(better, DIGITS, symmetric_noise(truth, 0.4, 10, seed=0), truth, predicted=truth)
    assert repair.main([str(better)]) == 0
    assert "warning" not in capsys.readouterr().out
    assert "Warning" not in DatasetCard.load(better / REPAIRED_DIR / "README.md").text


# ---- other sources ---------------------------------------------------------------------------------------------
def test_webvision_files_are_embedded_and_unreadable_ones_counted(tmp_path, capsys):
    layout = make_webvision(tmp_path / "wv", total_classes=6, imagenet=None)
    files = [path for path, _ in layout.splits["train"]]
    given = np.asarray([label for _, label in layout.splits["train"]], dtype=np.int64)
    bad = [i for i, path in enumerate(files) if path in layout.corrupt | layout.missing]
    assert len(bad) == 2
    run_dir = tmp_path / "run"
    table = write_run(run_dir, ["data.format=webvision", f"data.root={layout.root}", "data.num_classes=6",
                                "data.image_size=16", "model.backbone=preact_resnet_mini"], given, None,
                      unreadable=bad, summary={"test_acc": 0.5, "epochs_completed": 1})
    assert repair.main([str(run_dir)]) == 0
    assert f"{len(files) - 2} of {len(files)} training samples" in capsys.readouterr().out
    out = run_dir / REPAIRED_DIR
    ds = load_repaired(out)
    assert ds.column_names == ["image", "label", "tcl_label", "clean_prob", "is_noisy"]
    want = expected_rows(table)
    assert ds["label"] == want["given_label"].tolist() and ds["tcl_label"] == want["tcl"].tolist()
    assert ds.features["label"].names[0] == "class 0, a thing"  # WebVision's synsets.txt names
    cells = ds.cast_column("image", datasets.Image(decode=False))["image"]
    for cell, row in zip(cells, want["index"]):
        assert cell["bytes"] == Path(files[row]).read_bytes()  # the file as stored, not re-encoded
        assert cell["path"] == Path(files[row]).name
    assert files_containing(out, str(tmp_path)) == []
    card = DatasetCard.load(out / "README.md")
    assert "detection quality was not measured" in card.text and "folder `wv`" in card.text


def test_an_image_gone_since_the_run_is_one_line(tmp_path, capsys):
    layout = make_webvision(tmp_path / "wv", total_classes=6, imagenet=None)
    given = np.asarray([label for _, label in layout.splits["train"]], dtype=np.int64)
    run_dir = tmp_path / "run"
    write_run(run_dir, ["data.format=webvision", f"data.root={layout.root}", "data.num_classes=6",
                        "data.image_size=16", "model.backbone=preact_resnet_mini"], given, None, unreadable=())
    assert repair.main([str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot read an image" in err
    assert not (run_dir / REPAIRED_DIR).exists()


def write_parquet_source(folder: Path, images: Path, n: int) -> np.ndarray:
    """A local dataset in the Hub's layout whose image cells name local files (as to_parquet leaves them),
    with an extra text column; returns the train labels."""
    images.mkdir(parents=True)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list("abcd")),
                                  "caption": datasets.Value("string")})
    labels = np.arange(n) % 4
    for split, count in (("train", n), ("test", 8)):
        paths = []
        for i in range(count):
            paths.append(str(images / f"{split}_{i}.png"))
            Image.new("RGB", (12, 10), (20 * i % 255, 40, 200 - i)).save(paths[-1])
        ds = datasets.Dataset.from_dict({"image": paths, "label": (np.arange(count) % 4).tolist(),
                                         "caption": [f"{split} picture {i}" for i in range(count)]}, features=features)
        (folder / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return labels


def test_hf_source_keeps_every_column_and_adds_the_noisy_labels(tmp_path, monkeypatch):
    import tcl_hf.data.decoded

    def no_decoding(*args, **kwargs):
        raise AssertionError("the repair decoded a split: it needs only labels and rows")

    monkeypatch.setattr(tcl_hf.data.decoded, "decode_split", no_decoding)
    source = tmp_path / "shop_photos"
    truth = write_parquet_source(source, tmp_path / "images", n=24)
    given = symmetric_noise(truth, 0.5, 4, seed=3)
    run_dir = tmp_path / "run"
    table = write_run(run_dir, ["data.format=hf", f"data.path={source}", "data.image_size=16",
                                "model.backbone=preact_resnet_mini", "noise.type=sym", "noise.rate=0.5", "seed=3"],
                      given, truth, unreadable=(2,))
    assert repair.main([str(run_dir)]) == 0
    out = run_dir / REPAIRED_DIR
    ds = load_repaired(out)
    assert ds.column_names == ["image", "label", "caption", "given_label", "tcl_label", "clean_prob", "is_noisy"]
    want = expected_rows(table)
    assert ds["label"] == truth[want["index"]].tolist()  # the source's column, unchanged
    assert ds["given_label"] == want["given_label"].tolist() and ds["tcl_label"] == want["tcl"].tolist()
    assert ds["caption"] == [f"train picture {i}" for i in want["index"]]
    assert ds.features["given_label"].names == list("abcd")
    cells = ds.cast_column("image", datasets.Image(decode=False))["image"]
    assert [c["path"] for c in cells] == [f"train_{i}.png" for i in want["index"]]
    assert cells[0]["bytes"] == (tmp_path / "images" / f"train_{want['index'][0]}.png").read_bytes()
    assert files_containing(out, str(tmp_path)) == []
    card = DatasetCard.load(out / "README.md")
    assert "the local dataset `shop_photos`" in card.text and "(`given_label`)" in card.text
    assert card.data.source_datasets is None


def test_hub_revision_is_the_commit_folder_of_the_cache():
    from types import SimpleNamespace

    from tcl_hf.repaired_dataset import hub_revision

    sha = "0b2714987fbbb3f4e2c8a2a4b5f1f0a4b0c3d2e1"
    hub = SimpleNamespace(cache_files=[{"filename": f"/c/uoft-cs___cifar10/plain_text/0.0.0/{sha}/cifar10-train.arrow"}])
    local = SimpleNamespace(cache_files=[{"filename": "/c/parquet/default-1a2b/0.0.0/9ce239cf174bd501/x.arrow"}])
    assert hub_revision(hub) == sha
    assert hub_revision(local) is None and hub_revision(SimpleNamespace(cache_files=[])) is None


# ---- push --------------------------------------------------------------------------------------------------------
class FakeHub:
    """Stands in for the Hub's HTTP endpoints: records the calls and what would be uploaded."""

    def __init__(self, monkeypatch, fail_with: Exception | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, bytes] = {}
        for name in ("create_repo", "create_branch", "upload_folder"):
            monkeypatch.setattr(HfApi, name, self._method(name, fail_with))

    def _method(self, name, fail_with):
        def method(api, *args, **kwargs):
            self.calls.append((name, {"args": args, **kwargs}))
            if fail_with is not None:
                raise fail_with
            if name == "create_repo":
                return RepoUrl(f"https://huggingface.co/datasets/{args[0]}")
            if name == "upload_folder":
                root = Path(kwargs["folder_path"])
                self.uploaded = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
                return CommitInfo(commit_url=f"https://huggingface.co/datasets/{kwargs['repo_id']}/commit/abc",
                                  commit_message="", commit_description="", oid="abc")
            return None
        return method


def test_push_uploads_a_dataset_repo(digits_run, monkeypatch, tmp_path, capsys):
    run_dir, _, _, _ = digits_run
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    fake = FakeHub(monkeypatch)
    assert repair.main([str(run_dir), "--push", "me/digits-repaired", "--private"]) == 0
    assert [name for name, _ in fake.calls] == ["create_repo", "upload_folder"]
    create, upload = (kwargs for _, kwargs in fake.calls)
    assert create["repo_type"] == "dataset" and create["private"] is True and create["args"] == ("me/digits-repaired",)
    assert upload["repo_type"] == "dataset" and upload["repo_id"] == "me/digits-repaired"
    out = run_dir / REPAIRED_DIR
    assert set(fake.uploaded) == {"README.md", "data/train-00000-of-00001.parquet", LABEL_REVIEW_FILE}
    assert fake.uploaded == {name: (out / name).read_bytes() for name in fake.uploaded}
    assert not any(str(tmp_path).encode() in content for content in fake.uploaded.values())
    assert b'load_dataset("me/digits-repaired"' in fake.uploaded["README.md"]
    assert "pushed" in capsys.readouterr().out


def test_refused_push_is_one_line_and_keeps_the_local_copy(digits_run, monkeypatch, capsys):
    from test_hub import http_error

    run_dir, _, _, _ = digits_run
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    FakeHub(monkeypatch, fail_with=http_error(403, "You don't have the rights to create a dataset here"))
    assert repair.main([str(run_dir), "--push", "someone-else/digits"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    out = run_dir / REPAIRED_DIR
    assert err.count("\n") == 0 and "'someone-else/digits'" in err and "HTTP 403" in err and str(out) in err
    assert len(load_repaired(out)) == LIMIT - len(UNREADABLE)  # the local copy is whole
    assert f"wrote {out}" in captured.out


def test_a_bad_repo_id_is_refused_before_any_work(digits_run, capsys):
    run_dir, _, _, _ = digits_run
    with pytest.raises(SystemExit) as info:
        repair.main([str(run_dir), "--push", "not a repo"])
    assert info.value.code == 2 and "not a valid Hub repo id" in capsys.readouterr().err
    assert not (run_dir / REPAIRED_DIR).exists()


# ---- a real run --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny finished run, through the same job train.py runs."""
    from accelerate.state import AcceleratorState, GradientState

    from tcl_hf.job import run_job

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("WANDB_MODE", "disabled")
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        run_dir = tmp_path_factory.mktemp("trained") / "run"
        run_job(load_config(None, tiny_digits("data.limit=64", "eval.knn_k=5", "train.epochs=1",
                                                 f"output_dir={run_dir}")))
    return run_dir


@pytest.mark.slow
def test_repair_of_a_trained_run_matches_its_report(trained_run, capsys):
    out = trained_run.parent / "published"
    # One epoch inside the default 20-epoch warm-up: TCL never started, so the repair needs --accept-failed.
    assert json.loads((trained_run / SUMMARY_FILE).read_text())["verdict"] == "never left warm-up"
    assert repair.main([str(trained_run), "--out", str(out), "--drop-below", "0.2"]) == 2
    assert "--accept-failed" in capsys.readouterr().err
    assert repair.main([str(trained_run), "--out", str(out), "--drop-below", "0.2", "--accept-failed"]) == 0
    report = pd.read_csv(trained_run / LABEL_ISSUES_FILE).sort_values("index")
    kept = report[report["clean_prob"] >= 0.2]
    ds = load_repaired(out)
    assert ds["label"] == kept["given_label"].tolist() and ds["clean_label"] == kept["clean_label"].tolist()
    assert ds["clean_prob"] == kept["clean_prob"].tolist() and ds["is_noisy"] == kept["is_noisy"].tolist()
    assert ds["tcl_label"] == np.where(kept["is_noisy"], kept["predicted_label"], kept["given_label"]).tolist()
    assert files_containing(out, str(trained_run.parent)) == []
    summary = json.loads((trained_run / SUMMARY_FILE).read_text())
    assert f"| {summary['noise_auc']:.4f} |" in DatasetCard.load(out / "README.md").text


@pytest.mark.slow
def test_a_trained_run_reports_ids_scores_and_the_review_page(trained_run):
    report = pd.read_csv(trained_run / LABEL_ISSUES_FILE)
    drawn = stratified_sample(np.asarray(digits_dataset_dict()["train"]["label"]), 64, seed=0)
    assert report["sample_id"].tolist() == drawn[report["index"]].tolist()  # the digits' row before data.limit
    assert report["suspicion"].is_monotonic_decreasing and report["suspicion"].between(0, 1).all()
    rows = review_data(trained_run / LABEL_REVIEW_FILE)["rows"]
    assert [r["id"] for r in rows] == [str(v) for v in report["sample_id"]]
