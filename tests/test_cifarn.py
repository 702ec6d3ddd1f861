"""CIFAR-N label files: the real files against the real CIFAR-10 labels, and small made-up files."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from fixtures import WritesAFile  # noqa: E402

from tcl_hf.noise.cifarn import load_cifarn_labels  # noqa: E402
from tcl_hf.errors import DataError  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR10N = SHARED / "cifar-n" / "CIFAR-10_human.pt"
CIFAR100N = SHARED / "cifar-n" / "CIFAR-100_human.pt"


@pytest.fixture(scope="module")
def cifar10_labels():
    if not (SHARED / "cifar10").is_dir() or not CIFAR10N.is_file():
        pytest.skip("shared/data/cifar10 or cifar-n is absent")
    import datasets

    train = datasets.load_dataset(str(SHARED / "cifar10"), split="train").select_columns(["label"])
    return np.asarray(train["label"], dtype=np.int64)


def _raw(path):
    return torch.load(path, weights_only=False)


def test_worse_labels_of_512_rows(cifar10_labels):
    rows = np.sort(np.random.default_rng(0).permutation(50_000)[:512])
    ours = cifar10_labels[rows]
    noisy = load_cifarn_labels(CIFAR10N, "worse", ours, rows=rows)
    worse = np.asarray(_raw(CIFAR10N)["worse_label"])[rows]
    assert noisy.dtype == np.int64 and np.array_equal(noisy, worse)
    assert np.mean(noisy != ours) == pytest.approx(np.mean(worse != ours))
    assert 0.3 < np.mean(noisy != ours) < 0.5  # 'worse' is the ~40 % noise set


@pytest.mark.parametrize("label_set, agreement", [("aggre", 0.9099), ("worse", 0.5979), ("random1", 0.8277),
                                                  ("random2", 0.8188), ("random3", 0.8236)])
def test_full_label_sets_match_published_agreement(cifar10_labels, label_set, agreement):
    # Agreement rates as published for CIFAR-10N (and restated in shared/data/README.md).
    noisy = load_cifarn_labels(CIFAR10N, label_set, cifar10_labels)
    assert len(noisy) == 50_000
    assert np.mean(noisy == cifar10_labels) == pytest.approx(agreement, abs=5e-5)


def test_cifar100n_file_against_cifar10_is_refused(cifar10_labels):
    if not CIFAR100N.is_file():
        pytest.skip("shared/data/cifar-n/CIFAR-100_human.pt is absent")
    wrong = int(np.sum(np.asarray(_raw(CIFAR100N)["clean_label"]) != cifar10_labels))
    with pytest.raises(DataError) as info:
        load_cifarn_labels(CIFAR100N, "noisy", cifar10_labels)
    message = str(info.value)
    assert "\n" not in message
    assert f"clean labels in CIFAR-100_human.pt disagree with the dataset's at {wrong} of 50000 positions" in message
    assert "CIFAR-100N (CIFAR-100 train), 50000 samples, 100 classes" in message


def test_unknown_label_set_lists_the_files_sets(cifar10_labels):
    with pytest.raises(DataError, match=r"'noisy' is not in CIFAR-10_human.pt; this file offers: "
                                        r"aggre, worse, random1, random2, random3$"):
        load_cifarn_labels(CIFAR10N, "noisy", cifar10_labels)


# ---- made-up files (no shared data needed) ------------------------------------------------------
def _write(tmp_path, **arrays):
    path = tmp_path / "labels.pt"
    torch.save({k: np.asarray(v, dtype=np.int64) for k, v in arrays.items()}, path)
    return path


def test_limit_compares_only_the_rows_drawn(tmp_path):
    clean = np.array([0, 1, 2, 3, 4, 5])
    noisy = np.array([1, 1, 0, 3, 9, 9])
    dataset = np.array([0, 7, 2, 3, 7, 5])  # disagrees only at rows data.limit did not draw
    path = _write(tmp_path, clean_label=clean, aggre_label=noisy, worse_label=noisy)
    rows = np.array([0, 2, 3, 5])
    assert load_cifarn_labels(path, "aggre", dataset[rows], rows=rows).tolist() == [1, 0, 3, 9]
    with pytest.raises(DataError, match=r"disagree with the dataset's at 2 of 6 positions; the file appears to be "
                                        r"for CIFAR-10N \(CIFAR-10 train\), 6 samples, 6 classes"):
        load_cifarn_labels(path, "aggre", dataset)


def test_reordered_dataset_is_refused(tmp_path):
    clean = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    path = _write(tmp_path, clean_label=clean, noisy_label=clean)
    with pytest.raises(DataError, match=r"at 8 of 8 positions; .*CIFAR-100N"):
        load_cifarn_labels(path, "noisy", np.roll(clean, 1))


def test_length_mismatch_is_refused(tmp_path):
    path = _write(tmp_path, clean_label=[0, 1, 2], noisy_label=[0, 1, 1])
    with pytest.raises(DataError, match=r"has 3 labels but the training split has 2 samples$"):
        load_cifarn_labels(path, "noisy", np.array([0, 1]))
    with pytest.raises(DataError, match=r"has 3 labels but data.limit drew row 4 of the training split"):
        load_cifarn_labels(path, "noisy", np.array([0, 1]), rows=np.array([0, 4]))


@pytest.mark.parametrize("content", [{"noisy_label": np.zeros(3, dtype=np.int64)}, [1, 2, 3]])
def test_not_a_cifarn_file(tmp_path, content):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(DataError, match="is not a CIFAR-N label file"):
        load_cifarn_labels(path, "noisy", np.zeros(3, dtype=np.int64))


def test_unreadable_or_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_cifarn_labels(tmp_path / "nope.pt", "aggre", np.zeros(3, dtype=np.int64))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match=r"cannot read .*junk.pt.* with torch.load"):
        load_cifarn_labels(junk, "aggre", np.zeros(3, dtype=np.int64))


def test_crafted_file_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save({"clean_label": np.zeros(3, dtype=np.int64), "aggre_label": WritesAFile(marker)}, path)
    with pytest.raises(DataError) as info:
        load_cifarn_labels(path, "aggre", np.zeros(3, dtype=np.int64))
    message = str(info.value)
    assert not marker.exists()
    assert "\n" not in message and str(path) in message and "refused without running it" in message
    assert "GLOBAL io.open" in message  # the unpickler's own reason, without its advice to load unsafely
    # The same file, loaded the way it used to be, does run the call: the test above can fail.
    torch.load(path, weights_only=False)
    assert marker.exists()


class RunsACommand:
    """Unpickling this calls os.system(command): the classic crafted pickle, with a harmless command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_os_system_is_named_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save({"clean_label": np.zeros(3, dtype=np.int64), "aggre_label": RunsACommand(f"touch '{marker}'")}, path)
    with pytest.raises(DataError) as info:
        load_cifarn_labels(path, "aggre", np.zeros(3, dtype=np.int64))
    message = str(info.value)
    assert not marker.exists()
    assert "\n" not in message and "refused without running it" in message
    assert "posix.system" in message  # what was blocked, by name
    assert "weights_only" not in message and "will likely succeed" not in message  # never torch's unsafe advice


def test_empty_file_says_so(tmp_path):
    path = tmp_path / "CIFAR-10_human.pt"
    path.touch()
    with pytest.raises(DataError, match=r"noise.file: .*CIFAR-10_human.pt.* is an empty file") as info:
        load_cifarn_labels(path, "aggre", np.zeros(3, dtype=np.int64))
    assert "EOFError" not in str(info.value)


def test_float_arrays_are_refused_in_one_line(tmp_path):
    path = tmp_path / "floats.pt"
    torch.save({"clean_label": np.zeros(3), "aggre_label": np.zeros(3)}, path)
    with pytest.raises(DataError, match=r"floats.pt.*holds more than label arrays \(Can only build") as info:
        load_cifarn_labels(path, "aggre", np.zeros(3, dtype=np.int64))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [[0, 99999999999999999999999, 1], [0, "x", 1], [[0], [1], [2]]])
def test_label_lists_that_are_not_int64_labels(tmp_path, bad):
    path = tmp_path / "labels.pt"
    torch.save({"clean_label": [0, 1, 1], "aggre_label": bad}, path)
    with pytest.raises(DataError, match=r"labels.pt\['aggre_label'\] is not a list of integer labels") as info:
        load_cifarn_labels(path, "aggre", np.array([0, 1, 1]))
    assert "\n" not in str(info.value)


def test_noisy_label_out_of_range_is_refused(tmp_path):
    from tcl_hf.noise import make_noisy_labels

    path = _write(tmp_path, clean_label=[0, 1, 2], aggre_label=[0, 1, 10])
    with pytest.raises(DataError, match=r"labels.pt has aggre labels in \[0, 10\]; allowed 0..9$"):
        make_noisy_labels("cifarn", np.array([0, 1, 2]), 10, 0.0, 0, file=str(path), label_set="aggre")
