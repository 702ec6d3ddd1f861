"""Typed run configuration: recipe YAML + dotted command-line overrides, validated before any work.

Every key lives in a dataclass below; its type hint is the contract and its ``check`` metadata the
allowed range. ``load_config`` turns a recipe and ``key=value`` overrides into a validated ``Config``
or raises ``ConfigError`` with one line naming the key and what is allowed.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import yaml

from .errors import ConfigError
from .recipe import build, flatten, in_range, non_negative, option, parse_override, positive, read_recipe, set_dotted
from .recipe import flat_keys as _flat_keys
from .recipe import to_dict

__all__ = ["Config", "load_config", "validate", "save_config", "to_dict", "flatten", "flat_keys", "read_recipe",
           "parse_override", "MAX_IMAGE_PIXELS"]


# numpy's seeding (np.random.seed, through accelerate's set_seed) takes 0..2**32-1.
_seed = in_range(0, 2**32 - 1)
# More pixels than any WebVision/Clothing1M image (shop and web photos, mostly under 1 MP) or a 36 MP
# camera photo, and well under PIL's own bomb limit (89 MP), where one image costs ~0.7 GB to decode.
MAX_IMAGE_PIXELS = 40_000_000


def _batch_size(v):
    # In training mode BatchNorm normalises over the batch: one sample has no variance, and it raises.
    return None if v >= 2 else "must be >= 2: BatchNorm needs at least two samples per batch"


def repo_id_problem(v: str | None) -> str | None:
    """What is wrong with a Hub repo id (namespace/name, by huggingface_hub's own rules), or None."""
    if v is None:
        return None
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(v)
    except HFValidationError as exc:
        return f"is not a valid Hub repo id ({str(exc).strip().splitlines()[0]})"
    return None if v.count("/") == 1 else "must be namespace/name (your user or organisation, then the repo name)"


def _warmup_epochs(v):
    return None if v == "auto" else non_negative(v)


def _triple(v):
    if v is None:
        return None
    if len(v) != 3 or any(x is None for x in v):
        return "must be a list of 3 numbers (one per RGB channel)"
    return None


@dataclass
class DataConfig:
    format: Literal["hf", "digits", "webvision", "clothing1m", "imagefolder", "image_list"] = option(
        "hf", help="how to read the data (imagefolder: a folder per class; image_list: a parquet/csv file of image "
        "paths and labels)")
    path: str = option("uoft-cs/cifar10", help="hub id, local folder in hub layout, data files, an image folder or "
                       "an image list")
    root: Optional[str] = option(None, help="dataset folder in its standard layout (webvision, clothing1m)")
    num_classes: Optional[int] = option(None, positive, "the data's class count, checked (webvision: keep classes < N, "
                                        "50 = mini-WebVision); null = whatever the data has")
    imagenet_val: Optional[str] = option(None, help="webvision: ILSVRC12 val folder, one sub-folder per class index")
    samples_per_epoch: Optional[int] = option(None, positive, "clothing1m: class-balanced random subset per epoch")
    on_bad_image: Literal["skip", "error"] = option("skip", help="unreadable/missing image: skip and count, or stop")
    max_image_pixels: int = option(MAX_IMAGE_PIXELS, positive,
                                 "an image with more pixels (width x height, read from its header) is a bad image; "
                                 "40 MP is above any WebVision/Clothing1M image and a 36 MP camera photo, and stops "
                                 "decompression bombs long before PIL's 89 MP limit")
    in_memory: Optional[bool] = option(None, help="decode all images up front; null = when they fit in 4 GiB")
    on_device: Optional[bool] = option(None, help="keep the decoded images on the training device and cut batches "
                                       "there; null = when they are in memory and take at most a quarter of the "
                                       "GPU's memory (always on a CPU)")
    image_column: Optional[str] = option(None, help="image column; null = the first Image column")
    label_column: Optional[str] = option(None, help="label column; null = the first ClassLabel column")
    clean_label_column: Optional[str] = option(None, help="column with known clean labels, if any")
    train_split: str = option("train")
    test_split: str = option("test")
    test_fraction: Optional[float] = option(None, in_range(0.0, 1.0, lo_open=True, hi_open=True),
                                            "data without a test split: hold out this seeded, class-stratified "
                                            "fraction of the training split as the test set")
    limit: Optional[int] = option(None, positive, "use a seeded, class-stratified sample of N train and N test rows")
    # 1024 is the largest input of any pretrained timm model (SAM ViTs); a batch of 256 such images
    # already needs >3 GB for its views, and larger sizes only exhaust memory.
    image_size: Optional[int] = option(None, in_range(1, 1024),
                                     "view size, at most 1024; null = the backbone's input size")
    crop_pct: Optional[float] = option(None, in_range(0.0, 1.0, lo_open=True),
                                     "evaluation crop fraction (timm's); null = 1.0 up to 64 px, else the backbone's")
    interpolation: Optional[Literal["nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"]] = option(
        None, help="resize filter; null = the backbone's (timm data config)")
    mean: Optional[list[float]] = option(None, _triple, "normalisation mean; null = from the data")
    std: Optional[list[float]] = option(None, _triple, "normalisation std; null = from the data")
    num_workers: int = option(0, non_negative, "loader worker processes")


@dataclass
class NoiseConfig:
    type: Literal["none", "sym", "asym", "file", "cifarn"] = option("none")
    rate: float = option(0.0, in_range(0.0, 1.0), "fraction of samples whose label is redrawn")
    file: Optional[str] = option(None, help=".npy label file, or CIFAR-10_human.pt / CIFAR-100_human.pt")
    label_set: Optional[str] = option(None, help="cifarn: aggre, worse, random1-3 (10N) or noisy (100N)")
    seed: Optional[int] = option(None, _seed, "seed of the synthetic noise, 0..2**32-1; null = the run's seed")


@dataclass
class ModelConfig:
    backbone: str = option("preact_resnet18_cifar", help="any timm model name")
    pretrained: bool = option(False)
    pretrained_file: Optional[str] = option(None, help="offline weights for the backbone (implies pretrained)")
    proj_dim: int = option(256, positive, "projection dimension d")
    dropout: float = option(0.25, in_range(0.0, 1.0, hi_open=True))


@dataclass
class TCLConfig:
    # Similarities (in [-1, 1]) are divided by T in float32: below 1e-3 they leave any useful range and,
    # at tiny T, overflow to inf and NaN; above 100 every assignment is uniform.
    temperature: float = option(0.25, in_range(1e-3, 100.0), "T of the contrastive loss and the assignments")
    mixup_alpha: float = option(1.0, positive)
    scale1: Optional[float] = option(None, in_range(0.0, 1.0), "null = estimated clean ratio")
    scale2: Optional[float] = option(None, in_range(0.0, 1.0), "null = estimated clean ratio")
    per_class_gmm: bool = option(False, help="one GMM per class (reference sep_gmm)")
    gmm_backend: Literal["torch", "sklearn"] = option("torch", help="torch: all classes at once on the device; "
                                                       "sklearn: the reference's GaussianMixture, class by class")
    em_subset: Optional[int] = option(None, positive, "EM steps after the first use a class-stratified random "
                                      "subset of this many training samples; the others keep their confidence "
                                      "from their last EM step (Clothing1M-scale sets); null = every sample")
    lambda_con: float = option(1.0, non_negative, "weight of the contrastive loss; 0.25 = the reference's "
                             "effective weight on its 4 GPUs (paper recipes)")
    lambda_cls: float = option(1.0, non_negative)
    lambda_align: float = option(1.0, non_negative)
    lambda_ent: float = option(1.0, non_negative)
    lambda_ne: float = option(1.0, non_negative)


@dataclass
class AugConfig:
    crop_padding: Optional[int] = option(None, non_negative, "weak view padding; null = size/8")
    strong_scale_min: float = option(0.2, in_range(0.0, 1.0, lo_open=True))
    hflip: bool = option(True)
    pipeline: Literal["batched", "pil"] = option("batched", help="batched: the views on the training device; pil: "
                                                 "the reference's per-image PIL transforms in loader workers")


@dataclass
class OptimConfig:
    # The optimizer applies lr (times total batch / 256) as a float32: past 3.4e38 the step itself
    # raises. 1e6 is far beyond any useful value (the reference uses 0.03) and far from that overflow;
    # a large lr that merely diverges is stopped by the non-finite loss check.
    lr: float = option(0.03, in_range(0.0, 1e6, lo_open=True), "base lr for a total batch of 256")
    scale_lr: bool = option(True, help="lr = optim.lr * total_batch / 256")
    momentum: float = option(0.9, in_range(0.0, 1.0, hi_open=True))
    weight_decay: float = option(1e-3, non_negative)
    min_lr_ratio: float = option(0.01, in_range(0.0, 1.0))
    warmup_epochs: Union[int, Literal["auto"]] = option(
        20, _warmup_epochs, "epochs of warm-up (the paper's 20); auto = until the classifier beats chance on the "
        "given labels and the EM step's clean-ratio estimate has settled (tcl_hf/schedule.py)")
    max_warmup_epochs: Optional[int] = option(None, positive, "warmup_epochs=auto: switch to TCL after at most this "
                                              "many warm-up epochs; null = half of train.epochs")
    cosine_quirk: bool = option(True, help="reference cosine over `epochs`, not `epochs - warmup`")


@dataclass
class TrainConfig:
    epochs: int = option(200, positive)
    batch_size: int = option(256, _batch_size, "per process; at least 2 (BatchNorm needs two samples)")
    eval_batch_size: Optional[int] = option(None, positive, "EM step and evaluation batch; null = 4 x batch_size")
    max_steps: Optional[int] = option(None, positive, "stop after N optimizer steps")
    grad_accum_steps: int = option(1, positive)
    compile: Optional[bool] = option(None, help="torch.compile the model; null = on a GPU")
    mixed_precision: Optional[Literal["no", "fp16", "bf16"]] = option(None, help="null = the launcher's")
    sync_bn: bool = option(True, help="SyncBatchNorm with several processes")
    resume: bool = option(False, help="continue from the newest checkpoint in output_dir")
    checkpoints_to_keep: int = option(2, positive)
    on_collapse: Literal["warn", "stop", "fallback"] = option(
        "fallback", help="a TCL run whose classifier degenerated (tcl_hf/health.py): print one line and train on "
                         "(warn); "
                     "also save a checkpoint and exit non-zero, again on each resume (stop); or go back to the "
                     "checkpoint from before TCL began and train the remaining epochs as method=ce (fallback)")


@dataclass
class EvalConfig:
    every: int = option(1, positive, "evaluate the held-out sets every N epochs (and after the last)")
    knn_k: int = option(200, positive)
    knn_t: float = option(0.1, positive)


@dataclass
class LogConfig:
    with_: Optional[Literal["wandb"]] = option(None, help="tracker; null/none = metrics files only")
    project: str = option("tcl_hf")
    run_name: Optional[str] = option(None)
    progress: bool = option(True, help="progress bar on the main process")
    every: int = option(20, positive, "read the loss terms off the device every N steps: the progress bar, the "
                        "divergence check and a stop signal with several processes answer at that pace")
    review_top: int = option(1000, positive, "label_issues.html shows the N most suspect training samples")


@dataclass
class HubConfig:
    repo_id: Optional[str] = option(None, repo_id_problem,
                                    "push the exported classifier to this Hub repo (namespace/name)")
    private: bool = option(False)
    revision: Optional[str] = option(None, help="branch to push to")


@dataclass
class InitConfig:
    from_: Optional[str] = option(None, help="method=tcl_plus: the folder of a finished TCL run to start from")
    accept_failed: bool = option(False, help="method=tcl_plus: start even from a TCL run whose summary.json verdict "
                                 "says it failed (collapsed, or never left warm-up; tcl_hf/verdict.py)")


@dataclass
class PlusConfig:
    threshold: float = option(0.5, in_range(0.0, 1.0, hi_open=True), "relabel a sample to its cluster when its "
                              "largest TCL assignment exceeds this")
    ema: float = option(0.0, in_range(0.0, 1.0, hi_open=True), "teacher = ema * teacher + (1 - ema) * network "
                        "after each step; 0 = the current network (the reference's default)")
    teacher_weight: float = option(0.2, in_range(0.0, 1.0), "weight of the teacher's prediction in the target")
    start_correction: int = option(30, non_negative, "the teacher enters the target after this many epochs")
    constant_lr: bool = option(True, help="the reference keeps the lr constant in this stage; false = the schedule")


@dataclass
class Config:
    output_dir: str = option("runs/tcl")
    seed: int = option(0, _seed, "0..2**32-1")
    method: Literal["tcl", "ce", "tcl_plus"] = option("tcl", help="TCL, the cross-entropy baseline, or TCL+ (the "
                                                            "reference's relabel-and-refine stage after a TCL run)")
    overwrite: bool = option(False, help="replace the outputs of an earlier run in output_dir")
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
    init: InitConfig = field(default_factory=InitConfig)
    plus: PlusConfig = field(default_factory=PlusConfig)


def load_config(recipe: str | Path | None, overrides: list[str] = ()) -> Config:
    """Recipe + overrides -> validated Config (raises ConfigError on the first problem)."""
    tree = read_recipe(recipe) if recipe is not None else {}
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
    cfg = build(Config, tree, "")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-key checks that a single field's type cannot express."""
    if not cfg.output_dir.strip():
        raise ConfigError("output_dir: must not be empty (an empty value would train into the current folder); "
                          "name a folder, e.g. output_dir=runs/my_run")
    _check_output_dir(cfg.output_dir)
    if cfg.noise.type in ("file", "cifarn") and not cfg.noise.file:
        what = ("a .npy with one label per training sample" if cfg.noise.type == "file"
                else "CIFAR-10_human.pt or CIFAR-100_human.pt")
        raise ConfigError(f"noise.file: required when noise.type={cfg.noise.type} ({what})")
    if cfg.noise.type in ("file", "cifarn") and not Path(cfg.noise.file).is_file():
        raise ConfigError(f"noise.file: {cfg.noise.file!r} does not exist")
    if cfg.noise.type == "cifarn" and not cfg.noise.label_set:
        raise ConfigError("noise.label_set: required when noise.type=cifarn "
                          "(aggre, worse, random1, random2, random3 for CIFAR-10N; noisy for CIFAR-100N)")
    from .data.registry import get_source  # the sources load numpy and PIL, which `import tcl_hf` does without

    get_source(cfg.data.format).check(cfg.data)
    if cfg.data.imagenet_val and not Path(cfg.data.imagenet_val).is_dir():
        raise ConfigError(f"data.imagenet_val: {cfg.data.imagenet_val!r} is not a folder")
    if cfg.model.pretrained_file and not Path(cfg.model.pretrained_file).is_file():
        raise ConfigError(f"model.pretrained_file: {cfg.model.pretrained_file!r} does not exist")
    if cfg.noise.type in ("sym", "asym") and cfg.noise.rate == 0.0:
        raise ConfigError(f"noise.rate: must be > 0 when noise.type={cfg.noise.type} (or use noise.type=none)")
    if (cfg.method == "tcl_plus") != (cfg.init.from_ is not None):
        raise ConfigError("init.from: method=tcl_plus starts from a finished TCL run (init.from=RUN_DIR), and only "
                          "it takes one")
    if cfg.init.from_ is not None and not Path(cfg.init.from_).is_dir():
        raise ConfigError(f"init.from: {cfg.init.from_!r} is not a folder (the output_dir of a finished TCL run)")
    if cfg.data.on_device and cfg.data.in_memory is False:
        raise ConfigError("data.on_device: true needs the images decoded in memory; drop data.in_memory=false")
    if cfg.data.on_device and cfg.aug.pipeline == "pil":
        raise ConfigError("data.on_device: the pil pipeline makes its views in loader workers on the CPU; "
                          "use aug.pipeline=batched or data.on_device=false")
    if (cfg.data.mean is None) != (cfg.data.std is None):
        raise ConfigError("data.mean/data.std: give both or neither")
    if cfg.data.std is not None and any(s <= 0 for s in cfg.data.std):
        raise ConfigError(f"data.std: {cfg.data.std} must be > 0 per channel")
    _check_backbone(cfg.model.backbone)


def warn_at_start_up(cfg: Config, print_line: Callable[[str], None]) -> None:
    """One 'warning:' line for a setting that is allowed but almost certainly not meant, at the start of a run."""
    from .schedule import tcl_starts_at  # the schedule says when TCL starts (it imports torch: not at the top)

    warmup, epochs = cfg.optim.warmup_epochs, cfg.train.epochs
    if cfg.method == "tcl" and warmup != "auto" and tcl_starts_at(warmup) >= epochs:
        when = "never starts" if tcl_starts_at(warmup) > epochs else "trains only in the last epoch"
        print_line(f"warning: optim.warmup_epochs={warmup} >= train.epochs={epochs}: TCL {when} (every earlier "
                   f"epoch is warm-up); lower optim.warmup_epochs or raise train.epochs")


def _check_output_dir(value: str) -> None:
    """Refuse a folder that holds far more than a run: the root of the file system, the home folder, and the
    folder tcl_hf is started from or one that holds it (where the user's project is). Any other folder that is
    neither empty nor a run's is refused when the run starts (tcl_hf.rundir)."""
    path, cwd, home = Path(value).resolve(), Path.cwd().resolve(), Path.home().resolve()
    what = ("the root of the file system" if path == Path(path.anchor) else "your home folder" if path == home
            else "the current folder" if path == cwd else "a folder that holds the current one" if path in cwd.parents
            else None)
    if what:
        raise ConfigError(f"output_dir: {value!r} is {what}; a run writes its files and removes them on overwrite, "
                          f"so name a folder for this run, e.g. output_dir=runs/my_run")


def _check_backbone(name: str) -> None:
    import timm  # importing it registers the project's own architectures (tcl_hf/__init__.py)

    if not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5, cutoff=0.6)
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ConfigError(f"model.backbone: {name!r} is not a timm model name{hint}; see timm.list_models()")


def save_config(cfg: Config, path: str | Path) -> None:
    from .rundir.files import atomic_write_text  # rundir reads configs: imported here, not at the top

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def flat_keys() -> dict[str, Any]:
    """Every dotted key of ``Config`` with its type hint (used by tests and the docs)."""
    return _flat_keys(Config)
