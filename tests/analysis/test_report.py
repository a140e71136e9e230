import numpy as np
import pytest

from keras_seqnorm.analysis import report


def test_section_2_2_example_matches_the_paper():
    example = report.section_2_2_example()
    assert all(example["batch_norm_match"])
    assert all(example["ghost_norm_match"])
    np.testing.assert_allclose(
        example["ghost_norm_1"], example["batch_norm"], atol=1e-5
    )
    # The second ghost batch (38, 26, 27, 19) by hand.
    tail = np.array([38, 26, 27, 19], np.float64)
    expected = (tail - tail.mean()) / np.sqrt(tail.var() + 1e-5)
    np.testing.assert_allclose(example["ghost_norm_2"][4:], expected,
                               rtol=1e-5)
    text = report.format_section_2_2(example)
    assert "(8/8 values)" in text and "**no**" not in text
    assert "**Matches:**" in report.format_verdict(example)


@pytest.mark.parametrize(
    "value, printed, expected",
    [
        (0.718, "0.7", True),
        (-1.2499, "-1.2", True),
        (-1.2501, "-1.2", False),
        (-0.023, "-0.02", True),
        (-0.016, "-0.02", True),
        (-0.014, "-0.02", False),
    ],
)
def test_matches_at_printed_precision(value, printed, expected):
    assert report._matches(value, printed) is expected


def test_a_wrong_value_is_reported():
    example = report.section_2_2_example()
    example["ghost_norm_2"][4] = 0.5
    example["ghost_norm_match"][4] = False
    text = report.format_section_2_2(example)
    assert "(7/8 values)" in text
    assert "**Does not match:**" in report.format_verdict(example)


def test_landscape_verdicts():
    def series(low, high):
        return {"step": [0, 1], "loss_min": [low, low],
                "loss_max": [high, high], "grad_pred_min": [0.0, 0.0],
                "grad_pred_max": [1.0, 1.0]}

    landscape = {"norms": {"none": series(0.0, 3.0),
                           "batch": series(0.0, 0.5),
                           "ghost": series(0.0, 2.0)}}
    errors = {norm: {"epoch": [1], "test_error": [e]}
              for norm, e in (("none", 0.2), ("batch", 0.1),
                              ("ghost", 0.05))}
    stats = report.landscape_statistics(landscape, errors)
    assert stats["ghost"]["loss_band"] == pytest.approx(2.0)
    text = report.format_landscape(stats)
    assert text.count("**yes**") == 3
