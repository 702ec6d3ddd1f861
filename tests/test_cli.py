"""``train.py``'s fast feedback: ``--help`` lists every key and recipe, ``--dry-run`` checks a run in seconds
without training or writing, and a wrong ``data.path`` stops before anything heavy is imported."""
from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tcl_hf import cli
from tcl_hf.config import Config, flat_keys, load_config, to_dict

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "recipes" / "quickstart.yaml")


def _fields_with_defaults(cls, prefix: str = "") -> dict[str, tuple[object, str]]:
    """Every dotted key of ``cls`` -> (default, help), read off the dataclass fields."""
    out = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name.rstrip("_")
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out.update(_fields_with_defaults(type(default), key + "."))
        else:
            out[key] = (default, f.metadata.get("help", ""))
    return out


def test_help_lists_every_key_with_its_default_and_help_and_every_recipe(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    listed = dict(re.findall(r"^  ([\w.]+) = (.*?)   \[", text, flags=re.M))
    fields = _fields_with_defaults(Config)
    assert set(listed) == set(fields) == set(flat_keys())
    for key, (default, help_text) in fields.items():
        written = "null" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        assert listed[key] == written, key
        # The help follows its key (wrapped on the next lines): its first words appear before the next key.
        after = re.split(r"\n(?=  \S|\S)", text.split(f"\n  {key} = ", 1)[1], maxsplit=1)[0]
        assert " ".join(help_text.split()[:4]) in " ".join(after.split()), key
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        first = recipe.read_text().splitlines()[0].lstrip("# ").strip()
        assert re.search(rf"^  recipes/{re.escape(recipe.name)} +{re.escape(first)}$", text, flags=re.M)
    # Sections: the top-level keys, then one block per config section in declaration order.
    sections = [f.name for f in dataclasses.fields(Config) if f.default is dataclasses.MISSING]
    assert re.findall(r"^(\w+):$", text.split("\nkeys", 1)[1], flags=re.M) == ["run", *sections]


@pytest.fixture
def no_training(monkeypatch):
    """Any EM step, optimizer step or trainer use fails the test."""
    import torch

    from tcl_hf import em, trainer

    def refuse(*args, **kwargs):
        raise AssertionError("the dry run trained, ran an EM step or built the trainer")

    monkeypatch.setattr(torch.optim.SGD, "step", refuse)
    monkeypatch.setattr(em.NoiseDetection, "run", refuse)
    monkeypatch.setattr(trainer.Trainer, "__init__", refuse)


def test_dry_run_prints_the_runs_facts_and_writes_nothing(tmp_path, capsys, no_training):
    from sklearn.datasets import load_digits

    from tcl_hf.models import build_tcl_model

    out = tmp_path / "run"
    args = [QUICKSTART, f"output_dir={out}", "train.batch_size=32", "optim.lr=0.2"]
    assert cli.main([*args, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    digits = len(load_digits().target)
    test = math.ceil(0.2 * digits)  # the quickstart's stratified 80/20 split
    assert f"data: train {digits - test}, test {test}\n" in text
    assert "classes: 10 (0, 1, 2, 3, 4, ... (5 more))" in text
    assert re.search(r"^sample 0: \(3, 16, 16\) torch\.uint8, label \d", text, flags=re.M)  # recipe: image_size 16
    params = sum(p.numel() for p in build_tcl_model(load_config(QUICKSTART).model, 10).parameters())
    assert f"model: preact_resnet_mini, {params:,} parameters" in text
    config_text = text.split("config:\n", 1)[1].split("\nplan:", 1)[0]
    assert yaml.safe_load(config_text) == to_dict(load_config(QUICKSTART, args[1:]))
    lr = 0.2 * 32 / 256
    assert f"optim.lr 0.2 per 256 -> {lr:g} at total batch 32 (32 per process x 1 process(es))" in text


def _run_cli(args: list[str]) -> subprocess.CompletedProcess:
    """train.py's main with ``args`` in a fresh interpreter; its stdout's last line lists the heavy modules loaded."""
    code = ("import sys\nfrom tcl_hf.cli import main\ncode = main(sys.argv[1:])\n"
            "print('loaded:', *(m for m in ('torch', 'timm', 'datasets', 'accelerate') if m in sys.modules))\n"
            "sys.exit(code)")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("mode", [[], ["--dry-run"]])
@pytest.mark.parametrize("missing", ["{tmp}/no_such_set", "{tmp}/cifar.parquet", "./no_such_set"])
def test_a_wrong_data_path_stops_at_once_naming_it(tmp_path, mode, missing):
    path = missing.format(tmp=tmp_path)
    done = _run_cli([QUICKSTART, "data.format=hf", f"data.path={path}", f"output_dir={tmp_path / 'run'}", *mode])
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: data.path: {path!r} ")
    assert done.stdout.splitlines()[-1] == "loaded:"  # neither torch nor timm, datasets or accelerate
    assert not (tmp_path / "run").exists()


def test_the_data_path_check_refuses_missing_local_paths_only(tmp_path):
    from tcl_hf.errors import ConfigError

    (tmp_path / "mine.parquet").write_bytes(b"")
    for path in ("uoft-cs/cifar10", "cifar10", str(tmp_path), str(tmp_path / "mine.parquet")):
        assert load_config(None, ["data.format=hf", f"data.path={path}"]).data.path == path
    # Under a folder that exists here, or shaped as no Hub id can be: meant as a local path.
    for path in (str(tmp_path / "ds"), "tests/no_such_set", "a/b/c", "~/no_such_set", "set.csv"):
        with pytest.raises(ConfigError, match=f"^data.path: {re.escape(repr(path))} is not an existing file"):
            load_config(None, ["data.format=hf", f"data.path={path}"])
    # The key is read only where the data comes from it.
    assert load_config(None, ["data.format=digits", f"data.path={tmp_path / 'ds'}"]).data.format == "digits"


def test_an_unknown_option_is_refused_with_the_usage(capsys):
    assert cli.main([QUICKSTART, "--dryrun"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown option --dryrun;") and "usage:" in err
