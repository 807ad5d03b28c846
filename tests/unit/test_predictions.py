"""BG/NBD and Gamma-Gamma reproduce the published CDNOW fits (Fader, Hardie & Lee 2005)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.intelligence.predictions import (
    BgNbd,
    FitError,
    expected_purchases,
    expected_value,
    fit_bgnbd,
    fit_gamma_gamma,
    p_alive,
)

DATA = Path(__file__).resolve().parents[1] / "data"


def _columns(name: str, *fields: str) -> list[np.ndarray]:
    with (DATA / name).open() as handle:
        rows = list(csv.DictReader(handle))
    return [np.array([float(r[f]) for r in rows]) for f in fields]


@pytest.fixture(scope="module")
def cdnow() -> BgNbd:
    x, t_x, T = _columns("cdnow_customers_summary.csv", "frequency", "recency", "T")
    assert x.size == 2357
    return fit_bgnbd(x, t_x, T)


def test_bgnbd_reproduces_the_published_cdnow_parameters_within_one_percent(
    cdnow: BgNbd,
) -> None:
    published = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    for name, value in published.items():
        assert getattr(cdnow, name) == pytest.approx(value, rel=0.01), name
    assert cdnow.log_likelihood == pytest.approx(-9582.4, abs=0.5)


def test_the_papers_worked_example_expects_1_226_purchases_in_39_weeks(cdnow: BgNbd) -> None:
    # Fader, Hardie & Lee (2005), section 5: x = 2, t_x = 30.43, T = 38.86 weeks.
    [expected] = expected_purchases(cdnow, 39, [2], [30.43], [38.86])
    assert expected == pytest.approx(1.226, abs=0.002)


def test_gamma_gamma_reproduces_the_published_spend_parameters_within_one_percent() -> None:
    x, zbar = _columns("cdnow_customers_summary_with_transactions.csv", "x", "zbar")
    fitted = fit_gamma_gamma(x, zbar)
    assert fitted.customers == 946  # the repeat buyers
    for name, value in {"p": 6.25, "q": 3.74, "v": 15.44}.items():
        assert getattr(fitted, name) == pytest.approx(value, rel=0.01), name
    # A customer with one repeat purchase of $10 is pulled up towards the mean; one with many
    # purchases stays close to their own average.
    few, many = expected_value(fitted, [1, 20], [10.0, 10.0])
    assert few > 15 and 10 < many < few


def test_a_customer_quiet_for_long_is_less_likely_alive(cdnow: BgNbd) -> None:
    recent, quiet = p_alive(cdnow, [5, 5], [38, 5], [39, 39])
    assert 0 < quiet < recent <= 1
    [first_timer] = p_alive(cdnow, [0], [0], [39])
    assert first_timer == 1.0  # no repeat purchase: no evidence of dropping out


@given(
    x=st.integers(0, 30),
    share=st.floats(0, 1),
    T=st.floats(1, 100),
    t=st.floats(0.1, 100),
)
def test_expectations_are_finite_and_grow_with_the_horizon(
    cdnow: BgNbd, x: int, share: float, T: float, t: float
) -> None:
    t_x = share * T if x else 0.0
    [alive] = p_alive(cdnow, [x], [t_x], [T])
    near, far = (
        expected_purchases(cdnow, t, [x, x], [t_x, t_x], [T, T]),
        expected_purchases(cdnow, 2 * t, [x], [t_x], [T]),
    )
    assert 0 <= alive <= 1
    assert np.all(np.isfinite(near)) and 0 <= near[0] <= far[0]


def test_data_that_cannot_be_fitted_is_refused_with_a_reason() -> None:
    with pytest.raises(FitError, match="repeat purchases"):
        fit_bgnbd([0, 0, 0], [0, 0, 0], [5, 5, 5])
    with pytest.raises(FitError, match="recency <= T"):
        fit_bgnbd([1, 2], [6, 1], [5, 5])
    with pytest.raises(FitError, match="same length"):
        fit_bgnbd([1, 2], [1], [5, 5])
