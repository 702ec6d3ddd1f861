"""Synthetic label noise (spec section 6) and index-aligned label files."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tcl_hf.errors import DataError
from tcl_hf.noise import (CIFAR100_SUPERCLASSES, asymmetric_noise, cifar100_asym_map, load_label_file,
                          make_noisy_labels, symmetric_noise)

# ---- symmetric ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n, rate", [(7, 0.5), (20000, 0.2), (101, 0.33)])
def test_symmetric_relabels_ceil_rate_n_samples(n, rate):
    # Labels outside 0..C-1 make every redrawn sample visible, even when it redraws its own class.
    outside = np.full(n, 99)
    noisy = symmetric_noise(outside, rate, num_classes=10, seed=0)
    assert int((noisy != 99).sum()) == math.ceil(rate * n)


def test_symmetric_redraws_uniformly_from_all_classes():
    noisy = symmetric_noise(np.full(20000, 99), 0.5, num_classes=10, seed=1)
    counts = np.bincount(noisy[noisy != 99], minlength=10)
    assert counts.sum() == 10000
    # Binomial(10000, 0.1): std 30, so 150 is 5 sigma.
    assert np.abs(counts - 1000).max() < 150


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.8])
def test_symmetric_flip_rate_includes_the_true_class(rate):
    clean = np.arange(20000) % 10
    noisy = symmetric_noise(clean, rate, num_classes=10, seed=2)
    # Reference definition: a redrawn label equals the true one 1/C of the time.
    assert (noisy != clean).mean() == pytest.approx(rate * 9 / 10, abs=0.015)


def test_symmetric_is_seeded_and_leaves_input_alone():
    clean = np.arange(5000) % 10
    before = clean.copy()
    a = symmetric_noise(clean, 0.5, 10, seed=3)
    b = symmetric_noise(clean, 0.5, 10, seed=3)
    c = symmetric_noise(clean, 0.5, 10, seed=4)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    np.testing.assert_array_equal(clean, before)
    assert a is not clean and a.dtype == np.int64


# ---- asymmetric --------------------------------------------------------------------------------

# truck->automobile, bird->airplane, deer->horse, cat<->dog; the rest keep their class.
CIFAR10_EXPECTED = [0, 1, 0, 5, 7, 3, 6, 7, 8, 1]


def test_asymmetric_cifar10_mapping_exactly():
    clean = np.repeat(np.arange(10), 30)
    noisy = asymmetric_noise(clean, 1.0, 10, seed=0)
    np.testing.assert_array_equal(noisy, np.array(CIFAR10_EXPECTED)[clean])


def test_asymmetric_cifar10_picks_int_rate_n_samples():
    # 1001 trucks at 40 %: int(400.4) = 400 become automobiles (ceil would give 401).
    trucks = np.full(1001, 9)
    noisy = asymmetric_noise(trucks, 0.4, 10, seed=5)
    assert int((noisy == 1).sum()) == 400
    assert set(np.unique(noisy)) == {1, 9}


def test_asymmetric_cifar10_partial_rate_only_maps_or_keeps():
    clean = np.arange(10000) % 10
    before = clean.copy()
    noisy = asymmetric_noise(clean, 0.4, 10, seed=6)
    mapped = np.array(CIFAR10_EXPECTED)[clean]
    assert np.all((noisy == clean) | (noisy == mapped))
    # Half of the classes map to another class, so about 20 % of the labels change.
    assert (noisy != clean).mean() == pytest.approx(0.2, abs=0.015)
    np.testing.assert_array_equal(clean, before)
    np.testing.assert_array_equal(noisy, asymmetric_noise(clean, 0.4, 10, seed=6))


def test_cifar100_map_is_a_five_cycle_inside_each_superclass():
    mapping = cifar100_asym_map()
    assert sorted(mapping) == list(range(100))
    assert sorted(k for group in CIFAR100_SUPERCLASSES for k in group) == list(range(100))
    for group in CIFAR100_SUPERCLASSES:
        assert len(group) == 5
        assert {mapping[k] for k in group} == set(group)
        for start in group:
            k, length = mapping[start], 1
            while k != start:
                k, length = mapping[k], length + 1
            assert length == 5


def test_cifar100_superclasses_match_the_dataset_hierarchy(cifar_n_dir):
    path = cifar_n_dir / "CIFAR-100_human.pt"
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    import torch

    table = torch.load(path, weights_only=False)
    fine, coarse = np.asarray(table["clean_label"]), np.asarray(table["clean_coarse_label"])
    groups = {frozenset(np.unique(fine[coarse == c]).tolist()) for c in range(20)}
    assert groups == {frozenset(g) for g in CIFAR100_SUPERCLASSES}


def test_asymmetric_cifar100_applies_the_map():
    clean = np.arange(100)
    noisy = asymmetric_noise(clean, 1.0, 100, seed=0)
    mapping = cifar100_asym_map()
    np.testing.assert_array_equal(noisy, [mapping[k] for k in range(100)])


def test_asymmetric_needs_cifar_classes():
    with pytest.raises(DataError, match="7"):
        asymmetric_noise(np.arange(14) % 7, 0.4, 7, seed=0)


# ---- label files -------------------------------------------------------------------------------


def save(tmp_path, array, name="labels.npy"):
    path = tmp_path / name
    np.save(path, array)
    return path


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_label_file_round_trip_and_rows(tmp_path):
    labels = np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.int32)
    path = save(tmp_path, labels)
    full = load_label_file(path, full_size=8, num_classes=10, rows=None)
    np.testing.assert_array_equal(full, labels)
    assert full.dtype == np.int64
    np.testing.assert_array_equal(load_label_file(path, 8, 10, rows=np.array([0, 2, 5])), [3, 4, 9])
    column = save(tmp_path, labels.reshape(-1, 1), "column.npy")
    np.testing.assert_array_equal(load_label_file(column, 8, 10, None), labels)


def test_label_file_wrong_length(tmp_path):
    path = save(tmp_path, np.zeros(5, dtype=np.int64))
    with pytest.raises(DataError) as exc:
        load_label_file(path, full_size=6, num_classes=10, rows=None)
    text = one_line(exc)
    assert "5" in text and "6" in text and "noise.file" in text


def test_label_file_float_dtype(tmp_path):
    path = save(tmp_path, np.zeros(6, dtype=np.float32))
    with pytest.raises(DataError) as exc:
        load_label_file(path, 6, 10, None)
    assert "float32" in one_line(exc)


def test_label_file_out_of_range(tmp_path):
    path = save(tmp_path, np.array([0, 1, 12, 3], dtype=np.int64))
    with pytest.raises(DataError) as exc:
        load_label_file(path, 4, 10, None)
    text = one_line(exc)
    assert "12" in text and "0..9" in text
    negative = save(tmp_path, np.array([0, -1, 2, 3], dtype=np.int64), "negative.npy")
    with pytest.raises(DataError, match="-1"):
        load_label_file(negative, 4, 10, None)


def test_label_file_two_dimensional(tmp_path):
    path = save(tmp_path, np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(DataError) as exc:
        load_label_file(path, 12, 10, None)
    assert "(3, 4)" in one_line(exc)


def test_label_file_not_npy(tmp_path):
    path = tmp_path / "labels.npy"
    path.write_text("0,1,2\n")
    with pytest.raises(DataError) as exc:
        load_label_file(path, 3, 10, None)
    assert str(path) in one_line(exc)


def test_make_noisy_labels_dispatch(tmp_path):
    clean = np.arange(20) % 10
    none = make_noisy_labels("none", clean, 10, 0.0, seed=0)
    np.testing.assert_array_equal(none, clean)
    assert none is not clean
    path = save(tmp_path, (np.arange(30) + 1) % 10)
    rows = np.arange(0, 30, 3)[:20]
    from_file = make_noisy_labels("file", clean[:10], 10, 0.0, seed=0, file=str(path), full_size=30, rows=rows)
    np.testing.assert_array_equal(from_file, ((np.arange(30) + 1) % 10)[rows])
    with pytest.raises(DataError, match="noise.type"):
        make_noisy_labels("bogus", clean, 10, 0.5, seed=0)


# ---- the reference's own noise file --------------------------------------------------------------


def test_reference_sym50_file_matches_the_reference_definition(tcl_noise_dir, cifar10_dir):
    noise_file = tcl_noise_dir / "sym_noise_cifar10_50.npy"
    if not noise_file.exists():
        pytest.skip(f"shared data not present: {noise_file}")
    import pyarrow.parquet as pq

    shards = sorted((cifar10_dir / "plain_text").glob("train-*.parquet"))
    clean = np.concatenate([pq.read_table(s, columns=["label"])["label"].to_numpy() for s in shards])
    reference = load_label_file(noise_file, full_size=len(clean), num_classes=10, rows=None)
    ref_rate = (reference != clean).mean()
    # 50 % redrawn from all 10 classes: 0.5 * 9/10 = 0.45 really change.
    assert ref_rate == pytest.approx(0.45, abs=0.01)
    ours = (symmetric_noise(clean, 0.5, 10, seed=0) != clean).mean()
    assert ours == pytest.approx(ref_rate, abs=0.01)
