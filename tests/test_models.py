"""The CIFAR PreAct ResNets as timm models (spec section 1) and the TCL heads."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

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
    conv, norm, act = model.stem
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
    # The reference's stem is conv -> BN -> ReLU (spec section 1), unlike the textbook variant.
    assert isinstance(norm, nn.BatchNorm2d) and isinstance(act, nn.ReLU)
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
    # Parameters of that architecture counted by hand (stem conv + BN, 8 blocks, final BN, fc).
    expected = (conv3x3(3, 64) + bn(64) + block(64, 64) + block(64, 64) + block(64, 128) + block(128, 128)
                + block(128, 256) + block(256, 256) + block(256, 512) + block(512, 512) + bn(512) + 512 * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_encoder_parameter_count_equals_the_reference():
    # The reference's bigresnet18_preact without any head: 11,167,168 parameters (spec section 1);
    # the textbook variant lacks the stem's BatchNorm (128 parameters).
    encoder = timm.create_model("preact_resnet18_cifar", num_classes=0)
    assert sum(p.numel() for p in encoder.parameters()) == 11_167_168
    textbook = timm.create_model("preact_resnet18_textbook", num_classes=0)
    assert sum(p.numel() for p in textbook.parameters()) == 11_167_040


def randomize_batchnorm(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so every BN visibly changes the output."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def spec_encoder_forward(params: dict, x: torch.Tensor, training: bool, identity_from_activation: bool = True):
    """Spec section 1 stated with torch.nn.functional on a state dict: stem conv -> BN -> ReLU; per block
    a = ReLU(BN1(x)), s = 1x1 conv(a) when the shape changes else a, out = conv(ReLU(BN2(conv(a)))) + s;
    ReLU(BN(x)) after stage 4; 4x4 average pool -> 512-d."""
    def bn(t, prefix):
        return F.batch_norm(t, params[f"{prefix}.running_mean"].clone(), params[f"{prefix}.running_var"].clone(),
                            params[f"{prefix}.weight"], params[f"{prefix}.bias"], training=training, eps=1e-5)

    out = F.relu(bn(F.conv2d(x, params["stem.0.weight"], padding=1), "stem.1"))
    for stage in range(4):
        for j in range(2):
            p = f"stages.{stage}.{j}"
            stride = 2 if stage > 0 and j == 0 else 1
            a = F.relu(bn(out, f"{p}.bn1"))
            if f"{p}.shortcut.weight" in params:
                s = F.conv2d(a, params[f"{p}.shortcut.weight"], stride=stride)
            else:
                s = a if identity_from_activation else out
            h = F.conv2d(a, params[f"{p}.conv1.weight"], stride=stride, padding=1)
            h = F.conv2d(F.relu(bn(h, f"{p}.bn2")), params[f"{p}.conv2.weight"], padding=1)
            out = h + s
    out = F.relu(bn(out, "norm"))
    return F.avg_pool2d(out, 4).flatten(1)


@pytest.mark.parametrize("training", [False, True])
def test_reference_encoder_forward_equals_the_spec_equations(training):
    torch.manual_seed(0)
    model = timm.create_model("preact_resnet18_cifar", num_classes=0)
    randomize_batchnorm(model)
    model.train(training)
    x = torch.randn(4, 3, 32, 32)
    params = dict(model.state_dict())
    with torch.no_grad():
        expected = spec_encoder_forward(params, x, training)
        got = model(x)
    assert got.shape == (4, 512)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    # The statement is sharp enough to tell the textbook block apart (it adds x, not ReLU(BN1(x))).
    with torch.no_grad():
        textbook = spec_encoder_forward(params, x, training, identity_from_activation=False)
    assert (textbook - expected).abs().max() > 1e-2


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
