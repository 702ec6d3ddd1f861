"""Decoded images are made once per machine: the first process writes them beside the split's datasets cache,
every later process and run maps them instead of decoding again."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tcl_hf.data import decoded, images
from tcl_hf.data.contract import Decoding

DECODING = Decoding(resize=12, crop=12, interpolation="bilinear")



@pytest.fixture
def decodes(monkeypatch):
    calls = []
    real = images.decode_cell

    def counting(cell, *args):
        calls.append(1)
        return real(cell, *args)
    monkeypatch.setattr(images, "decode_cell", counting)
    return calls


def written(tmp_path):
    return sorted(p.name.split(".", 1)[1] for p in (tmp_path / "cache").rglob("tcl_hf-decoded-*"))


def test_the_second_process_maps_what_the_first_decoded(on_disk, decodes, tmp_path):
    first_images, first_ok = decoded.decode_split(on_disk(), "img", DECODING, "error", 10**6)
    assert len(decodes) == 6 and written(tmp_path) == ["images.npy", "ok.npy", "xxh3"]
    again_images, again_ok = decoded.decode_split(on_disk(), "img", DECODING, "error", 10**6)
    assert len(decodes) == 6  # nothing decoded the second time
    assert torch.equal(again_images, first_images) and torch.equal(again_ok, first_ok)
    assert again_images.shape == (6, 3, 12, 12) and again_images.dtype == torch.uint8
    # The same pixels as decoding in memory, where no file is involved.
    alone, _ = images.decode_images(on_disk().cast_column("img", __import__("datasets").Image(decode=False))["img"],
                                    DECODING)
    assert torch.equal(alone, first_images)


def test_other_decoding_or_rows_decode_again(on_disk, decodes, tmp_path):
    decoded.decode_split(on_disk(), "img", DECODING, "error", 10**6)
    decoded.decode_split(on_disk(), "img", DECODING._replace(crop=8, resize=8), "error", 10**6)
    decoded.decode_split(on_disk().select(range(3)), "img", DECODING, "error", 10**6)
    assert len(decodes) == 6 + 6 + 3 and len(written(tmp_path)) == 9


def test_a_file_cut_short_by_a_killed_writer_is_decoded_again(on_disk, decodes, tmp_path):
    expected = decoded.decode_split(on_disk(), "img", DECODING, "error", 10**6)[0].clone()  # it maps the file
    [images_file] = (tmp_path / "cache").rglob("tcl_hf-decoded-*.images.npy")
    images_file.write_bytes(images_file.read_bytes()[:-100])
    got, _ = decoded.decode_split(on_disk(), "img", DECODING, "error", 10**6)
    assert len(decodes) == 12 and torch.equal(got, expected)


def test_a_split_in_memory_only_is_decoded_without_files(decodes):
    import datasets

    split = datasets.Dataset.from_dict({"img": [Image.new("RGB", (12, 12), (9, 8, 7))] * 2},
                                       features=datasets.Features({"img": datasets.Image()}))
    got, ok = decoded.decode_split(split, "img", DECODING, "error", 10**6)
    assert len(decodes) == 2 and ok.all() and got[:, 0].eq(9).all()
    assert decoded._cache_paths(split, "img", DECODING, "error", 10**6) is None  # nowhere to write one
    got, ok = decoded.decode_split(split, "img", DECODING, "error", 10**6)
    assert len(decodes) == 4  # nothing kept between calls: decoded again


def test_pixels_changed_in_place_are_decoded_again(on_disk, decodes, tmp_path, capsys):
    expected = decoded.decode_split(on_disk(), "img", DECODING, "error", 10**6)[0].clone()
    [images_file] = (tmp_path / "cache").rglob("tcl_hf-decoded-*.images.npy")
    # Same size, dtype and shape, black pixels: only the content tells.
    pixels = np.load(images_file, mmap_mode="r+")
    pixels[:] = 0
    pixels.flush()
    del pixels
    got, ok = decoded.decode_split(on_disk(), "img", DECODING, "error", 10**6)
    assert len(decodes) == 12 and torch.equal(got, expected) and ok.all()
    said = [line for line in capsys.readouterr().err.splitlines() if "decoding again" in line]  # not datasets' bars
    assert len(said) == 1 and str(images_file) in said[0]
    # Written afresh: the next process maps it without a word.
    again, _ = decoded.decode_split(on_disk(), "img", DECODING, "error", 10**6)
    assert len(decodes) == 12 and torch.equal(again, expected) and "decoding again" not in capsys.readouterr().err


def test_channel_stats_are_computed_once_per_machine(on_disk, tmp_path, monkeypatch):
    import datasets

    from tcl_hf.config import load_config
    from tcl_hf.data.contract import InputContract
    from tcl_hf.data.hf import load_hf

    computed = []
    real = images.channel_stats

    def counting(*args):
        computed.append(1)
        return real(*args)
    monkeypatch.setattr(images, "channel_stats", counting)
    cfg = load_config(None, ["data.format=hf", f"data.path={tmp_path / 'train.parquet'}", "data.in_memory=true",
                      "data.label_column=label"])
    contract = InputContract(12, 12, 1.0, "bilinear")
    # Two processes of one machine, each loading the split: the second finds the first one's statistics.
    first, second = (load_hf(cfg.data, contract, 0, datasets.DatasetDict(train=on_disk(), test=on_disk()))
                     for _ in range(2))
    assert len(computed) == 1 and second.contract.mean == first.contract.mean
    assert second.contract.std == first.contract.std
    # Worked out here in float64 over every pixel of the decoded set (all six images are readable).
    pixels = first.train.images.numpy().astype(np.float64) / 255.0
    expected_mean = pixels.mean(axis=(0, 2, 3))
    expected_std = pixels.transpose(1, 0, 2, 3).reshape(3, -1).std(axis=1, ddof=1)
    assert np.allclose(second.contract.mean, expected_mean, rtol=1e-12)
    assert np.allclose(second.contract.std, expected_std, rtol=1e-12)
