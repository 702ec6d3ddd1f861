"""A finished run as publishing needs it: the trained model, the detector's verdict on every training
sample, and the run's numbers — a value, so exporting never reaches into a live trainer."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .data.contract import InputContract
from .state import RunState


@dataclass
class RunResult:
    output_dir: Path
    config: dict                  # the resolved configuration, as tcl_hf.config.to_dict gives it
    summary: dict                 # the final numbers (summary.json)
    model: torch.nn.Module        # the trained TCLModel, unwrapped
    prototypes: torch.Tensor      # [C, d]
    index: np.ndarray             # rows of the training split that have a verdict (readable images)
    given: np.ndarray             # their given labels
    predicted: np.ndarray         # the classifier's prediction for each
    clean_prob: np.ndarray        # the detector's confidence that the given label is clean
    clean: np.ndarray | None      # the true labels, when known
    class_names: list[str]
    contract: InputContract
    # For the label review (tcl_hf/report.py, tcl_hf/review.py), one entry per row of ``index``: the score the report
    # is ranked by (detector.suspicion) and the dataset's own id of each sample; ``images`` is the training split
    # as the data bundle reads it (indexed by training row), for the review page's thumbnails.
    suspicion: np.ndarray | None = None
    sample_id: np.ndarray | None = None
    images: Dataset | None = None
    trained: np.ndarray | None = None  # the labels it trained on in place of the given ones (TCL+), if any


def run_result(output_dir: Path, config: dict, summary: dict, model: torch.nn.Module, state: RunState,
               given: np.ndarray, clean: np.ndarray | None, class_names: list[str], contract: InputContract, *,
               sample_id: np.ndarray, images: Dataset, trained: torch.Tensor | None) -> RunResult:
    """The ``RunResult`` of a run's last EM step as its ``RunState`` holds it, for every training row given (``given``,
    ``clean``: the training labels and the true ones when known); the trainer and a re-export both make it here, so a
    re-export publishes what the run did. ``sample_id``, ``images``: the dataset's ids and training images by row;
    ``trained``: the labels the method trained on in place of the given ones (TCL+), else None."""
    keep = ~state.unreadable.numpy()
    return RunResult(output_dir=output_dir, config=config, summary=summary, model=model, prototypes=state.prototypes,
                     index=np.flatnonzero(keep), given=given[keep], predicted=state.predictions.numpy()[keep],
                     clean_prob=state.confidences.numpy()[keep], clean=clean[keep] if clean is not None else None,
                     class_names=class_names, contract=contract, suspicion=state.suspicion.numpy()[keep],
                     sample_id=sample_id[keep], images=images,
                     trained=trained.cpu().numpy()[keep] if trained is not None else None)
