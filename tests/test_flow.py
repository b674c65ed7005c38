"""Information-flow estimators checked against exact values on a small quantized network.

The product promises that on a small quantized network over a small discrete input space, where
H(T) and I(T;Y) can be computed exactly by enumeration, the estimators agree within 2%.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from codec import calibrate, quantize
from splitter.flow import (
    dpi_check,
    dpi_envelope,
    exact_information,
    factorized_entropy,
    joint_entropy,
    probe_information,
)

N_SAMPLE = 100_000  # draws of x: the I(T;Y) estimate's standard error is ~0.5-0.7% of I here
TOL = 0.02


def quantized_mlp(seed: int, width: int = 4, bits: int = 2, eps: float = 0.05):
    """T = a 2-bit quantized ReLU layer over x in {0..7}^4 (4096 inputs); Y a noisy threshold.

    Y = 1[h . u > median] flipped with probability eps, with h the float hidden layer: T keeps
    most but not all of that (quantization), and the flips keep I(T;Y) below H(Y). p(y|x) is
    known exactly, so exact_information can enumerate.
    """
    rng = np.random.default_rng(seed)
    xs = np.array(list(itertools.product(range(8), repeat=4)), dtype=np.float32)
    xn = (xs - 3.5) / 2.3
    w1 = rng.normal(size=(4, width)).astype(np.float32)
    b1 = rng.normal(scale=0.5, size=width).astype(np.float32)
    h = np.maximum(xn @ w1 + b1, 0.0)
    t = quantize(h, calibrate(h, bits))
    s = h @ rng.normal(size=width)
    p1 = np.where(s > np.median(s), 1.0 - eps, eps)
    return t, np.stack([1.0 - p1, p1], axis=1)


def draw(t: np.ndarray, y_given_x: np.ndarray, n: int, seed: int):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, t.shape[0], n)
    y = (rng.random(n) < y_given_x[idx, 1]).astype(np.int64)
    return t[idx], y


def rel_err(est: float, exact: float) -> float:
    return abs(est - exact) / exact


# ------------------------------------------------------------------ exact vs estimated, 2%


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimators_agree_with_enumeration_within_2pct(seed):
    t, yx = quantized_mlp(seed)
    h_t, i_ty = exact_information(None, t, yx)
    h_y = 1.0  # labels thresholded at the median: balanced up to ties
    assert 0.1 < i_ty < h_y - 0.2 and h_t > 2.0  # a non-trivial case: T loses part of Y
    ts, ys = draw(t, yx, N_SAMPLE, seed=100 + seed)
    hj = joint_entropy(ts)
    info = probe_information(ts, ys, probe="table", seed=seed)
    assert rel_err(hj, h_t) < TOL, (hj, h_t)
    assert rel_err(info.estimate, i_ty) < TOL, (info.estimate, i_ty)
    assert abs(info.estimate - i_ty) < 4 * info.stderr + 1e-3  # the reported error is honest
    # the sum of per-channel entropies bounds the joint (an identity on the empirical law)
    fact = factorized_entropy(ts, bits=2, miller_madow=False)
    assert fact.bits_per_frame >= joint_entropy(ts, miller_madow=False) - 1e-9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agreement_check_fails_on_a_tiny_sample(seed):
    """The 2% check is not vacuous: 100 draws leave most cells unseen and the bound far below I."""
    t, yx = quantized_mlp(seed)
    _, i_ty = exact_information(None, t, yx)
    ts, ys = draw(t, yx, 100, seed=100 + seed)
    info = probe_information(ts, ys, probe="table", seed=seed)
    assert rel_err(info.estimate, i_ty) > TOL


def test_factorized_equals_joint_for_independent_channels():
    # A full factorial grid: the empirical law is exactly the product of its marginals.
    grid = np.array(list(itertools.product(range(4), range(2), range(8))), dtype=np.uint8)
    codes = np.repeat(grid, 3, axis=0)
    fact = factorized_entropy(codes, bits=3, miller_madow=False)
    assert fact.bits_per_frame == pytest.approx(joint_entropy(codes, miller_madow=False), abs=1e-12)
    assert fact.bits_per_frame == pytest.approx(2 + 1 + 3, abs=1e-12)
    # Independent draws: equal up to sampling error; dependent channels: strictly above.
    rng = np.random.default_rng(0)
    ind = rng.integers(0, 4, size=(50_000, 3)).astype(np.uint8)
    assert factorized_entropy(ind, bits=2).bits_per_frame == pytest.approx(joint_entropy(ind), rel=0.005)
    dep = np.repeat(rng.integers(0, 4, size=(50_000, 1)), 3, axis=1).astype(np.uint8)
    assert factorized_entropy(dep, bits=2).bits_per_frame == pytest.approx(3 * joint_entropy(dep), rel=0.01)


# ----------------------------------------------------------------------------- rate


def test_factorized_entropy_known_distributions():
    n, h, w = 4, 8, 8
    codes = np.zeros((n, 3, h, w), dtype=np.uint8)
    codes[:, 0] = (np.arange(n * h * w) % 16).reshape(n, h, w)  # uniform over 16 values: 4 bits
    # channel 1 constant: 0 bits
    codes[:, 2] = (np.arange(n * h * w) % 2).reshape(n, h, w)  # uniform over 2 values: 1 bit
    rate = factorized_entropy(codes, bits=4, miller_madow=False)
    np.testing.assert_allclose(rate.per_channel[0], [4.0, 0.0, 1.0], atol=1e-12)
    assert rate.bits_per_frame == pytest.approx((4 + 0 + 1) * h * w)
    assert rate.bytes_per_frame == pytest.approx((4 + 0 + 1) * h * w / 8)
    assert rate.bits_per_element == pytest.approx(5 / 3)
    # Miller-Madow adds (m - 1) / (2 n ln 2) per channel, nothing for a constant one
    mm = factorized_entropy(codes, bits=4)
    m_n = n * h * w
    np.testing.assert_allclose(
        mm.per_channel[0], [4 + 15 / (2 * m_n * np.log(2)), 0.0, 1 + 1 / (2 * m_n * np.log(2))]
    )
    # a multi-tensor cut sends both: sizes add, bits/element is the element-weighted mean
    other = np.zeros((n, 2, 4, 4), dtype=np.uint8)
    other[:, 1] = (np.arange(n * 16) % 4).reshape(n, 4, 4)  # 2 bits
    both = factorized_entropy([codes, other], bits=4, miller_madow=False)
    assert both.bits_per_frame == pytest.approx(5 * h * w + 2 * 16)
    assert both.bits_per_element == pytest.approx((5 * h * w + 2 * 16) / (3 * h * w + 2 * 16))
    assert len(both.per_channel) == 2


def test_factorized_entropy_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match="0..3"):
        factorized_entropy(np.full((1, 1, 2, 2), 4, dtype=np.uint8), bits=2)


def test_joint_entropy_known():
    rows = np.array([[0, 0], [0, 1], [1, 0], [1, 1]] * 10)
    assert joint_entropy(rows, miller_madow=False) == pytest.approx(2.0)
    assert joint_entropy(np.zeros(10, dtype=np.uint8)) == 0.0


# ------------------------------------------------------------------------------- relevance


def test_exact_information_limits():
    rng = np.random.default_rng(0)
    yx = rng.dirichlet(np.ones(3), size=16)
    x = np.arange(16)
    h_t, i = exact_information(None, np.zeros(16), yx)
    assert (h_t, i) == (0.0, pytest.approx(0.0, abs=1e-12))
    h_t, i_full = exact_information(None, x, yx)
    assert h_t == pytest.approx(4.0)
    _, i_half = exact_information(None, x // 2, yx)  # a coarser T keeps less
    assert 0 < i_half <= i_full + 1e-12
    # deterministic labels that T separates: I = H(Y)
    det = np.eye(2)[x % 2]
    assert exact_information(None, x, det) == (pytest.approx(4.0), pytest.approx(1.0))


def test_probe_no_information_is_near_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 5))
    y = rng.integers(0, 3, 3000)
    info = probe_information(x, y)
    assert abs(info.estimate) < 0.02, info
    assert info.h_y == pytest.approx(np.log2(3), abs=0.01)
    t = rng.integers(0, 8, size=(3000, 1))  # discrete, independent of y
    assert abs(probe_information(t, y, probe="table").estimate) < 0.02


def test_probe_determining_features_give_h_y():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 3000)
    centers = 10.0 * rng.normal(size=(4, 6))
    x = centers[y] + rng.normal(scale=0.1, size=(3000, 6))
    info = probe_information(x, y)
    assert info.estimate == pytest.approx(info.h_y, rel=0.03), info
    assert info.accuracy == 1.0
    tab = probe_information(y[:, None] * 3 + 1, y, probe="table")
    assert tab.estimate == pytest.approx(tab.h_y, rel=0.01)


def test_probe_inner_cv_for_c():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 3))
    y = (x[:, 0] + 0.5 * rng.normal(size=600) > 0).astype(int)
    info = probe_information(x, y, C=None, folds=3)
    assert 0.3 < info.estimate < 1.0 and info.stderr > 0


def test_groups_keep_a_video_out_of_its_own_probe():
    """Frames of one video share T (the video's look) and Y: without groups the probe memorizes."""
    rng = np.random.default_rng(0)
    videos = np.repeat(np.arange(40), 50)
    y_video = rng.integers(0, 2, 40)
    t, y = videos[:, None], y_video[videos]
    leaky = probe_information(t, y, probe="table")
    honest = probe_information(t, y, groups=videos, probe="table")
    assert leaky.estimate > 0.9
    assert honest.estimate < 0.02
    assert honest.stderr > leaky.stderr  # clustered error: 40 videos, not 2000 frames


# --------------------------------------------------------------------------------- depth


def test_dpi_check_flags_violation_only():
    ok = [("l1", 0.9, 0.01), ("l2", 0.8, 0.01), ("l3", 0.81, 0.01)]  # l3 > l2 but within noise
    assert dpi_check(ok) == []
    bad = [("l1", 0.5, 0.01), ("l2", 0.8, 0.01), ("l3", 0.4, 0.01)]
    v = dpi_check(bad)
    assert [(x.shallow, x.deep) for x in v] == [("l1", "l2")]
    assert v[0].excess == pytest.approx(0.3) and v[0].sigma == pytest.approx(np.hypot(0.01, 0.01))


def test_dpi_envelope():
    vals = np.array([0.5, 0.8, 0.4, 0.45, 0.1])
    env = dpi_envelope(vals)
    np.testing.assert_allclose(env, [0.8, 0.8, 0.45, 0.45, 0.1])
    assert np.all(np.diff(env) <= 0) and np.all(env >= vals)
