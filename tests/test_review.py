"""The label review page (label_issues.html) and the sample ids it and label_issues.csv show: the page's embedded
rows checked against the report and the images they came from, and the page itself driven in a headless browser."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from fixtures import review_data, thumbnail_pixels
from PIL import Image

from tcl_hf import report
from tcl_hf.data.bundle import DataBundle
from tcl_hf.data.contract import Decoding
from tcl_hf.data.images import FileImages, TensorImages
from tcl_hf.review import THUMBNAIL_PX, training_image, write_review_page

CLASSES = ["cat", "dog", "frog"]
CHROMIUM = "/usr/bin/chromium"


def colour_of(row: int) -> tuple[int, int, int]:
    """A distinct solid colour per training row, so a thumbnail names the image it was made from."""
    return (row * 37) % 256, (row * 91) % 256, (row * 53 + 40) % 256


def tiny_report(n: int = 90, seed: int = 0):
    """A ranked report over ``n`` samples (sample ids that are not the row numbers) and 8 x 8 solid images."""
    rng = np.random.default_rng(seed)
    given = rng.integers(0, 3, n)
    predicted = np.where(rng.random(n) < 0.5, (given + 1) % 3, given)
    clean_prob = rng.random(n)
    ids = np.array([f"photos/{k * 7:04d}.jpg" for k in range(n)], dtype=object)
    issues = report.label_issues(given, predicted, clean_prob, class_names=CLASSES, suspicion=rng.random(n),
                                 sample_id=ids)
    pixels = np.array([np.broadcast_to(np.array(colour_of(k), np.uint8)[:, None, None], (3, 8, 8)) for k in range(n)])
    images = TensorImages(torch.tensor(pixels))
    return issues, images


def test_page_embeds_the_top_rows_in_report_order_with_their_own_thumbnails(tmp_path):
    issues, images = tiny_report()
    path = write_review_page(tmp_path, issues, lambda row: training_image(images, row), top=40)
    assert path == tmp_path / "label_issues.html"
    data = review_data(path)
    rows = data["rows"]
    assert data["total"] == 90 and len(rows) == 40
    head = issues.head(40)
    assert [r["row"] for r in rows] == head["index"].tolist()
    assert [r["id"] for r in rows] == head["sample_id"].tolist()
    assert [r["given"] for r in rows] == [CLASSES[k] for k in head["given_label"]]
    assert [r["suggested"] for r in rows] == [CLASSES[k] for k in head["predicted_label"]]
    assert [r["score"] for r in rows] == head["suspicion"].tolist()
    for r in rows:
        thumb = thumbnail_pixels(r["thumb"])
        assert thumb.shape == (THUMBNAIL_PX, THUMBNAIL_PX, 3)
        mean = thumb.astype(np.float64).reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - colour_of(r["row"])).max() < 6  # JPEG keeps a solid colour within a few levels


def test_text_from_the_dataset_cannot_end_the_script(tmp_path):
    issues, images = tiny_report(n=3)
    issues["sample_id"] = ["</script><b>x</b>", "a&b", "ünï"]
    page = write_review_page(tmp_path, issues, lambda row: training_image(images, row))
    assert [r["id"] for r in review_data(page)["rows"]] == ["</script><b>x</b>", "a&b", "ünï"]


def test_file_images_give_their_files_and_relative_ids(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    paths = []
    for k in range(3):
        paths.append(root / "a" / f"{k}.png")
        Image.new("RGB", (20, 10), colour_of(k)).save(paths[-1])
    files = FileImages([str(p) for p in paths], Decoding(8, 8, "bilinear"))
    bundle = DataBundle(files, files, np.zeros(3, int), np.zeros(3, int), None, 2, ["x", "y"], None, 3)
    assert bundle.train_ids(str(root)).tolist() == ["a/0.png", "a/1.png", "a/2.png"]
    assert bundle.train_ids(None).tolist() == [str(p) for p in paths]
    image = training_image(files, 2)
    assert image.size == (20, 10) and image.getpixel((5, 5)) == colour_of(2)


def test_hf_ids_come_from_the_id_column_else_the_full_split_row():
    import datasets

    rows = datasets.Dataset.from_dict({"id": ["q7", "q3", "q9"], "label": [0, 1, 0]})
    images = TensorImages(torch.zeros(3, 3, 2, 2, dtype=torch.uint8))
    with_id = DataBundle(images, images, np.zeros(3, int), np.zeros(3, int), None, 2, ["x", "y"], None, 10,
                         train_indices=np.array([4, 1, 8]), train_rows=rows)
    assert with_id.train_ids().tolist() == ["q7", "q3", "q9"]
    without = DataBundle(images, images, np.zeros(3, int), np.zeros(3, int), None, 2, ["x", "y"], None, 10,
                         train_indices=np.array([4, 1, 8]), train_rows=rows.remove_columns("id"))
    assert without.train_ids().tolist() == [4, 1, 8]
    unlimited = DataBundle(images, images, np.zeros(3, int), np.zeros(3, int), None, 2, ["x", "y"], None, 3)
    assert unlimited.train_ids().tolist() == [0, 1, 2]


def _browser():
    """Playwright driving the system chromium, or a skip saying which is missing (never a downloaded browser)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"no browser at {CHROMIUM}")
    return sync_api.sync_playwright


def test_page_in_a_browser_filters_and_pages(tmp_path):
    sync_playwright = _browser()
    issues, images = tiny_report(n=90)
    path = write_review_page(tmp_path, issues, lambda row: training_image(images, row), top=80)
    head = issues.head(80)
    given = [CLASSES[k] for k in head["given_label"]]
    pairs = [f"{g} \u2192 {CLASSES[s]}" for g, s in zip(given, head["predicted_label"])]
    shown_rows = "() => [...document.querySelectorAll('#grid .card')].map(c => Number(c.dataset.row))"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            page.select_option("#page-size", "24")
            first = page.evaluate(shown_rows)
            assert first == head["index"].tolist()[:24]
            widths = page.evaluate("() => [...document.querySelectorAll('#grid img')].map(i => i.naturalWidth)")
            assert widths == [THUMBNAIL_PX] * 24
            page.click("#next")
            assert page.evaluate(shown_rows) == head["index"].tolist()[24:48]
            assert page.inner_text("#page") == "page 2 of 4"

            page.select_option("#class-filter", "dog")
            want = [row for row, g in zip(head["index"], given) if g == "dog"]
            assert page.inner_text("#count") == f"{len(want)} samples"
            assert page.evaluate(shown_rows) == want[:24]  # a new filter starts at page 1

            page.select_option("#class-filter", "")
            pair = max(set(pairs), key=pairs.count)
            page.select_option("#pair-filter", pair)
            want = [row for row, p in zip(head["index"], pairs) if p == pair]
            assert page.evaluate(shown_rows) == want[:24] and page.inner_text("#count") == f"{len(want)} samples"
            page.screenshot(path=str(tmp_path / "label_issues.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
    assert (tmp_path / "label_issues.png").stat().st_size > 0


def test_a_failed_runs_page_opens_with_its_warning(tmp_path):
    # A collapsed run's suspects look like any other run's: the page says first that its verdicts are not trusted.
    sync_playwright = _browser()
    issues, images = tiny_report(n=6)
    line = "warning: label_issues.csv and the model are not to be trusted: TCL collapsed at epoch 3: <b>x</b>"
    failed = write_review_page(tmp_path / "failed", issues, lambda row: training_image(images, row), warning=line)
    healthy = write_review_page(tmp_path / "ok", issues, lambda row: training_image(images, row))
    assert review_data(failed)["warning"] == line and review_data(healthy)["warning"] is None
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.goto(failed.as_uri())
            assert page.is_visible("#warning") and page.inner_text("#warning") == line  # as text, not markup
            page.goto(healthy.as_uri())
            assert not page.is_visible("#warning")
        finally:
            browser.close()
