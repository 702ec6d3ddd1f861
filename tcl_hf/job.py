"""A whole job, as ``train.py`` runs it: check the push token, train, publish the finished run, then push it when
asked."""
from __future__ import annotations

from .config import Config
from .export import publish_run
from .hub import check_push_token, push_folder
from .trainer import Trainer
from .verdict import summary_verdict, untrusted_outputs_line


def run_job(cfg: Config, keep_process_group: bool = False) -> dict:
    """Train to the end, write hub/, the label report and plots (main process), push last; returns the summary.

    The push comes after every local output is written, so a failed push loses nothing. ``keep_process_group``:
    the next job in this process reuses the distributed process group (tcl_hf.sweep).
    """
    check_push_token(cfg.hub.repo_id)  # a push bound to fail should stop the job now, not after training
    trainer = Trainer(cfg, keep_process_group=keep_process_group)
    summary = trainer.train()
    acc, published = trainer.accelerator, None
    try:
        if acc.is_main_process:
            published = publish_run(trainer.result(summary), repo_id=cfg.hub.repo_id)
    finally:
        trainer.close(published.plots if published else [])
    if published is not None:
        acc.print(f"exported {published.hub_dir}; label report {published.label_issues} and {published.review}")
        warning = untrusted_outputs_line(summary_verdict(summary))
        if warning:
            acc.print(warning)
        if cfg.hub.repo_id:
            url = push_folder(published.hub_dir, cfg.hub.repo_id, private=cfg.hub.private, revision=cfg.hub.revision)
            acc.print(f"pushed to {url}")
    return summary
