"""The tests' common tiny training config, and builders of tiny on-disk datasets in the standard WebVision and
Clothing1M layouts.

Every image is one solid colour, recorded in the returned layout, so tests can check decoding
against values chosen here rather than against the code under test. Each layout holds a grayscale,
an RGBA, a palette and a CMYK image, a corrupt file, a truncated JPEG and a listed-but-missing file;
one list file has CRLF line endings and trailing blank lines. ``WritesAFile`` is the payload of a
crafted pickle, for tests that label files are loaded without running anything.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# A training run small enough for a test: sklearn digits at 16 px, a mini PreAct ResNet, 40 % symmetric noise. So
# small a TCL phase often collapses; the tests of other things train on through it (the fallback to CE, the default,
# has its own: tests/test_fallback.py).
TINY_DIGITS = ("data.format=digits", "data.limit=96", "data.image_size=16", "model.backbone=preact_resnet_mini",
               "model.proj_dim=16", "noise.type=sym", "noise.rate=0.4", "train.batch_size=16", "eval.knn_k=10",
               "log.progress=false", "train.on_collapse=warn")


def tiny_digits(*changes: str) -> list[str]:
    """``TINY_DIGITS`` with each ``key=value`` of ``changes`` in place of that key's entry (appended if new)."""
    changed = {change.split("=", 1)[0] for change in changes}
    return [*(o for o in TINY_DIGITS if o.split("=", 1)[0] not in changed), *changes]


def significant_digits(value: float) -> int:
    """How many significant digits ``repr`` shows (0.05000000074505806: 16)."""
    mantissa = repr(abs(value)).split("e")[0].replace(".", "").lstrip("0")
    return len(mantissa)


SIZES = ((40, 30), (30, 52), (64, 64), (23, 41), (90, 25))
CLOTHING_NAMES = ("T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker",
                  "Jacket", "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear")


@dataclass
class Layout:
    root: Path
    splits: dict[str, list[tuple[str, int]]]            # split -> [(absolute path, label)] in list order
    colours: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # decodable images' RGB
    corrupt: set[str] = field(default_factory=set)      # random bytes under an image name
    missing: set[str] = field(default_factory=set)      # listed, never written
    truncated: set[str] = field(default_factory=set)    # JPEG cut short (decodes, partly grey)
    files: dict[str, Path] = field(default_factory=dict)  # list/label file role -> path


def _colour(i: int) -> tuple[int, int, int]:
    # Distinct, mid-range colours (JPEG keeps flat regions within a few levels).
    return (40 + 37 * i % 180, 200 - 23 * i % 160, 60 + 53 * i % 170)


def write_image(path: Path, kind: str, size: tuple[int, int], colour: tuple[int, int, int], seed: int = 0):
    """Write one image of `kind`; returns the RGB value it should decode to (None if not decodable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "rgb":
        Image.new("RGB", size, colour).save(path, format="JPEG", quality=95)
        return colour
    if kind == "gray":
        Image.new("L", size, colour[0]).save(path, format="JPEG", quality=95)
        return (colour[0],) * 3
    if kind == "rgba":
        Image.new("RGBA", size, (*colour, 90)).save(path, format="PNG")
        return colour
    if kind == "palette":
        image = Image.new("P", size, 1)
        image.putpalette([0, 0, 0, *colour] + [0] * (256 * 3 - 6))
        # Per-entry alpha as bytes (a tRNS chunk), the case PIL warns about when converting to RGB.
        image.save(path, format="PNG", transparency=bytes([0, 128]))
        return colour
    if kind == "cmyk":
        image = Image.new("CMYK", size, (30, 120, 10, 40))
        image.save(path, format="JPEG", quality=95)
        return image.convert("RGB").getpixel((0, 0))
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(seed).integers(0, 256, 700, dtype=np.uint8).tobytes())
        return None
    if kind == "truncated":
        noise = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, format="JPEG", quality=90)
        data = buffer.getvalue()
        path.write_bytes(data[: len(data) * 2 // 3])
        return None
    raise ValueError(kind)


def _place(layout: Layout, path: Path, kind: str, label: int, split: str, i: int) -> None:
    """Write (or, for 'missing', skip) one image and record it in `layout`."""
    key = str(path)
    layout.splits.setdefault(split, []).append((key, label))
    if kind == "missing":
        layout.missing.add(key)
        return
    colour = write_image(path, kind, SIZES[i % len(SIZES)], _colour(i), seed=i)
    if kind == "corrupt":
        layout.corrupt.add(key)
    elif kind == "truncated":
        layout.truncated.add(key)
    else:
        layout.colours[key] = colour


def write_lines(path: Path, lines: list[str], crlf: bool = False, trailing_blank: bool = False) -> Path:
    end = "\r\n" if crlf else "\n"
    text = "".join(line + end for line in lines) + (end + end + "\n" if trailing_blank else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


# Special files, by (class, image number within the class), in the training split.
SPECIAL = {(0, 1): "gray", (1, 1): "rgba", (2, 1): "palette", (3, 1): "cmyk",
           (0, 2): "corrupt", (1, 2): "missing", (2, 2): "truncated"}


def make_webvision(root: Path, total_classes: int = 6, per_class: int = 4, val_per_class: int = 2,
                   synsets: bool = True, imagenet: str | None = "index") -> Layout:
    """WebVision layout under `root` (labels 0..total_classes-1). `imagenet`: None, 'index' (0/, 1/ ...)
    or 'wnid' (folders named by the WordNet ids of info/synsets.txt) for an ILSVRC12-val folder."""
    layout = Layout(root=root, splits={})
    lines, i = [], 0
    for k in range(total_classes):
        for j in range(per_class):
            rel = f"google/q{k:04d}/{k}_{j}.{'png' if SPECIAL.get((k, j)) in ('rgba', 'palette') else 'jpg'}"
            _place(layout, root / rel, SPECIAL.get((k, j), "rgb"), k, "train", i)
            lines.append(f"{rel} {k}")
            i += 1
    layout.files["train"] = write_lines(root / "info" / "train_filelist_google.txt", lines, crlf=True,
                                        trailing_blank=True)
    lines = []
    for k in range(total_classes):
        for j in range(val_per_class):
            name = f"val{k * val_per_class + j:06d}.jpg"
            _place(layout, root / "val_images_256" / name, "rgb", k, "test", i)
            lines.append(f"{name} {k}")
            i += 1
    layout.files["val"] = write_lines(root / "info" / "val_filelist.txt", lines)
    wnids = [f"n{10000000 + k:08d}" for k in range(total_classes)]
    if synsets:
        layout.files["synsets"] = write_lines(root / "info" / "synsets.txt",
                                              [f"{w} class {k}, a thing" for k, w in enumerate(wnids)])
    if imagenet is not None:
        folder = root.parent / f"{root.name}_imagenet_val"
        for k in range(total_classes):
            sub = str(k) if imagenet == "index" else wnids[k]
            for j in range(2):
                _place(layout, folder / sub / f"ILSVRC2012_val_{k:03d}{j}.JPEG", "rgb", k, "imagenet", i)
                i += 1
        layout.files["imagenet"] = folder
    return layout


def _key(i: int) -> str:
    return f"images/{i % 10}/{i % 7}{i % 3}/{1000 + i}.jpg"


def make_clothing1m(root: Path, train_size: int = 42, val_size: int = 8, test_size: int = 8) -> Layout:
    """Clothing1M layout under `root`: 14 classes; noisy_label_kv.txt also labels keys outside the
    train list and clean_label_kv.txt relabels a few train keys, as in the real files."""
    layout = Layout(root=root, splits={})
    specials = {1: "gray", 2: "palette", 3: "rgba", 4: "cmyk", 5: "corrupt", 6: "missing", 7: "truncated"}
    n = len(CLOTHING_NAMES)
    train_keys = [_key(i) for i in range(train_size)]
    val_keys = [_key(i) for i in range(train_size, train_size + val_size)]
    test_keys = [_key(i) for i in range(train_size + val_size, train_size + val_size + test_size)]
    noisy = {key: (3 * i + 1) % n for i, key in enumerate(train_keys)}
    clean = {key: (5 * i + 2) % n for i, key in enumerate(val_keys + test_keys + train_keys[:4])}
    for i, key in enumerate(train_keys):
        _place(layout, root / key, specials.get(i, "rgb"), noisy[key], "train", i)
    for split, keys in (("val", val_keys), ("test", test_keys)):
        for key in keys:
            i = int(Path(key).stem) - 1000
            _place(layout, root / key, "rgb", clean[key], split, i)
    extra = {_key(900 + i): i % n for i in range(5)}  # labelled, but in no key list
    layout.files["noisy_kv"] = write_lines(root / "noisy_label_kv.txt",
                                           [f"{k} {v}" for k, v in {**noisy, **extra}.items()],
                                           crlf=True, trailing_blank=True)
    layout.files["clean_kv"] = write_lines(root / "clean_label_kv.txt", [f"{k} {v}" for k, v in clean.items()])
    layout.files["train"] = write_lines(root / "noisy_train_key_list.txt", train_keys, trailing_blank=True)
    layout.files["val"] = write_lines(root / "clean_val_key_list.txt", val_keys)
    layout.files["test"] = write_lines(root / "clean_test_key_list.txt", test_keys, crlf=True)
    layout.files["names"] = write_lines(root / "category_names_eng.txt", list(CLOTHING_NAMES), crlf=True)
    return layout


class WritesAFile:
    """Unpickling this calls open(marker, 'w'): what a crafted .pt would do with os.system instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def files_naming(folder: Path, *texts: str) -> list[str]:
    """The files under ``folder`` whose bytes hold any of ``texts`` (binary-safe: weights and parquet included)."""
    needles = [text.encode() for text in texts]
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and any(needle in p.read_bytes() for needle in needles))


def machine_paths() -> list[str]:
    """Where this checkout and its Python live: a published file names neither."""
    import sys

    return [str(Path(__file__).resolve().parents[1]), sys.prefix, str(Path.home())]


def review_data(page: Path) -> dict:
    """The rows a label_issues.html embeds (tcl_hf/review.py), read back from the page's JSON."""
    import json
    import re

    found = re.search(r'<script id="review-data" type="application/json">(.*?)</script>', page.read_text("utf-8"),
                      re.S)
    return json.loads(found.group(1))


def thumbnail_pixels(uri: str) -> np.ndarray:
    """A review thumbnail (base64 JPEG data URI) as an RGB array."""
    import base64

    assert uri.startswith("data:image/jpeg;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))
