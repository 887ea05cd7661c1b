"""Metrics against values computed by hand."""

import pytest

from trimtab.evaluation.metrics import bootstrap_ci, classification_report

GOLD = ["1", "1", "2", "3", "3", "3"]
PRED = ["1", "2", "2", "3", "1", None]  # the last one did not parse to a label


def test_accuracy_counts_invalid_predictions_as_wrong():
    report = classification_report(GOLD, PRED)
    assert report.accuracy == pytest.approx(3 / 6)
    assert report.invalid == 1
    assert report.labels == ["1", "2", "3"]


def test_confusion_matrix_rows_are_true_labels():
    assert classification_report(GOLD, PRED).confusion == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_per_class_precision_recall_f1_and_macro_f1():
    report = classification_report(GOLD, PRED)
    one, two, three = (report.per_class[k] for k in ("1", "2", "3"))
    assert (one.precision, one.recall, one.f1, one.support) == (0.5, 0.5, 0.5, 2)
    assert (two.precision, two.recall, two.support) == (0.5, 1.0, 1)
    assert two.f1 == pytest.approx(2 / 3)
    assert (three.precision, three.recall, three.support) == (1.0, pytest.approx(1 / 3), 3)
    assert three.f1 == pytest.approx(0.5)
    assert report.macro_f1 == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)


def test_ordinal_labels_get_mae_and_off_by_one_accuracy():
    report = classification_report(GOLD, PRED)
    # distances 0, 1, 0, 0, 2 and the invalid one counted as the full span (2)
    assert report.mae == pytest.approx(5 / 6)
    assert report.off_by_one_accuracy == pytest.approx(4 / 6)


def test_text_labels_have_no_mae():
    report = classification_report(["pos", "neg"], ["pos", "pos"])
    assert report.mae is None and report.off_by_one_accuracy is None
    assert report.accuracy == 0.5


def test_numeric_labels_sort_as_numbers():
    assert classification_report(["10", "9", "2"], ["10", "9", "2"]).labels == ["2", "9", "10"]


def test_bootstrap_interval_brackets_the_accuracy_and_is_seeded():
    correct = [True] * 60 + [False] * 40
    low, high = bootstrap_ci(correct, seed=1)
    assert low < 0.6 < high and 0.05 < high - low < 0.25
    assert bootstrap_ci(correct, seed=1) == (low, high)
    assert bootstrap_ci([True] * 10) == (1.0, 1.0)


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="2 gold labels but 1 predictions"):
        classification_report(["1", "2"], ["1"])


# --- open-ended generation ------------------------------------------------------------------


def test_rouge_l_of_one_substituted_word():
    from trimtab.evaluation.metrics import rouge_l

    # LCS "the cat on the mat" = 5 of 6 words each side: P = R = F = 5/6
    assert rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)


def test_rouge_l_with_different_lengths():
    from trimtab.evaluation.metrics import rouge_l

    # LCS "a c" = 2; P = 2/2, R = 2/4; F = 2 * 1 * 0.5 / 1.5 = 2/3
    assert rouge_l("a c", "a b c d") == pytest.approx(2 / 3)


def test_rouge_l_ignores_case_and_punctuation():
    from trimtab.evaluation.metrics import rouge_l

    assert rouge_l("Hello, World!", "hello world") == 1.0
    assert rouge_l("", "") == 1.0 and rouge_l("x", "") == 0.0 and rouge_l("a", "b") == 0.0


def test_exact_match_ignores_surrounding_and_repeated_whitespace():
    from trimtab.evaluation.metrics import generation_scores

    scores = generation_scores([" Paris ", "new  york", "Rome"], ["Paris", "new york", "Milan"])
    assert scores.n == 3
    assert scores.exact_match == pytest.approx(2 / 3)
    assert scores.rouge_l == pytest.approx(2 / 3)


def test_generation_scores_need_one_prediction_per_reference():
    from trimtab.evaluation.metrics import generation_scores

    with pytest.raises(ValueError, match="2 references but 1 predictions"):
        generation_scores(["a"], ["a", "b"])


def test_bootstrap_interval_matches_the_normal_approximation_of_a_proportion():
    # 500 right of 1,000: the 95% interval is about 0.5 +- 1.96 * sqrt(0.25 / 1000) = +- 0.031
    correct = [True, False] * 500
    low, high = bootstrap_ci(correct, samples=2000, seed=3)
    assert abs((high - low) - 2 * 0.031) < 0.008
    assert abs((low + high) / 2 - 0.5) < 0.005
