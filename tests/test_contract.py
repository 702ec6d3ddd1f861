"""The input contract: one resolution of size, crop, interpolation, mean and std, from data.* and the
backbone's timm data config (tag included), read by the decoder, the views and the Hub export alike."""
from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

import tcl_hf  # noqa: F401  (registers tcl_classifier with timm)
from tcl_hf.config import load_config
from tcl_hf.data.contract import resolve_input_contract
from tcl_hf.export import publish_run
from tcl_hf.trainer import Trainer

# Every test here trains or launches processes: left out of the quick inner loop (pytest -m "not slow").
pytestmark = pytest.mark.slow


def contract_for(*overrides: str):
    cfg = load_config(None, list(overrides))
    return resolve_input_contract(cfg.data, cfg.model)


def test_a_tagged_backbone_resolves_its_own_tag():
    # The CLIP-pretrained tag of convnext_base has OpenAI CLIP statistics, 256 px and crop 1.0; the bare
    # name resolves timm's default tag, with ImageNet statistics, 224 px and crop 0.875.
    tagged = contract_for("model.backbone=convnext_base.clip_laion2b_augreg_ft_in12k_in1k", "model.pretrained=true")
    assert tagged.mean == pytest.approx(OPENAI_CLIP_MEAN) and tagged.std == pytest.approx(OPENAI_CLIP_STD)
    assert (tagged.size, tagged.crop_pct, tagged.storage_size, tagged.interpolation) == (256, 1.0, 256, "bicubic")
    plain = contract_for("model.backbone=convnext_base", "model.pretrained=true")
    assert plain.mean == pytest.approx(IMAGENET_DEFAULT_MEAN) and plain.std == pytest.approx(IMAGENET_DEFAULT_STD)
    assert (plain.size, plain.crop_pct, plain.storage_size) == (224, 0.875, 256)


def test_explicit_keys_win_and_small_images_are_used_whole():
    c = contract_for("model.backbone=resnet10t", "data.image_size=224", "data.crop_pct=0.95",
                     "data.interpolation=bilinear", "data.mean=[0.1,0.2,0.3]", "data.std=[0.3,0.2,0.1]")
    assert (c.size, c.crop_pct, c.storage_size, c.interpolation) == (224, 0.95, 235, "bilinear")
    assert c.mean == (0.1, 0.2, 0.3) and c.std == (0.3, 0.2, 0.1)
    # Without pretrained weights the statistics are left for the data to supply.
    assert contract_for("model.backbone=resnet10t").mean is None
    small = contract_for("model.backbone=preact_resnet18_cifar")
    assert (small.size, small.crop_pct, small.storage_size) == (32, 1.0, 32)


def _odd_images(count: int, seed: int) -> list[Image.Image]:
    """Non-square photos-to-be of different shapes with structure at every scale (random pixels)."""
    rng = np.random.default_rng(seed)
    shapes = [(300, 241), (241, 330), (257, 257), (400, 260)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in
            (shapes[i % len(shapes)] for i in range(count))]


@pytest.fixture(scope="module")
def exported_224(tmp_path_factory, fresh_accelerate_module):
    """A run at 224 px (backbone crop fraction, bicubic) on non-square images, trained one step and exported."""
    root = tmp_path_factory.mktemp("contract")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    images = {"train": _odd_images(16, 0), "test": _odd_images(6, 1)}
    for split, imgs in images.items():
        (root / "ds" / "data").mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict({"image": imgs, "label": [i % 2 for i in range(len(imgs))]}, features=features
                                   ).to_parquet(str(root / "ds" / "data" / f"{split}-00000-of-00001.parquet"))
    cfg = load_config(None, [f"data.path={root / 'ds'}", "data.image_size=224", "model.backbone=preact_resnet_mini",
                             "data.crop_pct=0.95", "data.interpolation=bicubic", "train.batch_size=8",
                             "train.max_steps=1", "model.proj_dim=8", "eval.knn_k=4", "log.progress=false",
                             f"output_dir={root / 'run'}"])
    trainer = Trainer(cfg)
    publish_run(trainer.result(trainer.train()))
    return trainer, images["test"], root / "run" / "hub"


@pytest.fixture(scope="module")
def fresh_accelerate_module():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_exported_config_rebuilds_the_evaluation_preprocessing(exported_224):
    trainer, test_images, hub_dir = exported_224
    contract = trainer.data.contract
    assert (contract.size, contract.storage_size) == (224, 235)  # floor(224 / 0.95): an odd margin
    model = timm.create_model(f"local-dir:{hub_dir}", pretrained=True)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    resize, crop, _, normalize = transform.transforms
    assert resize.size == contract.storage_size and str(resize.interpolation.value) == "bicubic"
    assert crop.size == (224, 224)
    assert tuple(normalize.mean.tolist()) == pytest.approx(contract.mean)
    assert tuple(normalize.std.tolist()) == pytest.approx(contract.std)
    # Pixel for pixel: timm's transform of the original image is the trainer's test view of it.
    for i, image in enumerate(test_images):
        stored = trainer.data.test[i][0].unsqueeze(0)
        ours = trainer.feed.test_view.test(stored.to(trainer.accelerator.device))[0].cpu()
        assert torch.allclose(transform(image), ours, atol=1e-5), i
    config = json.loads((hub_dir / "config.json").read_text())["pretrained_cfg"]
    assert (config["crop_pct"], config["interpolation"], config["input_size"]) == (0.95, "bicubic", [3, 224, 224])
