"""Tracking goes through accelerate's wandb tracker and works offline (WANDB_MODE=offline)."""
import pytest
from fixtures import tiny_digits
from tcl_hf.config import load_config
from tcl_hf.job import run_job

# Every test here trains or launches processes: left out of the quick inner loop (pytest -m "not slow").
pytestmark = pytest.mark.slow


def test_wandb_offline_run_records_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    run_job(load_config(None, tiny_digits("data.limit=64", "noise.rate=0.3", "eval.knn_k=5", "train.epochs=1",
                                             "log.with=wandb", f"output_dir={out}")))
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    # The run log stores history records as protobuf, whose keys are plain bytes.
    log = runs[0].read_bytes()
    for key in (b"test_acc", b"noise_auc", b"loss_con", b"knn_acc"):
        assert key in log, key
    # The plots went to the tracker too.
    plots = {p.name.split("_")[0] for p in (runs[0].parent / "files" / "media" / "images" / "plots").glob("*.png")}
    assert plots == {"clean", "curves"}
