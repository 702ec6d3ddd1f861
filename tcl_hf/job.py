"""A whole job, as ``train.py`` runs it: check the push token, lock the run folder, track, train, publish the
finished run while the folder is still locked, then push it when asked."""
from __future__ import annotations

from pathlib import Path

from .config import Config
from .distributed import any_process, build_accelerator
from .export import publish_run
from .hub import check_push_token, push_folder
from .rundir import run_folder_lock
from .tracking import tracking
from .trainer import Trainer
from .verdict import summary_verdict, untrusted_outputs_line


def run_job(cfg: Config, keep_process_group: bool = False) -> dict:
    """Train to the end, write hub/, the label report and plots (main process), push last; returns the summary.

    The job holds the folder's lock from before the trainer starts until hub/, the report and the plots are
    written, so no other run can clobber them; a stopped or failed run releases it for the resume. The push comes
    after every local output is written, so a failed push loses nothing. ``keep_process_group``: the next job in
    this process reuses the distributed process group (tcl_hf.sweep): one destroyed and made again on the
    launcher's store would read the old group's rendezvous keys.
    """
    check_push_token(cfg.hub.repo_id)  # a push bound to fail should stop the job now, not after training
    acc, published = build_accelerator(cfg), None
    try:
        with run_folder_lock(Path(cfg.output_dir), acc.is_main_process, lambda f: any_process(f, acc)):
            trainer = Trainer(cfg, acc)  # first: it refuses a clash with another run before the tracker writes there
            with tracking(acc, cfg) as send_plots:
                summary = trainer.train()
                result = trainer.result(summary) if acc.is_main_process else None
                trainer = None  # done: only the finished run, a value, is left to publish
                if result is not None:
                    published = publish_run(result, repo_id=cfg.hub.repo_id)
                send_plots(published.plots if published else [], summary["epochs_completed"])
    finally:
        if not keep_process_group:
            acc.state.destroy_process_group()
    if published is not None:
        acc.print(f"exported {published.hub_dir}; label report {published.label_issues} and {published.review}")
        warning = untrusted_outputs_line(summary_verdict(summary))
        if warning:
            acc.print(warning)
        if cfg.hub.repo_id:
            url = push_folder(published.hub_dir, cfg.hub.repo_id, private=cfg.hub.private, revision=cfg.hub.revision)
            acc.print(f"pushed to {url}")
    return summary

