"""Command line: ``train.py RECIPE.yaml [key=value ...]`` (also under ``accelerate launch``)."""
from __future__ import annotations

import os
import shlex
import sys

from .errors import StopRequested, TCLError, one_line

USAGE = "usage: train.py RECIPE.yaml [key=value ...]   (e.g. train.epochs=10 model.backbone=resnet18)"


def _is_main_process() -> bool:
    # Before accelerate starts, the launcher's RANK tells which process should speak.
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


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
    try:
        from .config import load_config

        cfg = load_config(recipe, overrides)
        from .job import run_job  # after validation: a typo is reported before the heavy imports

        run_job(cfg)
    except TCLError as exc:
        if _is_main_process():
            print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except StopRequested as stop:
        if _is_main_process():
            print(f"stopped; checkpoint saved to {stop.checkpoint}. Resume with: python {resume_command(argv)}",
                  file=sys.stderr)
        return 0
    except OSError as exc:
        # The machine's side (disk full, permissions) rather than ours: say what and where, in one line.
        if _is_main_process():
            where = f" ({exc.filename})" if exc.filename else ""
            print(f"error: {exc.strerror or exc}{where}; checkpoints already written are intact", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if _is_main_process():
            print(f"interrupted; resume from the last checkpoint with: python {resume_command(argv)}", file=sys.stderr)
        return 130
    return 0
