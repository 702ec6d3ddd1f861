"""Shared test setup: offline hub and tracker, paths to the shared data, and a clean accelerate state."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before any test module imports datasets/huggingface_hub/wandb: a missing hub id must fail at
# once instead of retrying over a network that tests must never use.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"

REPO_ROOT = Path(__file__).resolve().parents[1]
# The repository lives next to shared/ on every machine that runs these tests.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


def shared_path(*parts: str) -> Path:
    """A path under shared/data, or a clean skip when this machine does not have it."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path


@pytest.fixture
def cifar10_dir() -> Path:
    return shared_path("cifar10")


@pytest.fixture
def tcl_noise_dir() -> Path:
    return shared_path("tcl-noise")


@pytest.fixture
def cifar_n_dir() -> Path:
    return shared_path("cifar-n")


def reset_accelerate() -> None:
    """Forget any accelerate process state left by an earlier run, so a Trainer starts as in a new process."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def fresh_accelerate():
    reset_accelerate()


@pytest.fixture
def on_disk(tmp_path):
    """A parquet split loaded through datasets, so it has cache files like any real dataset."""
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (10 + i, 14, 3), dtype=np.uint8)) for i in range(6)]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"img": pictures, "label": list(range(6))}, features=features).to_parquet(
        str(tmp_path / "train.parquet"))

    def load():
        return datasets.load_dataset("parquet", data_files={"train": str(tmp_path / "train.parquet")},
                                     cache_dir=str(tmp_path / "cache"))["train"]
    return load
