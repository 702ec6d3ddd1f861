"""Command line: ``train.py RECIPE.yaml [key=value ...] [--dry-run]`` (also under ``accelerate launch``).

``--help`` is written from the config dataclasses (every key, its type, default and help) and the shipped
recipes, and imports nothing heavy: it answers at once.
"""
from __future__ import annotations

import os
import shlex
import sys
import textwrap
from pathlib import Path

from .command import run_command
from .config import Config, load_config
from .recipe import key_docs

USAGE = ("usage: python train.py RECIPE.yaml [key=value ...] [--dry-run]   (e.g. train.epochs=10 "
         "model.backbone=resnet18)")
DRY_RUN = "--dry-run"
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
WIDTH = 110


def _shown(value) -> str:
    """A default as it is written on the command line."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _recipe_lines(folder: Path) -> list[str]:
    """Each shipped recipe with the first line of its opening comment."""
    lines = []
    for path in sorted(folder.glob("*.yaml")):
        first = path.read_text().splitlines()[:1]
        note = first[0].lstrip("#").strip() if first and first[0].startswith("#") else ""
        lines.append(f"  recipes/{path.name:<26} {note}".rstrip())
    return lines


def _key_lines() -> list[str]:
    """Every key by section (the top-level keys first), with its default, allowed values and help."""
    lines, section = [], None
    for key, kind, default, help_text in key_docs(Config):
        here = key.split(".")[0] if "." in key else "run"
        if here != section:
            section = here
            lines.append(f"{section}:")
        lines.append(f"  {key} = {_shown(default)}   [{kind}]")
        if help_text:
            lines += textwrap.wrap(help_text, WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return lines


def help_text() -> str:
    recipes = _recipe_lines(RECIPES)
    dry_run = ("validate the config, open the data (counts, classes, one decoded sample), build the model, print "
               "the resolved config and the run's plan (lr, batch, warm-up); trains nothing, writes nothing into "
               "output_dir")
    parts = [
        USAGE,
        "       accelerate launch [its flags] train.py RECIPE.yaml [key=value ...]",
        "",
        "Train an image classifier on noisy labels with TCL. key=value arguments override the recipe's keys (the "
        "recipe is optional: every key has a default).",
        "",
        *textwrap.wrap(dry_run, WIDTH, initial_indent=f"  {DRY_RUN:<11} ", subsequent_indent=" " * 14),
        "  -h, --help  this text",
        "",
        *(["recipes:", *recipes, ""] if recipes else []),
        "keys (key = default   [allowed values]):",
        *_key_lines(),
    ]
    return "\n".join(parts)


def resume_command(argv: list[str]) -> str:
    """The command that continues this run: the same arguments plus train.resume=true."""
    args = [a for a in argv if not a.startswith(("train.resume=", "overwrite=")) and a != DRY_RUN]
    return shlex.join([os.path.basename(sys.argv[0]) or "train.py", *args, "train.resume=true"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or "-h" in argv or "--help" in argv:
        print(help_text() if argv else USAGE)
        return 0 if argv else 2
    flags = [a for a in argv if a.startswith("-")]
    unknown = [a for a in flags if a != DRY_RUN]
    if unknown:
        print(f"error: unknown option {unknown[0]}; options: {DRY_RUN}, --help\n{USAGE}", file=sys.stderr)
        return 2
    dry, args = bool(flags), [a for a in argv if a != DRY_RUN]
    recipe, overrides = (None, args) if not args or "=" in args[0] else (args[0], args[1:])

    def train() -> None:
        cfg = load_config(recipe, overrides)
        if dry:
            from .dryrun import dry_run

            dry_run(cfg)
            return
        from .job import run_job  # after validation: a typo is reported before the heavy imports

        run_job(cfg)

    return run_command(train, again=f"python {resume_command(argv)}", intact="checkpoints already written are intact")
