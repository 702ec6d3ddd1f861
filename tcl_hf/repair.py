"""Repair a dataset with a finished run: its training split as a 🤗 dataset (parquet in the Hub's layout plus a
dataset card) with the original columns, the detector's verdict and the corrected label.

    python -m tcl_hf.repair RUN_DIR [--out DIR] [--push user/name] [--private] [--drop-below P] [--accept-failed]

``tcl_label`` is the model's prediction where the detector calls the given label noisy (``is_noisy``:
``clean_prob`` < ``detector.CLEAN_THRESHOLD``), else the given label. ``--drop-below P`` leaves out the samples
whose ``clean_prob`` is below P; samples the run could not read (no row in ``label_issues.csv``) are left out and
counted. The folder (default ``RUN_DIR/repaired``) appears whole or not at all; the push comes after it is
written. A run whose summary.json verdict says it failed (tcl_hf/verdict.py) is refused unless ``--accept-failed``;
such a repair, and one whose labels came out less accurate than the given ones (true labels known), says so on the
console and in the card.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from .command import hub_repo_id, refuse_file_in_the_way, run_command
from .errors import TCLError
from .rundir import CONFIG_FILE, LABEL_ISSUES_FILE, REPAIRED_DIR, SUMMARY_FILE

TEMPLATE = Path(__file__).parent / "templates" / "dataset_card.md"

# The card's loading example for a folder that was not pushed: where it sits is the reader's business.
LOCAL_LOAD_REF = "path/to/this/folder"


@dataclass
class Repaired:
    folder: Path
    counts: dict
    warnings: list[str]   # what the card opens with and the console says: a failed run, labels made worse


# ---- the run -----------------------------------------------------------------------------------------------------
def _run_config(run_dir: Path):
    """The run's validated configuration (the keys the trainer rebuilt its data from)."""
    from .config import load_config

    recipe = run_dir / CONFIG_FILE
    if not recipe.is_file():
        raise TCLError(f"{recipe} does not exist; RUN_DIR must be the output_dir of a finished tcl_hf run")
    # The split is only listed, never decoded: in_memory=false skips decoding and on_device needs in_memory.
    return load_config(recipe, ["data.in_memory=false", "data.on_device=null"])


def _summary(run_dir: Path) -> dict:
    path = run_dir / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def source_of(data: dict):
    """The data source (tcl_hf.data.registry) that a run's ``data`` section names."""
    from .data.registry import DEFAULT_SOURCE, get_source

    return get_source(data.get("format", DEFAULT_SOURCE))


# ---- the card ----------------------------------------------------------------------------------------------------
def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def _source_text(data: dict, hub_id: str | None, revision: str | None, name: str) -> str:
    """The source as the card names it: a Hub id (and commit), else only a base name (never a local path)."""
    if hub_id:
        at = f" at revision `{revision}`" if revision else ""
        source = f"the Hugging Face dataset [`{hub_id}`](https://huggingface.co/datasets/{hub_id}){at}"
    elif source_of(data).is_hf_dataset:
        source = f"the local dataset `{name}`"
    else:
        source = name + (f" (folder `{data['root']}`)" if data.get("root") else "")
    split = f" (split `{data.get('train_split', 'train')}`)" if source_of(data).is_hf_dataset else ""
    fraction = data.get("test_fraction")
    if fraction:
        split += f", less the seeded, class-stratified {fraction:.0%} held out as the test set (`data.test_fraction`)"
    limit = data.get("limit")
    if limit:
        split += f", a seeded, class-stratified sample of {limit} samples (`data.limit`)"
    return source + split


def _columns_text(split, config: dict, threshold: float) -> str:
    from .repaired_dataset import CLEAN_LABEL, GIVEN_LABEL

    added = set(split.added)
    if source_of(config["data"]).is_hf_dataset:
        lines = [f"- every column of the source's training split, unchanged: "
                 f"{', '.join(f'`{c}`' for c in split.rows.column_names)}"]
        if GIVEN_LABEL in added:
            lines.append(f"- `{GIVEN_LABEL}`: the label the run trained on (the source's label plus the run's "
                         f"synthetic noise)")
    else:
        lines = ["- `image`: the image, as stored in the source", "- `label`: the label the run trained on"]
        if CLEAN_LABEL in added:
            lines.append(f"- `{CLEAN_LABEL}`: the true label (the source's own, before the run's synthetic noise)")
    lines += ["- `tcl_label`: the corrected label (see above)",
              "- `clean_prob`: the detector's probability that the given label is clean",
              f"- `is_noisy`: `clean_prob` < {threshold}, the detector's verdict"]
    return "\n".join(lines)


def dataset_card(config: dict, summary: dict, split, found, drop_below: float, load_ref: str, warnings: list[str]):
    """The card of a repaired dataset; ``config`` is the run's public configuration (tcl_hf.card.public_config)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    from .card import METHOD_TEXT, dataset_names, noise_description, shown_metrics
    from .detector import CLEAN_THRESHOLD
    from .repaired_dataset import REPAIR_TAG, hub_revision, label_accuracy

    data, method = config["data"], config.get("method", "tcl")
    name, _, hub_id = dataset_names(data)
    revision = hub_revision(split.source_rows) if hub_id else None
    card_data = DatasetCardData(
        pretty_name=f"{name} (labels repaired by TCL)", task_categories=["image-classification"],
        size_categories=[_size_category(found.counts["kept"])], source_datasets=[hub_id] if hub_id else None,
        tags=["noisy-labels", "label-correction", "tcl_hf", REPAIR_TAG])
    truth = split.clean[found.kept] if split.clean is not None else None
    given = split.given[found.kept]
    shown = shown_metrics(summary, ("noise_rate", "noise_auc", "noise_precision", "noise_recall", "noise_acc",
                                    "label_acc", "test_acc"))
    return DatasetCard.from_template(
        card_data, template_path=str(TEMPLATE), dataset_name=name, source_text=_source_text(data, hub_id, revision,
                                                                                            name),
        noise_text=noise_description(config.get("noise", {})),
        method_text=METHOD_TEXT[method],
        backbone=config["model"]["backbone"], epochs=summary.get("epochs_completed", "n/a"),
        threshold=CLEAN_THRESHOLD, given_column=split.given_column, drop_below=drop_below, **found.counts,
        columns_text=_columns_text(split, config, CLEAN_THRESHOLD), detection_measured=truth is not None,
        truth_text="synthetic noise on known labels" if config["noise"].get("type") != "none" else "a clean column",
        given_correct=label_accuracy(given, truth) if truth is not None else "n/a",
        tcl_correct=label_accuracy(found.tcl_label, truth) if truth is not None else "n/a",
        load_ref=load_ref, recipe=yaml.safe_dump(config, sort_keys=False).rstrip(), warnings=warnings, **shown)


# ---- what the repair must warn about ------------------------------------------------------------------------------
def _checked_verdict(run_dir: Path, summary: dict, accept_failed: bool) -> list[str]:
    """The run's verdict (summary.json; tcl_hf/verdict.py): a failed run, or one that never finished (no summary.json,
    e.g. a re-export of a run stopped for a collapse), is refused unless ``accept_failed``, and then warned about.
    A run that fell back to CE is repaired, and the card says whose verdicts they are."""
    from .verdict import VERDICT_OK, fell_back, summary_verdict, verdict_explained

    if not (run_dir / SUMMARY_FILE).is_file():
        what, remedy = "never finished (no summary.json)", "finish it with train.resume=true"
        warning = f"the run that repaired these labels {what}: its verdicts come from a model stopped before the end"
    else:
        verdict = summary_verdict(summary)
        if verdict == VERDICT_OK:
            return []
        if fell_back(verdict):
            return [f"these verdicts are the cross-entropy baseline's, not TCL's: TCL {verdict}: "
                    f"{verdict_explained(verdict)}"]
        what, remedy = f"is a failed run (TCL {verdict}, summary.json)", "train it again"
        warning = f"the run that repaired these labels failed (TCL {verdict}): {verdict_explained(verdict)}"
    if not accept_failed:
        raise TCLError(f"{run_dir} {what}: its label verdicts are not to be trusted; {remedy}, or repair anyway with "
                       f"--accept-failed")
    return [warning]


def _accuracy_warning(split, found) -> list[str]:
    """When the true labels are known: a repair that made the kept labels less accurate than the given ones."""
    if split.clean is None:
        return []
    truth = split.clean[found.kept]
    given_right, repaired_right = int((split.given[found.kept] == truth).sum()), int((found.tcl_label == truth).sum())
    if repaired_right >= given_right:
        return []
    return [f"the repaired labels are less accurate than the given ones: tcl_label is right for {repaired_right}, "
            f"the given label for {given_right} of the {len(truth)} kept samples (true labels known); use the given "
            f"labels"]


# ---- the whole repair ----------------------------------------------------------------------------------------------
def _replace(staging: Path, out: Path, aside: Path) -> None:
    """Put the finished ``staging`` folder at ``out``; a previous repair there is moved aside first (and removed
    with the scratch folder), so ``out`` always holds one whole dataset."""
    if out.exists():
        os.replace(out, aside)
    os.replace(staging, out)


def repair_run(run_dir: str | Path, out: str | Path | None = None, *, drop_below: float = 0.0,
               repo_id: str | None = None, accept_failed: bool = False) -> Repaired:
    """Write the repaired training split of ``run_dir`` to ``out`` (default ``run_dir/repaired``); ``repo_id`` only
    sets the card's loading example (pushing is ``tcl_hf.hub.push_folder``'s job). A run whose verdict says it failed
    is refused unless ``accept_failed``."""
    from .card import public_config
    from .config import read_recipe
    from .report import load_label_issues
    from .review import write_review_page
    from .repaired_dataset import is_repaired_folder, repaired_rows, training_split, verdicts, write_parquet
    from .rundir import RunLock

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / REPAIRED_DIR
    if not 0.0 <= drop_below <= 1.0:
        raise TCLError(f"--drop-below: {drop_below} must be in [0, 1] (a clean probability)")
    refuse_file_in_the_way(out, "--out", "choose another --out")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_repaired_folder(out))):
        raise TCLError(f"--out: {out} exists and is not a dataset written by tcl_hf.repair; choose another --out")
    cfg = _run_config(run_dir)
    summary = _summary(run_dir)
    warnings = _checked_verdict(run_dir, summary, accept_failed)
    # Writing into the run folder: hold its lock, so a run resumed or overwritten there cannot interleave.
    inside = out.resolve().is_relative_to(run_dir.resolve())
    lock = RunLock(run_dir).acquire() if inside else None
    try:
        issues = load_label_issues(run_dir)
        split = training_split(cfg)
        found = verdicts(issues, split.given, drop_below, run_dir / LABEL_ISSUES_FILE)
        if found.counts["kept"] == 0:
            counts = found.counts
            raise TCLError(f"nothing to write: of the {counts['rows']} training samples of {run_dir}, "
                           f"{counts['unreadable']} have no verdict and {counts['dropped']} have clean_prob < "
                           f"{drop_below} (--drop-below)")
        warnings += _accuracy_warning(split, found)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as scratch:
            staging = Path(scratch) / "dataset"
            write_parquet(*repaired_rows(split, found), staging, Path(scratch))
            # The card shows the run's own recipe, not the listing-only keys set above.
            card = dataset_card(public_config(read_recipe(run_dir / CONFIG_FILE)), summary, split, found,
                                drop_below, load_ref=repo_id or LOCAL_LOAD_REF, warnings=warnings)
            card.save(staging / "README.md")
            # The images as the repaired dataset holds them: the file or stored image, not the run's decoded crop.
            write_review_page(staging, issues, lambda row: split.rows[row][split.image_column],
                              top=cfg.log.review_top, title=out.name, warning="; ".join(warnings) or None)
            _replace(staging, out, Path(scratch) / "previous")
    finally:
        if lock is not None:
            lock.release()
    return Repaired(out, found.counts, warnings)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tcl_hf.repair",
        description="Write a finished tcl_hf run's training split as a Hugging Face dataset with the detector's "
                    "verdict (clean_prob, is_noisy) and the corrected label (tcl_label), and optionally push it.")
    parser.add_argument("run_dir", help="the run's output_dir (holds config.yaml and label_issues.csv)")
    parser.add_argument("--out", help=f"where to write the dataset (default: RUN_DIR/{REPAIRED_DIR})")
    parser.add_argument("--push", metavar="REPO_ID", type=hub_repo_id, help="push the dataset to this Hub dataset repo")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--drop-below", metavar="P", type=float, default=0.0,
                        help="leave out samples whose clean_prob is below P (default 0: keep every readable sample)")
    parser.add_argument("--accept-failed", action="store_true",
                        help="repair even with a run whose summary.json verdict says it failed (collapsed, or never "
                             "left warm-up) or that has no summary.json; the card and the console then say so")
    return parser


def _repair(args: argparse.Namespace) -> None:
    from .hub import push_folder

    done = repair_run(args.run_dir, args.out, drop_below=args.drop_below, repo_id=args.push,
                      accept_failed=args.accept_failed)
    counts = done.counts
    print(f"wrote {done.folder}: {counts['kept']} of {counts['rows']} training samples ({counts['relabelled']} "
          f"relabelled, {counts['dropped']} dropped below {args.drop_below}, {counts['unreadable']} unreadable)")
    for warning in done.warnings:
        print(f"warning: {warning}")
    if args.push:
        url = push_folder(done.folder, args.push, private=args.private, repo_type="dataset",
                          commit_message="Upload repaired dataset (tcl_hf)")
        print(f"pushed {done.folder} to {url}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(lambda: _repair(args), again="the same command")


if __name__ == "__main__":
    raise SystemExit(main())
