"""Recipe + override parsing, type coercion, one-line errors naming the key, and the CLI's error path."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tcl_hf.config import Config, ConfigError, load_config, save_config, to_dict


def test_defaults_without_recipe():
    cfg = load_config(None, [])
    assert cfg == Config()
    # The reference defaults of spec sections 3-4.
    assert (cfg.tcl.temperature, cfg.model.proj_dim, cfg.optim.lr, cfg.optim.warmup_epochs) == (0.25, 256, 0.03, 20)
    assert cfg.train.mixed_precision is None


def test_dotted_overrides_and_coercion():
    cfg = load_config(None, [
        "train.epochs=7",
        "optim.lr=1e-3",             # YAML 1.1 reads this as a string
        "optim.weight_decay=5e-4",
        "tcl.per_class_gmm=true",
        "optim.cosine_quirk=false",
        "data.limit=null",
        "data.image_size=16",
        "tcl.scale1=0.5",
        "train.mixed_precision=no",  # YAML 1.1 reads a bare `no` as false
        "log.with=none",
        "data.mean=[0.5, 0.4, 0.3]",
        "data.std=0.2,0.2,0.2",
        "model.backbone=preact_resnet_mini",
    ])
    assert cfg.train.epochs == 7 and isinstance(cfg.train.epochs, int)
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.weight_decay == 0.0005
    assert cfg.tcl.per_class_gmm is True and cfg.optim.cosine_quirk is False
    assert cfg.data.limit is None and cfg.data.image_size == 16
    assert cfg.tcl.scale1 == 0.5 and cfg.tcl.scale2 is None
    assert cfg.train.mixed_precision == "no"
    assert cfg.log.with_ is None
    assert cfg.data.mean == [0.5, 0.4, 0.3] and cfg.data.std == [0.2, 0.2, 0.2]
    assert cfg.model.backbone == "preact_resnet_mini"


RECIPE = """\
output_dir: runs/x
seed: 3
method: ce
data:
  format: digits
  limit: 50
optim:
  lr: 1e-2
  warmup_epochs: 2
train:
  epochs: 4
  sync_bn: false
log:
  with: wandb
"""


def test_recipe_file_and_overrides_on_top(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    cfg = load_config(recipe, ["train.epochs=9", "data.limit=20"])
    assert (cfg.output_dir, cfg.seed, cfg.method) == ("runs/x", 3, "ce")
    assert cfg.data.format == "digits" and cfg.data.limit == 20
    assert cfg.optim.lr == 0.01 and cfg.optim.warmup_epochs == 2
    assert cfg.train.epochs == 9 and cfg.train.sync_bn is False
    assert cfg.log.with_ == "wandb"
    # Keys the recipe does not set keep their defaults.
    assert cfg.train.batch_size == Config().train.batch_size


def test_save_config_round_trip(tmp_path):
    cfg = load_config(None, ["optim.lr=1e-3", "data.mean=[0.1,0.2,0.3]", "data.std=[0.3,0.2,0.1]",
                             "train.mixed_precision=no", "log.with=wandb", "tcl.scale2=0.25",
                             "noise.type=sym", "noise.rate=0.4", "data.limit=64", "method=ce"])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    text = path.read_text()
    assert "with: wandb" in text and "with_" not in text
    assert load_config(path) == cfg
    assert to_dict(load_config(path)) == to_dict(cfg)


def one_line_config_error(recipe, overrides) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config(recipe, overrides)
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("override, key", [
    ("train.epoch=3", "train.epoch"),
    ("train.epochs=abc", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),
    ("noise.rate=1.5", "noise.rate"),
    ("method=foo", "method"),
    ("model.backbone=not_a_model", "model.backbone"),
    ("noise.type=file", "noise.file"),
    ("noise.type=sym", "noise.rate"),
    ("tcl.scale1=2", "tcl.scale1"),
    ("optim.lr=-1", "optim.lr"),
    ("tcl.per_class_gmm=maybe", "tcl.per_class_gmm"),
    ("data.mean=[0.5,0.5]", "data.mean"),
    ("train=5", "train"),
])
def test_bad_values_give_one_line_naming_the_key(override, key):
    assert key in one_line_config_error(None, [override])


def test_missing_label_file_is_named(tmp_path):
    missing = str(tmp_path / "nope.npy")
    text = one_line_config_error(None, ["noise.type=file", f"noise.file={missing}"])
    assert "noise.file" in text and missing in text


def test_mean_without_std():
    assert "data.std" in one_line_config_error(None, ["data.mean=[0.5,0.5,0.5]"])


def test_missing_recipe_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    assert str(missing) in one_line_config_error(missing, [])


def test_invalid_yaml_names_file_and_line(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("seed: 0\ntrain:\n  epochs: [1, 2\n")
    text = one_line_config_error(recipe, [])
    assert str(recipe) in text and "line" in text


def test_override_without_equals():
    assert "train.epochs" in one_line_config_error(None, ["train.epochs"])


# ---- the command line ------------------------------------------------------------------------------

CLI_CASES = [
    (["recipes/quickstart.yaml", "noise.rate=1.5"], "noise.rate"),
    (["recipes/quickstart.yaml", "train.epoch=3"], "train.epoch"),
    (["recipes/does_not_exist.yaml"], "does_not_exist.yaml"),
]


@pytest.mark.slow
def test_cli_prints_one_line_errors_without_traceback(repo_root):
    # Each interpreter spends seconds importing torch/timm, so the cases run side by side.
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    procs = [subprocess.Popen([sys.executable, "train.py", *args], cwd=repo_root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args, _ in CLI_CASES]
    for proc, (args, key) in zip(procs, CLI_CASES):
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode != 0, args
        assert "Traceback" not in stderr + stdout, args
        lines = stderr.splitlines()
        assert len(lines) == 1, (args, stderr)
        assert key in lines[0], (args, stderr)


# ---- a recipe for other data, and a warm-up that outlasts the run --------------------------------------------------
RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")


def _ten_class_parquet(folder):
    """A CIFAR-10-like local dataset: an 'img' column and a 'label' column of 10 classes, 20 train / 10 test rows."""
    import datasets
    from PIL import Image

    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    for split, n in (("train", 20), ("test", 10)):
        datasets.Dataset.from_dict({"img": [Image.new("RGB", (4, 4))] * n, "label": [k % 10 for k in range(n)]},
                                   features=features).to_parquet(str(folder / f"{split}.parquet"))
    return folder


def test_cifar100_recipe_on_cifar10_stops_naming_both_class_counts(tmp_path):
    from tcl_hf.data import load_data
    from tcl_hf.data.contract import InputContract
    from tcl_hf.errors import DataError

    data = _ten_class_parquet(tmp_path)
    cfg = load_config(os.path.join(RECIPES, "cifar100_sym20.yaml"), [f"data.path={data}", "data.label_column=label"])
    with pytest.raises(DataError, match=r"^data.num_classes: the recipe says 100 classes but the data has 10 "
                                        r"\(label column 'label'\)") as info:
        load_data(cfg.data, InputContract(4, 4, 1.0, "bilinear"))
    assert "\n" not in str(info.value)
    # The matching recipe loads the same data.
    cfg = load_config(os.path.join(RECIPES, "cifar10_sym20.yaml"), [f"data.path={data}"])
    assert load_data(cfg.data, InputContract(4, 4, 1.0, "bilinear")).num_classes == 10


@pytest.mark.parametrize("method, warmup, epochs, warned", [("tcl", 5, 5, True), ("tcl", 9, 5, True),
                                                           ("tcl", 4, 5, False), ("ce", 5, 5, False)])
def test_warmup_not_shorter_than_the_run_warns_once_at_start_up(tmp_path, capsys, monkeypatch, fresh_accelerate,
                                                                method, warmup, epochs, warned):
    from tcl_hf import trainer

    class Started(Exception):
        """Raised where the data would be read: everything printed before it is start-up."""

    def stop(*args, **kwargs):
        raise Started

    monkeypatch.setattr(trainer, "load_data", stop)
    cfg = load_config(None, ["data.format=digits", "model.backbone=preact_resnet_mini", f"method={method}",
                             f"optim.warmup_epochs={warmup}", f"train.epochs={epochs}", f"output_dir={tmp_path}"])
    with pytest.raises(Started):
        trainer.Trainer(cfg)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    if not warned:
        assert lines == []
        return
    assert len(lines) == 1
    assert f"optim.warmup_epochs={warmup}" in lines[0] and f"train.epochs={epochs}" in lines[0]
