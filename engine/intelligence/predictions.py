"""Predicted purchases, ``p_alive`` and CLV: BG/NBD and Gamma-Gamma (pure, numpy/scipy).

**BG/NBD** (Fader, Hardie & Lee 2005, "Counting your customers the easy way"): while
alive, a customer buys at a Poisson rate lambda ~ Gamma(r, alpha); after every purchase they
drop out with probability p ~ Beta(a, b). From each customer's repeat-purchase count ``x``, the time
of their last purchase ``t_x`` and their observed time ``T`` (all in one time unit, counted
from the first purchase), the four parameters are fitted by maximum likelihood (eq. 6 of
the paper, in log form); :func:`expected_purchases` is the conditional expectation of
purchases in the next ``t`` (eq. 10) and :func:`p_alive` the probability the customer is
still active.

**Gamma-Gamma** (Fader, Hardie & Lee 2005, "RFM and CLV"; Fader & Hardie 2013): the values
of a customer's transactions vary around their own mean, spend ~ Gamma(p, nu) with
nu ~ Gamma(q, gamma); fitted on repeat customers' average repeat value ``zbar``;
:func:`expected_value` is the conditional expected average value.

Why not a library: pymc-marketing's CLV models (the successor of the unmaintained
``lifetimes``) bring PyMC and PyTensor — a Bayesian stack compiled at first use — to fit
four numbers by maximum likelihood; the published likelihoods in scipy are a few dozen lines,
fit the CDNOW cohort in well under a second and reproduce the published parameters (checked
in ``tests/unit/test_predictions.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from scipy.special import betaln, gammaln, hyp2f1

__all__ = [
    "BgNbd",
    "FitError",
    "GammaGamma",
    "expected_purchases",
    "expected_value",
    "fit_bgnbd",
    "fit_gamma_gamma",
    "p_alive",
]

Array = NDArray[np.float64]


class FitError(ValueError):
    """The data cannot be fitted (too few customers, no repeat purchases, no convergence)."""


@dataclass(frozen=True, kw_only=True)
class BgNbd:
    """Fitted BG/NBD parameters; ``log_likelihood`` of the fit, over ``customers``."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float
    customers: int


@dataclass(frozen=True, kw_only=True)
class GammaGamma:
    """Fitted Gamma-Gamma spend parameters (``v`` is the paper's gamma)."""

    p: float
    q: float
    v: float
    log_likelihood: float
    customers: int


def _arrays(*values: ArrayLike) -> tuple[Array, ...]:
    out = tuple(np.asarray(v, dtype=np.float64) for v in values)
    shape = out[0].shape
    if any(v.shape != shape for v in out):
        raise FitError("the inputs must have the same length")
    return out


def _bgnbd_ll(params: Array, x: Array, t_x: Array, T: Array) -> Array:
    """Per-customer log-likelihood (Fader, Hardie & Lee 2005, eq. 6)."""
    r, alpha, a, b = params
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + x) - betaln(a, b)
    a3 = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    a4 = np.full_like(x, -np.inf)
    xs = x[repeat]
    # B(a+1, b+x-1) / B(a, b+x) = a / (b+x-1): the "dropped out after the last purchase" term
    a4[repeat] = np.log(a) - np.log(b + xs - 1) - (r + xs) * np.log(alpha + t_x[repeat])
    return np.asarray(a1 + a2 + np.logaddexp(a3, a4), dtype=np.float64)


def _fit(negative_ll: Any, start: Array) -> tuple[Array, float]:
    """Minimise over log-parameters (keeps them positive), Nelder-Mead then a polish."""
    first = minimize(negative_ll, np.log(start), method="Nelder-Mead", options={"maxiter": 4000})
    best = minimize(negative_ll, first.x, method="L-BFGS-B")
    chosen = best if best.success and best.fun <= first.fun else first
    if not np.isfinite(chosen.fun):
        raise FitError("the likelihood did not converge")
    return np.exp(chosen.x), float(-chosen.fun)


def fit_bgnbd(
    frequency: ArrayLike, recency: ArrayLike, T: ArrayLike, *, penalty: float = 0.0
) -> BgNbd:
    """Maximum-likelihood BG/NBD over customers given as repeat purchases ``frequency``,
    time of the last purchase ``recency`` and observed time ``T`` (same unit). ``penalty``
    adds an L2 term on the parameters (0: the plain MLE of the paper)."""
    x, t_x, t_obs = _arrays(frequency, recency, T)
    if x.size < 2 or not np.any(x > 0):
        raise FitError("a BG/NBD fit needs customers with repeat purchases")
    if np.any(x < 0) or np.any(t_x < 0) or np.any(t_obs < t_x):
        raise FitError("need 0 <= recency <= T and frequency >= 0")

    def negative_ll(log_params: Array) -> float:
        params = np.exp(log_params)
        value = -float(np.sum(_bgnbd_ll(params, x, t_x, t_obs)))
        return value + penalty * float(np.sum(params**2))

    (r, alpha, a, b), ll = _fit(negative_ll, np.array([1.0, 1.0, 1.0, 1.0]))
    return BgNbd(
        r=float(r),
        alpha=float(alpha),
        a=float(a),
        b=float(b),
        log_likelihood=ll,
        customers=int(x.size),
    )


def p_alive(model: BgNbd, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> Array:
    """P(still active) per customer: 1 for customers without repeat purchases' data against
    them (x = 0), decreasing the longer they have been quiet compared with their rhythm."""
    x, t_x, t_obs = _arrays(frequency, recency, T)
    r, alpha, a, b = model.r, model.alpha, model.a, model.b
    odds = np.zeros_like(x)
    repeat = x > 0
    xs = x[repeat]
    odds[repeat] = (a / (b + xs - 1)) * ((alpha + t_obs[repeat]) / (alpha + t_x[repeat])) ** (
        r + xs
    )
    return np.asarray(1.0 / (1.0 + odds), dtype=np.float64)


def expected_purchases(
    model: BgNbd, t: float, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
) -> Array:
    """Expected purchases in the next ``t`` per customer (eq. 10 of the paper)."""
    x, t_x, t_obs = _arrays(frequency, recency, T)
    r, alpha, a, b = model.r, model.alpha, model.a, model.b
    if abs(a - 1) < 1e-9:  # the closed form divides by a - 1 (any other a is fine)
        a = 1 + 1e-9
    head = (a + b + x - 1) / (a - 1)
    z = t / (alpha + t_obs + t)
    tail = 1 - ((alpha + t_obs) / (alpha + t_obs + t)) ** (r + x) * hyp2f1(
        r + x, b + x, a + b + x - 1, z
    )
    alive = p_alive(model, x, t_x, t_obs)
    return np.asarray(head * tail * alive, dtype=np.float64)


def _gamma_gamma_ll(params: Array, x: Array, zbar: Array) -> Array:
    p, q, v = params
    px = p * x
    return np.asarray(
        gammaln(px + q)
        - gammaln(px)
        - gammaln(q)
        + q * np.log(v)
        + (px - 1) * np.log(zbar)
        + px * np.log(x)
        - (px + q) * np.log(v + x * zbar),
        dtype=np.float64,
    )


def fit_gamma_gamma(frequency: ArrayLike, monetary: ArrayLike) -> GammaGamma:
    """Maximum-likelihood Gamma-Gamma over customers with repeat purchases: ``frequency``
    (repeat purchases, > 0) and ``monetary`` (their average value, > 0); others are left out."""
    x, zbar = _arrays(frequency, monetary)
    keep = (x > 0) & (zbar > 0)
    x, zbar = x[keep], zbar[keep]
    if x.size < 2:
        raise FitError("a Gamma-Gamma fit needs customers with repeat purchases and value")

    def negative_ll(log_params: Array) -> float:
        return -float(np.sum(_gamma_gamma_ll(np.exp(log_params), x, zbar)))

    (p, q, v), ll = _fit(negative_ll, np.array([1.0, 1.0, 1.0]))
    return GammaGamma(p=float(p), q=float(q), v=float(v), log_likelihood=ll, customers=int(x.size))


def expected_value(model: GammaGamma, frequency: ArrayLike, monetary: ArrayLike) -> Array:
    """Expected average transaction value per customer: their own average shrunk towards the
    population's, the more so the fewer purchases it rests on (``monetary`` is ignored for
    ``frequency`` 0, who get the population mean)."""
    x, zbar = _arrays(frequency, monetary)
    p, q, v = model.p, model.q, model.v
    if q <= 1:
        raise FitError("q <= 1: the mean spend is unbounded")
    zbar = np.where(x > 0, zbar, 0.0)
    return np.asarray((p * (v + x * zbar)) / (p * x + q - 1), dtype=np.float64)
