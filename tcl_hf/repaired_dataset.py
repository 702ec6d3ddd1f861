"""The training split of a finished run, rebuilt exactly as the run saw it, and written as a 🤗 dataset (parquet
in the Hub's layout) with the detector's verdict and the corrected label beside the original columns.

``training_split`` rebuilds the split from the run's ``data.*`` and ``noise.*`` keys through the trainer's own
loader; ``verdicts`` turns ``label_issues.csv`` into the new columns (refusing a report whose given labels
are not the rebuilt split's); ``write_parquet`` embeds every image and writes the shards.
"""
from __future__ import annotations

import math
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import TCLError
from .rundir import LABEL_REVIEW_FILE

# The columns the repair adds; a source that already has one of them is refused rather than overwritten.
TCL_LABEL, CLEAN_PROB, IS_NOISY = "tcl_label", "clean_prob", "is_noisy"
GIVEN_LABEL, CLEAN_LABEL = "given_label", "clean_label"

# label_issues.csv columns the repair reads (tcl_hf.report writes them).
ISSUE_COLUMNS = ("index", "given_label", "predicted_label", "clean_prob", "is_noisy")

# The Hub's layout: datasets.load_dataset(folder) and the Hub find data/train-*.parquet as the train split by its
# name. A `configs` entry in the card would say the same, but datasets then caches a local folder by that pattern
# alone, so two repaired folders would load as one (the first loaded); without it the files themselves count.
DATA_DIR = "data"


@dataclass
class TrainingSplit:
    """The run's training samples, one row each, as the repaired dataset will hold them."""

    rows: object                   # datasets.Dataset: the columns taken over (images undecoded)
    given: np.ndarray              # the labels the run trained on, int64 [N]
    clean: np.ndarray | None       # the true labels, when the run knew them
    added: dict                    # extra columns to write: name -> (values over all N rows, datasets feature)
    given_column: str              # the column that holds the given label
    label_feature: object          # datasets feature of a class label (ClassLabel when the classes have names)
    source_rows: object = None     # hf formats: the split as loaded (for its Hub revision)
    image_column: str = "image"    # the column of ``rows`` that holds the images


@dataclass
class Verdicts:
    """The new columns for the rows that are kept, and what happened to the others."""

    kept: np.ndarray               # training rows written, ascending
    tcl_label: np.ndarray
    clean_prob: np.ndarray
    is_noisy: np.ndarray
    counts: dict                   # rows, kept, dropped, unreadable, relabelled


# The tag a repaired dataset's card carries: what tells a folder a repair may replace.
REPAIR_TAG = "tcl-hf-repaired"


# ---- the training split as the run saw it ------------------------------------------------------------------------
def training_split(cfg) -> TrainingSplit:
    """Rebuild the run's training split with the trainer's loader and noise (same data.* and noise.* keys,
    data.limit included); images are not decoded."""
    import datasets

    from .data import get_source, load_data, resolve_input_contract
    from .noise import training_labels

    bundle = load_data(cfg.data, resolve_input_contract(cfg.data, cfg.model), seed=cfg.seed)
    given, clean = training_labels(cfg.noise, bundle, cfg.seed)
    given = given.numpy()
    names = datasets.ClassLabel(names=list(bundle.class_names))
    source = get_source(cfg.data.format)
    if source.is_hf_dataset:
        return _hf_split(cfg, bundle.train_rows, given, clean)
    rows = source.image_rows(bundle)
    added = {"label": (given, names)}
    if clean is not None:
        added[CLEAN_LABEL] = (np.asarray(clean, dtype=np.int64), names)
    return TrainingSplit(rows, given, clean, added, "label", names)


def _hf_split(cfg, rows, given: np.ndarray, clean) -> TrainingSplit:
    """A Hugging Face source keeps every column unchanged; when the run added noise, the labels it trained on
    differ from the label column and come as ``given_label``."""
    import datasets

    from .data.hf import _pick_column  # the loader's own rule for which column holds the labels

    label_column = _pick_column(rows.features, cfg.data.label_column, "label", "data.label_column")
    feature = rows.features[label_column]
    if not isinstance(feature, datasets.ClassLabel):
        feature = datasets.Value("int64")
    added = {}
    if cfg.noise.type != "none":
        added[GIVEN_LABEL] = (given, feature)
    taken = [c for c in (*added, TCL_LABEL, CLEAN_PROB, IS_NOISY) if c in rows.column_names]
    if taken:
        raise TCLError(f"data.path: the dataset already has column(s) {', '.join(taken)}, which the repaired "
                       f"dataset adds; rename them in the source first")
    image_column = _pick_column(rows.features, cfg.data.image_column, "image", "data.image_column")
    return TrainingSplit(rows, given, clean, added, GIVEN_LABEL if added else label_column, feature, rows,
                         image_column)


def hub_revision(rows) -> str | None:
    """The commit of a Hub dataset the run loaded, when datasets' cache tells it: a Hub dataset is cached in a
    folder named by the commit sha it loaded (40 hex digits), a local folder in one named by a 16-digit hash."""
    for entry in getattr(rows, "cache_files", None) or []:
        name = Path(entry["filename"]).parent.name
        if re.fullmatch(r"[0-9a-f]{40}", name):
            return name
    return None


# ---- the run's verdicts ---------------------------------------------------------------------------------------------
def verdicts(issues: pd.DataFrame, given: np.ndarray, drop_below: float, where: Path) -> Verdicts:
    """The kept rows and their new columns. ``where`` (the report's path) names the report in errors.

    Refuses a report that does not match the rebuilt split: a missing column, a row outside the split, a row
    twice, or a given label other than the split's (the data or the noise changed since the run).
    """
    missing = [c for c in ISSUE_COLUMNS if c not in issues.columns]
    if missing:
        raise TCLError(f"{where}: no column(s) {', '.join(missing)}; rewrite it with "
                       f"python -m tcl_hf.export {where.parent}")
    issues = issues.sort_values("index", kind="stable")
    index = issues["index"].to_numpy(dtype=np.int64)
    if len(index) and (index[0] < 0 or index[-1] >= len(given) or np.any(np.diff(index) == 0)):
        raise TCLError(f"{where}: its rows do not fit the training split rebuilt from config.yaml ({len(given)} "
                       f"samples; indices {index[0]}..{index[-1]}, {len(index)} rows); it belongs to another run")
    reported = issues["given_label"].to_numpy(dtype=np.int64)
    differ = np.flatnonzero(reported != given[index])
    if len(differ):
        row = differ[0]
        raise TCLError(f"{where}: the given labels differ from the training split rebuilt from config.yaml at "
                       f"{len(differ)} of {len(index)} rows (first: row {index[row]}, report {reported[row]}, data "
                       f"{given[index[row]]}); the data or the noise changed since the run, so the repair would "
                       f"label other images: repair with the data the run trained on")
    clean_prob = issues["clean_prob"].to_numpy(dtype=np.float64)
    is_noisy = issues["is_noisy"].to_numpy(dtype=bool)
    # The rule stated in the card: the prediction replaces a label the detector calls noisy.
    tcl_label = np.where(is_noisy, issues["predicted_label"].to_numpy(dtype=np.int64), reported)
    keep = clean_prob >= drop_below
    counts = {"rows": len(given), "kept": int(keep.sum()), "dropped": int((~keep).sum()),
              "unreadable": len(given) - len(index), "relabelled": int((tcl_label != reported)[keep].sum())}
    return Verdicts(index[keep], tcl_label[keep], clean_prob[keep], is_noisy[keep], counts)


# ---- writing --------------------------------------------------------------------------------------------------------
def repaired_rows(split: TrainingSplit, found: Verdicts):
    """The kept rows with the added and the new columns, as a lazily selected datasets.Dataset plus the
    columns to append (name -> (values for the kept rows, feature))."""
    import datasets

    rows = split.rows.select(found.kept)
    columns = {name: (values[found.kept], feature) for name, (values, feature) in split.added.items()}
    columns[TCL_LABEL] = (found.tcl_label, split.label_feature)
    columns[CLEAN_PROB] = (found.clean_prob, datasets.Value("float64"))
    columns[IS_NOISY] = (found.is_noisy, datasets.Value("bool"))
    return rows, columns


def write_parquet(rows, columns: dict, folder: Path, scratch: Path) -> None:
    """Write ``rows`` plus ``columns`` to ``folder/data/train-XXXXX-of-YYYYY.parquet`` as push_to_hub shards a
    split: every image's bytes embedded (a local file's path cut to its base name, so the files hold no local
    path and load anywhere), shards of at most datasets' MAX_SHARD_SIZE. ``scratch`` takes the embedded copy."""
    import datasets
    import pyarrow as pa
    from datasets.arrow_writer import get_writer_batch_size_from_features
    from datasets.table import embed_table_storage
    from datasets.utils.py_utils import convert_file_size_to_int

    features = datasets.Features({**rows.features, **{name: feature for name, (_, feature) in columns.items()}})
    # Image rows are large: datasets writes them 100 at a time, which bounds the memory of one batch.
    batch_size = get_writer_batch_size_from_features(features) or 1000

    def finish(batch: pa.Table, positions: list[int]) -> pa.Table:
        table = embed_table_storage(batch)
        for name, (values, feature) in columns.items():
            table = table.append_column(name, pa.array(values[positions], type=feature.pa_type))
        return table

    try:
        embedded = rows.with_format("arrow").map(
            finish, batched=True, with_indices=True, batch_size=batch_size, writer_batch_size=batch_size,
            features=features, cache_file_name=str(scratch / "embedded.arrow"), new_fingerprint=uuid.uuid4().hex,
            desc="Embedding images")
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise TCLError(f"cannot read an image of the training split{where}: {exc.strerror or exc}; the data "
                       f"changed since the run, repair with the data the run trained on") from None
    shards = max(1, math.ceil(embedded.data.nbytes / convert_file_size_to_int(datasets.config.MAX_SHARD_SIZE)))
    out = folder / DATA_DIR
    out.mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        path = out / f"train-{k:05d}-of-{shards:05d}.parquet"
        embedded.shard(num_shards=shards, index=k, contiguous=True).to_parquet(str(path), batch_size=batch_size)


def label_accuracy(labels: np.ndarray, truth: np.ndarray) -> str:
    """'0.8125 (13/16)': how many labels equal the truth."""
    right = int((labels == truth).sum())
    return f"{right / len(truth):.4f} ({right}/{len(truth)})" if len(truth) else "n/a"


def is_repaired_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a dataset written by this module (its card carries ``REPAIR_TAG``): only such a
    folder may be replaced by a new repair."""
    from huggingface_hub import DatasetCard

    card = folder / "README.md"
    if not card.is_file():
        return False
    try:
        tags = DatasetCard.load(card).data.tags or []
    except Exception:  # a README that is not a dataset card: not ours
        return False
    return REPAIR_TAG in tags and set(os.listdir(folder)) <= {"README.md", "data", LABEL_REVIEW_FILE}
