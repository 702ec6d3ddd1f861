"""The label review page: ``label_issues.html``, one static file (no server; opens from disk) that shows the most
suspect training images of the label report as thumbnails with their given and suggested labels, score and id,
filtered by class and by given -> suggested pair, a page at a time.

Only the first ``top`` rows of the ranked report are embedded (thumbnails as base64 JPEG data URIs), so the page
stays the same size for a million samples as for a thousand.
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image

from .rundir import LABEL_REVIEW_FILE, atomic_write_text

TEMPLATE = Path(__file__).parent / "templates" / "label_review.html"
DEFAULT_TOP = 1000
THUMBNAIL_PX = 64
# Small enough for ~2 KB per thumbnail, sharp enough to judge a label.
JPEG_QUALITY = 85


def thumbnail_uri(image: Image.Image, size: int = THUMBNAIL_PX) -> str:
    """``image`` scaled so its longer side is ``size`` px, as a JPEG data URI. Small images (16 px digits, 32 px
    CIFAR) are enlarged with nearest-neighbour so their pixels stay visible rather than blurred."""
    image = image.convert("RGB")
    scale = size / max(image.size)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resized = image.resize(new_size, Image.NEAREST if scale >= 1 else Image.LANCZOS)
    buffer = io.BytesIO()
    resized.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def training_image(images, row: int) -> Image.Image:
    """Training row ``row`` of a data bundle's split: the file itself for file lists, else the decoded uint8
    [3, H, W] array the loader holds."""
    path = getattr(images, "path", None)
    if path is not None:
        with Image.open(path(row)) as opened:
            return opened.convert("RGB")
    return Image.fromarray(np.asarray(images[row][0]).transpose(1, 2, 0))


def _label_names(labels: pd.Series, names: pd.Series | None) -> list[str]:
    return [str(v) for v in (names if names is not None else labels)]


def review_rows(issues: pd.DataFrame, image_of: Callable[[int], Image.Image], top: int = DEFAULT_TOP) -> list[dict]:
    """The first ``top`` rows of the ranked report as the page shows them; ``image_of(training row)`` gives the
    image. A row whose image cannot be read now (moved since the run) keeps its place without a thumbnail."""
    head = issues.head(top)
    given = _label_names(head["given_label"], head.get("given_name"))
    suggested = _label_names(head["predicted_label"], head.get("predicted_name"))
    ids = head["sample_id"] if "sample_id" in head else head["index"]
    # A report written before the suspicion column was ranked by clean_prob alone.
    scores = head["suspicion"] if "suspicion" in head else 1.0 - head["clean_prob"]
    rows = []
    for k, (row, sample_id) in enumerate(zip(head["index"].tolist(), ids.tolist())):
        try:
            thumb = thumbnail_uri(image_of(int(row)))
        except OSError:
            thumb = None
        rows.append({"rank": k + 1, "row": int(row), "id": str(sample_id), "given": given[k],
                     "suggested": suggested[k], "score": float(scores.iloc[k]),
                     "clean_prob": float(head["clean_prob"].iloc[k]), "thumb": thumb})
    return rows


def write_review_page(output_dir: str | Path, issues: pd.DataFrame, image_of: Callable[[int], Image.Image],
                      top: int = DEFAULT_TOP, title: str = "", warning: str | None = None) -> Path:
    """Write ``<output_dir>/label_issues.html`` from the ranked report ``issues`` (tcl_hf.report.label_issues);
    returns the path. ``warning``: why the run's verdicts are not to be trusted (a failed run), shown above them."""
    page = {"title": title, "total": len(issues), "rows": review_rows(issues, image_of, top), "warning": warning}
    # "</" would end the script element early (an id may hold anything); JSON reads "<\/" as "</".
    data = json.dumps(page, ensure_ascii=False).replace("</", "<\\/")
    html = TEMPLATE.read_text(encoding="utf-8").replace("__REVIEW_DATA__", data)
    path = Path(output_dir) / LABEL_REVIEW_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, html)
    return path
