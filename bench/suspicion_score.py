"""Which per-sample score orders the label report best: candidates for "most suspect first", measured on a
finished run whose true labels are known.

    python train.py recipes/quickstart.yaml log.progress=false
    python bench/suspicion_score.py runs/quickstart [--out bench/results/suspicion_score_quickstart.json]

The run's newest checkpoint is reloaded and its EM step recomputed (as ``python -m tcl_hf.export`` does). For
each candidate (higher = more suspect) it prints the noise AUC (noisy = positive), the precision among the k
highest scores with k = the number of truly noisy labels, and how many distinct values the score takes (ties
leave the order among them arbitrary), and ``flagged_first``: the share of the detector's flagged samples
(clean_prob < 0.5) among as many top-ranked ones (1 = the ranking agrees with the ``is_noisy`` column):

- ``1 - clean_prob``: the detector's GMM posterior (today's order);
- ``gmm_log_odds``: log((1 - c) / c) of that posterior in float64 (saturates where c rounds to 0 or 1);
- ``1 - p(given)``: one minus the classifier's probability of the given label (cleanlab's self-confidence);
- ``margin``: max_{k != given} p(k) - p(given) (the normalized margin, negated);
- ``1 - gamma(given)``: one minus the given class's soft assignment, the score TCL's GMM is fitted to.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score


def candidates(clean_prob: np.ndarray, probs: np.ndarray, gamma: np.ndarray, given: np.ndarray) -> dict:
    rows = np.arange(len(given))
    p_given = probs[rows, given]
    others = probs.copy()
    others[rows, given] = -np.inf
    c = np.clip(clean_prob.astype(np.float64), 1e-300, 1.0)
    return {"1 - clean_prob": 1.0 - clean_prob, "gmm_log_odds": np.log1p(-np.minimum(c, 1 - 1e-16)) - np.log(c),
            "1 - p(given)": 1.0 - p_given, "margin": others.max(axis=1) - p_given,
            "1 - gamma(given)": 1.0 - gamma[rows, given]}


def measure(score: np.ndarray, noisy: np.ndarray, flagged: np.ndarray) -> dict:
    k = int(noisy.sum())
    # A stable sort on -score keeps ties in row order: the arbitrary order a tied score leaves.
    order = np.argsort(-score, kind="stable")
    return {"noise_auc": round(float(roc_auc_score(noisy, score)), 4),
            "precision_at_k": round(float(noisy[order[:k]].mean()), 4), "k": k,
            "flagged_first": round(float(flagged[order[:int(flagged.sum())]].mean()), 4),
            "distinct_values": int(np.unique(score).size), "samples": int(len(score))}


def run_values(run_dir: Path) -> dict:
    """The last EM step of ``run_dir``'s newest checkpoint: clean_prob, softmax, assignments, labels."""
    from tcl_hf.config import load_config
    from tcl_hf.trainer import Trainer

    overrides = ["train.resume=true", "log.with=null", "log.progress=false", f"output_dir={run_dir}"]
    trainer = Trainer(load_config(run_dir / "config.yaml", overrides))
    if not trainer.resume():
        raise SystemExit(f"{run_dir} has no checkpoint")
    trainer.detect_noise()
    keep = ~trainer.em.bad.cpu().numpy()
    return {"epoch": trainer.state.epoch, "clean_prob": trainer.state.confidences.numpy()[keep],
            "probs": trainer.em.probs.cpu().numpy()[keep].astype(np.float64),
            "gamma": trainer.state.assignments.numpy()[keep].astype(np.float64),
            "given": trainer.given_labels.cpu().numpy()[keep], "clean": trainer.clean_labels[keep]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    values = run_values(args.run_dir)
    noisy = values["given"] != values["clean"]
    scores = candidates(values["clean_prob"], values["probs"], values["gamma"], values["given"])
    flagged = values["clean_prob"] < 0.5
    results = {name: measure(score, noisy, flagged) for name, score in scores.items()}
    for name, row in results.items():
        print(f"{name:>18}: AUC {row['noise_auc']:.4f}  precision@{row['k']} {row['precision_at_k']:.4f}  "
              f"flagged first {row['flagged_first']:.4f}  {row['distinct_values']} distinct of {row['samples']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"run": args.run_dir.name, "epoch": values["epoch"],
                                         "saturated_below_1e-6": int((values["clean_prob"] < 1e-6).sum()),
                                         "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
