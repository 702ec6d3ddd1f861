"""The run's experiment tracker (accelerate's; wandb with ``log.with=wandb``), owned by the job: started before
training, given the plots once the run is published, and finished exactly once however the job ends."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from .config import Config, flatten, to_dict

if TYPE_CHECKING:
    from accelerate import Accelerator

SendPlots = Callable[[list[Path], int], None]


@contextmanager
def tracking(acc: Accelerator, cfg: Config) -> Iterator[SendPlots]:
    """Track the run for the block; yields ``send_plots(paths, epoch)``. The trainer's ``acc.log`` calls reach the
    tracker while the block runs (without ``log.with`` there is none, and they are dropped)."""
    if cfg.log.with_:
        acc.init_trackers(cfg.log.project, config=flatten(to_dict(cfg)),
                          init_kwargs={"wandb": {"name": cfg.log.run_name, "dir": str(cfg.output_dir)}})
    try:
        yield lambda plots, epoch: _send_plots(acc, cfg, plots, epoch)
    finally:
        # Not end_training: the process group is the job's to end (a sweep keeps it for its next run).
        for tracker in acc.trackers:
            tracker.finish()


def _send_plots(acc: Accelerator, cfg: Config, plots: list[Path], epoch: int) -> None:
    if plots and cfg.log.with_ == "wandb":
        import wandb

        acc.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in plots}, step=epoch)
