"""Two real CPU processes (gloo): the EM step must see every training sample exactly once and give
the same confidences as one process, and a training step must keep the replicas identical.

The processes come from ``accelerate.debug_launcher`` run inside a fresh interpreter (this file's
``__main__``): forking the pytest process itself would copy an OpenMP pool that deadlocks the children,
and an accelerate state that makes both children believe they are rank 0 of 1.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Two launches whose training set does not split evenly over 2 processes x batches, one that does,
# and one with the default sync_bn=true: (name, data.limit, sync_bn, training steps).
LAUNCHES = [("even", 96, False, 0), ("uneven", 101, False, 1), ("syncbn", 101, True, 0)]


def tiny_overrides(output_dir, limit: int, sync_bn: bool, max_steps: int | None = None) -> list[str]:
    overrides = ["data.format=digits", f"data.limit={limit}", "data.image_size=16",
                 "model.backbone=preact_resnet_mini", "model.proj_dim=16", "train.batch_size=8",
                 "noise.type=sym", "noise.rate=0.4", "log.progress=false", f"train.sync_bn={str(sync_bn).lower()}",
                 f"output_dir={output_dir}", "seed=0"]
    return overrides + ([f"train.max_steps={max_steps}"] if max_steps else [])


def build_trainer(output_dir, limit: int, sync_bn: bool, weights: Path, max_steps: int | None = None):
    from tcl_hf.config import load_config
    from tcl_hf.trainer import Trainer

    trainer = Trainer(load_config(None, tiny_overrides(output_dir, limit, sync_bn, max_steps)))
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


def launch_all(weights: str, root: str) -> None:
    """Each launch in turn; a failure is recorded for its own test instead of stopping the others."""
    from accelerate import debug_launcher

    import tcl_hf.trainer  # noqa: F401  (imported once here, the forked children share it)

    for name, limit, sync_bn, steps in LAUNCHES:
        out = Path(root) / name
        out.mkdir(parents=True, exist_ok=True)
        try:
            debug_launcher(worker, args=(weights, str(out), limit, sync_bn, steps), num_processes=2)
            (out / "status.txt").write_text("ok")
        except Exception as exc:  # the child's error, reported by the test that needs this launch
            lines = str(exc).strip().splitlines()
            (out / "status.txt").write_text(lines[-1] if lines else type(exc).__name__)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Saves one set of weights, runs every launch in a fresh interpreter, returns the folder."""
    from accelerate.state import AcceleratorState, GradientState

    from tcl_hf.models import TCLModel

    root = tmp_path_factory.mktemp("dist")
    torch.manual_seed(0)
    model = TCLModel("preact_resnet_mini", num_classes=10, proj_dim=16)
    # Non-trivial BN statistics so that eval-mode outputs depend on every buffer being loaded.
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    weights = root / "weights.pt"
    torch.save(model.state_dict(), weights)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, str(weights), str(root)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return root


def single_process_confidences(root: Path, limit: int) -> torch.Tensor:
    trainer = build_trainer(root / f"single_{limit}", limit, False, root / "weights.pt")
    assert trainer.accelerator.num_processes == 1
    trainer.detect_noise()
    return trainer.state.confidences


def status(root: Path, name: str) -> str:
    return (root / name / "status.txt").read_text()


@pytest.mark.parametrize("name, limit", [("even", 96), ("uneven", 101)])
def test_two_processes_detect_like_one(launched, name, limit):
    # A failing launch means a rank crashed, e.g. the trainer's own "saw N samples 0 times" check.
    assert status(launched, name) == "ok"
    single = single_process_confidences(launched, limit)
    assert single.shape == (limit,)
    # Guards the comparison: confidences that are all alike would match trivially.
    assert single.std() > 0.01
    for rank in (0, 1):
        got = torch.load(launched / name / f"confidences_{rank}.pt")
        assert got.shape == (limit,)
        assert torch.allclose(got, single, atol=1e-5), (rank, (got - single).abs().max())


def test_training_step_keeps_replicas_identical(launched):
    assert status(launched, "uneven") == "ok"
    p0 = torch.load(launched / "uneven" / "params_0.pt")
    p1 = torch.load(launched / "uneven" / "params_1.pt")
    assert torch.isfinite(p0).all()
    assert torch.allclose(p0, p1, atol=1e-6)
    before = torch.cat([p.flatten() for p in _weights_params(launched)])
    assert not torch.allclose(p0, before), "the step changed nothing"


def _weights_params(root: Path):
    from tcl_hf.models import TCLModel

    model = TCLModel("preact_resnet_mini", num_classes=10, proj_dim=16)
    model.load_state_dict(torch.load(root / "weights.pt"))
    return [p.detach() for p in model.parameters()]


def test_default_sync_bn_works_on_cpu_processes(launched):
    # sync_bn defaults to true (the GPU reference recipe); on CPU processes it must not crash.
    assert status(launched, "syncbn") == "ok"


if __name__ == "__main__":
    launch_all(sys.argv[1], sys.argv[2])
