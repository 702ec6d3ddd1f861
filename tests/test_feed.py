"""The fast path's pieces on the CPU: device-resident batches against loaders, the EM subset, eval.every, and the
reference's PIL views as a training pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import tiny_digits

from tcl_hf.config import load_config
from tcl_hf.feeding.sampler import stratified_subset
from tcl_hf.errors import DataError
from tcl_hf.feeding.feed import keep_on_device
from tcl_hf.rundir import read_metrics
from tcl_hf.trainer import Trainer

TINY = tiny_digits("optim.warmup_epochs=1")


def trainer(tmp_path, *extra: str) -> Trainer:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Trainer(load_config(None, [*TINY, f"output_dir={tmp_path}", *extra]))


def test_in_memory_sets_stay_on_the_device_unless_told(tmp_path):
    t = trainer(tmp_path)
    assert t.feed.on_device and keep_on_device(t.data, None, torch.device("cpu"))
    assert not keep_on_device(t.data, False, torch.device("cpu"))
    lazy = trainer(tmp_path / "lazy", "data.in_memory=false")
    assert not lazy.feed.on_device
    with pytest.raises(DataError, match="data.on_device"):
        keep_on_device(lazy.data, True, torch.device("cpu"))


def test_device_extraction_equals_the_loader_extraction(tmp_path):
    t = trainer(tmp_path)
    model = t.accelerator.unwrap_model(t.model)
    rows = torch.arange(len(t.data.train))
    on_device = t.feed.extract_train(model, rows)
    t.feed.on_device = False  # the same split through a loader over the same rows
    via_loader = t.feed.extract_train(model, rows)
    assert torch.allclose(on_device.z, via_loader.z, atol=1e-5) and torch.allclose(on_device.p, via_loader.p, atol=1e-6)
    some = torch.tensor([5, 0, 77, 31])
    assert torch.allclose(t.feed.extract_train(model, some).z, on_device.z[some], atol=1e-5)


def test_stratified_subset_keeps_class_shares():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    picked = stratified_subset(labels, 4, 100, seed=0, epoch=3)
    assert np.bincount(labels[picked], minlength=4).tolist() == [50, 25, 15, 10]
    assert len(set(picked)) == 100
    assert not np.array_equal(picked, stratified_subset(labels, 4, 100, seed=0, epoch=4))


@pytest.mark.slow
def test_em_subset_refreshes_a_subset_and_carries_the_rest(tmp_path):
    t = trainer(tmp_path, "tcl.em_subset=48")
    t.detect_noise()  # the first EM step covers every sample
    t.train_epoch(1)
    before = t.state.confidences.clone()
    t.detect_noise(1)
    subset = stratified_subset(t.given_labels.cpu().numpy(), t.num_classes, 48, 0, 1)
    others = np.setdiff1d(np.arange(len(before)), subset)
    assert torch.equal(t.state.confidences[others], before[others])
    assert not torch.equal(t.state.confidences[subset], before[subset])


@pytest.mark.parametrize("subset", [None, 48])
def test_each_checkpoint_is_written_once_and_the_last_holds_a_full_em_step(tmp_path, monkeypatch, subset):
    from tcl_hf.state import RunState

    t = trainer(tmp_path, "train.epochs=2", *([f"tcl.em_subset={subset}"] if subset else []))
    written, folders, extracted = [], [], []
    save, extract = t.save_checkpoint, t.feed.extract_train

    def counting_save():
        written.append(t.state.step)
        folders.append(save())
        return folders[-1]

    def counting_extract(model, rows):
        extracted.append(len(rows))
        return extract(model, rows)
    monkeypatch.setattr(t, "save_checkpoint", counting_save)
    monkeypatch.setattr(t.feed, "extract_train", counting_extract)
    t.train()
    steps_per_epoch = t.steps_per_epoch
    assert written == [steps_per_epoch, 2 * steps_per_epoch]  # one write per epoch, none again at the end
    n = len(t.given_labels)
    # The first and the last EM steps see every sample; with a subset the one after epoch 1 sees only that subset.
    between = len(stratified_subset(t.given_labels.cpu().numpy(), t.num_classes, subset, 0, 1)) if subset else n
    assert extracted[0] == extracted[-1] == n and extracted[1:-1] == [between] * (len(extracted) - 2)
    saved = RunState(n, t.num_classes, 16)
    saved.load(folders[-1])  # the final checkpoint holds the verdict the report is written from
    assert torch.equal(saved.confidences, t.state.confidences) and torch.equal(saved.suspicion, t.state.suspicion)


@pytest.mark.slow
def test_eval_every_evaluates_every_n_epochs_and_after_the_last(tmp_path):
    t = trainer(tmp_path, "train.epochs=3", "eval.every=2")
    summary = t.train()
    evaluated = [r["epoch"] for r in read_metrics(tmp_path) if "test_acc" in r]
    assert evaluated == [2, 3] and summary["test_acc"] is not None


@pytest.mark.slow
def test_the_reference_pil_views_train_through_loader_workers(tmp_path):
    t = trainer(tmp_path, "aug.pipeline=pil", "train.max_steps=2", "data.num_workers=1")
    assert not t.feed.on_device
    (x_w, x_q, x_k), index = next(iter(t.feed.train.epoch(1)))
    assert x_w.shape == x_q.shape == x_k.shape == (16, 3, 16, 16) and x_w.dtype == torch.float32
    assert not torch.equal(x_q, x_k)  # two independent strong views
    summary = t.train()
    assert summary["steps"] == 2 and np.isfinite(summary["loss"])
