"""Networks: the spec's CIFAR PreAct ResNets as real timm models, the TCL model (encoder + heads), and the
exported classifier (``tcl_classifier``: any timm backbone + TCL's classifier head).

Importing this module registers ``preact_resnet18_cifar`` (the reference encoder),
``preact_resnet18_textbook`` (He et al.'s variant, for comparison) and ``preact_resnet_mini`` (a small
reference-style one for CPU demos and tests) and ``tcl_classifier`` with timm, so ``timm.create_model``
builds them like any other architecture and an export loads back with
``timm.create_model("local-dir:<dir>", pretrained=True)`` or ``"hf-hub:<repo>"``.
"""
from __future__ import annotations

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .errors import TCLError

ARCHITECTURE = "tcl_classifier"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


class PreActBlock(nn.Module):
    """Pre-activation basic block: a = ReLU(BN1(x)); out = conv3x3(a) -> BN2 -> ReLU -> conv3x3; out + shortcut.

    A 1x1 strided conv forms the shortcut when the shape changes, applied to ``a``. For the identity
    shortcut the two variants differ: TCL's reference adds ``a`` (``identity_from_activation``), the
    textbook block (He et al., 2016) adds the raw input ``x``.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, identity_from_activation: bool):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)
        self.identity_from_activation = identity_from_activation

    def forward(self, x):
        a = F.relu(self.bn1(x))
        if self.shortcut is not None:
            shortcut = self.shortcut(a)
        else:
            shortcut = a if self.identity_from_activation else x
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return out + shortcut


class PreActResNet(nn.Module):
    """CIFAR-style PreAct ResNet: 3x3 stride-1 stem, no max-pool, four stages, final BN+ReLU, global pool.

    ``reference=True`` builds TCL's reference network exactly (spec section 1): the stem is
    conv -> BN -> ReLU and identity shortcuts add the activated input. ``reference=False`` is the
    textbook pre-activation ResNet (a bare conv stem, identity shortcuts add the block input).
    At 32x32 input the global pool equals the reference's 4x4 average pool.
    """

    def __init__(self, layers=(2, 2, 2, 2), widths=(64, 128, 256, 512), reference: bool = True,
                 num_classes: int = 10, in_chans: int = 3, global_pool: str = "avg", drop_rate: float = 0.0,
                 **kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        stem = [nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)]
        if reference:
            stem += [nn.BatchNorm2d(widths[0]), nn.ReLU()]
        self.stem = nn.Sequential(*stem)
        stages, in_chs, self.feature_info = [], widths[0], []
        for i, (depth, width) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            blocks = [PreActBlock(in_chs if j == 0 else width, width, stride if j == 0 else 1, reference)
                      for j in range(depth)]
            stages.append(nn.Sequential(*blocks))
            in_chs = width
            self.feature_info.append(dict(num_chs=width, reduction=2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(in_chs)
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x):
        x = self.stages(self.stem(x))
        return F.relu(self.norm(x))

    def forward_head(self, x, pre_logits: bool = False):
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs):
    return {
        "num_classes": 10, "input_size": (3, 32, 32), "pool_size": (4, 4), "crop_pct": 1.0,
        "interpolation": "bilinear", "mean": CIFAR10_MEAN, "std": CIFAR10_STD,
        "first_conv": "stem.0", "classifier": "fc", "license": "apache-2.0", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "preact_resnet18_cifar.untrained": _cfg(),
    "preact_resnet18_textbook.untrained": _cfg(),
    "preact_resnet_mini.untrained": _cfg(),
    # The exported classifier; an export overrides this with its run's input contract.
    ARCHITECTURE: {
        "num_classes": 10, "input_size": (3, 32, 32), "crop_pct": 1.0, "interpolation": "bilinear",
        "mean": CIFAR10_MEAN, "std": CIFAR10_STD, "classifier": "classifier.4", "license": "apache-2.0",
    },
})


def _create(variant: str, pretrained: bool, **kwargs) -> PreActResNet:
    return build_model_with_cfg(PreActResNet, variant, pretrained, **kwargs)


@register_model
def preact_resnet18_cifar(pretrained: bool = False, **kwargs) -> PreActResNet:
    """TCL's reference encoder on CIFAR ("bigresnet18_preact"), exactly: BN+ReLU stem, identity
    shortcuts from the activated input; 512-d features at 32x32."""
    return _create("preact_resnet18_cifar", pretrained, layers=(2, 2, 2, 2), widths=(64, 128, 256, 512),
                   reference=True, **kwargs)


@register_model
def preact_resnet18_textbook(pretrained: bool = False, **kwargs) -> PreActResNet:
    """The textbook pre-activation ResNet-18 (He et al., 2016) at CIFAR scale: not TCL's reference."""
    return _create("preact_resnet18_textbook", pretrained, layers=(2, 2, 2, 2), widths=(64, 128, 256, 512),
                   reference=False, **kwargs)


@register_model
def preact_resnet_mini(pretrained: bool = False, **kwargs) -> PreActResNet:
    """The reference's structure with one block per stage at a quarter width (128-d features): fast
    enough for CPU demos and tests."""
    return _create("preact_resnet_mini", pretrained, layers=(1, 1, 1, 1), widths=(16, 32, 64, 128),
                   reference=True, **kwargs)


def projector_head(in_dim: int, out_dim: int) -> nn.Sequential:
    """g: Linear(D,D)-BN-ReLU-Linear(D,d)-BN (spec section 1)."""
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.BatchNorm1d(in_dim), nn.ReLU(inplace=True),
                         nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim))


def classifier_head(in_dim: int, num_classes: int, dropout: float) -> nn.Sequential:
    """c: Linear(D,D)-BN-ReLU-Dropout-Linear(D,C)-BN (spec section 1)."""
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.BatchNorm1d(in_dim), nn.ReLU(inplace=True),
                         nn.Dropout(p=dropout), nn.Linear(in_dim, num_classes), nn.BatchNorm1d(num_classes))


class TCLModel(nn.Module):
    """Encoder f (any timm backbone, pooled features), projector g and classifier c.

    ``forward`` returns the normalized projection z and the class logits for a batch of images (z is None with
    ``project=False``: TCL+ trains encoder and classifier only).
    """

    def __init__(self, backbone: str, num_classes: int, proj_dim: int = 256, dropout: float = 0.25,
                 pretrained: bool = False, in_chans: int = 3, pretrained_cfg_overlay: dict | None = None):
        super().__init__()
        self.encoder = timm.create_model(backbone, pretrained=pretrained, num_classes=0, in_chans=in_chans,
                                         pretrained_cfg_overlay=pretrained_cfg_overlay)
        dim = self.encoder.num_features
        self.projector = projector_head(dim, proj_dim)
        self.classifier = classifier_head(dim, num_classes, dropout)
        self.num_classes = num_classes

    def forward(self, x, project: bool = True):
        h = self.encoder(x)
        return (F.normalize(self.projector(h), dim=1) if project else None), self.classifier(h)


def build_tcl_model(model_cfg, num_classes: int, sync_bn: bool = False) -> TCLModel:
    """The run's TCLModel from ``model.*``; weights that cannot be loaded give one line saying what to do."""
    weights = model_cfg.pretrained_file
    pretrained = model_cfg.pretrained or weights is not None
    try:
        model = TCLModel(model_cfg.backbone, num_classes, model_cfg.proj_dim, model_cfg.dropout, pretrained=pretrained,
                         pretrained_cfg_overlay=dict(file=weights) if weights else None)
    except Exception as exc:  # hub lookups and state-dict loading raise many types
        if not pretrained:
            raise
        source = weights or "the Hugging Face Hub"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TCLError(f"model.pretrained: cannot load {model_cfg.backbone!r} weights from {source} "
                       f"({reason[:160]}); offline, give model.pretrained_file=WEIGHTS or set "
                       f"model.pretrained=false") from None
    if sync_bn:
        # Must happen before accelerate's prepare(): DDP wraps whatever modules exist at that point.
        # (PyTorch's SyncBatchNorm runs on GPUs only; CPU processes keep per-process statistics.)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


# ---- the exported classifier -----------------------------------------------------------------------------------

# The classifier head is Linear-BN-ReLU-Dropout-Linear-BN: the last two layers depend on the class count.
_CLASS_LAYERS = ("classifier.4.", "classifier.5.")

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
