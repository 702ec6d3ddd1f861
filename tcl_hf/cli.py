"""Command line: ``train.py RECIPE.yaml [key=value ...]`` (also under ``accelerate launch``)."""
from __future__ import annotations

import os
import shlex
import sys

from .command import run_command
from .config import load_config

USAGE = "usage: train.py RECIPE.yaml [key=value ...]   (e.g. train.epochs=10 model.backbone=resnet18)"


def resume_command(argv: list[str]) -> str:
    """The command that continues this run: the same arguments plus train.resume=true."""
    args = [a for a in argv if not a.startswith(("train.resume=", "overwrite="))] + ["train.resume=true"]
    return shlex.join([os.path.basename(sys.argv[0]) or "train.py", *args])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    recipe, overrides = argv[0], argv[1:]
    if "=" in recipe:
        recipe, overrides = None, argv

    def train() -> None:
        cfg = load_config(recipe, overrides)
        from .job import run_job  # after validation: a typo is reported before the heavy imports

        run_job(cfg)

    return run_command(train, again=f"python {resume_command(argv)}", intact="checkpoints already written are intact")
