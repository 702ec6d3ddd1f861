"""The CIFAR PreAct ResNets as timm models (spec section 1) and the TCL heads."""
from __future__ import annotations

import timm
import torch
import torch.nn as nn

import tcl_hf  # noqa: F401  (registers the architectures with timm)
from tcl_hf.models import TCLModel


def count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


def test_preact_resnet18_cifar_is_a_timm_model():
    assert timm.is_model("preact_resnet18_cifar") and timm.is_model("preact_resnet_mini")
    model = timm.create_model("preact_resnet18_cifar").eval()
    assert model.num_features == 512
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        # 3x3 stride-1 stem and no max-pool: three stride-2 stages take 32x32 to 4x4.
        assert model.forward_features(x).shape == (2, 512, 4, 4)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 512)
    features = timm.create_model("preact_resnet18_cifar", num_classes=0).eval()
    with torch.no_grad():
        assert features(x).shape == (2, 512)
    assert timm.create_model("preact_resnet18_cifar", num_classes=100).get_classifier().out_features == 100


def conv3x3(cin, cout):
    return 9 * cin * cout  # no bias


def bn(c):
    return 2 * c  # weight and bias


def block(cin, cout):
    """Pre-activation basic block: BN-conv-BN-conv, plus a 1x1 shortcut when the width changes."""
    return bn(cin) + conv3x3(cin, cout) + bn(cout) + conv3x3(cout, cout) + (cin * cout if cin != cout else 0)


def test_preact_resnet18_structure_matches_the_spec():
    model = timm.create_model("preact_resnet18_cifar")
    stem = model.stem
    assert isinstance(stem, nn.Conv2d) and stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert count(model, nn.MaxPool2d) == 0
    convs3 = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    # 18 layers: the stem, 4 stages x 2 blocks x 2 convs, and the classifier.
    assert len(convs3) == 1 + 4 * 2 * 2
    # Four stages of two blocks, 64/128/256/512 wide; stages 2-4 halve the resolution.
    assert [[block.conv2.out_channels for block in stage] for stage in model.stages] == [
        [64, 64], [128, 128], [256, 256], [512, 512]]
    assert [m.stride for m in convs3 if m.stride != (1, 1)] == [(2, 2)] * 3
    # Final BN + ReLU before pooling.
    assert isinstance(model.norm, nn.BatchNorm2d) and model.norm.num_features == 512
    # Parameters of that architecture counted by hand (stem, 8 blocks, final BN, fc).
    expected = (conv3x3(3, 64) + block(64, 64) + block(64, 64) + block(64, 128) + block(128, 128)
                + block(128, 256) + block(256, 256) + block(256, 512) + block(512, 512) + bn(512) + 512 * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_save_for_hf_round_trip(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("preact_resnet_mini", num_classes=10)
    # Non-default BN statistics, so the buffers must travel too.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    timm.models.save_for_hf(model, str(tmp_path), safe_serialization=True)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    fresh = timm.create_model("preact_resnet_mini", num_classes=10).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(loaded(x), expected, atol=1e-6)
        # A model that did not load the weights would not match.
        assert not torch.allclose(fresh(x), expected, atol=1e-3)


def test_tcl_model_outputs_and_heads():
    model = TCLModel("preact_resnet_mini", num_classes=7, proj_dim=16, dropout=0.25)
    dim = model.encoder.num_features
    assert dim == 128
    kinds = [type(m) for m in model.projector]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert (model.projector[0].in_features, model.projector[0].out_features) == (dim, dim)
    assert (model.projector[3].in_features, model.projector[3].out_features) == (dim, 16)
    kinds = [type(m) for m in model.classifier]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear, nn.BatchNorm1d]
    assert model.classifier[3].p == 0.25
    assert (model.classifier[0].in_features, model.classifier[0].out_features) == (dim, dim)
    assert (model.classifier[4].in_features, model.classifier[4].out_features) == (dim, 7)
    x = torch.randn(4, 3, 32, 32)
    for mode in (model.train, model.eval):
        mode()
        z, logits = model(x)
        assert z.shape == (4, 16) and logits.shape == (4, 7)
        assert torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)


def test_tcl_model_takes_other_timm_backbones():
    model = TCLModel("resnet10t", num_classes=3, proj_dim=8).eval()
    with torch.no_grad():
        z, logits = model(torch.randn(2, 3, 32, 32))
    assert z.shape == (2, 8) and logits.shape == (2, 3)
    assert model.projector[0].in_features == model.encoder.num_features
