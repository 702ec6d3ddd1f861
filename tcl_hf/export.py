"""Publish a finished run: the Hub folder (the classifier as a timm model, the full TCL state, the model card),
the label-issue report and the plots — all written from a ``RunResult``, never from a live trainer.

``publish_run`` is what ``train.py`` does after training (main process only), followed by
``tcl_hf.hub.push_folder`` when a repo is named. The command line re-exports a finished run from its
newest checkpoint:

    python -m tcl_hf.export RUN_DIR [--push REPO_ID] [--private] [--revision BRANCH]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .command import hub_repo_id, refuse_file_in_the_way, run_command
from .errors import TCLError
from .rundir import CHECKPOINTS_DIR, CONFIG_FILE, HUB_DIR, SUMMARY_FILE
from .verdict import summary_verdict, untrusted_outputs_line

# torch, timm, huggingface_hub and matplotlib are imported where they are used: `--help` answers at once.
if TYPE_CHECKING:
    import torch

    from .data.contract import InputContract
    from .models import TCLModel
    from .result import RunResult


@dataclass
class Published:
    hub_dir: Path
    label_issues: Path
    plots: list[Path]
    review: Path          # label_issues.html


# ---- Hub folder: weights, timm config, model card ----------------------------------------------------------
def export_classifier(model: TCLModel, out_dir: str | Path, *, backbone: str, label_names: list[str],
                      contract: InputContract, in_chans: int = 3) -> Path:
    """Write the classifier as model.safetensors + config.json in timm's format to ``out_dir``.

    The config's data section is the run's input contract, so ``timm.data.create_transform`` on the loaded
    model rebuilds the evaluation preprocessing under which the run's accuracy was measured.
    """
    from timm.models import save_for_hf

    from .models import classifier_from_tcl

    classifier = classifier_from_tcl(model, backbone, in_chans)
    # timm leaves the dropout rate out of the recorded model args unless it is given explicitly.
    save_for_hf(classifier, out_dir, model_config={"label_names": list(label_names)},
                model_args={"drop_rate": classifier.drop_rate}, safe_serialization=True,
                data_config=contract.timm_data_config(in_chans))
    return Path(out_dir)

def export_hub_folder(model: TCLModel, prototypes: torch.Tensor, out_dir: str | Path, *, run_config: dict,
                      metrics: dict, label_names: list[str], contract: InputContract,
                      repo_id: str | None = None) -> Path:
    """The folder to publish: the timm classifier, the full TCL state and the model card (README.md).

    ``run_config`` is ``tcl_hf.config.to_dict(cfg)``; ``metrics`` holds the run's final numbers
    (test_acc, knn_acc, noise_auc, ...); ``repo_id`` only changes the loading example in the card.
    """
    from .card import LOCAL_LOAD_REF, model_card, public_config
    from .tcl_state import save_tcl_state

    out_dir = Path(out_dir)
    run_config = public_config(run_config)
    export_classifier(model, out_dir, backbone=run_config["model"]["backbone"], label_names=label_names,
                      contract=contract)
    save_tcl_state(model, prototypes, out_dir, run_config, class_names=list(label_names))
    load_ref = f"hf-hub:{repo_id}" if repo_id else LOCAL_LOAD_REF
    model_card(run_config, metrics, load_ref=load_ref).save(out_dir / "README.md")
    return out_dir


def publish_run(result: RunResult, *, repo_id: str | None = None) -> Published:
    """Write ``<output_dir>/hub``, ``label_issues.csv`` and ``plots/`` for a finished run.

    ``repo_id`` only sets the card's loading example; pushing is ``tcl_hf.hub.push_folder``'s job.
    """
    from .report import label_issues, make_plots, write_label_issues
    from .review import training_image, write_review_page

    out = result.output_dir
    hub_dir = export_hub_folder(result.model, result.prototypes, out / HUB_DIR, run_config=result.config,
                                metrics=result.summary, label_names=result.class_names, contract=result.contract,
                                repo_id=repo_id)
    # Unreadable images have no verdict; the report covers the samples the detector saw, by training row.
    table = label_issues(result.given, result.predicted, result.clean_prob, result.clean, result.class_names,
                         suspicion=result.suspicion, sample_id=result.sample_id, trained=result.trained)
    table["index"] = result.index[table["index"].to_numpy()]
    issues = write_label_issues(out, table)
    review = write_review_page(out, table, lambda row: training_image(result.images, row),
                               top=result.config["log"]["review_top"], title=out.name)
    plots = make_plots(out, result.clean_prob, result.given, result.clean, result.class_names)
    return Published(hub_dir, issues, plots, review)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tcl_hf.export",
        description="Re-export a finished tcl_hf run (Hub folder, label-issue report, plots) from its newest "
                    "checkpoint, and optionally push the Hub folder.")
    parser.add_argument("run_dir", help="the run's output_dir (holds config.yaml and checkpoints/)")
    parser.add_argument("--push", metavar="REPO_ID", type=hub_repo_id, help="push <run_dir>/hub to this Hub model repo")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", metavar="BRANCH", help="push to this branch (created if missing)")
    return parser


def finished_run(run_dir: str | Path) -> RunResult:
    """The ``RunResult`` of ``run_dir``, rebuilt from its config and newest checkpoint (EM step and evaluation
    recomputed, so the card describes exactly the checkpoint being exported)."""
    from .config import load_config, read_recipe
    from .trainer import Trainer

    run_dir = Path(run_dir)
    recipe = run_dir / CONFIG_FILE
    if not recipe.is_file():
        raise TCLError(f"{recipe} does not exist; RUN_DIR must be the output_dir of a tcl_hf run")
    overrides = ["train.resume=true", "log.with=null", "log.progress=false"]
    saved_dir = read_recipe(recipe).get("output_dir")
    if saved_dir is None or Path(saved_dir).resolve() != run_dir.resolve():
        # The run was moved or is named from elsewhere: point the trainer at where it is now.
        overrides.append(f"output_dir={run_dir}")
    trainer = Trainer(load_config(recipe, overrides))
    try:
        if not trainer.resume():
            raise TCLError(f"{run_dir / CHECKPOINTS_DIR} holds no complete checkpoint; nothing to export")
        em = trainer.detect_noise()
        # The verdict too is the checkpoint's: a run stopped for a collapse has no summary.json to carry it.
        summary = {**_summary(run_dir), **trainer.evaluate(), **em, "epochs_completed": trainer.state.epoch,
                   **trainer.health.summary()}
        return trainer.result(summary)
    finally:
        trainer.close()


def _summary(run_dir: Path) -> dict:
    path = run_dir / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _export(args: argparse.Namespace) -> None:
    from .hub import push_folder

    refuse_file_in_the_way(Path(args.run_dir) / HUB_DIR, "export", "move it aside and export again")
    result = finished_run(args.run_dir)
    published = publish_run(result, repo_id=args.push)
    print(f"exported {published.hub_dir}, {published.label_issues}, {published.review} and "
          f"{len(published.plots)} plot(s)")
    warning = untrusted_outputs_line(summary_verdict(result.summary))
    if warning:
        print(warning)
    if args.push:
        url = push_folder(published.hub_dir, args.push, private=args.private, revision=args.revision)
        print(f"pushed {published.hub_dir} to {url}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(lambda: _export(args), again="the same command")


if __name__ == "__main__":
    raise SystemExit(main())
