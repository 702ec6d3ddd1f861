"""File-list datasets (WebVision, Clothing1M), lazy image decoding and the class-balanced sampler."""
from __future__ import annotations

import contextlib
import gc
import io
import os
import signal
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from fixtures import CLOTHING_NAMES, make_clothing1m, make_webvision, write_lines
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from tcl_hf.data.contract import Decoding
from tcl_hf.errors import DataError
from tcl_hf.data.clothing1m import read_clothing1m
from tcl_hf.data.images import FileImages
from tcl_hf.data.lists import ImageList
from tcl_hf.feeding.sampler import BalancedSubsetSampler, balanced_subset, class_quotas
from tcl_hf.data.webvision import read_webvision

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def _expected(layout, split, num_classes=None):
    rows = layout.splits[split]
    if num_classes is not None:
        rows = [(p, k) for p, k in rows if k < num_classes]
    return [p for p, _ in rows], [k for _, k in rows]


# ---- WebVision ----------------------------------------------------------------------------------
@pytest.mark.parametrize("num_classes", [2, 4, 6])
def test_webvision_splits_follow_the_lists(tmp_path, num_classes):
    layout = make_webvision(tmp_path / "wv", total_classes=6)
    lists = read_webvision(layout.root, num_classes, imagenet_val=layout.files["imagenet"])
    assert set(lists) == {"train", "test", "imagenet"}
    for key, split in (("train", "train"), ("test", "test"), ("imagenet", "imagenet")):
        paths, labels = _expected(layout, split, num_classes)
        assert lists[key].paths == paths, key  # CRLF and trailing blank lines leave no trace
        assert lists[key].labels.tolist() == labels and lists[key].labels.dtype == np.int64
        assert lists[key].class_names == [f"class {k}, a thing" for k in range(num_classes)]


def test_webvision_with_flickr_source(tmp_path):
    layout = make_webvision(tmp_path / "wv", imagenet=None)
    write_lines(layout.root / "info" / "train_filelist_flickr.txt", ["flickr/q0003/x.jpg 3", "flickr/q0009/y.jpg 9"])
    train = read_webvision(layout.root, 4, sources=("google", "flickr"))["train"]
    paths, labels = _expected(layout, "train", 4)
    assert train.paths == paths + [str(layout.root / "flickr/q0003/x.jpg")] and train.labels.tolist() == labels + [3]


def test_image_list_subset_and_lengths():
    items = ImageList(["a", "b", "c", "d"], np.array([3, 1, 2, 0]), ["w", "x", "y", "z"])
    part = items.subset([3, 0])
    assert part.paths == ["d", "a"] and part.labels.tolist() == [0, 3] and part.num_classes == 4 and len(part) == 2
    with pytest.raises(ValueError, match="3 paths but 2 labels"):
        ImageList(["a", "b", "c"], np.array([0, 1]), ["x", "y"])


def test_webvision_imagenet_folders_by_wordnet_id(tmp_path):
    layout = make_webvision(tmp_path / "wv", imagenet="wnid")
    lists = read_webvision(layout.root, 3, imagenet_val=layout.files["imagenet"])
    paths, labels = _expected(layout, "imagenet", 3)
    assert lists["imagenet"].paths == paths and lists["imagenet"].labels.tolist() == labels


def test_webvision_without_synsets_names_classes_by_index(tmp_path):
    layout = make_webvision(tmp_path / "wv", synsets=False, imagenet=None)
    lists = read_webvision(layout.root, 4)
    assert set(lists) == {"train", "test"}
    assert lists["train"].class_names == ["0", "1", "2", "3"]


def test_imagenet_folder_with_foreign_name_is_refused(tmp_path):
    layout = make_webvision(tmp_path / "wv")
    (layout.files["imagenet"] / "cats").mkdir()
    with pytest.raises(DataError, match="'cats'.*neither a class index"):
        read_webvision(layout.root, 4, imagenet_val=layout.files["imagenet"])


def test_imagenet_missing_class_folder_narrows_the_set(tmp_path):
    layout = make_webvision(tmp_path / "wv")
    folder = layout.files["imagenet"]
    for f in (folder / "2").iterdir():
        f.unlink()
    (folder / "2").rmdir()
    imagenet = read_webvision(layout.root, 4, imagenet_val=folder)["imagenet"]
    assert sorted(set(imagenet.labels.tolist())) == [0, 1, 3] and len(imagenet) == 6


def test_imagenet_folder_without_any_class_is_refused(tmp_path):
    layout = make_webvision(tmp_path / "wv")
    empty = tmp_path / "empty_val"
    (empty / "999").mkdir(parents=True)
    with pytest.raises(DataError, match="no sub-folder for any class"):
        read_webvision(layout.root, 4, imagenet_val=empty)


@pytest.mark.parametrize("bad", ["google/q/b.jpg", "google/q/b.jpg two", "google/q/b.jpg 1.5", "7"])
@pytest.mark.parametrize("crlf", [False, True])
def test_unparsable_line_names_file_and_line(tmp_path, bad, crlf):
    layout = make_webvision(tmp_path / "wv", imagenet=None)
    write_lines(layout.files["train"], ["google/q/a.jpg 0", "", "google/q/c.jpg 1", bad, "google/q/d.jpg 2"], crlf=crlf)
    with pytest.raises(DataError) as info:
        read_webvision(layout.root, 4)
    message = str(info.value)
    assert "train_filelist_google.txt line 4:" in message and repr(bad) in message
    assert "\n" not in message


@pytest.mark.parametrize("label", [1000, -1])
def test_webvision_label_out_of_range(tmp_path, label):
    layout = make_webvision(tmp_path / "wv", imagenet=None)
    write_lines(layout.files["val"], ["a.jpg 0", "b.jpg 3", f"c.jpg {label}", "d.jpg 1"])
    with pytest.raises(DataError, match=rf"val_filelist.txt line 3: label {label} out of range; allowed 0..999"):
        read_webvision(layout.root, 50)


@pytest.mark.parametrize("num_classes", [1, 1001])
def test_webvision_num_classes_checked(tmp_path, num_classes):
    layout = make_webvision(tmp_path / "wv", imagenet=None)
    with pytest.raises(DataError, match="data.num_classes"):
        read_webvision(layout.root, num_classes)


def test_missing_list_file_is_named(tmp_path):
    layout = make_webvision(tmp_path / "wv", imagenet=None)
    layout.files["val"].unlink()
    with pytest.raises(DataError, match=r"val_filelist.txt: file not found"):
        read_webvision(layout.root, 4)
    with pytest.raises(DataError, match="data.root"):
        read_webvision(tmp_path / "nowhere", 4)


# ---- Clothing1M ---------------------------------------------------------------------------------
def test_clothing1m_splits_take_the_right_labels(tmp_path):
    layout = make_clothing1m(tmp_path / "c1m")
    lists = read_clothing1m(layout.root)
    assert set(lists) == {"train", "val", "test"}
    for split in ("train", "val", "test"):
        paths, labels = _expected(layout, split)
        assert lists[split].paths == paths
        assert lists[split].labels.tolist() == labels
        assert lists[split].class_names == list(CLOTHING_NAMES)
    # The fixture's clean file relabels the first train keys; train must keep the noisy labels.
    clean = dict(line.split() for line in layout.files["clean_kv"].read_text().splitlines())
    relabelled = [i for i, (p, k) in enumerate(layout.splits["train"])
                  if os.path.relpath(p, layout.root) in clean and int(clean[os.path.relpath(p, layout.root)]) != k]
    assert relabelled and all(lists["train"].labels[i] == layout.splits["train"][i][1] for i in relabelled)


def test_clothing1m_key_without_label_is_named(tmp_path):
    layout = make_clothing1m(tmp_path / "c1m")
    keys = layout.files["val"].read_text().splitlines()
    write_lines(layout.files["val"], keys[:3] + ["images/9/99/77777.jpg"] + keys[3:])
    with pytest.raises(DataError, match=r"clean_val_key_list.txt line 4: key 'images/9/99/77777.jpg' has no label "
                                        r"in clean_label_kv.txt"):
        read_clothing1m(layout.root)


def test_clothing1m_label_out_of_range(tmp_path):
    layout = make_clothing1m(tmp_path / "c1m")
    lines = layout.files["noisy_kv"].read_text().splitlines()
    lines[5] = lines[5].split()[0] + " 14"
    write_lines(layout.files["noisy_kv"], lines)
    with pytest.raises(DataError, match=r"noisy_label_kv.txt line 6: label 14 out of range; allowed 0..13"):
        read_clothing1m(layout.root)


def test_clothing1m_conflicting_duplicate_key(tmp_path):
    layout = make_clothing1m(tmp_path / "c1m")
    lines = layout.files["clean_kv"].read_text().splitlines()
    key, label = lines[2].split()
    write_lines(layout.files["clean_kv"], lines + [f"{key} {(int(label) + 1) % 14}", lines[3]])
    with pytest.raises(DataError, match=rf"clean_label_kv.txt: key '{key}' is listed with labels {label} and"):
        read_clothing1m(layout.root)


def test_clothing1m_key_list_with_labels_is_refused(tmp_path):
    layout = make_clothing1m(tmp_path / "c1m")
    keys = layout.files["test"].read_text().splitlines()
    write_lines(layout.files["test"], keys[:1] + [keys[1] + " 3"] + keys[2:])
    with pytest.raises(DataError, match=r"clean_test_key_list.txt line 2: expected one key"):
        read_clothing1m(layout.root)


# ---- FileImages ---------------------------------------------------------------------------------
def bilinear(resize: int, crop: int | None = None) -> Decoding:
    return Decoding(resize, resize if crop is None else crop, "bilinear")


@pytest.fixture(scope="module")
def webvision(tmp_path_factory):
    return make_webvision(tmp_path_factory.mktemp("data") / "wv")


def test_every_mode_decodes_to_its_colour(webvision):
    paths = sorted(webvision.colours)
    images = FileImages(paths, bilinear(16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. PIL's palette-transparency warning, once per image in workers
        items = [images[i] for i in range(len(paths))]
    for i, (image, index, ok) in enumerate(items):
        assert ok and index == i and image.dtype == torch.uint8 and image.shape == (3, 16, 16)
        colour = torch.tensor(webvision.colours[paths[i]], dtype=torch.int16).view(3, 1, 1)
        assert (image.to(torch.int16) - colour).abs().max() <= 4, paths[i]  # JPEG keeps flat colour within a few levels


def test_bad_files_skip_or_raise(webvision):
    corrupt, missing, truncated = (sorted(s)[0] for s in (webvision.corrupt, webvision.missing, webvision.truncated))
    skipping = FileImages([corrupt, missing, truncated], bilinear(12))
    for i in (0, 1):
        image, index, ok = skipping[i]
        assert not ok and index == i and image.shape == (3, 12, 12) and not image.any()
    assert skipping[2][2]  # truncated JPEGs decode (LOAD_TRUNCATED_IMAGES), the rest comes out grey
    raising = FileImages([corrupt, missing, truncated], bilinear(12), on_bad_image="error")
    for i, path in ((0, corrupt), (1, missing)):
        with pytest.raises(DataError, match=rf"^image {path}: cannot be read \(.+\); set data.on_bad_image=skip"):
            raising[i]
    assert raising[2][2]


def _bands(tmp_path, width, height):
    """Red | green | blue thirds along the longer side."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    long = max(width, height)
    for c in range(3):
        part = slice(c * long // 3, (c + 1) * long // 3)
        if width >= height:
            array[:, part, c] = 255
        else:
            array[part, :, c] = 255
    path = tmp_path / f"bands_{width}x{height}.png"
    Image.fromarray(array).save(path)
    return str(path)


@pytest.mark.parametrize("shape", [(60, 20), (20, 60)])
def test_shorter_side_resize_then_centre_crop(tmp_path, shape):
    path = _bands(tmp_path, *shape)
    green = torch.tensor([0, 255, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 10, 10)
    # Shorter side already 20: the centre 20x20 square is exactly the green third.
    assert torch.equal(FileImages([path], bilinear(20))[0][0], green.expand(3, 10, 10).repeat(1, 2, 2))
    # Resize 20 (no-op), then the centre 10x10 of the green square.
    assert torch.equal(FileImages([path], bilinear(20, crop=10))[0][0], green)
    # Straight to 10: halved, so the crop is the (resampled) green third; its centre stays pure green.
    image = FileImages([path], bilinear(10))[0][0]
    assert torch.equal(image[:, 3:7, 3:7], green[:, :4, :4])


def test_resize_smaller_than_size_is_refused():
    with pytest.raises(ValueError, match="crop"):
        FileImages([], bilinear(16, crop=32))


@pytest.mark.slow
def test_loader_workers_flag_bad_images(webvision):
    paths = [p for p, _ in webvision.splits["train"]]
    bad = {i for i, p in enumerate(paths) if p in webvision.corrupt | webvision.missing}
    assert len(bad) == 2
    loader = DataLoader(FileImages(paths, bilinear(8)), batch_size=5, num_workers=2)
    seen, flagged = [], set()
    for images, indices, ok in loader:
        assert images.shape == (len(indices), 3, 8, 8)
        seen += indices.tolist()
        flagged |= set(indices[~ok].tolist())
    assert flagged == bad
    assert sorted(seen) == list(range(len(paths)))


@pytest.mark.slow
def test_error_from_a_worker_still_names_the_file(webvision):
    path = sorted(webvision.corrupt)[0]
    loader = DataLoader(FileImages([path], bilinear(8), on_bad_image="error"), batch_size=1, num_workers=1)
    with pytest.raises(DataError) as info:
        next(iter(loader))
    # torch re-raises worker errors with the worker's traceback; the original message is the last line.
    assert str(info.value).strip().splitlines()[-1].endswith(f"image {path}: cannot be read (cannot identify image "
                                                             f"file '{path}'); set data.on_bad_image=skip to leave "
                                                             f"such files out")
    # torch joins a worker that raised only after a 5 s timeout; pay it here, not in a later test.
    del info, loader
    gc.collect()


def test_load_data_reads_clothing1m_lazily(tmp_path):
    from types import SimpleNamespace

    from tcl_hf.data.contract import InputContract
    from tcl_hf.data import load_data

    layout = make_clothing1m(tmp_path / "c1m")
    lists = read_clothing1m(layout.root)
    cfg = SimpleNamespace(format="clothing1m", root=str(layout.root), limit=None, on_bad_image="skip",
                          samples_per_epoch=None, num_classes=None, imagenet_val=None, max_image_pixels=10**6)
    bundle = load_data(cfg, InputContract(24, 24, 1.0, "bilinear"))
    assert len(bundle.train) == len(lists["train"]) and len(bundle.test) == len(lists["test"])
    assert np.array_equal(bundle.train_labels, lists["train"].labels) and bundle.clean_train_labels is None
    assert bundle.num_classes == 14 and bundle.class_names == list(CLOTHING_NAMES) and bundle.full_train_size == 42
    assert list(bundle.eval_sets) == ["test", "val"]
    image, index, ok = bundle.test[3]
    assert ok and image.shape == (3, 24, 24) and bundle.test.path(3) == lists["test"].paths[3]


# ---- class-balanced subsets ---------------------------------------------------------------------
def _imbalanced(counts, seed=0):
    labels = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    return np.random.default_rng(seed).permutation(labels)


def test_quotas_by_hand():
    # Worked by hand: 400 over [1000, 50, 300, 5]. Smallest first: 5 (share 100), 50 (share 131),
    # then 345 left for two classes: 172 and 173.
    assert class_quotas(np.array([1000, 50, 300, 5]), 400).tolist() == [173, 50, 172, 5]
    assert class_quotas(np.array([10, 10, 10]), 8).tolist() == [2, 3, 3]
    assert class_quotas(np.array([4, 0, 2]), 100).tolist() == [4, 0, 2]


def test_balanced_subset_is_balanced_and_distinct():
    labels = _imbalanced([1000, 50, 300, 5])
    picked = balanced_subset(labels, 4, 400, seed=1, epoch=0)
    assert len(picked) == 400 and len(set(picked.tolist())) == 400
    assert Counter(labels[picked].tolist()) == {0: 173, 1: 50, 2: 172, 3: 5}
    equal = _imbalanced([300] * 14)
    counts = np.bincount(equal[balanced_subset(equal, 14, 1405, seed=0, epoch=2)], minlength=14)
    assert counts.sum() == 1405 and counts.min() == 100 and counts.max() == 101


def test_balanced_sampler_epochs():
    labels = _imbalanced([200, 120, 80, 40])
    sampler = BalancedSubsetSampler(labels, 4, 100, seed=5)
    again = BalancedSubsetSampler(labels, 4, 100, seed=5)
    first = list(sampler)
    assert len(sampler) == 100 and first == list(again)
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) != sorted(first)  # a new subset, not only a new order
    again.set_epoch(1)
    assert list(again) == second
    assert list(BalancedSubsetSampler(labels, 4, 100, seed=6)) != first
    everything = BalancedSubsetSampler(labels, 4, 10_000)
    assert len(everything) == 440 and sorted(everything) == list(range(440))


def test_sampler_set_epoch_through_accelerate():
    from accelerate import Accelerator, DataLoaderConfiguration

    labels = _imbalanced([90, 60, 30])
    sampler = BalancedSubsetSampler(labels, 3, 60, seed=3)
    loader = DataLoader(TensorDataset(torch.arange(len(labels))), batch_size=8, sampler=sampler, drop_last=True)
    acc = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    loader = acc.prepare(loader)
    for epoch in (4, 5):
        loader.set_epoch(epoch)
        got = torch.cat([batch for (batch,) in loader]).tolist()
        assert got == balanced_subset(labels, 3, 60, seed=3, epoch=epoch)[:56].tolist()


def _two_process_worker(labels, out_dir):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # The fork copies any single-process state an earlier test left in this interpreter.
    AcceleratorState._reset_state(reset_partial_state=True)
    acc = Accelerator(cpu=True)
    assert acc.num_processes == 2
    loader = acc.prepare(DataLoader(TensorDataset(torch.arange(len(labels))), batch_size=4,
                                    sampler=BalancedSubsetSampler(labels, 3, 48, seed=9), drop_last=True))
    loader.set_epoch(2)
    indices = torch.cat([batch for (batch,) in loader])
    np.save(os.path.join(out_dir, f"rank{acc.process_index}.npy"), indices.numpy())


def test_two_processes_share_out_one_subset(tmp_path):
    from accelerate import debug_launcher

    labels = _imbalanced([70, 40, 20])
    debug_launcher(_two_process_worker, args=(labels, str(tmp_path)), num_processes=2)
    shards = [np.load(tmp_path / f"rank{r}.npy") for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 24 and not set(shards[0]) & set(shards[1])
    assert sorted(np.concatenate(shards).tolist()) == sorted(balanced_subset(labels, 3, 48, 9, 2).tolist())


# ---- lists and images that must not be trusted ----------------------------------------------------
@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: SIGALRM interrupts a blocking open() (PEP 475: the handler's
    exception ends the call)."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("bad", ["../../x.jpg", "/etc/hostname", "google/q/../../../x.jpg", "..\t3"])
def test_webvision_line_leaving_the_root_names_file_and_line(tmp_path, bad):
    layout = make_webvision(tmp_path / "wv", imagenet=None)
    escape = bad if "\t" in bad else f"{bad} 1"
    write_lines(layout.files["train"], ["google/q/a.jpg 0", escape, "google/q/d.jpg 2"])
    with pytest.raises(DataError) as info:
        read_webvision(layout.root, 4)
    message = str(info.value)
    assert f"{layout.files['train']} line 2: image path" in message and "leaves the dataset folder" in message
    assert "\n" not in message


@pytest.mark.parametrize("bad", ["../outside.jpg", "/tmp/outside.jpg"])
def test_clothing1m_key_leaving_the_root_names_file_and_line(tmp_path, bad):
    layout = make_clothing1m(tmp_path / "c1m")
    keys = layout.files["test"].read_text().splitlines()
    write_lines(layout.files["test"], keys[:2] + [bad] + keys[2:])
    with pytest.raises(DataError, match=rf"clean_test_key_list.txt line 3: image path '{bad}' leaves the dataset"):
        read_clothing1m(layout.root)


def test_images_folder_may_be_a_symlink_to_another_disk(tmp_path):
    layout = make_clothing1m(tmp_path / "c1m")
    elsewhere = tmp_path / "other_disk" / "images"
    elsewhere.parent.mkdir()
    (layout.root / "images").rename(elsewhere)
    (layout.root / "images").symlink_to(elsewhere, target_is_directory=True)
    lists = read_clothing1m(layout.root)
    path, _ = layout.splits["test"][0]
    image, _, ok = FileImages([lists["test"].paths[0]], bilinear(8))[0]
    assert ok and lists["test"].paths[0] == path
    colour = torch.tensor(layout.colours[path], dtype=torch.int16).view(3, 1, 1)
    assert (image.to(torch.int16) - colour).abs().max() <= 4


@pytest.mark.slow
def test_fifo_named_like_an_image_is_a_bad_image_not_a_hang(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    with deadline(30):
        image, _, ok = FileImages([str(fifo)], bilinear(8))[0]
        assert not ok and not image.any()
        with pytest.raises(DataError, match=rf"^image {fifo}: cannot be read \(not a regular file\)"):
            FileImages([str(fifo)], bilinear(8), on_bad_image="error")[0]


def test_image_over_the_pixel_cap_is_bad_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (65, 64), (10, 200, 30)).save(path)
    image, _, ok = FileImages([str(path)], bilinear(8), max_pixels=64 * 64)[0]
    assert not ok and not image.any()
    with pytest.raises(DataError, match=r"\(65x64 pixels, over data.max_image_pixels=4096\)"):
        FileImages([str(path)], bilinear(8), on_bad_image="error", max_pixels=64 * 64)[0]
    # At the cap it decodes: the test above fails if the cap is off by one or never applied.
    image, _, ok = FileImages([str(path)], bilinear(8), max_pixels=65 * 64)[0]
    assert ok and image[:, 4, 4].tolist() == [10, 200, 30]


def test_pixel_cap_applies_to_embedded_images_too():
    from tcl_hf.data.images import decode_cell

    buffer = io.BytesIO()
    Image.new("L", (100, 50), 7).save(buffer, format="PNG")
    array, ok = decode_cell({"bytes": buffer.getvalue(), "path": None}, bilinear(8), "skip", max_pixels=4999)
    assert not ok and not array.any()
    array, ok = decode_cell({"bytes": buffer.getvalue(), "path": None}, bilinear(8), "skip", max_pixels=5000)
    assert ok and array[4, 4].tolist() == [7, 7, 7]


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 7).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_extreme_aspect_ratio_is_bad_from_the_header(monkeypatch):
    """A 1x200,000 px PNG is under the pixel cap, yet resizing its shorter side to 256 would allocate ~39 GB:
    it must be classed bad from the header, before any decoding (which would fail the test here)."""
    from tcl_hf.data import images

    def never(*args):
        raise AssertionError("the image reached decoding")

    cell = {"bytes": _png(1, 200_000), "path": None}
    assert len(cell["bytes"]) < 2000
    webvision = Decoding(256, 224, "bilinear")
    with monkeypatch.context() as patch:
        patch.setattr(images, "to_rgb_array", never)
        array, ok = images.decode_cell(cell, webvision, "skip")
        assert not ok and array.shape == (224, 224, 3) and not array.any()
        with pytest.raises(DataError, match=r"^image an embedded image: cannot be read \(1x200000 pixels, "
                                            r"aspect ratio over 100:1\)"):
            images.decode_cell(cell, webvision, "error")


def test_resize_target_is_bounded_by_the_pixel_cap(monkeypatch):
    from tcl_hf.data import images

    cell = {"bytes": _png(10, 900), "path": None}  # aspect 90:1, 9,000 px; at resize 40 it becomes 40x3600
    with pytest.raises(DataError, match=r"\(10x900 pixels, resized to 40x3600, over data.max_image_pixels=100000\)"):
        images.decode_cell(cell, Decoding(40, 40, "bilinear"), "error", max_pixels=100_000)
    array, ok = images.decode_cell(cell, Decoding(40, 40, "bilinear"), "error", max_pixels=144_000)
    assert ok and array[4, 4].tolist() == [7, 7, 7]  # at the cap it decodes: the bound is not off by one
    array, ok = images.decode_cell({"bytes": _png(3, 300), "path": None}, bilinear(8), "error")
    assert ok  # exactly 100:1 is allowed


@pytest.mark.slow
@pytest.mark.parametrize("mode, value, fmt", [("I;16", 128 * 257, "PNG"), ("I;16B", 128 * 257, "TIFF"),
                                              ("I", 128 * 257, "TIFF"), ("F", 0.5, "TIFF")])
def test_high_bit_depth_images_are_rescaled_not_clipped(tmp_path, mode, value, fmt):
    path = tmp_path / f"grey.{fmt.lower()}"
    Image.new(mode, (12, 10), value).save(path, format=fmt)
    assert Image.open(path).mode == mode  # the case under test really reaches the decoder
    image, _, ok = FileImages([str(path)], bilinear(8))[0]
    assert ok and image.unique().tolist() == [128]  # PIL's own convert gives 255 (or 0 for F)


@pytest.mark.parametrize("mode, low, high", [("F", 100.0, 300.0), ("F", -1.0, 1.0), ("I", -5, 70000)])
def test_out_of_range_values_are_min_max_scaled(tmp_path, mode, low, high):
    path = tmp_path / "halves.tiff"
    array = np.full((8, 16), low, dtype=np.float32 if mode == "F" else np.int32)
    array[:, 8:] = high
    Image.fromarray(array, mode=mode).save(path, format="TIFF")
    image, _, ok = FileImages([str(path)], bilinear(8))[0]
    # Shorter side 8 already: the centre 8x8 crop keeps 4 columns of each half.
    assert ok and image[0, 0, :4].tolist() == [0] * 4 and image[0, 0, 4:].tolist() == [255] * 4


def test_imagenet_folder_named_by_a_superscript_digit_is_refused(tmp_path):
    layout = make_webvision(tmp_path / "wv")
    (layout.files["imagenet"] / "²").mkdir()  # str.isdigit() says yes, int() says no
    with pytest.raises(DataError, match="'²'.*neither a class index"):
        read_webvision(layout.root, 4, imagenet_val=layout.files["imagenet"])


@pytest.mark.parametrize("label", [99999999999999999999999, -99999999999999999999999])
def test_label_beyond_int64_is_out_of_range(tmp_path, label):
    layout = make_webvision(tmp_path / "wv", imagenet=None)
    write_lines(layout.files["val"], ["a.jpg 0", f"b.jpg {label}", "c.jpg 1"])
    with pytest.raises(DataError, match=rf"val_filelist.txt line 2: label {label} out of range; allowed 0..999$"):
        read_webvision(layout.root, 50)


def test_clothing1m_training_keys_without_label_are_left_out_and_counted(tmp_path):
    layout = make_clothing1m(tmp_path / "c1m")
    keys = layout.files["train"].read_text().splitlines()
    unlabelled = ["images/9/99/70001.jpg", "images/9/99/70002.jpg", "images/9/99/70003.jpg"]
    write_lines(layout.files["train"], unlabelled[:1] + keys[:5] + unlabelled[1:] + keys[5:])
    train = read_clothing1m(layout.root)["train"]
    paths, labels = _expected(layout, "train")
    assert train.paths == paths and train.labels.tolist() == labels and train.unlabelled == 3
    # A line that does not parse is still an error naming file and line.
    write_lines(layout.files["train"], keys[:2] + ["images/a.jpg 3"] + keys[2:])
    with pytest.raises(DataError, match=r"noisy_train_key_list.txt line 3: expected one key"):
        read_clothing1m(layout.root)


# ---- data.limit: a seeded, class-stratified sample; every class must have a training sample ----------------------
def _imagefolder(root, counts):
    """An imagefolder with train/ and test/, class folders c0.. holding `counts[k]` 4x4 PNGs each (in train)."""
    for split, per_class in (("train", counts), ("test", [2] * len(counts))):
        for k, n in enumerate(per_class):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("L", (4, 4), 10 * k).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def sorted_by_class(tmp_path_factory):
    # 72 training images sorted by class on disk: the first 40 rows hold classes c0 and c1 only.
    return _imagefolder(tmp_path_factory.mktemp("folder"), [20, 20] + [4] * 8)


def _load_hf(path, *overrides, seed=0):
    from tcl_hf.config import load_config
    from tcl_hf.data import load_data
    from tcl_hf.data.contract import InputContract

    cfg = load_config(None, ["data.format=hf", f"data.path={path}", *overrides])
    return load_data(cfg.data, InputContract(4, 4, 1.0, "bilinear"), seed=seed)


def test_limit_draws_a_seeded_class_stratified_sample(sorted_by_class):
    bundle = _load_hf(sorted_by_class, "data.limit=40")
    counts = np.bincount(bundle.train_labels, minlength=10)
    # In proportion: 40 x 20/72 = 11.1 of each large class, 40 x 4/72 = 2.2 of each small one.
    assert len(bundle.train_labels) == 40 and set(counts[:2]) <= {11, 12} and set(counts[2:]) <= {2, 3}
    assert np.bincount(bundle.test_labels, minlength=10).tolist() == [2] * 10  # 20 test rows, all kept
    # The images are those of the rows drawn (the loader did not pair one sample's label with another's image).
    shades = bundle.train.images[:, 0, 0, 0].numpy()
    assert np.array_equal(shades, 10 * bundle.train_labels)
    assert np.array_equal(_load_hf(sorted_by_class, "data.limit=40").train_labels, bundle.train_labels)
    other = _load_hf(sorted_by_class, "data.limit=40", seed=1)
    assert not np.array_equal(other.train_indices, bundle.train_indices)  # seeded: another seed, other rows


def test_limit_too_small_for_every_class_is_an_error_naming_them(sorted_by_class):
    # 4 rows drawn in proportion are two of each large class: none of the eight small ones.
    with pytest.raises(DataError, match=r"^data.limit=4: the training sample has no image of 8 of 10 classes "
                                        r"\(c2, c3, c4, c5, c6, c7, c8, c9\); every class needs a training sample"):
        _load_hf(sorted_by_class, "data.limit=4")


def test_class_without_a_training_sample_is_an_error(tmp_path):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "owl"])})
    for split, labels in (("train", [0, 1, 0, 1]), ("test", [0, 1, 2])):
        datasets.Dataset.from_dict({"image": [Image.new("L", (4, 4), 0)] * len(labels), "label": labels},
                                   features=features).to_parquet(str(tmp_path / f"{split}.parquet"))
    with pytest.raises(DataError, match=r"^data.label_column: the training split has no image of 1 of 3 classes "
                                        r"\(owl\); every class needs a training sample"):
        _load_hf(tmp_path)


def test_noise_file_follows_the_rows_limit_drew(sorted_by_class, tmp_path):
    from types import SimpleNamespace

    from tcl_hf.noise import training_labels

    full = _load_hf(sorted_by_class)
    path = tmp_path / "noisy.npy"
    np.save(path, (full.train_labels + 1) % 10)  # one label per row of the whole split
    bundle = _load_hf(sorted_by_class, "data.limit=40")
    noise = SimpleNamespace(type="file", file=str(path), rate=0.0, seed=None, label_set=None)
    given, clean = training_labels(noise, bundle, seed=0)
    assert np.array_equal(given.numpy(), (bundle.train_labels + 1) % 10)
