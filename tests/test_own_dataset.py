"""Any dataset as it comes: a held-out test set when the data has none, class names from string labels, a folder
with a sub-folder per class, and one parquet/CSV file of image paths that may not lead outside its folder."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tcl_hf.errors import DataError

NAMES = ["cat", "dog", "owl"]


def _load(*overrides: str, seed: int = 0):
    from tcl_hf.config import load_config
    from tcl_hf.data import load_data
    from tcl_hf.data.contract import InputContract

    cfg = load_config(None, list(overrides))
    return load_data(cfg.data, InputContract(4, 4, 1.0, "bilinear"), seed=seed)


def _shade(label: int) -> int:
    return 40 + 60 * label


def _picture(label: int) -> Image.Image:
    # One grey level per class: a decoded image tells which row it came from (a label paired with another
    # row's image would show).
    return Image.new("RGB", (6, 5), (_shade(label),) * 3)


def _shades(bundle, split: str) -> np.ndarray:
    return getattr(bundle, split).images[:, 0, 0, 0].numpy()


def _labels_in_scrambled_order(counts: list[int], seed: int = 7) -> np.ndarray:
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(labels)


def _write_parquet(path, labels) -> None:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value(
        "string" if isinstance(labels[0], str) else "int64")})
    pictures = [_picture(NAMES.index(x) if isinstance(x, str) else int(x)) for x in labels]
    datasets.Dataset.from_dict({"image": pictures, "label": list(labels)}, features=features).to_parquet(str(path))


def test_test_fraction_holds_out_a_seeded_class_stratified_part(tmp_path):
    labels = _labels_in_scrambled_order([8, 12, 4])
    path = tmp_path / "shop.parquet"  # one file: no test split
    _write_parquet(path, labels.tolist())
    keys = (f"data.path={path}", "data.label_column=label")
    with pytest.raises(DataError, match=r"^data.test_split: split 'test' not in the dataset \(splits: train\); .*"
                                        r"set data.test_fraction"):
        _load(*keys)

    bundle = _load(*keys, "data.test_fraction=0.25")
    # A quarter of each class held out: 2 of 8, 3 of 12, 1 of 4.
    assert np.bincount(bundle.test_labels).tolist() == [2, 3, 1]
    assert np.bincount(bundle.train_labels).tolist() == [6, 9, 3]
    kept = bundle.train_indices
    held = np.setdiff1d(np.arange(len(labels)), kept)
    assert len(held) == 6 and np.array_equal(bundle.train_labels, labels[kept])
    assert np.array_equal(bundle.test_labels, labels[held]) and bundle.full_train_size == 24
    assert np.array_equal(_shades(bundle, "train"), _shade(bundle.train_labels))
    assert np.array_equal(_shades(bundle, "test"), _shade(bundle.test_labels))
    assert np.array_equal(_load(*keys, "data.test_fraction=0.25").train_indices, kept)
    assert not np.array_equal(_load(*keys, "data.test_fraction=0.25", seed=1).train_indices, kept)


def test_test_fraction_is_refused_beside_a_test_split_and_when_a_class_cannot_be_split(tmp_path):
    _write_parquet(tmp_path / "train.parquet", [0, 1, 0, 1, 1])
    _write_parquet(tmp_path / "test.parquet", [0, 1])
    # The data's own test split stays the test set: a hold-out beside it would quietly change the benchmark.
    with pytest.raises(DataError, match=r"^data.test_fraction: the dataset has a test split 'test'; drop "):
        _load(f"data.path={tmp_path}", "data.label_column=label", "data.test_fraction=0.2")
    # 0.2 of 5 rows is one held-out row: too few for two classes.
    with pytest.raises(DataError, match=r"^data.test_fraction: cannot hold out 0.2 of 5 training rows with every "
                                        r"class on both sides"):
        _load(f"data.path={tmp_path / 'train.parquet'}", "data.label_column=label", "data.test_fraction=0.2")


def test_string_labels_become_classes_named_by_the_sorted_strings(tmp_path):
    train = [NAMES[k] for k in _labels_in_scrambled_order([3, 5, 4])]
    test = ["owl", "cat", "dog", "owl"]
    _write_parquet(tmp_path / "train.parquet", train)
    _write_parquet(tmp_path / "test.parquet", test)
    bundle = _load(f"data.path={tmp_path}", "data.label_column=label")
    assert bundle.class_names == sorted(set(train)) == NAMES and bundle.num_classes == 3
    assert bundle.train_labels.tolist() == [NAMES.index(s) for s in train]
    assert bundle.test_labels.tolist() == [NAMES.index(s) for s in test]
    assert np.array_equal(_shades(bundle, "train"), _shade(bundle.train_labels))


def test_an_image_folder_with_a_sub_folder_per_class(tmp_path):
    counts = {"owl": 2, "cat": 4, "dog": 6}
    for name, n in counts.items():
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(n):
            _picture(NAMES.index(name)).save(tmp_path / "pets" / name / f"{i}.png")
    bundle = _load("data.format=imagefolder", f"data.path={tmp_path / 'pets'}", "data.test_fraction=0.5")
    assert bundle.class_names == NAMES
    assert np.bincount(bundle.train_labels).tolist() == [2, 3, 1]
    assert np.bincount(bundle.test_labels).tolist() == [2, 3, 1]
    assert np.array_equal(_shades(bundle, "train"), _shade(bundle.train_labels))
    assert np.array_equal(_shades(bundle, "test"), _shade(bundle.test_labels))
    # The report names each sample by its file, relative to the folder (no local path), in the rows' order.
    ids = bundle.train_ids(str(tmp_path / "pets"))
    assert [i.split("/")[0] for i in ids] == [NAMES[k] for k in bundle.train_labels] and len(set(ids)) == len(ids)
    assert all((tmp_path / "pets" / i).is_file() for i in ids)


def _image_list(folder, suffix: str, labels: list[str], paths: list[str] | None = None):
    """``folder``/labels.<suffix> naming ``pics/<class>/<i>.png`` (written) relative to itself."""
    import datasets

    written = []
    for i, name in enumerate(labels):
        (folder / "pics" / name).mkdir(parents=True, exist_ok=True)
        _picture(NAMES.index(name)).save(folder / "pics" / name / f"{i}.png")
        written.append(f"pics/{name}/{i}.png")
    table = datasets.Dataset.from_dict({"file": paths or written, "label": labels, "note": ["x"] * len(labels)})
    path = folder / f"labels.{suffix}"
    if suffix == "csv":
        table.to_csv(str(path), index=False)
    else:
        table.to_parquet(str(path))
    return path


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_a_list_of_image_paths_relative_to_the_list(tmp_path, suffix):
    (tmp_path / "lists").mkdir()
    labels = [NAMES[k] for k in _labels_in_scrambled_order([4, 4, 4])]
    path = _image_list(tmp_path / "lists", suffix, labels)
    assert os.getcwd() != str(tmp_path / "lists")  # the paths resolve against the list, not the working folder
    bundle = _load("data.format=image_list", f"data.path={path}", "data.image_column=file",
                   "data.label_column=label", "data.test_fraction=0.25")
    assert bundle.class_names == NAMES
    assert np.bincount(bundle.test_labels).tolist() == [1, 1, 1]
    assert np.array_equal(bundle.train_labels, [NAMES.index(labels[i]) for i in bundle.train_indices])
    assert np.array_equal(_shades(bundle, "train"), _shade(bundle.train_labels))
    assert np.array_equal(_shades(bundle, "test"), _shade(bundle.test_labels))
    assert bundle.train_ids(str(path)).tolist() == [f"pics/{labels[i]}/{i}.png" for i in bundle.train_indices]


@pytest.mark.parametrize("escape", ["../outside.png", "absolute", "pics/link.png"])
def test_a_list_may_not_read_outside_its_folder(tmp_path, escape):
    (tmp_path / "lists" / "pics").mkdir(parents=True)
    _picture(0).save(tmp_path / "outside.png")
    (tmp_path / "lists" / "pics" / "link.png").symlink_to(tmp_path / "outside.png")
    wrong = str(tmp_path / "outside.png") if escape == "absolute" else escape
    labels = ["cat", "dog", "cat", "dog"]
    path = _image_list(tmp_path / "lists", "csv", labels, paths=["pics/cat/0.png", "pics/dog/1.png", wrong,
                                                                  "pics/dog/3.png"])
    with pytest.raises(DataError, match=rf"^labels.csv line 4: image path '{wrong}' leads outside lists/"):
        _load("data.format=image_list", f"data.path={path}", "data.image_column=file", "data.label_column=label",
              "data.test_fraction=0.5")
