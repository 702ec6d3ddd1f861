"""Pretrained backbones: an offline weights file is used as given; a failed download is one line."""
import pytest
import timm
import torch
from safetensors.torch import save_file

from tcl_hf.config import load_config
from tcl_hf.errors import TCLError
from tcl_hf.trainer import Trainer

# Every test here trains or launches processes: left out of the quick inner loop (pytest -m "not slow").
pytestmark = pytest.mark.slow

TINY = ["data.format=digits", "data.limit=64", "data.image_size=32", "model.backbone=resnet18", "model.proj_dim=16",
        "train.batch_size=16", "train.epochs=1", "log.progress=false"]


def test_pretrained_file_weights_reach_the_encoder(tmp_path):
    reference = timm.create_model("resnet18", num_classes=0)
    torch.nn.init.normal_(reference.conv1.weight, mean=0.3)  # unlike any fresh initialisation
    weights = tmp_path / "r18.safetensors"
    save_file(reference.state_dict(), str(weights))
    trainer = Trainer(load_config(None, [*TINY, f"model.pretrained_file={weights}", f"output_dir={tmp_path / 'r'}"]))
    encoder = trainer.accelerator.unwrap_model(trainer.model).encoder
    assert torch.equal(encoder.conv1.weight.cpu(), reference.conv1.weight)
    # Pretrained weights come with their own normalisation statistics (ImageNet's for resnet18).
    assert trainer.data.contract.mean == pytest.approx((0.485, 0.456, 0.406))


def test_unreachable_pretrained_weights_give_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TCLError) as err:
        Trainer(load_config(None, [*TINY, "model.pretrained=true", f"output_dir={tmp_path / 'r'}"]))
    message = str(err.value)
    assert "model.pretrained" in message and "model.pretrained_file" in message and "\n" not in message
