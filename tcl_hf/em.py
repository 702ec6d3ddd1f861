"""The EM step as the run keeps it: for every training sample the confidence that its label is clean (and the
prototypes) on the device for the training steps, the last predictions and unreadable flags for the report,
and the kNN bank evaluation votes with.
"""
from __future__ import annotations

import numpy as np
import torch

from .feeding.sampler import stratified_subset
from .detector import CLEAN_THRESHOLD
from .evaluation import detection_metrics
from .feeding.feed import Feed
from .state import RunState


class NoiseDetection:
    def __init__(self, cfg, method, feed: Feed, given: torch.Tensor, clean: np.ndarray | None, state: RunState):
        self.cfg, self.method, self.feed, self.given, self.clean, self.state = cfg, method, feed, given, clean, state
        n, device = len(given), given.device
        self.probs = torch.zeros(n, feed.widths[1], device=device)   # the last EM step's predictions
        self.bad = torch.zeros(n, dtype=torch.bool, device=device)    # training images that could not be read
        self.knn_bank: tuple[torch.Tensor, torch.Tensor] | None = None  # (z, given labels) of the last EM step
        self.on_device: tuple[torch.Tensor, torch.Tensor] | None = None  # (confidences, prototypes) for the steps
        self.metrics: dict = {}

    def _rows(self, epoch: int | None) -> torch.Tensor:
        """Every training row, or after the first EM step a class-stratified subset of ``tcl.em_subset``."""
        size = self.cfg.tcl.em_subset
        if size and epoch is not None and self.on_device is not None:
            picked = stratified_subset(self.given.cpu().numpy(), self.feed.widths[1], size, self.cfg.seed, epoch)
            return torch.as_tensor(picked, device=self.given.device)
        return torch.arange(len(self.given), device=self.given.device)

    def run(self, model: torch.nn.Module, epoch: int | None = None) -> dict[str, float | None]:
        """One EM step (spec section 2): confidences, prototypes and scales into the run state; returns the
        detection metrics. Unreadable images get confidence 0; rows outside an EM subset keep their values."""
        cfg, st, device = self.cfg, self.state, self.given.device
        rows = self._rows(epoch)
        feats = self.feed.extract_train(model, rows)
        self.probs[rows], self.bad[rows] = feats.p, feats.bad
        good = ~feats.bad
        found = self.method.detect(feats.z[good], feats.p[good], self.given[rows][good])
        confidences = self.on_device[0].clone() if self.on_device is not None else torch.zeros(len(self.given),
                                                                                               device=device)
        confidences[rows] = 0.0
        confidences[rows[good]] = found.confidences
        st.suspicion[rows[good].cpu()] = found.suspicion.float().cpu()
        if found.prototypes is not None:
            st.prototypes = found.prototypes.cpu()
            st.assignments[rows.cpu()] = 0.0
            st.assignments[rows[good].cpu()] = found.assignments.cpu()
        st.confidences = confidences.cpu()
        st.predictions, st.unreadable = self.probs.argmax(dim=1).cpu(), self.bad.cpu()
        self.on_device = (confidences, st.prototypes.to(device))
        usable = ~self.bad
        clean_ratio = float((confidences[usable] > CLEAN_THRESHOLD).float().mean())
        # Reference quirk kept: unset scales follow the estimated *clean* fraction.
        st.scale1 = cfg.tcl.scale1 if cfg.tcl.scale1 is not None else clean_ratio
        st.scale2 = cfg.tcl.scale2 if cfg.tcl.scale2 is not None else clean_ratio
        self.knn_bank = (feats.z[good], self.given[rows][good])
        keep = usable.cpu().numpy()
        clean = self.clean[keep] if self.clean is not None else None
        trained = self.method.trained_labels
        self.metrics = detection_metrics(st.confidences.numpy()[keep], self.given.cpu().numpy()[keep], clean,
                                         self.probs.argmax(dim=1).cpu().numpy()[keep],
                                         trained.cpu().numpy()[keep] if trained is not None else None)
        return self.metrics

    def restore(self) -> None:
        """After a resume: the checkpointed confidences and prototypes back on the device."""
        device = self.given.device
        self.on_device = (self.state.confidences.to(device), self.state.prototypes.to(device))
        self.knn_bank = None

    def bank(self, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The kNN bank; without an EM step since the last resume, made from the training set (no state changes)."""
        if self.knn_bank is None:
            feats = self.feed.extract_train(model, torch.arange(len(self.given), device=self.given.device))
            self.knn_bank = (feats.z[~feats.bad], self.given[~feats.bad])
        return self.knn_bank
