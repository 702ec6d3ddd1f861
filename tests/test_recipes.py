"""Every shipped recipe loads and validates, and carries the reference hyperparameters."""
import re
from pathlib import Path

import pytest
import yaml

from tcl_hf.config import load_config

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
REQUIRED = {"quickstart", "cifar10_sym20", "cifar10_sym50", "cifar10_sym80", "cifar10_sym90", "cifar10_asym40",
            "cifar100_sym20", "cifar100_sym50", "cifar100_sym80", "cifar100_sym90", "webvision", "clothing1m",
            "cifar10n_aggre", "cifar10n_worse", "cifar10n_random1", "cifar100n"}


def _paths_that_exist(recipe: Path, tmp_path: Path) -> list[str]:
    """Recipes name data folders and label files on the user's machine; point them at stand-ins."""
    text = recipe.read_text()
    overrides = []
    if "root:" in text:
        overrides.append(f"data.root={tmp_path}")
    if "method: tcl_plus" in text:
        overrides.append(f"init.from={tmp_path}")
    if "type: cifarn" in text:
        stand_in = tmp_path / "labels.pt"
        stand_in.write_bytes(b"")
        overrides.append(f"noise.file={stand_in}")
    return overrides


def test_all_required_recipes_ship():
    assert REQUIRED <= {p.stem for p in RECIPES}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates(recipe, tmp_path):
    cfg = load_config(recipe, _paths_that_exist(recipe, tmp_path))
    assert cfg.output_dir == f"runs/{recipe.stem}"


TCL_RECIPES = [p for p in RECIPES if p.stem != "quickstart" and not p.stem.endswith("_plus")]
PLUS_RECIPES = [p for p in RECIPES if p.stem.endswith("_plus")]


@pytest.mark.parametrize("recipe", TCL_RECIPES + PLUS_RECIPES, ids=lambda p: p.stem)
def test_paper_recipes_pin_the_reference_objective_and_precision(recipe, tmp_path):
    cfg = load_config(recipe, _paths_that_exist(recipe, tmp_path))
    # The reference's 1/W contrastive gradient on its W = 4 GPUs, with our exact gather (spec section 3).
    assert cfg.tcl.lambda_con == (1.0 if cfg.method == "tcl_plus" else 0.25)
    # The reference's fixed warm-up, so numbers compare (not optim.warmup_epochs=auto).
    assert isinstance(cfg.optim.warmup_epochs, int)
    # fp32 as the reference, whatever an accelerate config file says; the command line can still choose bf16.
    assert cfg.train.mixed_precision == "no"
    assert load_config(recipe, [*_paths_that_exist(recipe, tmp_path),
                                "train.mixed_precision=bf16"]).train.mixed_precision == "bf16"


def test_quickstart_leaves_precision_to_the_launcher():
    cfg = load_config(Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml")
    assert cfg.train.mixed_precision is None and cfg.tcl.lambda_con == 1.0


def test_quickstart_guards_against_collapse():
    # The settings README "Your own dataset" recommends, in the recipe users start from.
    cfg = load_config(Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml")
    assert cfg.optim.warmup_epochs == "auto" and (cfg.tcl.scale1, cfg.tcl.scale2) == (1.0, 1.0)


def test_every_paper_cifar_setting_has_a_tcl_plus_recipe():
    assert {p.stem.removesuffix("_plus") for p in PLUS_RECIPES} == {
        p.stem for p in TCL_RECIPES if p.stem.startswith("cifar") and "n_" not in p.stem and not p.stem.endswith("n")}


@pytest.mark.parametrize("recipe", PLUS_RECIPES, ids=lambda p: p.stem)
def test_tcl_plus_recipes_start_from_their_tcl_run_with_its_data(recipe, tmp_path):
    plus = load_config(recipe, _paths_that_exist(recipe, tmp_path))
    base = load_config(recipe.with_name(recipe.stem.removesuffix("_plus") + ".yaml"))
    # init.from is pointed at a stand-in to validate; the recipe's own value must be the TCL run's folder.
    assert plus.method == "tcl_plus" and yaml.safe_load(recipe.read_text())["init"]["from"] == base.output_dir
    # The assignments TCL+ relabels with belong to the TCL run's rows, labels and network.
    assert (plus.data, plus.noise, plus.model, plus.seed) == (base.data, base.noise, base.model, base.seed)
    assert (plus.plus.threshold, plus.plus.ema, plus.plus.teacher_weight, plus.plus.start_correction) == (
        0.5, 0.0, 0.2, 30)
    assert plus.plus.constant_lr and plus.tcl.per_class_gmm == base.tcl.per_class_gmm


@pytest.mark.parametrize("recipe", PLUS_RECIPES, ids=lambda p: p.stem)
def test_tcl_plus_recipes_keep_plain_batch_norm(recipe, tmp_path):
    # The reference converts to SyncBN in its first stage (tcl.py) only; its second stage (tcl_plus.py) never does.
    assert not load_config(recipe, _paths_that_exist(recipe, tmp_path)).train.sync_bn


@pytest.mark.parametrize("recipe", [p for p in TCL_RECIPES if p.stem.startswith("cifar")], ids=lambda p: p.stem)
def test_cifar_recipes_carry_reference_hyperparameters(recipe, tmp_path):
    cfg = load_config(recipe, _paths_that_exist(recipe, tmp_path))
    assert cfg.model.backbone == "preact_resnet18_cifar" and cfg.model.proj_dim == 256
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.03, 0.9, 0.001)
    assert (cfg.optim.warmup_epochs, cfg.train.epochs, cfg.train.batch_size) == (20, 200, 256)
    assert cfg.optim.cosine_quirk and cfg.optim.scale_lr and cfg.train.sync_bn
    assert (cfg.tcl.temperature, cfg.tcl.mixup_alpha, cfg.aug.strong_scale_min) == (0.25, 1.0, 0.2)
    assert cfg.seed == 0
    if recipe.stem == "cifar100_sym90":
        assert cfg.tcl.per_class_gmm and cfg.tcl.scale2 == 1.0
    else:
        assert not cfg.tcl.per_class_gmm and cfg.tcl.scale2 is None


@pytest.mark.parametrize("stem,rate,kind", [("cifar10_sym20", 0.2, "sym"), ("cifar10_sym90", 0.9, "sym"),
                                            ("cifar10_asym40", 0.4, "asym"), ("cifar100_sym50", 0.5, "sym")])
def test_noise_settings_match_names(stem, rate, kind):
    cfg = load_config(Path(__file__).resolve().parents[1] / "recipes" / f"{stem}.yaml")
    assert (cfg.noise.type, cfg.noise.rate) == (kind, rate)
    assert cfg.data.label_column == ("fine_label" if stem.startswith("cifar100") else "label")


def test_the_quickstart_time_is_one_figure_everywhere():
    # README heading, README text and the recipe's own comment say how long the quickstart takes: one figure, so a
    # re-measurement cannot update one and leave the others behind.
    readme = (REPO / "README.md").read_text()
    heading = re.search(r"^## Quickstart \(offline, CPU, (about [\d.]+ minutes?)\)$", readme, re.M)
    text = re.search(r"Time: (about [\d.]+ minutes?) for TCL", readme)
    comment = re.search(r"(about [\d.]+ minutes?) on 2 CPU cores", (REPO / "recipes" / "quickstart.yaml").read_text(),
                        re.I)
    assert heading and text and comment
    assert heading[1] == text[1] == comment[1].lower()
