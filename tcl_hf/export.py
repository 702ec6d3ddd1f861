"""Publish a run: the Hub folder, the label-issue report and the plots; then, optionally, the push.

``publish_run`` is what the trainer calls at the end of a run (main process only), followed by
``tcl_hf.hub.push_folder`` when a repo is named; the command line re-exports a finished run from its
newest checkpoint:

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
from .rundir import CONFIG_FILE, HUB_DIR, SUMMARY_FILE


@dataclass
class Published:
    hub_dir: Path
    label_issues: Path
    plots: list[Path]


def publish_run(trainer, metrics: dict, *, repo_id: str | None = None) -> Published:
    """Write ``<output_dir>/hub``, ``label_issues.csv`` and ``plots/`` for a trained ``Trainer``.

    Call on the main process after the last EM step (``trainer.detect_noise()``), which supplies the
    confidences, prototypes and the predictions used here. ``repo_id`` only sets the card's loading example.
    """
    if trainer.train_probs is None:
        raise TCLError("publish_run needs the predictions of an EM step; call trainer.detect_noise() first")
    output_dir = trainer.output_dir
    data = trainer.data
    model = trainer.accelerator.unwrap_model(trainer.model)
    # Unreadable images have no verdict; the report covers the samples the detector saw.
    keep = ~trainer.train_bad.cpu().numpy()
    index = keep.nonzero()[0]
    given = trainer.given_labels.cpu().numpy()[keep]
    predicted = trainer.train_probs.argmax(dim=1).cpu().numpy()[keep]
    clean_prob = trainer.state.confidences.cpu().numpy()[keep]
    clean = trainer.clean_labels[keep] if trainer.clean_labels is not None else None

    hub_dir = export_hub_folder(model, trainer.state.prototypes, output_dir / HUB_DIR,
                                run_config=to_dict(trainer.cfg), metrics=metrics, label_names=data.class_names,
                                contract=data.contract, repo_id=repo_id)
    table = label_issues(given, predicted, clean_prob, clean, data.class_names)
    table["index"] = index[table["index"].to_numpy()]
    issues = write_label_issues(output_dir, table)
    plots = make_plots(output_dir, clean_prob, given, clean, data.class_names)
    return Published(hub_dir, issues, plots)


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


def export_finished_run(run_dir: str | Path, repo_id: str | None = None) -> Published:
    """Rebuild the trainer of ``run_dir`` from its config and newest checkpoint, then ``publish_run``."""
    from .config import load_config, read_recipe
    from .trainer import Trainer

    run_dir = Path(run_dir)
    recipe = run_dir / CONFIG_FILE
    if not recipe.is_file():
        raise TCLError(f"{recipe} does not exist; RUN_DIR must be the output_dir of a tcl_hf run")
    # hub.repo_id=null: a re-export pushes only with --push, so the saved run's repo needs no token check.
    overrides = ["train.resume=true", "log.with=null", "log.progress=false", "hub.repo_id=null"]
    saved_dir = read_recipe(recipe).get("output_dir")
    if saved_dir is None or Path(saved_dir).resolve() != run_dir.resolve():
        # The run was moved or is named from elsewhere: point the trainer at where it is now.
        overrides.append(f"output_dir={run_dir}")
    cfg = load_config(recipe, overrides)
    trainer = Trainer(cfg)
    if not trainer.resume():
        raise TCLError(f"{run_dir / 'checkpoints'} holds no complete checkpoint; nothing to export")
    # Recomputed, so the card describes exactly the checkpoint being exported.
    em = trainer.detect_noise()
    metrics = {**_summary(run_dir), **trainer.evaluate(), **em, "epochs_completed": trainer.state.epoch}
    return publish_run(trainer, metrics, repo_id=repo_id)


def _summary(run_dir: Path) -> dict:
    path = run_dir / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        published = export_finished_run(args.run_dir, repo_id=args.push)
        print(f"exported {published.hub_dir}, {published.label_issues} and {len(published.plots)} plot(s)")
        if args.push:
            url = push_folder(published.hub_dir, args.push, private=args.private, revision=args.revision)
            print(f"pushed {published.hub_dir} to {url}")
    except TCLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
