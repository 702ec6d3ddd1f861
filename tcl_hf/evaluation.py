"""How a run is scored: classifier top-k accuracy, kNN accuracy on projections, and how well the
detector's confidences separate clean labels from noisy ones."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import precision_score, recall_score, roc_auc_score

from .detector import CLEAN_THRESHOLD


@torch.no_grad()
def knn_predict(query: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
                k: int = 200, temperature: float = 0.1) -> torch.Tensor:
    """Weighted kNN (InstDisc style): cosine similarity, top-k neighbours, votes weighted by exp(sim/T)."""
    k = min(k, bank.shape[0])
    # About 1 GiB of similarities per chunk, whatever the bank size (1M samples -> 256 queries).
    chunk = max(1, 2**28 // max(bank.shape[0], 1))
    preds = []
    for start in range(0, query.shape[0], chunk):
        sim = query[start:start + chunk].float() @ bank.float().T
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(top_idx.shape[0], num_classes, device=query.device)
        # Relative to each query's nearest neighbour (a constant factor per row leaves the vote unchanged):
        # exp(sim / T) itself overflows float32 for T below ~0.011.
        votes.scatter_add_(1, bank_labels[top_idx], ((top_sim - top_sim[:, :1]) / temperature).exp())
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def topk_accuracy(p: torch.Tensor, labels: torch.Tensor, name: str) -> dict[str, float]:
    """``{name}_acc`` (top-1) and, with more than five classes, ``{name}_top5`` of class probabilities p."""
    num_classes = p.shape[1]
    hits = p.topk(min(5, num_classes), dim=1).indices == labels.unsqueeze(1)
    out = {f"{name}_acc": float(hits[:, 0].float().mean())}
    if num_classes > 5:
        out[f"{name}_top5"] = float(hits.any(dim=1).float().mean())
    return out


def detection_metrics(confidences: np.ndarray, given: np.ndarray, clean: np.ndarray | None,
                      predictions: np.ndarray, trained: np.ndarray | None = None) -> dict[str, float | None]:
    """Noise-detection quality; noisy = positive class, flagged when confidence < CLEAN_THRESHOLD. ``label_acc``
    scores the network's ``predictions`` on the training set; ``relabel_acc`` the labels a method ``trained`` on
    in place of the given ones (TCL+'s relabelling), when it has such."""
    out: dict[str, float | None] = {"clean_ratio_est": float(np.mean(confidences > CLEAN_THRESHOLD))}
    if clean is None:
        return out
    is_noisy = given != clean
    flagged = confidences < CLEAN_THRESHOLD
    out["noise_rate"] = float(is_noisy.mean())
    both_kinds = 0 < is_noisy.sum() < len(is_noisy)
    # AUC of the confidence as a score for "label is clean"; undefined when all labels are alike.
    out["noise_auc"] = float(roc_auc_score(~is_noisy, confidences)) if both_kinds else None
    out["noise_precision"] = float(precision_score(is_noisy, flagged, zero_division=0))
    out["noise_recall"] = float(recall_score(is_noisy, flagged, zero_division=0)) if is_noisy.any() else None
    out["noise_acc"] = float(np.mean(flagged == is_noisy))
    out["label_acc"] = float(np.mean(predictions == clean))
    if trained is not None:
        out["relabel_acc"] = float(np.mean(trained == clean))
    return out


def format_record(record: dict) -> str:
    """The numbers of an epoch record a person reads first, on one line."""
    keys = ("test_acc", "val_acc", "imagenet_acc", "knn_acc", "noise_auc", "clean_ratio_est", "label_acc", "loss")
    text = "  ".join(f"{k} {record[k]:.4f}" for k in keys if isinstance(record.get(k), float))
    return text + (f"  bad_images {record['bad_images']}" if record.get("bad_images") else "")
