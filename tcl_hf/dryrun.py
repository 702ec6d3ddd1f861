"""``train.py RECIPE --dry-run``: everything a run checks before it trains, in seconds, and nothing more.

The config is validated, the data opened (listed, not decoded: one sample is decoded to show what the model
sees), the model built, and the resolved config printed with the run's plan. No process group, no EM step, no
optimizer step, and nothing is written into (or locked in) ``output_dir``.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import yaml

from .command import is_main_process
from .config import Config, to_dict

CLASS_NAMES_SHOWN = 5


def processes_launched() -> int:
    """The process count the launcher (accelerate launch, torchrun) announces; 1 for a plain ``python``."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def dry_run(cfg: Config, say: Callable[[str], None] = print) -> None:
    if not is_main_process():
        return  # under a launcher every process would check and print the same: the first does it for all
    from .data import load_data, resolve_input_contract
    from .models import build_tcl_model
    from .noise import training_labels
    from .plan import start_line

    contract = resolve_input_contract(cfg.data, cfg.model)
    # Listed lazily: decoding a whole split up front (what an in-memory run does) could take minutes.
    data = load_data(dataclasses.replace(cfg.data, in_memory=False, on_device=None), contract, seed=cfg.seed)
    counts = data.sample_counts({})
    say("data: " + ", ".join(f"{name.removesuffix('_samples')} {n}" for name, n in counts.items()
                             if name.endswith("_samples")))
    names = data.class_names[:CLASS_NAMES_SHOWN]
    more = f", ... ({len(data.class_names) - len(names)} more)" if len(data.class_names) > len(names) else ""
    say(f"classes: {data.num_classes} ({', '.join(names)}{more})")
    image, _, ok = data.train[0]
    say(f"sample 0: {tuple(image.shape)} {image.dtype}{'' if ok else ' (unreadable: zeros)'}, "
        f"label {int(data.train_labels[0])}; model input {contract.size} px")
    given, _ = training_labels(cfg.noise, data, cfg.seed)  # a label file that does not fit the data stops here
    model = build_tcl_model(cfg.model, data.num_classes)
    params = sum(p.numel() for p in model.parameters())
    say(f"model: {cfg.model.backbone}, {params:,} parameters ({cfg.model.proj_dim}-d projection, "
        f"{data.num_classes} classes)")
    say("config:\n" + yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip())
    say(start_line(cfg, len(given), data.num_classes, processes_launched()))
    say(f"dry run: nothing trained, nothing written to {cfg.output_dir}")
