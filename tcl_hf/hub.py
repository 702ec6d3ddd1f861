"""Publishing a trained model: the classifier as a timm model with a model card, the full TCL state for
continued training, and the push of both to the Hugging Face Hub.

Importing this module registers ``tcl_classifier`` (any timm backbone + TCL's classifier head) with timm,
so an export loads back with ``timm.create_model("local-dir:<dir>", pretrained=True)`` or ``"hf-hub:<repo>"``.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import NamedTuple

import safetensors.torch
import timm
import torch
import torch.nn as nn
import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, constants, get_token, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, save_for_hf

from .contract import InputContract
from .errors import TCLError
from .models import CIFAR10_MEAN, CIFAR10_STD, TCLModel, classifier_head

ARCHITECTURE = "tcl_classifier"
TCL_WEIGHTS = "tcl_model.safetensors"   # the whole TCL module plus prototypes, for continued training
TCL_CONFIG = "tcl_config.json"
PROTOTYPES_KEY = "prototypes"           # no dot, so it cannot clash with a module's state-dict key
# The classifier head is Linear-BN-ReLU-Dropout-Linear-BN: the last two layers depend on the class count.
_CLASS_LAYERS = ("classifier.4.", "classifier.5.")
# The HTTP client's own base error (refused connection, DNS, timeout) is HfHubHTTPError's parent,
# whichever client this huggingface_hub version is built on.
_CLIENT_ERROR = HfHubHTTPError.__bases__[0]
# Config keys that name files or folders on this machine; a published config keeps only their base name.
_LOCAL_PATH_KEYS = ("output_dir", "data.root", "data.imagenet_val", "noise.file", "model.pretrained_file")
# Shown in the card's loading example of a folder that was not pushed: where it sits is the reader's business.
LOCAL_LOAD_REF = "local-dir:path/to/this/folder"


# ---- the exported architecture -------------------------------------------------------------------------------
class TCLClassifier(nn.Module):
    """TCL's encoder f (a timm backbone, pooled features) and classifier c: TCLModel without the projector.

    Module names match TCLModel's, so a trained TCLModel's ``encoder.*`` and ``classifier.*`` weights load as is.
    """

    def __init__(self, backbone: str = "preact_resnet18_cifar", num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0, img_size=None):
        super().__init__()
        # Fixed-size backbones (ViTs) receive img_size from timm's loader; others must not see it.
        size_arg = {} if img_size is None else {"img_size": img_size}
        self.encoder = timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=in_chans, **size_arg)
        self.num_features = self.head_hidden_size = self.encoder.num_features
        self.in_chans, self.drop_rate = in_chans, drop_rate
        self.classifier = classifier_head(self.num_features, max(num_classes, 1), drop_rate)
        self.reset_classifier(num_classes)
        # timm reads these traits to adapt the stem to other channel counts and to record the input contract.
        first_conv = self.encoder.pretrained_cfg.get("first_conv")
        if isinstance(first_conv, str):
            first_conv = f"encoder.{first_conv}"
        elif first_conv:
            first_conv = tuple(f"encoder.{name}" for name in first_conv)
        self._traits = {"first_conv": first_conv,
                        "fixed_input_size": bool(self.encoder.pretrained_cfg.get("fixed_input_size", False))}

    def get_classifier(self) -> nn.Module:
        return self.classifier[4]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New class layers for fine-tuning; 0 classes leaves the head's hidden features as the output."""
        if global_pool is not None:
            self.encoder.reset_classifier(0, global_pool)
        self.num_classes = num_classes
        if num_classes > 0:
            self.classifier[4] = nn.Linear(self.num_features, num_classes)
            self.classifier[5] = nn.BatchNorm1d(num_classes)
        else:
            self.classifier[4], self.classifier[5] = nn.Identity(), nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        h = self.encoder.forward_head(x)
        return self.classifier[:4](h) if pre_logits else self.classifier(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(x))


def _drop_class_layers_if_resized(state_dict: dict, model: TCLClassifier) -> dict:
    """Loading with another num_classes (fine-tuning) keeps the encoder and the shared head layers only."""
    if state_dict["classifier.4.weight"].shape[0] == model.num_classes:
        return state_dict
    return {k: v for k, v in state_dict.items() if not k.startswith(_CLASS_LAYERS)}


default_cfgs = generate_default_cfgs({
    ARCHITECTURE: {
        "num_classes": 10, "input_size": (3, 32, 32), "crop_pct": 1.0, "interpolation": "bilinear",
        "mean": CIFAR10_MEAN, "std": CIFAR10_STD, "classifier": "classifier.4", "license": "apache-2.0",
    },
})


@register_model
def tcl_classifier(pretrained: bool = False, **kwargs) -> TCLClassifier:
    """Any timm backbone (``backbone=<timm name>``) followed by TCL's classifier head."""
    return build_model_with_cfg(TCLClassifier, ARCHITECTURE, pretrained,
                                pretrained_filter_fn=_drop_class_layers_if_resized, **kwargs)


def classifier_from_tcl(model: TCLModel, backbone: str, in_chans: int = 3) -> TCLClassifier:
    """A ``tcl_classifier`` carrying the trained encoder and classifier weights of ``model``."""
    dropout = model.classifier[3].p
    classifier = timm.create_model(ARCHITECTURE, backbone=backbone, num_classes=model.num_classes,
                                   in_chans=in_chans, drop_rate=dropout)
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith("projector.")}
    # Strict: every trained tensor must land, or the export would not reproduce the trained logits.
    classifier.load_state_dict(weights)
    return classifier.eval()


# ---- Hub folder: weights, timm config, model card ----------------------------------------------------------
def export_classifier(model: TCLModel, out_dir: str | Path, *, backbone: str, label_names: list[str],
                      contract: InputContract, in_chans: int = 3) -> Path:
    """Write the classifier as model.safetensors + config.json in timm's format to ``out_dir``.

    The config's data section is the run's input contract, so ``timm.data.create_transform`` on the loaded
    model rebuilds the evaluation preprocessing under which the run's accuracy was measured.
    """
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
    out_dir = Path(out_dir)
    run_config = public_config(run_config)
    export_classifier(model, out_dir, backbone=run_config["model"]["backbone"], label_names=label_names,
                      contract=contract)
    save_tcl_pretrained(model, prototypes, out_dir, run_config, class_names=list(label_names))
    load_ref = f"hf-hub:{repo_id}" if repo_id else LOCAL_LOAD_REF
    model_card(run_config, metrics, load_ref=load_ref).save(out_dir / "README.md")
    return out_dir


def _is_local_path(value: str) -> bool:
    """A path on this machine rather than a Hub id (``namespace/name`` never starts with / . or ~)."""
    return os.path.isabs(value) or value.startswith((".", "~")) or Path(value).exists()


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
    if isinstance(data.get("path"), str) and _is_local_path(data["path"]):
        data["path"] = f"./{Path(data['path']).name}"
    return public


def _dataset(data: dict) -> tuple[str, str, str | None]:
    """(display name, type for model-index, hub dataset id or None) of the run's training data."""
    if data.get("format") == "digits":
        return "scikit-learn digits", "digits", None
    if data.get("format") == "webvision":
        mini = data.get("num_classes") == 50
        return ("mini-WebVision" if mini else "WebVision 1.0"), "webvision", None
    if data.get("format") == "clothing1m":
        return "Clothing1M", "clothing1m", None
    path = str(data.get("path"))
    if _is_local_path(path):
        return Path(path).name, Path(path).name, None
    return path, path, path


def _noise_text(noise: dict) -> str:
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
    return float(value) if isinstance(value, (int, float)) else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# (metrics key, metric type on the Hub, name shown, split it was measured on)
_CARD_METRICS = (
    ("test_acc", "accuracy", "Test accuracy", "test"),
    ("knn_acc", "accuracy", "kNN test accuracy (projections)", "test"),
    ("noise_auc", "roc_auc", "Noise detection AUC", "train"),
    ("noise_precision", "precision", "Noise detection precision", "train"),
    ("noise_recall", "recall", "Noise detection recall", "train"),
)


def model_card(run_config: dict, metrics: dict, *, load_ref: str) -> ModelCard:
    """The model card: YAML metadata (library, tags, dataset, eval results) and a body that explains the run."""
    data, mdl = run_config.get("data", {}), run_config.get("model", {})
    backbone, method = mdl.get("backbone", "?"), run_config.get("method", "tcl")
    name, dataset_type, dataset_id = _dataset(data)
    splits = {"train": data.get("train_split", "train"), "test": data.get("test_split", "test")}
    model_name = f"{method}-{backbone}-{dataset_type.split('/')[-1]}"
    results = [EvalResult(task_type="image-classification", dataset_type=dataset_type, dataset_name=name,
                          dataset_split=splits[split], metric_type=kind, metric_name=label, metric_value=value)
               for key, kind, label, split in _CARD_METRICS if (value := _value(metrics, key)) is not None]
    card_data = ModelCardData(
        library_name="timm", license="apache-2.0", pipeline_tag="image-classification", model_name=model_name,
        tags=["image-classification", "timm", "noisy-labels", *(["tcl"] if method == "tcl" else []),
              "tcl_hf", dataset_type.split("/")[-1]],
        datasets=[dataset_id] if dataset_id else None,
        metrics=sorted({r.metric_type for r in results}) or None, eval_results=results or None,
    )
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{_card_body(run_config, metrics, load_ref, name)}")


def _card_body(run_config: dict, metrics: dict, load_ref: str, dataset_name: str) -> str:
    backbone = run_config.get("model", {}).get("backbone", "?")
    recipe = ("Twin Contrastive Learning (TCL, Huang et al., CVPR 2023)" if run_config.get("method", "tcl") == "tcl"
              else "plain cross-entropy (the baseline of the tcl_hf project)")
    noise = _noise_text(run_config.get("noise", {}))
    if _value(metrics, "noise_auc") is not None or _value(metrics, "noise_precision") is not None:
        detection = (
            "The detector's per-sample clean probability, scored against the known clean training labels "
            "(a label is flagged noisy when its clean probability is below 0.5):\n\n"
            "| true noise rate | estimated clean ratio | AUC | precision | recall | flagging accuracy |\n"
            "|---|---|---|---|---|---|\n"
            f"| {_fmt(_value(metrics, 'noise_rate'))} | {_fmt(_value(metrics, 'clean_ratio_est'))} "
            f"| {_fmt(_value(metrics, 'noise_auc'))} | {_fmt(_value(metrics, 'noise_precision'))} "
            f"| {_fmt(_value(metrics, 'noise_recall'))} | {_fmt(_value(metrics, 'noise_acc'))} |\n")
    else:
        detection = ("No clean training labels were available, so detection quality was not measured; the "
                     f"estimated fraction of clean labels is {_fmt(_value(metrics, 'clean_ratio_est'))}.\n")
    return f"""
# {backbone} on {dataset_name}, trained on noisy labels

An image classifier trained with {recipe} on {dataset_name}, using {noise}.
It is the timm backbone `{backbone}` followed by TCL's classifier head, exported as the timm architecture
`{ARCHITECTURE}`, which the `tcl_hf` package registers with timm when it is imported.

## Results

| metric | value |
|---|---|
| test accuracy | {_fmt(_value(metrics, 'test_acc'))} |
| kNN test accuracy (projections) | {_fmt(_value(metrics, 'knn_acc'))} |
| epochs | {metrics.get('epochs_completed', metrics.get('epoch', 'n/a'))} |

## Noise detection (training set)

{detection}
## How to use

```python
import timm
import tcl_hf  # registers the {ARCHITECTURE} architecture with timm
from PIL import Image

model = timm.create_model("{load_ref}", pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))
logits = model(transform(Image.open("image.png").convert("RGB")).unsqueeze(0))
print(model.pretrained_cfg["label_names"][logits.argmax(1).item()])
```

Fine-tune on other classes with `timm.create_model("{load_ref}", pretrained=True, num_classes=N)`.

## Continue training

`{TCL_WEIGHTS}` and `{TCL_CONFIG}` hold the whole TCL module (encoder, projector, classifier) and the class
prototypes: `tcl_hf.hub.load_tcl_pretrained(<this folder or repo id>)` returns them.

## Recipe

```yaml
{yaml.safe_dump(run_config, sort_keys=False).rstrip()}
```
"""


# ---- full TCL state for continued training -----------------------------------------------------------------
class TCLPretrained(NamedTuple):
    model: TCLModel
    prototypes: torch.Tensor
    config: dict


def save_tcl_pretrained(model: TCLModel, prototypes: torch.Tensor, out_dir: str | Path, run_config: dict,
                        class_names: list[str] | None = None) -> Path:
    """Write the whole TCL module and its prototypes [C, d] (safetensors) with the config that rebuilds them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mdl = run_config["model"]
    model_args = {"backbone": mdl["backbone"], "num_classes": model.num_classes,
                  "proj_dim": model.projector[3].out_features, "dropout": model.classifier[3].p}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors[PROTOTYPES_KEY] = prototypes.detach().cpu().float().contiguous()
    safetensors.torch.save_file(tensors, out_dir / TCL_WEIGHTS, metadata={"format": "pt"})
    config = {"model_args": model_args, "class_names": class_names, "run_config": run_config}
    (out_dir / TCL_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def _tcl_files(source: str, revision: str | None) -> tuple[Path, Path]:
    """Local paths of the two TCL state files: from a folder, or downloaded from a Hub repo."""
    folder = Path(source)
    if folder.is_dir():
        paths = folder / TCL_WEIGHTS, folder / TCL_CONFIG
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise TCLError(f"{folder}: no TCL state here (missing {', '.join(missing)}); "
                           "point at a run's hub/ folder or a Hub repo made by tcl_hf")
        return paths
    repo_id = source.removeprefix("hf-hub:")
    try:
        return tuple(Path(hf_hub_download(repo_id, name, revision=revision)) for name in (TCL_WEIGHTS, TCL_CONFIG))
    except (HfHubHTTPError, _CLIENT_ERROR, OSError, ValueError) as exc:
        raise TCLError(f"cannot load TCL state from {source!r}: not a local folder, and the Hub download failed "
                       f"({_reason(exc)})") from None


def load_tcl_pretrained(source: str | Path, revision: str | None = None) -> TCLPretrained:
    """(TCLModel, prototypes, config) from a folder written by ``save_tcl_pretrained`` or a Hub repo id."""
    weights_path, config_path = _tcl_files(str(source), revision)
    config = json.loads(config_path.read_text())
    model = TCLModel(**config["model_args"], pretrained=False)
    tensors = safetensors.torch.load_file(str(weights_path))
    prototypes = tensors.pop(PROTOTYPES_KEY)
    model.load_state_dict(tensors)
    return TCLPretrained(model, prototypes, config)


# ---- push ------------------------------------------------------------------------------------------------------
def _reason(exc: Exception) -> str:
    if isinstance(exc, OfflineModeIsEnabled):
        return "offline mode is on: HF_HUB_OFFLINE=1"
    if isinstance(exc, HfHubHTTPError) and getattr(exc, "response", None) is not None:
        status = exc.response.status_code
        hint = " (check that the token has write access to this repo)" if status in (401, 403) else ""
        detail = exc.server_message or str(exc)
        return f"HTTP {status}: {detail.strip().splitlines()[0]}{hint}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                commit_message: str = "Upload TCL classifier (tcl_hf)") -> str:
    """Create the model repo if needed and upload ``folder``; returns the commit URL.

    The token comes from the usual places (HF_TOKEN, ``hf auth login``). Any failure raises TCLError with one
    line saying that the push failed and where the local export is; nothing local is touched.
    """
    folder = Path(folder)
    where = f"the local export is intact in {folder}"
    token = get_token()
    if token is None:
        raise TCLError(f"hub push to {repo_id!r} failed: no Hugging Face token (set HF_TOKEN or run "
                       f"`hf auth login`); {where}")
    api = HfApi(token=token, library_name="tcl_hf")
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision:
            # Uploading to a branch that does not exist yet would fail.
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                   commit_message=commit_message)
    except (HfHubHTTPError, _CLIENT_ERROR, OSError, ValueError) as exc:
        raise TCLError(f"hub push to {repo_id!r} failed ({_reason(exc)}); {where}") from None
    return commit.commit_url


def check_push_token(repo_id: str | None) -> None:
    """Before training, when the run is to push: a token must exist and the Hub must accept it, so
    hours of training do not end in a push that was bound to fail.

    Skipped offline (HF_HUB_OFFLINE=1): the push at the end then fails in one line, after every local
    output is written. Any other failure to check (no network, Hub down) stops the run too: the push
    would meet it as well.
    """
    if not repo_id or constants.HF_HUB_OFFLINE:
        return
    instead = ("or set HF_HUB_OFFLINE=1 to train now and push later with "
               "`python -m tcl_hf.export RUN_DIR --push REPO`")
    token = get_token()
    if token is None:
        raise TCLError(f"hub.repo_id: pushing to {repo_id!r} needs a Hugging Face token: set HF_TOKEN or run "
                       f"`hf auth login`, {instead}")
    try:
        info = HfApi(token=token, library_name="tcl_hf").whoami()
    except (HfHubHTTPError, _CLIENT_ERROR, OSError, ValueError) as exc:
        raise TCLError(f"hub.repo_id: cannot push to {repo_id!r}: the token check failed ({_reason(exc)}); "
                       f"fix the token or network, {instead}") from None
    if info.get("auth", {}).get("accessToken", {}).get("role") == "read":
        raise TCLError(f"hub.repo_id: cannot push to {repo_id!r}: the token is read-only; use a token with write "
                       f"access, {instead}")
