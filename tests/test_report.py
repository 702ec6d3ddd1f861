"""Label-issue report and plots, checked against values computed here and by scikit-learn."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from tcl_hf import report
from tcl_hf.errors import TCLError

BASE_COLUMNS = ["index", "given_label", "predicted_label", "suspicion", "clean_prob", "is_noisy"]


def noisy_run(n: int = 60, classes: int = 3, seed: int = 0):
    """Given/clean labels with ~30% flips, predictions, and clean probabilities that favour clean labels."""
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, classes, n)
    flip = rng.random(n) < 0.3
    given = np.where(flip, (clean + rng.integers(1, classes, n)) % classes, clean)
    predicted = np.where(rng.random(n) < 0.8, clean, given)
    clean_prob = np.clip(np.where(flip, 0.3, 0.7) + rng.normal(0, 0.25, n), 0, 1)
    return given, predicted, clean_prob, clean


def test_one_noisy_threshold_moves_the_report_the_repair_and_both_cards(monkeypatch):
    """detector.CLEAN_THRESHOLD is the one threshold for "noisy": moved, the report's is_noisy, the repair's
    relabelling and the model and dataset cards all follow it; a second threshold anywhere would stay behind."""
    from tcl_hf import detector
    from tcl_hf.card import model_card, public_config
    from tcl_hf.config import load_config, to_dict
    from tcl_hf.repair import dataset_card
    from tcl_hf.repaired_dataset import TrainingSplit, verdicts

    monkeypatch.setattr(detector, "CLEAN_THRESHOLD", 0.3)
    given, predicted, clean = np.array([0, 1, 2, 0]), np.array([1, 2, 2, 1]), np.array([1, 1, 2, 0])
    clean_prob = np.array([0.2, 0.4, 0.9, 0.35])
    issues = report.label_issues(given, predicted, clean_prob, clean)
    assert dict(zip(issues["index"], issues["is_noisy"])) == {0: True, 1: False, 2: False, 3: False}
    found = verdicts(issues, given, 0.0, Path("label_issues.csv"))
    assert found.tcl_label.tolist() == [1, 1, 2, 0]  # only the sample below 0.3 takes the prediction

    config = public_config(to_dict(load_config(None, ["data.format=digits", "noise.type=sym", "noise.rate=0.4"])))
    summary = {"test_acc": 0.91, "noise_rate": 0.4, "noise_auc": 0.83, "noise_precision": 0.77, "epochs_completed": 3}
    split = TrainingSplit(rows=None, given=given, clean=clean, added={}, given_column="label", label_feature=None)
    cards = {"model": (model_card(config, summary, load_ref="me/model").text, ["below 0.3"]),
             "dataset": (dataset_card(config, summary, split, found, 0.0, "me/data", []).text,
                         ["below 0.3 (`is_noisy`)", "`clean_prob` < 0.3, the detector's verdict",
                          'row["clean_prob"] >= 0.3'])}
    for kind, (text, says) in cards.items():
        body = text.split("```yaml")[0]  # the recipe block below lists the run's own keys, some of them 0.5
        assert all(phrase in body for phrase in says), kind
        assert "0.5" not in body, kind


def test_columns_order_and_noisy_flag():
    given, predicted, clean_prob, clean = noisy_run()
    issues = report.label_issues(given, predicted, clean_prob, clean)
    assert list(issues.columns) == BASE_COLUMNS + ["clean_label"]
    assert len(issues) == len(given)
    assert issues["clean_prob"].is_monotonic_increasing
    assert issues["index"].iloc[0] == int(np.argmin(clean_prob))
    assert (issues["is_noisy"] == (issues["clean_prob"] < 0.5)).all()
    assert int(issues["is_noisy"].sum()) == int((clean_prob < 0.5).sum())
    # Every row still describes its own sample after sorting.
    idx = issues["index"].to_numpy()
    assert sorted(idx) == list(range(len(given)))
    assert np.array_equal(issues["given_label"], given[idx])
    assert np.array_equal(issues["predicted_label"], predicted[idx])
    assert np.array_equal(issues["clean_label"], clean[idx])
    assert np.array_equal(issues["clean_prob"], clean_prob[idx])


def test_ties_are_broken_by_index():
    issues = report.label_issues([0, 1, 0, 1], [0, 1, 1, 1], [0.5, 0.2, 0.2, 0.5])
    assert issues["index"].tolist() == [1, 2, 0, 3]
    assert issues["is_noisy"].tolist() == [True, True, False, False]  # 0.5 is not below the threshold


def test_auc_of_the_report_matches_sklearn_on_the_raw_arrays(tmp_path):
    given, predicted, clean_prob, clean = noisy_run(n=200, seed=3)
    want = roc_auc_score(clean == given, clean_prob)
    report.write_label_issues(tmp_path, report.label_issues(given, predicted, clean_prob, clean))
    loaded = report.load_label_issues(tmp_path)
    got = roc_auc_score(loaded["clean_label"] == loaded["given_label"], loaded["clean_prob"])
    assert got == pytest.approx(want, abs=1e-12)
    assert loaded["is_noisy"].dtype == bool and list(loaded.columns) == BASE_COLUMNS + ["clean_label"]


def test_names_are_added_when_the_dataset_has_them():
    given, predicted, clean_prob, clean = noisy_run(n=20)
    names = ["cat", "dog", "frog"]
    issues = report.label_issues(given, predicted, clean_prob, clean, class_names=names)
    assert list(issues.columns) == BASE_COLUMNS + ["clean_label", "given_name", "predicted_name", "clean_name"]
    for column in ("given", "predicted", "clean"):
        assert issues[f"{column}_name"].tolist() == [names[k] for k in issues[f"{column}_label"]]


def test_a_large_report_holds_no_string_per_row(tmp_path):
    n, names = 200_000, ["crane", "dog", "crane"]  # two classes may share a name (ImageNet's two cranes)
    given, predicted, clean_prob, clean = noisy_run(n)
    issues = report.label_issues(given, predicted, clean_prob, clean, names)
    # Seven numeric columns of 8 bytes, the flag of 1, and three name columns of one code byte each: a column of
    # strings (one per row) counts more than 8 bytes a row.
    assert issues.memory_usage(index=False, deep=True).sum() / n <= 7 * 8 + 1 + 3 * 1
    for column in ("given", "predicted", "clean"):
        assert issues[f"{column}_name"].astype(str).tolist() == [names[k] for k in issues[f"{column}_label"]]
    written = report.load_label_issues(report.write_label_issues(tmp_path, issues).parent)
    assert len(written) == n and (written["clean_name"].to_numpy() == np.asarray(names)[clean[written["index"]]]).all()


def test_the_labels_a_method_trained_on_stand_beside_the_given_ones():
    # TCL+ trains on relabelled labels: the report shows them (and their names) for each sample.
    given, predicted, clean_prob, clean = noisy_run(n=20)
    trained = (given + np.arange(20) % 2) % 3
    names = ["cat", "dog", "frog"]
    issues = report.label_issues(given, predicted, clean_prob, clean, class_names=names, trained=trained)
    idx = issues["index"].to_numpy()
    assert np.array_equal(issues["trained_label"], trained[idx])
    assert np.array_equal(issues["given_label"], given[idx])
    assert issues["trained_name"].tolist() == [names[k] for k in trained[idx]]
    assert "trained_label" not in report.label_issues(given, predicted, clean_prob, clean)


def test_numeric_names_and_unknown_clean_labels_add_no_columns():
    given, predicted, clean_prob, _ = noisy_run(n=20)
    issues = report.label_issues(given, predicted, clean_prob, None, class_names=["0", "1", "2"])
    assert list(issues.columns) == BASE_COLUMNS


def softmax_run(n: int = 50, classes: int = 4, seed: int = 0):
    """Softmax outputs with some rows repeated (equal scores), their labels, and a near-binary clean_prob."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, classes))
    logits[n // 2:n // 2 + 5] = logits[0]  # five exact ties with row 0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    given = rng.integers(0, classes, n)
    given[n // 2:n // 2 + 5] = given[0]
    clean_prob = np.where(rng.random(n) < 0.4, 0.0, 1.0)  # as saturated as the GMM's posterior
    return probs, given, clean_prob


def test_suspicion_is_one_minus_the_probability_of_the_given_label():
    import torch

    from tcl_hf import detector

    probs, given, _ = softmax_run()
    want = [1.0 - probs[i][given[i]] for i in range(len(given))]
    got = detector.suspicion(torch.tensor(probs, dtype=torch.float32), torch.tensor(given))
    assert got.numpy() == pytest.approx(want, abs=1e-6)


def test_report_is_ranked_by_suspicion_with_ties_by_index():
    probs, given, clean_prob = softmax_run()
    score = np.array([1.0 - probs[i][given[i]] for i in range(len(given))])
    issues = report.label_issues(given, probs.argmax(axis=1), clean_prob, suspicion=score)
    want = sorted(range(len(given)), key=lambda i: (-score[i], i))
    assert issues["index"].tolist() == want
    assert issues["suspicion"].tolist() == [score[i] for i in want]
    assert issues["clean_prob"].tolist() == [clean_prob[i] for i in want]  # each row keeps its own verdict
    tied = [i for i in want if score[i] == score[0]]
    assert tied == [0, *range(25, 30)]


def test_sample_ids_follow_their_rows():
    probs, given, clean_prob = softmax_run(n=12)
    ids = np.array([f"img_{k:03d}.png" for k in range(12)], dtype=object)
    issues = report.label_issues(given, probs.argmax(axis=1), clean_prob, suspicion=1 - clean_prob, sample_id=ids)
    assert list(issues.columns[:3]) == ["index", "sample_id", "given_label"]
    assert issues["sample_id"].tolist() == [f"img_{k:03d}.png" for k in issues["index"]]


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="one entry per training sample"):
        report.label_issues([0, 1], [0], [0.1, 0.9])


def test_load_label_issues_of_a_run_without_a_report(tmp_path):
    with pytest.raises(TCLError, match="label_issues.csv does not exist") as info:
        report.load_label_issues(tmp_path)
    assert "\n" not in str(info.value)


def test_clean_prob_groups_split_by_truth_or_by_class():
    given, _, clean_prob, clean = noisy_run(n=50)
    by_truth = report.clean_prob_groups(clean_prob, given, clean)
    assert set(by_truth) == {"truly clean", "truly noisy"}
    assert np.array_equal(by_truth["truly noisy"], clean_prob[given != clean])
    assert np.array_equal(by_truth["truly clean"], clean_prob[given == clean])
    by_class = report.clean_prob_groups(clean_prob, given, None, ["cat", "dog", "frog"])
    assert list(by_class) == ["given cat", "given dog", "given frog"]
    assert np.array_equal(by_class["given dog"], clean_prob[given == 1])
    assert sum(len(v) for v in by_class.values()) == len(given)


def write_metrics(output_dir, records):
    (output_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def assert_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def test_make_plots_writes_the_distribution_and_the_curves(tmp_path):
    given, _, clean_prob, clean = noisy_run()
    write_metrics(tmp_path, [
        {"epoch": 1, "test_acc": 0.3, "knn_acc": 0.25, "noise_auc": None, "clean_ratio_est": 0.9},
        {"epoch": 2, "test_acc": 0.5, "knn_acc": 0.45, "noise_auc": 0.8, "clean_ratio_est": 0.7},
        {"epoch": 3, "test_acc": 0.6, "knn_acc": 0.55, "clean_ratio_est": 0.65},
    ])
    paths = report.make_plots(tmp_path, clean_prob, given, clean, ["a", "b", "c"])
    assert paths == [tmp_path / "plots" / "clean_prob.png", tmp_path / "plots" / "curves.png"]
    for path in paths:
        assert_png(path)


def test_make_plots_without_metrics_or_clean_labels(tmp_path):
    given, _, clean_prob, _ = noisy_run()
    paths = report.make_plots(tmp_path, clean_prob, given, None, ["a", "b", "c"])
    assert paths == [tmp_path / "plots" / "clean_prob.png"]
    assert_png(paths[0])


def test_read_metrics_skips_blank_lines_and_names_a_bad_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "test_acc": 0.5}\n\n{"epoch": 2, "test_acc": 0.6}\n')
    assert [r["epoch"] for r in report.read_metrics(tmp_path)] == [1, 2]
    assert report._series(report.read_metrics(tmp_path), "test_acc") == ([1, 2], [0.5, 0.6])
    # Damage before the last line is not a torn write: it is named.
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2, "test_acc"\n{"epoch": 3}\n')
    with pytest.raises(TCLError, match=r"metrics.jsonl line 2: not valid JSON"):
        report.read_metrics(tmp_path)


def test_read_metrics_leaves_out_a_torn_last_line(tmp_path):
    # A kill in the middle of the last append leaves half a line.
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2, "test_acc"')
    assert report.read_metrics(tmp_path) == [{"epoch": 1}]


def test_series_leaves_out_epochs_without_a_value():
    records = [{"epoch": 1, "noise_auc": None}, {"epoch": 2, "noise_auc": 0.7}, {"epoch": 3}]
    assert report._series(records, "noise_auc") == ([2], [0.7])


@pytest.mark.parametrize("method", ["tcl", "ce"])
def test_each_detector_reports_one_minus_its_own_score_of_the_given_label(method):
    """TCL's GMM is fitted to the given label's soft assignment gamma, CE's to its probability p: the report's
    suspicion is one minus that value, so it keeps the detector's order and stays continuous."""
    import torch

    from tcl_hf.config import load_config
    from tcl_hf.methods import create_method

    gen = torch.Generator().manual_seed(1)
    z = torch.nn.functional.normalize(torch.randn(40, 8, generator=gen), dim=1)
    p = torch.softmax(3 * torch.randn(40, 4, generator=gen), dim=1)
    labels = torch.randint(0, 4, (40,), generator=gen)
    found = create_method(load_config(None, [f"method={method}"]), gather=None).detect(z, p, labels)
    alignment = found.assignments if method == "tcl" else p
    want = [1.0 - float(alignment[i, labels[i]]) for i in range(40)]
    assert found.suspicion.tolist() == pytest.approx(want, abs=1e-6)
    assert len(set(found.suspicion.tolist())) == 40
