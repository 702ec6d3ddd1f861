"""Publish a finished run: the Hub folder (the classifier as a timm model, the full TCL state, the model card),
the label-issue report and the plots — all written from a ``RunResult``, never from a live trainer.

``publish_run`` is what ``train.py`` does after training (main process only), followed by
``tcl_hf.hub.push_folder`` when a repo is named (the job holds the folder's lock while publishing). The command
line re-exports a finished run from its newest intact checkpoint, without a trainer and under the folder's lock:

    python -m tcl_hf.export RUN_DIR [--push REPO_ID] [--private] [--revision BRANCH]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .command import hub_repo_id, refuse_file_in_the_way, run_command
from .errors import TCLError
from .rundir import (CHECKPOINTS_DIR, CONFIG_FILE, HUB_DIR, SUMMARY_FILE, read_metrics, run_folder_lock,
                     trajectory_records)
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
                               top=result.config["log"]["review_top"], title=out.name,
                               warning=untrusted_outputs_line(summary_verdict(result.summary)))
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
    """The ``RunResult`` of ``run_dir`` as its newest intact checkpoint holds it, built without a trainer: the
    resolved config, the model's weights, and the run state's last EM step (confidences, prototypes, predictions).
    The dataset is read for its labels and class names only; nothing is recomputed, so this publishes what the
    run published from that checkpoint."""
    import safetensors.torch
    from accelerate.utils import SAFE_WEIGHTS_NAME

    from .config import load_config, read_recipe, to_dict
    from .data import load_data, resolve_input_contract
    from .health import HealthMonitor
    from .methods import create_method
    from .models import build_tcl_model
    from .noise import training_labels
    from .result import run_result
    from .schedule import Schedule
    from .rundir import load_newest_checkpoint
    from .state import RunState

    run_dir = Path(run_dir)
    recipe = _recipe(run_dir)
    saved_dir = read_recipe(recipe).get("output_dir")
    # A run moved or named from elsewhere is read where it is now.
    moved = saved_dir is None or Path(saved_dir).resolve() != run_dir.resolve()
    cfg = load_config(recipe, [f"output_dir={run_dir}"] if moved else [])
    data = load_data(cfg.data, resolve_input_contract(cfg.data, cfg.model), seed=cfg.seed)
    given, clean = training_labels(cfg.noise, data, cfg.seed)
    # The architecture only: the weights come from the checkpoint, so no pretrained download is needed.
    model = build_tcl_model(replace(cfg.model, pretrained=False, pretrained_file=None), data.num_classes)
    method = create_method(cfg, None, model, given)
    state = RunState(len(data.train), data.num_classes, cfg.model.proj_dim)

    def load(folder: Path) -> None:
        method_tensors = state.load(folder)
        model.load_state_dict(_unwrapped(safetensors.torch.load_file(str(folder / SAFE_WEIGHTS_NAME))))
        method.load_state_tensors(method_tensors)

    found, skipped = load_newest_checkpoint(run_dir, load, lambda failed: failed)
    for note in skipped:
        print(f"skipped checkpoint {note}")
    if found is None:
        raise TCLError(f"{run_dir / CHECKPOINTS_DIR} holds no complete checkpoint; nothing to export")
    if bool((state.predictions[~state.unreadable] < 0).any()):
        raise TCLError(f"{found} predates checkpoints that keep the last EM step's predictions; export it with the "
                       f"tcl_hf version that trained it, or train on (train.resume=true, more train.epochs) first")
    # Only the schedule's phase answers are asked (the verdict's first TCL epoch), never an lr: any batch will do.
    schedule = Schedule(cfg, method, state, cfg.train.batch_size, 1, print)
    health = HealthMonitor(cfg, method, schedule, state, data.num_classes, print)
    return run_result(run_dir, to_dict(cfg), _summary(run_dir, state, health.summary()), method.network(model),
                      state, given.numpy(), clean, data.class_names, data.contract,
                      sample_id=data.train_ids(cfg.data.root or cfg.data.path), images=data.train,
                      trained=method.trained_labels)


def _recipe(run_dir: Path) -> Path:
    recipe = run_dir / CONFIG_FILE
    if not recipe.is_file():
        raise TCLError(f"{recipe} does not exist; RUN_DIR must be the output_dir of a tcl_hf run")
    return recipe


def _unwrapped(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpointed model weights under the bare model's names: accelerate saves the prepared model, whose keys
    carry DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes when those wrap it."""
    def bare(key: str) -> str:
        while key.startswith(("module.", "_orig_mod.")):
            key = key.split(".", 1)[1]
        return key

    return {bare(k): v for k, v in weights.items()}


def _summary(run_dir: Path, state, health: dict) -> dict:
    """The run's summary.json when it is this checkpoint's (same step); otherwise (a stopped run) the checkpoint's
    epoch record from metrics.jsonl, with the run's verdict so far."""
    path = run_dir / SUMMARY_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if isinstance(saved, dict) and saved.get("steps") == state.step:
        return saved
    records = trajectory_records(read_metrics(run_dir), state.epoch, state.fell_back_after())
    return {**(records[-1] if records else {}), "epochs_completed": state.epoch, "steps": state.step, **health}


def reexport(run_dir: Path, repo_id: str | None = None) -> tuple[RunResult, Published]:
    """``finished_run`` then ``publish_run``, holding the folder's lock as a run does: nothing else writes the folder
    meanwhile, and what is written is listed in the run's marker. The card loads from ``repo_id``, else from the
    run's own ``hub.repo_id``, as the run's card did."""
    _recipe(run_dir)  # a folder that holds no run gets no lock file
    with run_folder_lock(run_dir, True, lambda failed: failed):
        result = finished_run(run_dir)
        return result, publish_run(result, repo_id=repo_id or result.config["hub"]["repo_id"])


def _export(args: argparse.Namespace) -> None:
    from .hub import push_folder

    refuse_file_in_the_way(Path(args.run_dir) / HUB_DIR, "export", "move it aside and export again")
    result, published = reexport(Path(args.run_dir), args.push)
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
