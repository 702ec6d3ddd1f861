"""May a finished run's outputs be trusted? Its verdict, decided once (``run_verdict``, by
``tcl_hf.health.HealthMonitor.summary``) and written to summary.json as ``verdict``; the model card, the
console, the repair (``--accept-failed``), TCL+'s ``init.from`` (``init.accept_failed``) and the sweep's table
read it from there.

- ``collapsed at epoch N``: a method=tcl run judged collapsed (``tcl_hf.health.collapse_reasons``) at TCL
  epoch N, even if later epochs look healthy again: the collapse is a feedback loop; its model is not trusted.
- ``never left warm-up``: a method=tcl run that trained no epoch with TCL's objective. A fixed
  optim.warmup_epochs W trains TCL from epoch max(W, 1) (``tcl_hf.schedule``), so W > the epochs trained; an
  automatic warm-up had not switched when training ended (train.epochs or train.max_steps first). Its model is the
  warm-up's cross-entropy classifier, and the noise verdicts of label_issues.csv never went through TCL's training.
- ``fell back to CE at epoch N``: a method=tcl run with ``train.on_collapse: fallback`` judged collapsed at
  epoch N, which went back to its checkpoint from before TCL began and trained the remaining epochs as the CE
  baseline (``tcl_hf/fallback.py``). Not a failure of its outputs: the model and the label report are that
  baseline's, and they say so; but TCL+ does not start from it (its clusters are not TCL's).
- ``ok``: anything else. method=ce and method=tcl_plus train on fixed labels with no weight that follows the
  clean-ratio estimate, so they are never judged (``HealthMonitor.judged``) and have no TCL warm-up: their
  verdict is always ``ok``.
"""
from __future__ import annotations

VERDICT_OK = "ok"
NEVER_LEFT_WARMUP = "never left warm-up"
FELL_BACK = "fell back to CE at epoch"


def run_verdict(judged: bool, first_tcl_epoch: int | None, collapsed_epoch: int | None, epochs_done: int,
                fell_back: bool = False) -> str:
    """The verdict of a run that trained ``epochs_done`` epochs (the rule above); ``judged``: its method has a TCL
    phase (``tcl_hf.methods.Method.judged``); ``fell_back``: it went back to CE after the collapse."""
    if collapsed_epoch is not None:
        return f"{FELL_BACK} {collapsed_epoch}" if fell_back else f"collapsed at epoch {collapsed_epoch}"
    if judged and (first_tcl_epoch is None or first_tcl_epoch > epochs_done):
        return NEVER_LEFT_WARMUP
    return VERDICT_OK


def summary_verdict(summary: dict) -> str:
    """The verdict a run's summary.json records; one written before verdicts existed counts as ``ok``."""
    verdict = summary.get("verdict", VERDICT_OK)
    return verdict if isinstance(verdict, str) else VERDICT_OK


def fell_back(verdict: str) -> bool:
    """Whether ``verdict`` is a fallback to CE: trusted outputs, but the CE baseline's."""
    return verdict.startswith(FELL_BACK)


def verdict_explained(verdict: str) -> str:
    """What a verdict other than ``ok`` means for the run's outputs and what to do, one sentence without its
    subject (the verdict) and final period."""
    if fell_back(verdict):
        return ("TCL's classifier degenerated, so the run went back to its checkpoint from before TCL began and "
                "trained the remaining epochs as the cross-entropy baseline (train.on_collapse=fallback): the model "
                "and the noise verdicts (a GMM on the loss) are that baseline's, not TCL's; for TCL itself, train "
                "again with the fix the run printed")
    if verdict == NEVER_LEFT_WARMUP:
        return ("optim.warmup_epochs reaches past the epochs trained, or the automatic warm-up never switched, so the "
                "model is a plain warm-up classifier and its noise verdicts never went through TCL; train with more "
                "train.epochs than optim.warmup_epochs, or with optim.warmup_epochs=auto")
    return ("the classifier degenerated, so its predictions and noise verdicts are worse than a cross-entropy "
            "baseline's; train again with the fix the run printed (e.g. optim.warmup_epochs=auto, a lower optim.lr, "
            "tcl.scale1=1 tcl.scale2=1) or use method=ce")


def untrusted_outputs_line(verdict: str) -> str | None:
    """The console's one line after publishing a failed run, or one that fell back to CE (None for ``ok``)."""
    if verdict == VERDICT_OK:
        return None
    if fell_back(verdict):
        return (f"note: label_issues.csv and the model are the CE baseline's: TCL {verdict}: "
                f"{verdict_explained(verdict)}")
    return (f"warning: label_issues.csv and the model are not to be trusted: TCL {verdict}: "
            f"{verdict_explained(verdict)}")
