"""Publish a run: the Hub folder, the label-issue report and the plots, and optionally the push.

``publish_run`` is what the trainer calls at the end of a run (main process only); the command line
re-exports a finished run from its newest checkpoint:

    python -m tcl_hf.export RUN_DIR [--push REPO_ID] [--private] [--revision BRANCH]
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import to_dict
from .errors import TCLError
from .hub import export_hub_folder, push_folder
from .report import label_issues, make_plots, write_label_issues

HUB_DIR = "hub"


@dataclass
class Published:
    hub_dir: Path
    label_issues: Path
    plots: list[Path]
    url: str | None = None  # commit URL when pushed


def publish_run(trainer, metrics: dict, *, repo_id: str | None = None, private: bool = False,
                revision: str | None = None) -> Published:
    """Write ``<output_dir>/hub``, ``label_issues.csv`` and ``plots/`` for a trained ``Trainer``, then push.

    Call on the main process after the last EM step (``trainer.detect_noise()``), which supplies the
    confidences, prototypes and the predictions used here. A failed push raises TCLError after every
    local output is written.
    """
    if trainer._train_bank is None:
        raise TCLError("publish_run needs the predictions of an EM step; call trainer.detect_noise() first")
    output_dir = trainer.output_dir
    data = trainer.data
    model = trainer.accelerator.unwrap_model(trainer.model)
    given = trainer.given_labels.cpu().numpy()
    predicted = trainer._train_bank[1].argmax(dim=1).cpu().numpy()
    clean_prob = trainer.state.confidences.cpu().numpy()
    clean = trainer.clean_labels

    hub_dir = export_hub_folder(model, trainer.state.prototypes, output_dir / HUB_DIR, run_config=to_dict(trainer.cfg),
                                metrics=metrics, label_names=data.class_names, image_size=data.image_size,
                                mean=data.mean, std=data.std, repo_id=repo_id)
    issues = write_label_issues(output_dir, label_issues(given, predicted, clean_prob, clean, data.class_names))
    plots = make_plots(output_dir, clean_prob, given, clean, data.class_names)
    url = push_folder(hub_dir, repo_id, private=private, revision=revision) if repo_id else None
    return Published(hub_dir, issues, plots, url)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tcl_hf.export",
        description="Re-export a finished tcl_hf run (Hub folder, label-issue report, plots) from its newest "
                    "checkpoint, and optionally push the Hub folder.")
    parser.add_argument("run_dir", help="the run's output_dir (holds config.yaml and checkpoints/)")
    parser.add_argument("--push", metavar="REPO_ID", help="push <run_dir>/hub to this Hub model repo")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", metavar="BRANCH", help="push to this branch (created if missing)")
    return parser


def export_finished_run(run_dir: str | Path, *, repo_id: str | None = None, private: bool = False,
                        revision: str | None = None) -> Published:
    """Rebuild the trainer of ``run_dir`` from its config and newest checkpoint, then ``publish_run``."""
    from .config import load_config
    from .trainer import Trainer

    run_dir = Path(run_dir)
    recipe = run_dir / "config.yaml"
    if not recipe.is_file():
        raise TCLError(f"{recipe} does not exist; RUN_DIR must be the output_dir of a tcl_hf run")
    cfg = load_config(recipe, ["train.resume=true", "log.with=null", "log.progress=false", f"output_dir={run_dir}"])
    trainer = Trainer(cfg)
    if not trainer.resume():
        raise TCLError(f"{run_dir / 'checkpoints'} holds no complete checkpoint; nothing to export")
    # Recomputed, so the card describes exactly the checkpoint being exported.
    em = trainer.detect_noise()
    metrics = {**_summary(run_dir), **trainer.evaluate(), **em, "epochs_completed": trainer.state.epoch}
    return publish_run(trainer, metrics, repo_id=repo_id, private=private, revision=revision)


def _summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        published = export_finished_run(args.run_dir, repo_id=args.push, private=args.private,
                                        revision=args.revision)
    except TCLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {published.hub_dir}, {published.label_issues}, {len(published.plots)} plot(s)"
          + (f"; pushed {published.url}" if published.url else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
