"""The model card of an export, built with huggingface_hub's ``ModelCard``/``ModelCardData`` from the
template ``templates/model_card.md``: metadata (library, license, datasets, metrics with their values) in
its YAML header, a body that explains the run — and ``public_config``, what of a run's configuration
may be published at all.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from . import detector
from .data.hf import is_local_path
from .data.registry import DEFAULT_SOURCE, get_source
from .floats import tidy_float
from .models import ARCHITECTURE
from .tcl_state import TCL_CONFIG, TCL_WEIGHTS
from .verdict import fell_back, summary_verdict, verdict_explained

# How a card (model or repaired dataset) names the method that made it.
METHOD_TEXT = {
    "tcl": "Twin Contrastive Learning (TCL, Huang et al., CVPR 2023)",
    "tcl_plus": "TCL+ (the TCL reference code's second stage, started from a finished TCL run)",
    "ce": "plain cross-entropy (the baseline of the tcl_hf project)",
}

# A TCL run that fell back to CE (train.on_collapse=fallback, tcl_hf/verdict.py).
FELL_BACK_TEXT = f"{METHOD_TEXT['ce']}, continued from the warm-up of a TCL run whose TCL phase collapsed"

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"

# Config keys that name files or folders on this machine; a published config keeps only their base name.
_LOCAL_PATH_KEYS = ("output_dir", "data.root", "data.imagenet_val", "noise.file", "model.pretrained_file",
                    "init.from")

# Shown in the card's loading example of a folder that was not pushed: where it sits is the reader's business.
LOCAL_LOAD_REF = "local-dir:path/to/this/folder"

def public_config(run_config: dict) -> dict:
    """``run_config`` as it may be published: local paths (run folder, data, label and weight files)
    cut to their base names, which still say what was used without telling where this machine keeps
    it or whose home folder it is. A local data.path becomes ./<name>, so it still reads as a folder
    and not as a Hub dataset id; a Hub dataset id stays."""
    public = copy.deepcopy(run_config)
    for dotted in _LOCAL_PATH_KEYS:
        *parents, leaf = dotted.split(".")
        node = public
        for parent in parents:
            node = node.get(parent, {})
        if isinstance(node.get(leaf), str):
            node[leaf] = Path(node[leaf]).name
    data = public.get("data", {})
    if isinstance(data.get("path"), str) and is_local_path(data["path"]):
        data["path"] = f"./{Path(data['path']).name}"
    return public

def dataset_names(data: dict) -> tuple[str, str, str | None]:
    """(display name, type for model-index, Hub dataset id or None) of the training data that a run's public
    ``data`` section names; a local folder or file is named by its base name only."""
    return get_source(data.get("format", DEFAULT_SOURCE)).dataset_names(data)

def noise_description(noise: dict) -> str:
    """What labels a run trained on, from its ``noise`` section, as a phrase for a card ("40% symmetric ...")."""
    kind, rate = noise.get("type", "none"), noise.get("rate", 0.0)
    if kind == "sym":
        return f"{rate:.0%} symmetric synthetic label noise"
    if kind == "asym":
        return f"{rate:.0%} asymmetric (class-flip) synthetic label noise"
    if kind == "file":
        return f"the noisy labels of `{Path(str(noise.get('file'))).name}`"
    if kind == "cifarn":
        return f"the human labels '{noise.get('label_set')}' of `{Path(str(noise.get('file'))).name}` (CIFAR-N)"
    return "the dataset's own labels (no synthetic noise added)"

def _value(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    return tidy_float(float(value)) if isinstance(value, (int, float)) else None

def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"

def shown_metrics(metrics: dict, keys: tuple[str, ...]) -> dict[str, str]:
    """Each of ``keys`` as a card shows it: the number from ``metrics`` to 4 decimals, or "n/a" when it has none."""
    return {key: _fmt(_value(metrics, key)) for key in keys}

# (metrics key, metric type on the Hub, name shown, split it was measured on)
_CARD_METRICS = (
    ("test_acc", "accuracy", "Test accuracy", "test"),
    ("knn_acc", "accuracy", "kNN test accuracy (projections)", "test"),
    ("noise_auc", "roc_auc", "Noise detection AUC", "train"),
    ("noise_precision", "precision", "Noise detection precision", "train"),
    ("noise_recall", "recall", "Noise detection recall", "train"),
)


def model_card(run_config: dict, metrics: dict, *, load_ref: str) -> ModelCard:
    """The card of a run whose (public) configuration is ``run_config`` and final numbers ``metrics``."""
    data, mdl = run_config.get("data", {}), run_config.get("model", {})
    backbone, method = mdl.get("backbone", "?"), run_config.get("method", "tcl")
    name, dataset_type, dataset_id = dataset_names(data)
    splits = {"train": data.get("train_split", "train"), "test": data.get("test_split", "test")}
    results = [EvalResult(task_type="image-classification", dataset_type=dataset_type, dataset_name=name,
                          dataset_split=splits[split], metric_type=kind, metric_name=label, metric_value=value)
               for key, kind, label, split in _CARD_METRICS if (value := _value(metrics, key)) is not None]
    card_data = ModelCardData(
        library_name="timm", license="apache-2.0", pipeline_tag="image-classification",
        model_name=f"{method}-{backbone}-{dataset_type.split('/')[-1]}",
        tags=["image-classification", "timm", "noisy-labels", *(["tcl"] if method in ("tcl", "tcl_plus") else []),
              "tcl_hf", dataset_type.split("/")[-1]],
        datasets=[dataset_id] if dataset_id else None,
        metrics=sorted({r.metric_type for r in results}) or None, eval_results=results or None,
    )
    shown = shown_metrics(metrics, ("test_acc", "knn_acc", "noise_rate", "clean_ratio_est", "noise_auc",
                                    "noise_precision", "noise_recall", "noise_acc"))
    verdict = summary_verdict(metrics)
    method_text = METHOD_TEXT[method] if not fell_back(verdict) else FELL_BACK_TEXT
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), backbone=backbone, dataset_name=name,
        method_text=method_text, verdict=verdict, verdict_explained=verdict_explained(verdict),
        fell_back=fell_back(verdict),
        noise_text=noise_description(run_config.get("noise", {})), architecture=ARCHITECTURE,
        epochs=metrics.get("epochs_completed", metrics.get("epoch", "n/a")),
        detection_measured=_value(metrics, "noise_auc") is not None or _value(metrics, "noise_precision") is not None,
        threshold=detector.CLEAN_THRESHOLD, load_ref=load_ref, tcl_weights=TCL_WEIGHTS, tcl_config=TCL_CONFIG,
        recipe=yaml.safe_dump(run_config, sort_keys=False).rstrip(), **shown)
