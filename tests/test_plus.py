"""TCL+ (spec section 7, the reference's ``models/tcl/tcl_plus.py``): relabelling, the step's loss, the teacher,
refusals of a bad ``init.from``, and a real TCL -> TCL+ chain on tiny digits data with exact resume.

Expected values are worked out here with plain torch ops in the reference's own form (a sum of per-label
cross-entropies), never with the functions under test.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from fixtures import tiny_digits

from tcl_hf import cli, methods
from tcl_hf.config import load_config, save_config
from tcl_hf.errors import ConfigError, StopRequested, TCLError
from tcl_hf.export import publish_run
from tcl_hf.hub import load_tcl_pretrained
from tcl_hf.models import TCLModel
from tcl_hf.plus import relabel, start_from_tcl_run
from tcl_hf.rundir import newest_intact
from tcl_hf.schedule import Schedule
from tcl_hf.state import LossMeter, RUN_STATE_TENSORS
from tcl_hf.trainer import Trainer


# ---- relabelling ------------------------------------------------------------------------------------------------
def test_relabel_takes_the_cluster_only_above_the_threshold():
    assignments = torch.tensor([
        [0.70, 0.20, 0.10],   # confident, another class: relabelled to 0
        [0.50, 0.50, 0.00],   # a tie exactly at the threshold: not above it, keeps 2
        [0.30, 0.30, 0.40],   # below: keeps 0
        [0.10, 0.85, 0.05],   # confident, the given class: stays 1
        [0.49, 0.51, 0.00],   # just above: relabelled to 1
    ])
    given = torch.tensor([2, 2, 0, 1, 0])
    assert relabel(assignments, given, 0.5).tolist() == [0, 2, 0, 1, 1]
    # A tie at the top above a lower threshold goes to the first of the tied clusters (torch.max's rule).
    assert relabel(torch.tensor([[0.1, 0.45, 0.45]]), torch.tensor([0]), 0.3).tolist() == [1]


# ---- the step ----------------------------------------------------------------------------------------------------
class Tiny(torch.nn.Module):
    """Linear-Dropout-BN logits: the teacher's dropout and batch-statistics mode both change its argmax."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.lin, self.drop, self.bn = torch.nn.Linear(4, 3), torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(3)

    def forward(self, x, project: bool = True):
        return None, self.bn(self.drop(self.lin(x)))


def plus_cfg(**plus) -> SimpleNamespace:
    defaults = dict(threshold=0.5, ema=0.0, teacher_weight=0.2, start_correction=30, constant_lr=True)
    return SimpleNamespace(tcl=SimpleNamespace(per_class_gmm=False, gmm_backend="torch", mixup_alpha=1.0),
                           plus=SimpleNamespace(**{**defaults, **plus}))


def ce(logits, labels):
    return F.cross_entropy(logits, labels, reduction="none")


@pytest.mark.parametrize("corrected", [False, True])
def test_step_loss_matches_the_reference_sum(monkeypatch, corrected):
    torch.manual_seed(0)
    student = Tiny()
    with torch.no_grad():
        student.bn.weight.copy_(torch.tensor([1.5, 0.5, 2.0]))
        student.bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    method = methods.TCLPlus(plus_cfg(teacher_weight=0.3, start_correction=2), student, torch.zeros(0))
    w_t, b_t = student.lin.weight.detach().clone(), student.lin.bias.detach().clone()
    with torch.no_grad():
        student.lin.weight.add_(0.5)  # the student moves on; the teacher keeps the weights it was copied with
    student.eval()  # no dropout in the student either, so its logits are computable here
    images = torch.randn(4, 4)
    lam, perm = 0.7, torch.tensor([2, 0, 3, 1])
    seen = {}

    def fixed_mixup(x, alpha):
        seen["mixup_input"], seen["alpha"] = x, alpha
        return lam * x + (1 - lam) * x[perm], perm, lam

    monkeypatch.setattr(methods, "mixup", fixed_mixup)
    views = SimpleNamespace(weak=lambda im: im * 2.0)  # the weak view, told apart from the raw batch
    x = images * 2.0
    # Teacher: the copied weights, dropout off, batch statistics (biased variance), BN affine of the copy.
    h = x @ w_t.T + b_t
    t_logits = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5) * student.bn.weight + student.bn.bias
    z1 = t_logits.argmax(dim=1)
    labels = (z1 + torch.tensor([0, 1, 2, 1])) % 3  # three of four labels disagree with the teacher
    # Student in eval mode: BN with its initial running statistics (0, 1).
    x_mix = lam * x + (1 - lam) * x[perm]
    s_logits = (x_mix @ student.lin.weight.T + student.lin.bias) / (1 + 1e-5) ** 0.5 * student.bn.weight \
        + student.bn.bias
    if corrected:
        b = 0.3
        expected = (lam * (1 - b) * ce(s_logits, labels) + lam * b * ce(s_logits, z1)
                    + (1 - lam) * (1 - b) * ce(s_logits, labels[perm]) + (1 - lam) * b * ce(s_logits, z1[perm])).mean()
    else:
        expected = (lam * ce(s_logits, labels) + (1 - lam) * ce(s_logits, labels[perm])).mean()

    epoch = 3 if corrected else 2  # start_correction=2: the teacher enters from the third (1-based) epoch
    # The run's schedule hands the step its phase: TCL+'s own, whatever optim.warmup_epochs (20 by default) says.
    schedule = Schedule(load_config(None, []), method, None, total_batch=256, steps_per_epoch=1, say=print)
    assert schedule.in_warmup(epoch) is not corrected
    batch = methods.StepInputs(images, labels, None, None, 0.0, 0.0, schedule.in_warmup(epoch))
    terms = method.step_terms(student, views, batch)
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["loss_cls"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.equal(seen["mixup_input"], x) and seen["alpha"] == 1.0
    assert method.teacher.training and not method.teacher.drop.training
    # The teacher ran in train mode: its BN running mean moved towards the batch mean of the un-mixed view.
    assert torch.allclose(method.teacher.bn.running_mean, 0.1 * h.mean(0), atol=1e-6)


def test_teacher_weight_zero_and_correction_change_the_loss(monkeypatch):
    """With teacher_weight > 0 the corrected loss differs from the plain one when the teacher disagrees."""
    torch.manual_seed(1)
    student = Tiny().eval()
    monkeypatch.setattr(methods, "mixup", lambda x, a: (x, torch.arange(x.shape[0]), 1.0))
    views = SimpleNamespace(weak=lambda im: im)
    images = torch.randn(6, 4)
    method = methods.TCLPlus(plus_cfg(teacher_weight=0.2), student, torch.zeros(0))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    plain = method.step_terms(student, views, methods.StepInputs(images, labels, None, None, 0, 0, True))["loss"]
    corrected = method.step_terms(student, views, methods.StepInputs(images, labels, None, None, 0, 0, False))["loss"]
    method.plus.teacher_weight = 0.0
    unweighted = method.step_terms(student, views, methods.StepInputs(images, labels, None, None, 0, 0, False))["loss"]
    assert unweighted.item() == pytest.approx(plain.item(), rel=1e-6)
    assert corrected.item() != pytest.approx(plain.item(), rel=1e-3)


# ---- the teacher -------------------------------------------------------------------------------------------------
def test_ema_teacher_update_by_hand():
    torch.manual_seed(2)
    student = Tiny()
    method = methods.TCLPlus(plus_cfg(ema=0.9), student, torch.zeros(0))
    t0 = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
        student.bn.running_mean.fill_(7.0)
    s1 = {k: v.detach().clone() for k, v in student.named_parameters()}
    method.after_step(student)
    for name, value in method.teacher.named_parameters():
        assert torch.allclose(value, 0.9 * t0[name] + 0.1 * s1[name], atol=1e-7), name
    # Parameters only: the teacher's BN statistics stay its own, as the reference's momentum update.
    assert torch.equal(method.teacher.bn.running_mean, t0["bn.running_mean"])
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(-2.0)
    s2 = {k: v.detach().clone() for k, v in student.named_parameters()}
    method.after_step(student)
    for name, value in method.teacher.named_parameters():
        expected = 0.9 * (0.9 * t0[name] + 0.1 * s1[name]) + 0.1 * s2[name]
        assert torch.allclose(value, expected, atol=1e-6), name
        assert not value.requires_grad


def test_ema_zero_teacher_is_the_current_network():
    torch.manual_seed(3)
    student = Tiny()
    method = methods.TCLPlus(plus_cfg(ema=0.0), student, torch.zeros(0))
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    method.after_step(student)
    for (name, t), s in zip(method.teacher.named_parameters(), student.parameters()):
        assert torch.equal(t, s), name
    assert method.network(student) is method.teacher  # the network evaluated and published


# ---- refusals ----------------------------------------------------------------------------------------------------
SMALL = tiny_digits()


def test_init_from_is_required_and_only_for_tcl_plus(tmp_path, capsys):
    with pytest.raises(ConfigError, match="init.from"):
        load_config(None, [*SMALL, "method=tcl_plus"])
    with pytest.raises(ConfigError, match="init.from"):
        load_config(None, [*SMALL, f"init.from={tmp_path}"])
    with pytest.raises(ConfigError, match="init.from.*not a folder"):
        load_config(None, [*SMALL, "method=tcl_plus", f"init.from={tmp_path / 'nope'}"])
    assert cli.main([*SMALL, "method=tcl_plus", f"output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: init.from") and "\n" not in err


def _fake_run(folder: Path, *overrides: str) -> Path:
    """A run folder holding only what a run saves first (config.yaml): unfinished."""
    folder.mkdir(parents=True)
    save_config(load_config(None, [*SMALL, f"output_dir={folder}", *overrides]), folder / "config.yaml")
    return folder


def test_start_refuses_unfinished_other_method_and_other_data(tmp_path):
    ours = load_config(None, [*SMALL, "method=tcl_plus", f"init.from={tmp_path}"])
    from tcl_hf.config import to_dict

    model, given = TCLModel("preact_resnet_mini", 10, 16), torch.zeros(96, dtype=torch.long)

    def start(folder):
        return start_from_tcl_run(folder, to_dict(ours), model, given, 0.5)

    with pytest.raises(TCLError, match="^init.from: .*cannot be used"):
        start(tmp_path / "empty")
    with pytest.raises(TCLError, match="^init.from: .*no finished TCL run"):
        start(_fake_run(tmp_path / "unfinished"))
    with pytest.raises(TCLError, match="^init.from: .*method=ce run"):
        start(_fake_run(tmp_path / "ce", "method=ce"))
    with pytest.raises(TCLError, match=r"^init.from: .*other data.*noise.rate=0.2 there, 0.4 here"):
        start(_fake_run(tmp_path / "other", "noise.rate=0.2"))
    with pytest.raises(TCLError, match=r"^init.from: .*other data.*seed=5 there, 0 here"):
        start(_fake_run(tmp_path / "seed", "seed=5"))


def _finished_fake_run(folder: Path, finished_at: int, steps: tuple[int, ...], verdict: str = "ok") -> Path:
    """A made-up finished TCL run: config, summary.json (``finished_at``, ``verdict``), hub/ and an intact checkpoint
    per step in ``steps`` (assignments all on class 0 with 0.9, so every sample relabels to 0)."""
    from tcl_hf.rundir import write_checkpoint
    from tcl_hf.state import RunState
    from tcl_hf.tcl_state import save_tcl_state

    _fake_run(folder)
    save_tcl_state(TCLModel("preact_resnet_mini", 10, 16), torch.zeros(10, 16), folder / "hub",
                   {"model": {"backbone": "preact_resnet_mini"}})
    for step in steps:
        state = RunState(96, 10, 16)
        state.step, state.assignments[:, 0] = step, 0.9
        write_checkpoint(folder, step, state.save, 2, True, lambda: None)
    (folder / "summary.json").write_text(json.dumps({"steps": finished_at, "verdict": verdict}))
    return folder


def _start_from(folder: Path, *overrides: str):
    from tcl_hf.config import to_dict

    ours = load_config(None, [*SMALL, "method=tcl_plus", f"init.from={folder}", *overrides])
    model = TCLModel("preact_resnet_mini", 10, 16)
    return start_from_tcl_run(folder, to_dict(ours), model, torch.ones(96, dtype=torch.long), 0.5)


def test_start_reads_network_and_assignments_from_the_step_the_run_finished_at(tmp_path):
    # Resumed after it finished (a newer checkpoint than hub/ and summary.json): two points of training.
    with pytest.raises(TCLError, match=r"^init.from: .*finished at step 6 .*newest checkpoint is step_00000012.*"
                                       r"train.resume=true") as err:
        _start_from(_finished_fake_run(tmp_path / "resumed", 6, (6, 12)))
    assert "\n" not in str(err.value)
    start = _start_from(_finished_fake_run(tmp_path / "tcl", 12, (6, 12)))
    assert start.changed == 96 and start.verdict == "ok"


def test_start_refuses_a_run_that_is_training_and_shares_the_lock_with_readers(tmp_path):
    from tcl_hf.rundir import RunLock

    folder = _finished_fake_run(tmp_path / "tcl", 12, (12,))
    training = RunLock(folder).acquire()
    try:
        with pytest.raises(TCLError, match=r"^init.from: .* is in use by a tcl_hf run .*wait for it to finish"):
            _start_from(folder)
    finally:
        training.release()
    from tcl_hf.rundir import shared_run_lock

    with shared_run_lock(folder, "init.from"):
        assert _start_from(folder).changed == 96  # another reader at the same time
        with pytest.raises(TCLError, match="in use"):
            RunLock(folder).acquire()  # no run starts there while it is read
    RunLock(folder).acquire().release()  # and the lock is free again afterwards


@pytest.mark.parametrize("verdict", ["collapsed at epoch 1", "never left warm-up", "fell back to CE at epoch 2"])
def test_start_refuses_a_failed_run_unless_accepted(tmp_path, verdict):
    folder = _finished_fake_run(tmp_path / "tcl", 12, (12,), verdict=verdict)
    with pytest.raises(TCLError, match=rf"^init.from: .*failed TCL run \(TCL {verdict}.*init.accept_failed=true"):
        _start_from(folder)
    assert _start_from(folder, "init.accept_failed=true").verdict == verdict


def test_accept_failed_changes_no_run_and_old_runs_without_it_resume():
    from tcl_hf.config import to_dict
    from tcl_hf.rundir import OUTCOME_NEUTRAL, run_differences

    saved = to_dict(load_config(None, SMALL))
    del saved["init"]["accept_failed"]  # a config.yaml written before the key existed
    accepting = to_dict(load_config(None, [*SMALL, "init.accept_failed=true"]))
    assert run_differences(saved, accepting) == [] and run_differences(saved, accepting, OUTCOME_NEUTRAL) == []


# ---- a real chain ------------------------------------------------------------------------------------------------
TINY = tiny_digits()
# Two epochs of TCL on 96 images are too few for a healthy classifier (its verdict: collapsed), but enough for
# the chain's mechanics, so TCL+ is told to accept it.
PLUS = ["method=tcl_plus", "train.epochs=2", "plus.start_correction=1", "plus.ema=0.5", "optim.lr=0.05",
        "init.accept_failed=true"]
COMPARED = ("test_acc", "knn_acc", "noise_auc", "label_acc", "clean_ratio_est", "loss", "noise_recall")


def _job(trainer: Trainer) -> dict:
    """What ``train.py`` does, keeping the trainer at hand for its labels and teacher."""
    summary = trainer.train()
    publish_run(trainer.result(summary))
    return summary


def make_chain(tcl_dir: Path, plus_dir: Path, seed: int = 0) -> SimpleNamespace:
    """A two-epoch TCL run, then TCL+ from it (also run over seeds by bench/outcome_margins.py)."""
    tcl = _job(Trainer(load_config(None, [*TINY, "train.epochs=2", "optim.warmup_epochs=1", f"seed={seed}",
                                          f"output_dir={tcl_dir}"])))
    # Two epochs of TCL leave its assignments near uniform: a threshold at their 80th percentile makes TCL+
    # relabel at most a fifth of the samples, so the chain exercises the relabelling. The threshold is passed
    # exactly: rounded, it fell below many near-equal maxima and relabelled 87 % of the samples at seed 3.
    top = safetensors.torch.load_file(str(newest_intact(tcl_dir) / RUN_STATE_TENSORS))["assignments"].max(dim=1)
    cfg = [*TINY, *PLUS, f"plus.threshold={float(torch.quantile(top.values, 0.8))!r}", f"init.from={tcl_dir}",
           f"seed={seed}"]
    trainer = Trainer(load_config(None, [*cfg, f"output_dir={plus_dir}"]))
    plus = _job(trainer)
    return SimpleNamespace(tcl=tcl, tcl_dir=tcl_dir, plus=plus, plus_dir=plus_dir, trainer=trainer, cfg=cfg)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return make_chain(tmp_path_factory.mktemp("tcl"), tmp_path_factory.mktemp("plus"))


@pytest.mark.slow
def test_chain_relabels_from_the_tcl_run_and_label_accuracy_does_not_fall(chain):
    t = chain.trainer
    given, clean = t.given_labels.cpu(), torch.as_tensor(t.clean_labels)
    assignments = safetensors.torch.load_file(str(newest_intact(chain.tcl_dir) / RUN_STATE_TENSORS))["assignments"]
    top, cluster = assignments.max(dim=1)
    expected = torch.where(top > t.cfg.plus.threshold, cluster, given)
    assert torch.equal(t.train_labels.cpu(), expected)
    assert 0 < int((expected != given).sum()) < len(given) // 2
    assert chain.plus["relabel_acc"] == pytest.approx(float((expected == clean).float().mean()))
    assert chain.plus["relabel_acc"] >= chain.tcl["label_acc"]
    assert chain.plus["epochs_completed"] == 2 and chain.plus["steps"] == 2 * 96 // 16
    assert set(chain.plus) >= {"test_acc", "knn_acc", "noise_auc", "loss", "loss_cls"} and "loss_con" not in chain.plus


@pytest.mark.slow
def test_tcl_plus_label_acc_scores_the_network_and_the_report_shows_the_labels_it_trained_on(chain):
    # label_acc means the network's training-set predictions for every method; TCL+'s relabelled labels are
    # scored apart (relabel_acc), and label_issues.csv shows them beside the given ones.
    t = chain.trainer
    clean = t.clean_labels
    network = t.em.probs.argmax(dim=1).cpu().numpy()
    assert chain.plus["label_acc"] == pytest.approx(float((network == clean).mean()))
    assert chain.plus["relabel_acc"] != pytest.approx(chain.plus["label_acc"])  # the two measures differ here
    issues = pd.read_csv(chain.plus_dir / "label_issues.csv")
    rows = issues["index"].to_numpy()
    assert (issues["trained_label"].to_numpy() == t.train_labels.cpu().numpy()[rows]).all()
    assert (issues["given_label"].to_numpy() == t.given_labels.cpu().numpy()[rows]).all()
    assert "relabel_acc" not in chain.tcl and "trained_label" not in pd.read_csv(chain.tcl_dir / "label_issues.csv")


@pytest.mark.slow
def test_chain_outputs_publish_the_teacher(chain):
    out, teacher = chain.plus_dir, chain.trainer.method.teacher
    assert json.loads((out / "summary.json").read_text())["label_acc"] == chain.plus["label_acc"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    # hub/: the full state is the teacher's, with the TCL run's prototypes; the timm classifier gives its logits.
    state = load_tcl_pretrained(out / "hub")
    for key, value in teacher.state_dict().items():
        assert torch.equal(state.model.state_dict()[key], value.cpu()), key
    tcl_prototypes = load_tcl_pretrained(chain.tcl_dir / "hub").prototypes
    assert torch.equal(state.prototypes, tcl_prototypes)
    classifier = timm.create_model(f"local-dir:{out / 'hub'}", pretrained=True).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(classifier(x), teacher.eval()(x, project=False)[1], atol=1e-5)
    report = pd.read_csv(out / "label_issues.csv")
    given = chain.trainer.given_labels.cpu().numpy()
    assert sorted(report["index"]) == list(range(96))
    assert np.array_equal(report["given_label"].to_numpy(), given[report["index"].to_numpy()])


@pytest.mark.slow
def test_a_tcl_plus_reexport_shows_the_labels_it_trained_on(chain, tmp_path):
    # The relabelled labels travel in TCL+'s checkpoint: a re-export (no trainer) publishes the report the run did.
    import shutil

    from tcl_hf.export import reexport

    out = tmp_path / "plus"
    shutil.copytree(chain.plus_dir, out)
    shutil.rmtree(out / "hub")
    reexport(out)
    again, first = pd.read_csv(out / "label_issues.csv"), pd.read_csv(chain.plus_dir / "label_issues.csv")
    assert (again["trained_label"] != again["given_label"]).any()
    pd.testing.assert_frame_equal(again, first)


@pytest.mark.slow
def test_chain_refuses_a_run_on_other_data(chain, tmp_path, capsys):
    code = cli.main([*TINY, *PLUS, "data.limit=64", f"init.from={chain.tcl_dir}", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: init.from") and "data.limit=96 there, 64 here" in err


@pytest.mark.slow
def test_tcl_plus_stopped_and_resumed_matches_uninterrupted(chain, tmp_path, monkeypatch):
    real_add = LossMeter.add

    def signal_during_step_8(self, terms, step):  # 6 steps per epoch: step 8 is in the corrected epoch 2
        real_add(self, terms, step)
        if step == 8:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = [*chain.cfg, f"output_dir={tmp_path}"]
    monkeypatch.setattr(LossMeter, "add", signal_during_step_8)
    with pytest.raises(StopRequested):
        Trainer(load_config(None, cfg)).train()
    monkeypatch.undo()
    resumed = Trainer(load_config(None, [*cfg, "train.resume=true"])).train()
    for key in COMPARED:
        assert resumed[key] == pytest.approx(chain.plus[key], abs=1e-6), key


@pytest.mark.slow
def test_nothing_published_names_a_local_path(chain, tmp_path, tmp_path_factory):
    from fixtures import files_naming, machine_paths

    from tcl_hf import repair

    repaired = tmp_path / "repaired"
    assert repair.main([str(chain.plus_dir), "--out", str(repaired)]) == 0
    # The test's folders hold both runs (TCL+'s init.from is the TCL run's folder) and the repaired dataset.
    local = [str(tmp_path_factory.getbasetemp()), str(chain.tcl_dir), str(chain.plus_dir), *machine_paths()]
    for folder in (chain.tcl_dir / "hub", chain.plus_dir / "hub", repaired):
        assert files_naming(folder, *local) == [], folder


def _job_in_each_process(args: list[str]) -> None:
    from tcl_hf.job import run_job

    run_job(load_config(None, args))


@pytest.mark.slow
def test_tcl_plus_job_ends_cleanly_in_two_processes(chain, tmp_path):
    # The main process alone publishes: nothing it reads then may wait for the other process (the teacher's
    # statistics are made one at each epoch's end). A fresh interpreter: forking pytest's would copy its thread pool.
    out = tmp_path / "plus"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__, json.dumps([*chain.cfg, "train.epochs=1", f"output_dir={out}"])],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["num_processes"] == 2 and (out / "hub").is_dir()


if __name__ == "__main__":
    from accelerate import debug_launcher

    debug_launcher(_job_in_each_process, args=(json.loads(sys.argv[1]),), num_processes=2)
