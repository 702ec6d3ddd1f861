"""The full TCL state a run publishes beside its timm classifier, for continued training: the whole TCL module
(encoder, projector, classifier) with the class prototypes in ``tcl_model.safetensors``, and the config that
rebuilds them in ``tcl_config.json``. This module alone writes and reads that format; ``tcl_hf.hub`` fetches
the two files of a Hub repo.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import safetensors.torch
import torch

from .errors import TCLError
from .models import TCLModel

TCL_WEIGHTS = "tcl_model.safetensors"   # the whole TCL module plus prototypes

TCL_CONFIG = "tcl_config.json"

PROTOTYPES_KEY = "prototypes"           # no dot, so it cannot clash with a module's state-dict key


class TCLPretrained(NamedTuple):
    model: TCLModel
    prototypes: torch.Tensor
    config: dict


def save_tcl_state(model: TCLModel, prototypes: torch.Tensor, out_dir: str | Path, run_config: dict,
                   class_names: list[str] | None = None) -> Path:
    """Write the whole TCL module and its prototypes [C, d] (safetensors) with the config that rebuilds them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mdl = run_config["model"]
    model_args = {"backbone": mdl["backbone"], "num_classes": model.num_classes,
                  "proj_dim": model.projector[3].out_features, "dropout": model.classifier[3].p}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors[PROTOTYPES_KEY] = prototypes.detach().cpu().float().contiguous()
    safetensors.torch.save_file(tensors, out_dir / TCL_WEIGHTS, metadata={"format": "pt"})
    config = {"model_args": model_args, "class_names": class_names, "run_config": run_config}
    (out_dir / TCL_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def read_tcl_files(weights_path: Path, config_path: Path) -> TCLPretrained:
    """(TCLModel, prototypes, config) from the two files ``save_tcl_state`` writes, wherever they were put."""
    config = json.loads(config_path.read_text())
    model = TCLModel(**config["model_args"], pretrained=False)
    tensors = safetensors.torch.load_file(str(weights_path))
    prototypes = tensors.pop(PROTOTYPES_KEY)
    model.load_state_dict(tensors)
    return TCLPretrained(model, prototypes, config)


def load_tcl_state(folder: str | Path) -> TCLPretrained:
    """(TCLModel, prototypes, config) from a folder written by ``save_tcl_state`` (a run's hub/)."""
    folder = Path(folder)
    paths = folder / TCL_WEIGHTS, folder / TCL_CONFIG
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise TCLError(f"{folder}: no TCL state here (missing {', '.join(missing)}); "
                       "point at a run's hub/ folder or a Hub repo made by tcl_hf")
    return read_tcl_files(*paths)
