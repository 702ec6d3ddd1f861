"""Command line: ``train.py RECIPE.yaml [key=value ...]`` (also under ``accelerate launch``)."""
from __future__ import annotations

import os
import sys

from .errors import TCLError

USAGE = "usage: train.py RECIPE.yaml [key=value ...]   (e.g. train.epochs=10 model.backbone=resnet18)"


def _is_main_process() -> bool:
    # Before accelerate starts, the launcher's RANK tells which process should speak.
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    recipe, overrides = argv[0], argv[1:]
    if "=" in recipe:
        recipe, overrides = None, argv
    try:
        from .config import load_config
        from .trainer import Trainer

        cfg = load_config(recipe, overrides)
        Trainer(cfg).train()
    except TCLError as exc:
        if _is_main_process():
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
