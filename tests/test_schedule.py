"""The run's schedule (tcl_hf/schedule.py): the lr of every optimizer step in each regime against the formulas of
spec section 4 and tcl_hf/optim.py worked out here, which epochs warm up, the automatic switch, and its decisions
through a checkpoint's save and load."""
from __future__ import annotations

import math

import pytest
import torch

from tcl_hf.config import load_config
from tcl_hf.methods import create_method
from tcl_hf.models import TCLModel
from tcl_hf.optim import auto_lr_at
from tcl_hf.schedule import Schedule, max_warmup_epochs, warmup_finished
from tcl_hf.state import RunState

EPOCHS, STEPS, BATCH = 20, 10, 64   # 10 optimizer steps per epoch, one process with batch 64
PEAK = 0.1 * BATCH / 256            # optim.lr 0.1 per 256 images, scaled linearly (spec section 4): 0.025
LOW = PEAK * 0.01                   # optim.min_lr_ratio


def _schedule(*overrides, tmp_path=None, state=None):
    args = [f"train.epochs={EPOCHS}", "optim.lr=0.1", *overrides]
    if "method=tcl_plus" in overrides:
        args.append(f"init.from={tmp_path}")
    cfg = load_config(None, args)
    model = TCLModel("preact_resnet_mini", num_classes=4, proj_dim=8) if "method=tcl_plus" in overrides else None
    method = create_method(cfg, None, model, torch.zeros(8, dtype=torch.long))
    state, said = state or RunState(8, 4, 2), []
    return Schedule(cfg, method, state, total_batch=BATCH, steps_per_epoch=STEPS, say=said.append), state, said


def _cosine(progress):
    return LOW + 0.5 * (PEAK - LOW) * (1 + math.cos(math.pi * min(progress, 1.0)))


# ---- the lr of every step ------------------------------------------------------------------------------------
@pytest.mark.parametrize("quirk", [True, False])
def test_fixed_warmup_lr_per_step_is_the_reference_schedule(quirk):
    schedule, _, _ = _schedule("optim.warmup_epochs=4", f"optim.cosine_quirk={str(quirk).lower()}")
    for step in range(1, EPOCHS * STEPS + 1):
        epoch = step / STEPS  # the lr of a step is the schedule's at the fractional epoch it ends
        if epoch < 4:
            expected = PEAK * epoch / 4                                  # linear warm-up from 0 over 4 epochs
        else:
            expected = _cosine((epoch - 4) / (EPOCHS if quirk else EPOCHS - 4))
        assert schedule.lr(step) == pytest.approx(expected, abs=1e-12), step
    assert schedule.lr(40) == pytest.approx(PEAK)
    assert (schedule.lr(EPOCHS * STEPS) > 3 * LOW) == quirk          # only without the quirk it reaches the floor


def test_no_scaling_keeps_the_configured_lr_as_the_peak():
    schedule, _, _ = _schedule("optim.warmup_epochs=0", "optim.scale_lr=false")
    assert schedule.lr(1) == pytest.approx(0.001 + 0.5 * (0.1 - 0.001) * (1 + math.cos(math.pi * 0.1 / EPOCHS)))


def test_auto_lr_per_step_ramps_holds_then_follows_the_cosine_from_the_switch():
    schedule, state, _ = _schedule("optim.warmup_epochs=auto")
    ramp = 2  # a tenth of 20 epochs
    for step in range(1, 90):  # undecided: ramp, then the peak however long the warm-up lasts
        assert schedule.lr(step) == pytest.approx(min(step / STEPS / ramp, 1.0) * PEAK, abs=1e-12), step
    state.tcl_from_epoch = 7  # decided after epoch 6
    for step in range(1, EPOCHS * STEPS + 1):
        epoch = step / STEPS
        expected = PEAK * epoch / ramp if epoch < ramp else PEAK if epoch <= 6 else _cosine((epoch - 6) / (EPOCHS - 6))
        assert schedule.lr(step) == pytest.approx(expected, abs=1e-12), step
    assert schedule.lr(EPOCHS * STEPS) == pytest.approx(LOW)


def test_auto_lr_of_ce_is_a_plain_warmup_cosine_from_the_ramp():
    schedule, _, _ = _schedule("optim.warmup_epochs=auto", "method=ce")
    for step in (5, 20, 21, 110, 200):
        epoch = step / STEPS
        expected = PEAK * epoch / 2 if epoch < 2 else _cosine((epoch - 2) / (EPOCHS - 2))
        assert schedule.lr(step) == pytest.approx(expected, abs=1e-12), step


@pytest.mark.parametrize("constant", [True, False])
def test_tcl_plus_keeps_its_peak_lr_or_follows_the_schedule(constant, tmp_path):
    schedule, _, _ = _schedule("method=tcl_plus", "optim.warmup_epochs=0", "optim.cosine_quirk=false",
                               f"plus.constant_lr={str(constant).lower()}", tmp_path=tmp_path)
    for step in (1, 50, 200):
        assert schedule.lr(step) == pytest.approx(PEAK if constant else _cosine(step / STEPS / EPOCHS)), step


# ---- which epochs warm up ---------------------------------------------------------------------------------
@pytest.mark.parametrize("warmup, first", [(0, 1), (1, 1), (3, 3), (20, 20), (21, None)])
def test_a_fixed_warmup_trains_tcl_from_epoch_max_w_1(warmup, first):
    schedule, _, _ = _schedule(f"optim.warmup_epochs={warmup}")
    assert [e for e in range(1, EPOCHS + 1) if not schedule.in_warmup(e)][:1] == ([first] if first else [])
    assert schedule.first_tcl_epoch() == first and schedule.warmup_kind() == "fixed"


def test_ce_and_tcl_plus_have_no_tcl_start_for_the_summary(tmp_path):
    assert _schedule("method=ce", "optim.warmup_epochs=3")[0].first_tcl_epoch() is None
    plus, _, _ = _schedule("method=tcl_plus", "plus.start_correction=2", tmp_path=tmp_path)
    assert plus.first_tcl_epoch() is None
    # TCL+'s phases are its own: before its teacher corrects, whatever optim.warmup_epochs (20) says.
    assert [plus.in_warmup(e) for e in (1, 2, 3, 4)] == [True, True, False, False]


def _ready(z=4.9):
    return lambda estimate: {"label_agreement_z": z, "clean_ratio_est": estimate}


def test_the_automatic_switch_waits_for_settled_signals_and_says_so():
    schedule, state, said = _schedule("optim.warmup_epochs=auto")
    for epoch, estimate in ((1, 0.2), (2, 0.6), (3, 0.62)):
        schedule.after_epoch(epoch, _ready(0.0)(estimate))  # agreement at chance: not ready
    for epoch, estimate in ((4, 0.61), (5, 0.63), (6, 0.64)):
        assert schedule.in_warmup(epoch)
        schedule.after_epoch(epoch, _ready()(estimate))
    assert [schedule.in_warmup(e) for e in (6, 7, 8)] == [True, False, False]
    assert (schedule.first_tcl_epoch(), schedule.settled_clean_ratio(), schedule.warmup_kind()) == (7, 0.64, "settled")
    assert said == ["warm-up done after epoch 6 (classifier ready: agreement z 4.9, clean-ratio estimate 0.64); TCL "
                    "from epoch 7"]
    schedule.after_epoch(7, _ready()(0.1))  # a TCL epoch: nothing more to decide
    assert len(state.warmup_history) == 6 and schedule.first_tcl_epoch() == 7


def test_the_automatic_switch_at_its_bound_is_not_settled():
    schedule, _, said = _schedule("optim.warmup_epochs=auto", "optim.max_warmup_epochs=2")
    schedule.after_epoch(1, _ready(0.0)(0.1))
    schedule.after_epoch(2, _ready(0.0)(0.9))
    assert (schedule.first_tcl_epoch(), schedule.settled_clean_ratio(), schedule.warmup_kind()) == (3, None, "bounded")
    assert said[0].startswith("warm-up done after epoch 2 (reached optim.max_warmup_epochs")


def test_ce_never_switches():
    schedule, state, said = _schedule("optim.warmup_epochs=auto", "method=ce")
    for epoch in (1, 2, 3):
        schedule.after_epoch(epoch, _ready()(0.5))
    assert state.warmup_history == [] and said == [] and schedule.in_warmup(4)


# ---- its decisions through a checkpoint ------------------------------------------------------------------------
def test_the_decisions_survive_a_checkpoint_save_and_load(tmp_path):
    straight, _, _ = _schedule("optim.warmup_epochs=auto")
    halted, state, _ = _schedule("optim.warmup_epochs=auto")
    for epoch, estimate in ((1, 0.60), (2, 0.62)):   # two of the three EM steps a switch needs
        straight.after_epoch(epoch, _ready()(estimate))
        halted.after_epoch(epoch, _ready()(estimate))
    state.save(tmp_path)
    loaded = RunState(8, 4, 2)
    loaded.load(tmp_path)
    resumed, _, said = _schedule("optim.warmup_epochs=auto", state=loaded)
    for schedule in (straight, resumed):
        schedule.after_epoch(3, _ready()(0.63))
    assert said and said[0].endswith("TCL from epoch 4")
    for ask in ("first_tcl_epoch", "settled_clean_ratio", "warmup_kind", "lr_switch"):
        assert getattr(resumed, ask)() == getattr(straight, ask)(), ask
    assert [resumed.lr(s) for s in range(1, 201)] == [straight.lr(s) for s in range(1, 201)]
    assert [resumed.in_warmup(e) for e in range(1, 21)] == [straight.in_warmup(e) for e in range(1, 21)]
    # And once decided, the file carries the switch itself.
    resumed.state.save(tmp_path)
    again = RunState(8, 4, 2)
    again.load(tmp_path)
    assert _schedule("optim.warmup_epochs=auto", state=again)[0].first_tcl_epoch() == 4


# ---- the automatic warm-up's rules ---------------------------------------------------------------------------
def test_warmup_finished_by_hand():
    settled = [[5.0, 0.60], [5.0, 0.63], [5.0, 0.64]]
    assert warmup_finished(settled, 10)
    assert not warmup_finished(settled[:2], 10)                 # too few steps to call it settled
    assert not warmup_finished([[5.0, 0.60], [2.9, 0.63], [5.0, 0.64]], 10)  # one step not beyond chance
    assert not warmup_finished([[5.0, 0.40], [5.0, 0.60], [5.0, 0.45]], 10)  # estimates jump 0.2
    assert warmup_finished([[9.0, 0.9], [5.0, 0.40], [5.0, 0.42], [5.0, 0.44]], 10)  # only the last three count
    assert warmup_finished([[0.0, 0.1], [0.0, 0.9]], 2)         # the bound ends it whatever the signals


def test_max_warmup_epochs_default_is_half_the_run():
    assert max_warmup_epochs(None, 30) == 15
    assert max_warmup_epochs(None, 7) == 3
    assert max_warmup_epochs(None, 1) == 1
    assert max_warmup_epochs(4, 30) == 4


def test_auto_lr_schedule_by_hand():
    peak, low = 1.0, 0.01
    assert auto_lr_at(1.0, peak, 20, low, None) == pytest.approx(0.5)     # ramp over round(0.1 * 20) = 2 epochs
    assert auto_lr_at(1.0, peak, 20, low, 6) == pytest.approx(0.5)        # the ramp ignores the switch
    assert auto_lr_at(9.0, peak, 20, low, None) == peak                   # undecided: stays at the peak
    assert auto_lr_at(6.0, peak, 20, low, 6) == peak                      # cosine starts at the switch
    # half-way from the switch (6) to the end (20): low + (peak - low) / 2
    assert auto_lr_at(13.0, peak, 20, low, 6) == pytest.approx(0.505)
    assert auto_lr_at(20.0, peak, 20, low, 6) == pytest.approx(low)
