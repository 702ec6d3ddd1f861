"""Typed run configuration: recipe YAML + dotted command-line overrides, validated before any work.

Every key lives in a dataclass below; its type hint is the contract and its ``check`` metadata the
allowed range. ``load_config`` turns a recipe and ``key=value`` overrides into a validated ``Config``
or raises ``ConfigError`` with one line naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .errors import ConfigError


def _opt(default, check=None, help=""):
    """A config field with an optional validity check ``check(value) -> error text or None``."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"check": check, "help": help})
    return field(default=default, metadata={"check": check, "help": help})


def _in_range(lo=None, hi=None, lo_open=False, hi_open=False):
    def check(v):
        if v is None:
            return None
        bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
        bad_hi = hi is not None and (v >= hi if hi_open else v > hi)
        if bad_lo or bad_hi:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            return f"must be in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        return None
    return check


def _positive(v):
    return None if v is None or v > 0 else "must be > 0"


def _non_negative(v):
    return None if v is None or v >= 0 else "must be >= 0"


# numpy's seeding (np.random.seed, through accelerate's set_seed) takes 0..2**32-1.
_seed = _in_range(0, 2**32 - 1)
# More pixels than any WebVision/Clothing1M image (shop and web photos, mostly under 1 MP) or a 36 MP
# camera photo, and well under PIL's own bomb limit (89 MP), where one image costs ~0.7 GB to decode.
MAX_IMAGE_PIXELS = 40_000_000


def _batch_size(v):
    # In training mode BatchNorm normalises over the batch: one sample has no variance, and it raises.
    return None if v >= 2 else "must be >= 2: BatchNorm needs at least two samples per batch"


def _repo_id(v):
    """A Hub model repo as namespace/name, valid by huggingface_hub's own rules."""
    if v is None:
        return None
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(v)
    except HFValidationError as exc:
        return f"is not a valid Hub repo id ({str(exc).strip().splitlines()[0]})"
    return None if v.count("/") == 1 else "must be namespace/name (your user or organisation, then the repo name)"


def _triple(v):
    if v is None:
        return None
    if len(v) != 3 or any(x is None for x in v):
        return "must be a list of 3 numbers (one per RGB channel)"
    return None


@dataclass
class DataConfig:
    format: Literal["hf", "digits", "webvision", "clothing1m"] = _opt("hf", help="how to read the data")
    path: str = _opt("uoft-cs/cifar10", help="hub id, local folder in hub layout, or data files")
    root: Optional[str] = _opt(None, help="dataset folder in its standard layout (webvision, clothing1m)")
    num_classes: Optional[int] = _opt(None, _positive, "webvision: keep classes < N (50 = mini-WebVision)")
    imagenet_val: Optional[str] = _opt(None, help="webvision: ILSVRC12 val folder, one sub-folder per class index")
    samples_per_epoch: Optional[int] = _opt(None, _positive, "clothing1m: class-balanced random subset per epoch")
    on_bad_image: Literal["skip", "error"] = _opt("skip", help="unreadable/missing image: skip and count, or stop")
    max_image_pixels: int = _opt(MAX_IMAGE_PIXELS, _positive,
                                 "an image with more pixels (width x height, read from its header) is a bad image; "
                                 "40 MP is above any WebVision/Clothing1M image and a 36 MP camera photo, and stops "
                                 "decompression bombs long before PIL's 89 MP limit")
    in_memory: Optional[bool] = _opt(None, help="decode all images up front; null = when they fit in 4 GiB")
    image_column: Optional[str] = _opt(None, help="image column; null = the first Image column")
    label_column: Optional[str] = _opt(None, help="label column; null = the first ClassLabel column")
    clean_label_column: Optional[str] = _opt(None, help="column with known clean labels, if any")
    train_split: str = _opt("train")
    test_split: str = _opt("test")
    limit: Optional[int] = _opt(None, _positive, "use only the first N train and N test samples")
    # 1024 is the largest input of any pretrained timm model (SAM ViTs); a batch of 256 such images
    # already needs >3 GB for its views, and larger sizes only exhaust memory.
    image_size: Optional[int] = _opt(None, _in_range(1, 1024),
                                     "view size, at most 1024; null = the backbone's input size")
    crop_pct: Optional[float] = _opt(None, _in_range(0.0, 1.0, lo_open=True),
                                     "evaluation crop fraction (timm's); null = 1.0 up to 64 px, else the backbone's")
    interpolation: Optional[Literal["nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"]] = _opt(
        None, help="resize filter; null = the backbone's (timm data config)")
    mean: Optional[list[float]] = _opt(None, _triple, "normalisation mean; null = from the data")
    std: Optional[list[float]] = _opt(None, _triple, "normalisation std; null = from the data")
    num_workers: int = _opt(0, _non_negative, "loader worker processes")


@dataclass
class NoiseConfig:
    type: Literal["none", "sym", "asym", "file", "cifarn"] = _opt("none")
    rate: float = _opt(0.0, _in_range(0.0, 1.0), "fraction of samples whose label is redrawn")
    file: Optional[str] = _opt(None, help=".npy label file, or CIFAR-10_human.pt / CIFAR-100_human.pt")
    label_set: Optional[str] = _opt(None, help="cifarn: aggre, worse, random1-3 (10N) or noisy (100N)")
    seed: Optional[int] = _opt(None, _seed, "seed of the synthetic noise, 0..2**32-1; null = the run's seed")


@dataclass
class ModelConfig:
    backbone: str = _opt("preact_resnet18_cifar", help="any timm model name")
    pretrained: bool = _opt(False)
    pretrained_file: Optional[str] = _opt(None, help="offline weights for the backbone (implies pretrained)")
    proj_dim: int = _opt(256, _positive, "projection dimension d")
    dropout: float = _opt(0.25, _in_range(0.0, 1.0, hi_open=True))


@dataclass
class TCLConfig:
    # Similarities (in [-1, 1]) are divided by T in float32: below 1e-3 they leave any useful range and,
    # at tiny T, overflow to inf and NaN; above 100 every assignment is uniform.
    temperature: float = _opt(0.25, _in_range(1e-3, 100.0), "T of the contrastive loss and the assignments")
    mixup_alpha: float = _opt(1.0, _positive)
    scale1: Optional[float] = _opt(None, _in_range(0.0, 1.0), "null = estimated clean ratio")
    scale2: Optional[float] = _opt(None, _in_range(0.0, 1.0), "null = estimated clean ratio")
    per_class_gmm: bool = _opt(False, help="one GMM per class (reference sep_gmm)")
    lambda_con: float = _opt(1.0, _non_negative, "weight of the contrastive loss; 0.25 = the reference's "
                             "effective weight on its 4 GPUs (paper recipes)")
    lambda_cls: float = _opt(1.0, _non_negative)
    lambda_align: float = _opt(1.0, _non_negative)
    lambda_ent: float = _opt(1.0, _non_negative)
    lambda_ne: float = _opt(1.0, _non_negative)


@dataclass
class AugConfig:
    crop_padding: Optional[int] = _opt(None, _non_negative, "weak view padding; null = size/8")
    strong_scale_min: float = _opt(0.2, _in_range(0.0, 1.0, lo_open=True))
    hflip: bool = _opt(True)


@dataclass
class OptimConfig:
    # The optimizer applies lr (times total batch / 256) as a float32: past 3.4e38 the step itself
    # raises. 1e6 is far beyond any useful value (the reference uses 0.03) and far from that overflow;
    # a large lr that merely diverges is stopped by the non-finite loss check.
    lr: float = _opt(0.03, _in_range(0.0, 1e6, lo_open=True), "base lr for a total batch of 256")
    scale_lr: bool = _opt(True, help="lr = optim.lr * total_batch / 256")
    momentum: float = _opt(0.9, _in_range(0.0, 1.0, hi_open=True))
    weight_decay: float = _opt(1e-3, _non_negative)
    min_lr_ratio: float = _opt(0.01, _in_range(0.0, 1.0))
    warmup_epochs: int = _opt(20, _non_negative)
    cosine_quirk: bool = _opt(True, help="reference cosine over `epochs`, not `epochs - warmup`")


@dataclass
class TrainConfig:
    epochs: int = _opt(200, _positive)
    batch_size: int = _opt(256, _batch_size, "per process; at least 2 (BatchNorm needs two samples)")
    eval_batch_size: Optional[int] = _opt(None, _positive, "null = 2 x batch_size")
    max_steps: Optional[int] = _opt(None, _positive, "stop after N optimizer steps")
    grad_accum_steps: int = _opt(1, _positive)
    mixed_precision: Optional[Literal["no", "fp16", "bf16"]] = _opt(None, help="null = the launcher's")
    sync_bn: bool = _opt(True, help="SyncBatchNorm with several processes")
    resume: bool = _opt(False, help="continue from the newest checkpoint in output_dir")
    checkpoints_to_keep: int = _opt(2, _positive)


@dataclass
class EvalConfig:
    knn_k: int = _opt(200, _positive)
    knn_t: float = _opt(0.1, _positive)


@dataclass
class LogConfig:
    with_: Optional[Literal["wandb"]] = _opt(None, help="tracker; null/none = metrics files only")
    project: str = _opt("tcl_hf")
    run_name: Optional[str] = _opt(None)
    progress: bool = _opt(True, help="progress bar on the main process")


@dataclass
class HubConfig:
    repo_id: Optional[str] = _opt(None, _repo_id, "push the exported classifier to this Hub repo (namespace/name)")
    private: bool = _opt(False)
    revision: Optional[str] = _opt(None, help="branch to push to")


@dataclass
class Config:
    output_dir: str = _opt("runs/tcl")
    seed: int = _opt(0, _seed, "0..2**32-1")
    method: Literal["tcl", "ce"] = _opt("tcl")
    overwrite: bool = _opt(False, help="replace the outputs of an earlier run in output_dir")
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tcl: TCLConfig = field(default_factory=TCLConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    hub: HubConfig = field(default_factory=HubConfig)


def _key_name(f: dataclasses.Field) -> str:
    # `with` is a Python keyword, so the field is `with_` while the key stays `log.with`.
    return f.name.rstrip("_")


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {_key_name(f): f for f in dataclasses.fields(cls)}


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return " | ".join(_describe(a) for a in inner) + " | null"
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin is list:
        return f"list of {_describe(args[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp) -> Any:
    """Convert a parsed YAML value to the field type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is Literal:
        if value is False and "no" in args:
            return "no"  # YAML 1.1 reads a bare `no` as false
        if isinstance(value, str) and value.lower() in args:
            return value.lower()
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of: {_describe(tp)}")
    if origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            # YAML 1.1 reads `1e-3` as a string, so numbers may arrive as text.
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls, values: dict, prefix: str):
    """Instantiate dataclass ``cls`` from a nested dict, checking every key and value."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'recipe'}: expected a mapping of keys, got {values!r}")
    fields = _fields(cls)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown key '{full}'; allowed here: {', '.join(sorted(fields))}")
        f = fields[key]
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, value if value is not None else {}, f"{full}.")
            continue
        coerced = _coerce(full, value, tp)
        check = f.metadata.get("check")
        problem = check(coerced) if check else None
        if problem:
            raise ConfigError(f"{full}: {value!r} {problem}")
        kwargs[f.name] = coerced
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", parsed value); YAML rules for the value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.epochs=10)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key before '='")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def read_recipe(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file {str(path)!r} does not exist")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"recipe {path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); "
                          f"a recipe is a YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        # Some YAML errors (control characters) span several lines; the first says what is wrong.
        problem = str(getattr(exc, "problem", None) or exc).strip().splitlines()[0]
        raise ConfigError(f"recipe {path}{where}: not valid YAML ({problem})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"recipe {path}: expected a mapping of keys at the top level")
    return tree


def load_config(recipe: str | Path | None, overrides: list[str] = ()) -> Config:
    """Recipe + overrides -> validated Config (raises ConfigError on the first problem)."""
    tree = read_recipe(recipe) if recipe is not None else {}
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    cfg = _build(Config, tree, "")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-key checks that a single field's type cannot express."""
    if not cfg.output_dir.strip():
        raise ConfigError("output_dir: must not be empty (an empty value would train into the current folder); "
                          "name a folder, e.g. output_dir=runs/my_run")
    if cfg.noise.type in ("file", "cifarn") and not cfg.noise.file:
        what = ("a .npy with one label per training sample" if cfg.noise.type == "file"
                else "CIFAR-10_human.pt or CIFAR-100_human.pt")
        raise ConfigError(f"noise.file: required when noise.type={cfg.noise.type} ({what})")
    if cfg.noise.type in ("file", "cifarn") and not Path(cfg.noise.file).is_file():
        raise ConfigError(f"noise.file: {cfg.noise.file!r} does not exist")
    if cfg.noise.type == "cifarn" and not cfg.noise.label_set:
        raise ConfigError("noise.label_set: required when noise.type=cifarn "
                          "(aggre, worse, random1, random2, random3 for CIFAR-10N; noisy for CIFAR-100N)")
    if cfg.data.format in ("webvision", "clothing1m"):
        if not cfg.data.root:
            raise ConfigError(f"data.root: required when data.format={cfg.data.format} (the dataset's top folder)")
        if not Path(cfg.data.root).is_dir():
            raise ConfigError(f"data.root: {cfg.data.root!r} is not a folder")
    if cfg.data.imagenet_val and not Path(cfg.data.imagenet_val).is_dir():
        raise ConfigError(f"data.imagenet_val: {cfg.data.imagenet_val!r} is not a folder")
    if cfg.model.pretrained_file and not Path(cfg.model.pretrained_file).is_file():
        raise ConfigError(f"model.pretrained_file: {cfg.model.pretrained_file!r} does not exist")
    if cfg.noise.type in ("sym", "asym") and cfg.noise.rate == 0.0:
        raise ConfigError(f"noise.rate: must be > 0 when noise.type={cfg.noise.type} (or use noise.type=none)")
    if (cfg.data.mean is None) != (cfg.data.std is None):
        raise ConfigError("data.mean/data.std: give both or neither")
    if cfg.data.std is not None and any(s <= 0 for s in cfg.data.std):
        raise ConfigError(f"data.std: {cfg.data.std} must be > 0 per channel")
    _check_backbone(cfg.model.backbone)


def _check_backbone(name: str) -> None:
    import timm

    from . import models  # noqa: F401  (registers the project's own architectures with timm)

    if not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5, cutoff=0.6)
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ConfigError(f"model.backbone: {name!r} is not a timm model name{hint}; see timm.list_models()")


def to_dict(cfg) -> dict:
    """Nested plain dict with the user-facing key names (``log.with``)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[_key_name(f)] = to_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested dict -> {"a.b": value}, the dotted form the command line uses."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def flat_keys(cls=Config, prefix: str = "") -> dict[str, Any]:
    """Every dotted key with its type hint (used by tests and the docs)."""
    out = {}
    hints = typing.get_type_hints(cls)
    for key, f in _fields(cls).items():
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(flat_keys(tp, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tp
    return out
