"""Two real CPU processes (gloo): the EM step must see every training sample exactly once and give
the same confidences as one process, and a training step must keep the replicas identical.

The processes come from ``accelerate.debug_launcher`` run inside a fresh interpreter (this file's
``__main__``): forking the pytest process itself would copy an OpenMP pool that deadlocks the children,
and an accelerate state that makes both children believe they are rank 0 of 1.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures import tiny_digits

# Every test here trains or launches processes: left out of the quick inner loop (pytest -m "not slow").
pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

# (name, data.limit, sync_bn, training steps): 96 samples split evenly over 2 processes x eval batches
# of 16, 101 do not (the sampler pads with repeats that must be dropped); the last keeps sync_bn's default.
LAUNCHES = [("even", 96, False, 0), ("uneven", 101, False, 1), ("syncbn", 101, True, 0)]


def tiny_overrides(output_dir, limit: int, sync_bn: bool, max_steps: int | None = None) -> list[str]:
    overrides = ["data.format=digits", f"data.limit={limit}", "data.image_size=16",
                 "model.backbone=preact_resnet_mini", "model.proj_dim=16", "train.batch_size=8",
                 "noise.type=sym", "noise.rate=0.4", "log.progress=false", f"train.sync_bn={str(sync_bn).lower()}",
                 f"output_dir={output_dir}", "seed=0"]
    return overrides + ([f"train.max_steps={max_steps}"] if max_steps else [])


def build_trainer(output_dir, limit: int, sync_bn: bool, weights: Path | None, max_steps: int | None = None):
    from tcl_hf.config import load_config
    from tcl_hf.trainer import Trainer

    trainer = Trainer(load_config(None, tiny_overrides(output_dir, limit, sync_bn, max_steps)))
    if weights is not None:
        trainer.accelerator.unwrap_model(trainer.model).load_state_dict(torch.load(weights))
    return trainer


def worker(weights: str, out: str, limit: int, sync_bn: bool, train_steps: int) -> None:
    """Runs in each launched process; every rank writes what it ended up with."""
    out_dir = Path(out)
    trainer = build_trainer(out_dir / "run", limit, sync_bn, Path(weights), max_steps=train_steps or None)
    acc = trainer.accelerator
    assert acc.num_processes == 2
    trainer.detect_noise()
    torch.save(trainer.state.confidences, out_dir / f"confidences_{acc.process_index}.pt")
    if train_steps:
        trainer.train_epoch(1)
        params = torch.cat([p.detach().flatten() for p in acc.unwrap_model(trainer.model).parameters()])
        torch.save(params, out_dir / f"params_{acc.process_index}.pt")


# The contrastive-gradient check: a total batch of GLOBAL_BATCH fixed images, LAMBDA_CON != 1.
GLOBAL_BATCH, LAMBDA_CON = 16, 0.25


def fixed_views() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 'views' of GLOBAL_BATCH images, the same on every process and in the single-process run."""
    generator = torch.Generator().manual_seed(123)
    return (torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=generator),
            torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=generator))


def contrastive_gradients(trainer, rows: slice) -> torch.Tensor:
    """Parameter gradients of one backward of the TCL loss with only L_con weighted (LAMBDA_CON), on
    this process's `rows` of the fixed views; the model in eval mode, so batch-norm statistics do not
    depend on how the batch is split and only the gather can make the processes differ."""
    from tcl_hf.objective import TCLWeights, tcl_loss

    acc = trainer.accelerator
    x_q, x_k = (x[rows].to(acc.device) for x in fixed_views())
    b = x_q.shape[0]
    trainer.model.eval()
    z, logits = trainer.model(torch.cat([x_q, x_k]))
    z_q, z_k = z.split([b, b])
    logits_q, logits_k = logits.split([b, b])
    labels = torch.arange(b, device=acc.device) % trainer.num_classes
    from tcl_hf.distributed import gather_with_grad

    gather = gather_with_grad if acc.num_processes > 1 else None
    terms = tcl_loss(z_q, z_k, z_q.repeat(3, 1), logits_q, logits_k, logits_q.repeat(3, 1), labels=labels,
                     confidences=torch.ones(b, device=acc.device),
                     prototypes=torch.eye(trainer.num_classes, z.shape[1], device=acc.device), lam=1.0,
                     perm=torch.arange(3 * b, device=acc.device), scale1=1.0, scale2=1.0, warmup=False,
                     temperature=0.25, weights=TCLWeights(con=LAMBDA_CON, cls=0.0, align=0.0, ent=0.0, ne=0.0),
                     gather=gather)
    acc.backward(terms["loss"])
    return torch.cat([p.grad.detach().flatten() for p in acc.unwrap_model(trainer.model).parameters()])


def contrastive_worker(weights: str, out: str) -> None:
    trainer = build_trainer(Path(out) / "run", 96, False, Path(weights))
    acc = trainer.accelerator
    per_process = GLOBAL_BATCH // acc.num_processes
    rows = slice(acc.process_index * per_process, (acc.process_index + 1) * per_process)
    torch.save(contrastive_gradients(trainer, rows), Path(out) / f"grads_{acc.process_index}.pt")


def launch(fn, args: tuple, out: Path) -> None:
    """One two-process launch; a failure is recorded for its own test instead of stopping the others."""
    from accelerate import debug_launcher

    out.mkdir(parents=True, exist_ok=True)
    try:
        debug_launcher(fn, args=args, num_processes=2)
        (out / "status.txt").write_text("ok")
    except Exception as exc:  # the child's error, reported by the test that needs this launch
        lines = str(exc).strip().splitlines()
        (out / "status.txt").write_text(lines[-1] if lines else type(exc).__name__)


def launch_all(weights: str, root: str) -> None:
    import tcl_hf.trainer  # noqa: F401  (imported once here, the forked children share it)

    for name, limit, sync_bn, steps in LAUNCHES:
        out = Path(root) / name
        launch(worker, (weights, str(out), limit, sync_bn, steps), out)
    launch(contrastive_worker, (weights, str(Path(root) / "contrastive")), Path(root) / "contrastive")


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def save_calibrated_weights(root: Path) -> Path:
    """Weights of a fresh model whose BN statistics are those of the training images: with the
    init statistics every image projects to about the same z, the assignments are uniform and the
    confidences would only fit float rounding noise."""
    trainer = build_trainer(root / "calibrate", 101, sync_bn=False, weights=None)
    model = trainer.accelerator.unwrap_model(trainer.model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the one pass below
    model.train()
    with torch.no_grad():
        model(trainer.feed.test_view.test(trainer.data.train.images))
    for m in norms:
        m.momentum = 0.1
    weights = root / "weights.pt"
    torch.save(model.state_dict(), weights)
    return weights


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Saves one set of weights, runs every launch in a fresh interpreter, returns the folder."""
    root = tmp_path_factory.mktemp("dist")
    reset_accelerate()
    weights = save_calibrated_weights(root)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__, str(weights), str(root)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reset_accelerate()
    return root


def single_process_detection(root: Path, limit: int):
    trainer = build_trainer(root / f"single_{limit}", limit, False, root / "weights.pt")
    assert trainer.accelerator.num_processes == 1
    trainer.detect_noise()
    return trainer


def status(root: Path, name: str) -> str:
    return (root / name / "status.txt").read_text()


@pytest.mark.parametrize("name, limit", [("even", 96), ("uneven", 101)])
def test_two_processes_detect_like_one(launched, name, limit):
    # A failing launch means a rank crashed, e.g. the trainer's own "saw N samples 0 times" check.
    assert status(launched, name) == "ok"
    trainer = single_process_detection(launched, limit)
    single = trainer.state.confidences
    assert single.shape == (limit,)
    # Guards the comparison: scores spread well beyond float rounding, confidences not all alike.
    scores = trainer.state.assignments.gather(1, trainer.given_labels.cpu().view(-1, 1))
    assert scores.max() - scores.min() > 0.1
    assert single.std() > 0.1
    for rank in (0, 1):
        got = torch.load(launched / name / f"confidences_{rank}.pt")
        assert got.shape == (limit,)
        assert torch.allclose(got, single, atol=1e-5), (rank, (got - single).abs().max())


def saved_parameters(root: Path) -> torch.Tensor:
    """The launched runs' starting parameters, flattened in model.parameters() order."""
    from tcl_hf.models import TCLModel

    model = TCLModel("preact_resnet_mini", num_classes=10, proj_dim=16)
    model.load_state_dict(torch.load(root / "weights.pt"))
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_training_step_keeps_replicas_identical(launched):
    assert status(launched, "uneven") == "ok"
    p0 = torch.load(launched / "uneven" / "params_0.pt")
    p1 = torch.load(launched / "uneven" / "params_1.pt")
    assert torch.isfinite(p0).all()
    assert torch.allclose(p0, p1, atol=1e-6)
    assert not torch.allclose(p0, saved_parameters(launched)), "the step changed nothing"


def test_contrastive_gradient_is_exact_across_processes(launched):
    """The gather is exact: two processes with half the batch each give the single-process gradients
    of the whole batch, here with lambda_con = 0.25 (the weight the paper recipes use)."""
    assert status(launched, "contrastive") == "ok"
    trainer = build_trainer(launched / "single_contrastive", 96, False, launched / "weights.pt")
    assert trainer.accelerator.num_processes == 1
    single = contrastive_gradients(trainer, slice(0, GLOBAL_BATCH))
    assert single.abs().max() > 1e-4, "the check needs a non-zero gradient"
    for rank in (0, 1):
        got = torch.load(launched / "contrastive" / f"grads_{rank}.pt")
        assert torch.allclose(got, single, rtol=1e-4, atol=1e-7), (rank, (got - single).abs().max())


def test_default_sync_bn_works_on_cpu_processes(launched):
    # sync_bn defaults to true (the GPU reference recipe); on CPU processes it must not crash.
    assert status(launched, "syncbn") == "ok"



# What each launcher leaves in the environment (read from accelerate's launch code and checked by
# hand): torchrun sets WORLD_SIZE; every `accelerate launch` sets ACCELERATE_DYNAMO_BACKEND, and its one-process
# launcher (`--cpu`) sets MASTER_PORT only when asked for --num_processes > 1.
ONE_PROCESS_LAUNCHER_OF_2 = {"ACCELERATE_USE_CPU": "True", "ACCELERATE_DYNAMO_BACKEND": "NO",
                             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
LAUNCH_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", *ONE_PROCESS_LAUNCHER_OF_2)


@pytest.mark.parametrize("env, seen, refused", [
    ({"WORLD_SIZE": "2"}, 1, True), ({"WORLD_SIZE": "2"}, 2, False), ({"WORLD_SIZE": "4"}, 2, True),
    ({"WORLD_SIZE": "1"}, 1, False), ({"WORLD_SIZE": ""}, 1, False), ({}, 1, False),
    (ONE_PROCESS_LAUNCHER_OF_2, 1, True),
    ({k: v for k, v in ONE_PROCESS_LAUNCHER_OF_2.items() if not k.startswith("MASTER")}, 1, False),  # --cpu alone
    ({"MASTER_PORT": "29500"}, 1, False),                    # a stray port in a plain `python train.py`
    ({**ONE_PROCESS_LAUNCHER_OF_2, "WORLD_SIZE": "2"}, 2, False)])  # the README's launch
def test_a_launch_of_fewer_processes_than_asked_is_refused_in_one_line(env, seen, refused, monkeypatch):
    from types import SimpleNamespace

    from tcl_hf.distributed import CPU_LAUNCH, check_launch
    from tcl_hf.errors import TCLError

    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if refused:
        with pytest.raises(TCLError, match=re.escape(CPU_LAUNCH.split("{")[0])) as caught:
            check_launch(SimpleNamespace(num_processes=seen))
        assert "\n" not in str(caught.value)
    else:
        check_launch(SimpleNamespace(num_processes=seen))


def _accelerate_launch(command: str, tmp_path: Path, name: str) -> tuple[subprocess.CompletedProcess, Path]:
    """``command`` (``VAR=value ... accelerate launch ...``) on train.py with the tests' tiny config."""
    *assignments, program = shlex.split(command.split(" launch ")[0])
    env = {**os.environ, **dict(a.split("=", 1) for a in assignments), "HF_HUB_OFFLINE": "1",
           "WANDB_MODE": "disabled"}
    out = tmp_path / name
    args = [str(Path(sys.executable).parent / program), "launch", *shlex.split(command.split(" launch ", 1)[1]),
            "train.py", *tiny_digits("train.epochs=1", f"output_dir={out}")]
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    return proc, out


def test_the_readme_cpu_launch_runs_two_processes(tmp_path):
    from tcl_hf.distributed import CPU_LAUNCH

    command = CPU_LAUNCH.format(n=2)
    assert command in (REPO / "README.md").read_text()
    proc, out = _accelerate_launch(command, tmp_path, "run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["num_processes"] == 2


def test_accelerate_cpu_launch_of_two_stops_in_one_line(tmp_path):
    # `--cpu --num_processes 2` takes accelerate's one-process launcher: it used to train one process, exit 0.
    from tcl_hf.distributed import CPU_LAUNCH

    proc, out = _accelerate_launch("accelerate launch --cpu --num_processes 2", tmp_path, "run")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    # accelerate launch exits 1 when its child fails (train.py itself exits 2)
    assert proc.returncode != 0 and len(errors) == 1 and CPU_LAUNCH.format(n="N") in errors[0]
    assert not (out / "summary.json").exists()


if __name__ == "__main__":
    launch_all(sys.argv[1], sys.argv[2])
