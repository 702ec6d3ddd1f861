"""What a run tells while it works: the plan it starts with, and a progress bar for each long phase (decoding, the
EM steps, evaluation) on the main process when ``log.progress`` is on."""
from __future__ import annotations

import re

import pytest
from PIL import Image

from fixtures import tiny_digits
from tcl_hf.config import load_config


@pytest.mark.parametrize("processes, accum, warmup, epochs, bound_key, scale", [
    (1, 1, "auto", 30, None, True), (3, 2, "auto", 9, 3, True), (4, 1, 7, 50, None, True), (2, 1, 5, 20, None, False)])
def test_the_start_line_states_samples_classes_epochs_warmup_and_lr(processes, accum, warmup, epochs, bound_key,
                                                                     scale):
    from tcl_hf.plan import start_line

    keys = ["optim.lr=0.2", "train.batch_size=48", f"train.grad_accum_steps={accum}", f"optim.warmup_epochs={warmup}",
            f"train.epochs={epochs}", f"optim.scale_lr={str(scale).lower()}"]
    keys += [f"optim.max_warmup_epochs={bound_key}"] if bound_key else []
    line = start_line(load_config(None, keys), 1234, 7, processes)
    total = 48 * processes * accum
    assert line.startswith(f"plan: tcl on 1234 training samples, 7 classes, {epochs} epochs; ")
    if warmup == "auto":
        bound = bound_key if bound_key else epochs // 2  # optim.max_warmup_epochs=null: half of train.epochs
        assert f"warm-up automatic (until the classifier is ready, at most {bound} epochs)" in line
    else:
        assert f"warm-up fixed: {warmup} epochs" in line
    parts = f"48 per process x {processes} process(es)" + (f" x {accum} accumulated" if accum > 1 else "")
    if scale:
        assert line.endswith(f"; optim.lr 0.2 per 256 -> {0.2 * total / 256:g} at total batch {total} ({parts})")
    else:
        assert line.endswith(f"; optim.lr 0.2 (optim.scale_lr=false: not scaled) at total batch {total} ({parts})")


def _cells(n: int) -> list[dict]:
    import io

    def png(shade: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (6, 6), (shade, shade, shade)).save(buffer, format="PNG")
        return buffer.getvalue()

    return [{"bytes": png(10 * i), "path": None} for i in range(n)]


def test_decoding_shows_its_count_and_rate_only_when_asked(capsys):
    from tcl_hf.data.contract import Decoding
    from tcl_hf.data.images import decode_images

    decoding = Decoding(resize=4, crop=4, interpolation="bilinear")
    images, ok = decode_images(_cells(5), decoding, progress="decoding train")
    err = capsys.readouterr().err
    assert images.shape == (5, 3, 4, 4) and bool(ok.all())
    assert re.search(r"decoding train: 100%.*\b5/5 \[.*img/s\]", err)
    decode_images(_cells(5), decoding)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_a_run_shows_its_plan_and_a_bar_for_decoding_em_steps_and_evaluation(tmp_path, capsys, fresh_accelerate):
    from tcl_hf.cli import main

    # 96 training and 96 test rows (data.limit), EM and evaluation batches of 4 x 16 = 64: two batches each.
    assert main([*tiny_digits("log.progress=true", "train.epochs=2", "optim.lr=0.1"), f"output_dir={tmp_path}"]) == 0
    out, err = capsys.readouterr()
    assert "plan: tcl on 96 training samples, 10 classes, 2 epochs; warm-up fixed: 20 epochs; optim.lr 0.1 per 256 " \
           f"-> {0.1 * 16 / 256:g} at total batch 16 (16 per process x 1 process(es))" in out
    for split in ("train", "test"):
        assert re.search(rf"decoding {split}: 100%[^\r\n]*\b96/96 \[[^\]]*img/s\]", err), split
    # The initial EM step and one per epoch; an evaluation after each epoch (eval.every=1).
    assert len(re.findall(r"EM step: train features:\s+0%[^\r\n]*\b0/2 ", err)) == 3
    assert len(re.findall(r"evaluation: test:\s+0%[^\r\n]*\b0/2 ", err)) == 2
    assert re.search(r"\b12/12 \[", err)  # the training bar: 96 / 16 = 6 steps per epoch
