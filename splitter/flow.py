"""Information-flow estimators that drive the choice of cut (numpy + scikit-learn, no torch).

A cut costs what its quantized activations take to send and loses what they no longer say about
the task. Both are measured here in bits:

- the *rate*: `factorized_entropy`, the entropy of the codes under a per-channel factorized model,
  which is the size an entropy coder with per-channel frequency tables (codec's ANS coder)
  approaches; `joint_entropy` for small spaces where whole vectors can be counted;
- the *relevance*: `probe_information`, a cross-fitted lower bound on I(T;Y) from a probe that
  predicts the label Y from the cut tensor T; `exact_information` computes H(T) and I(T;Y) by
  enumeration over a finite input space (Lorenzen, Igel & Nielsen, ICLR 2022), which is how the
  estimators are validated;
- `dpi_check` / `dpi_envelope`: the data-processing inequality across depth, as a sanity check on
  the estimates and as a way to tighten them.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from codec.quantizer import check_bits

LN2 = float(np.log(2.0))
# Weight of the smoothed training prior mixed into the logistic probe's predictions. The mixture
# is itself a predictor fitted on the training folds, so the bound stays valid; it caps the loss
# of one confident mistake (or of a class absent from a training fold) at about log2(1/1e-6) = 20
# bits instead of letting a single sample make the cross-entropy infinite.
PRIOR_MIX = 1e-6


# --------------------------------------------------------------------------------------------- rate


def _entropy_from_counts(counts: np.ndarray, miller_madow: bool) -> np.ndarray:
    """Entropy in bits of each row of a (..., K) count array, optionally Miller-Madow corrected.

    Miller-Madow adds (m - 1) / (2 n ln 2) bits, m the number of non-empty bins: the plug-in
    estimate is biased low by that much to first order, because a finite sample looks more
    concentrated than its source.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum(axis=-1)
    safe_n = np.where(n > 0, n, 1.0)
    p = counts / safe_n[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(counts > 0, -p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    h = terms.sum(axis=-1)
    if miller_madow:
        m = (counts > 0).sum(axis=-1)
        h = h + np.where(n > 0, (m - 1) / (2.0 * safe_n * LN2), 0.0)
    return h


def _channel_counts(codes: np.ndarray, bits: int, chunk: int = 64) -> np.ndarray:
    """(C, 2**bits) histogram of each channel's codes over all N*H*W positions."""
    k = 2**bits
    c = codes.shape[1]
    offsets = (np.arange(c, dtype=np.int64) * k).reshape((1, c) + (1,) * (codes.ndim - 2))
    counts = np.zeros(c * k, dtype=np.int64)
    for i in range(0, codes.shape[0], chunk):  # chunks bound the int64 copy's memory
        idx = codes[i : i + chunk].astype(np.int64) + offsets
        counts += np.bincount(idx.ravel(), minlength=c * k)
    return counts.reshape(c, k)


@dataclass(frozen=True)
class FactorizedRate:
    """Ideal size of a cut under a per-channel factorized model of its codes.

    `per_channel` holds one (C,) array of entropies (bits per element) per tensor of the cut.
    `bits_per_element` is the element-weighted mean over all tensors, so that
    bits_per_frame == bits_per_element * elements_per_frame.
    """

    per_channel: tuple[np.ndarray, ...]
    bits_per_element: float
    bits_per_frame: float
    elements_per_frame: int
    frames: int

    @property
    def bytes_per_frame(self) -> float:
        return self.bits_per_frame / 8.0


def factorized_entropy(
    codes: np.ndarray | Sequence[np.ndarray], bits: int, miller_madow: bool = True
) -> FactorizedRate:
    """Per-channel entropy of quantized activations and the frame size it implies.

    `codes`: uint8 codes (N, C, H, W) (or (N, C) / (N, C, ...)), values in 0..2**bits-1, or a
    list of such arrays (one per tensor of a multi-tensor cut; their frame sizes add up).
    Channel c's entropy H_c is that of the empirical distribution of its codes over all N*H*W
    positions, and a frame costs sum_c H_c * H * W bits. That is the bound for coders that model
    each channel with one frequency table and code elements independently (what codec's ANS
    coder with per-channel tables approaches); coders exploiting spatial or inter-channel context
    can do better, so this is the rate of that family, not of every coder.

    Miller-Madow is on by default because the plug-in entropy is biased low, and a low rate would
    flatter exactly the cuts measured on too few frames for their alphabet; a coder whose tables
    are fitted on calibration frames pays the cross-entropy on new frames, which is above H.
    Note that positions of one channel are not independent draws, so the effective sample size
    is smaller than N*H*W and the correction is a first-order one at best.
    """
    bits = check_bits(bits)
    tensors = [codes] if isinstance(codes, np.ndarray) else list(codes)
    if not tensors:
        raise ValueError("factorized_entropy needs at least one tensor")
    frames = None
    counts, spatial = [], []
    for t in tensors:
        t = np.asarray(t)
        if t.ndim < 2:
            raise ValueError(f"codes need shape (N, C, ...), got {t.shape}")
        if not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"codes must be integers, got dtype {t.dtype}")
        if t.size == 0:
            raise ValueError(f"codes are empty: shape {t.shape}")
        if frames is None:
            frames = t.shape[0]
        elif t.shape[0] != frames:
            raise ValueError(f"tensors of one cut must have the same N, got {frames} and {t.shape[0]}")
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= 2**bits:
            raise ValueError(f"codes must lie in 0..{2**bits - 1} for bits={bits}, got range {lo}..{hi}")
        counts.append(_channel_counts(t, bits))
        spatial.append(int(np.prod(t.shape[2:], dtype=np.int64)))
    return rate_from_counts(counts, spatial, int(frames), miller_madow)


def channel_counts(codes: np.ndarray, bits: int) -> np.ndarray:
    """(C, 2**bits) histogram of each channel's codes: add these over batches of frames and pass
    the sums to `rate_from_counts` to get `factorized_entropy` of all of them without holding
    every frame's codes at once."""
    return _channel_counts(np.asarray(codes), check_bits(bits))


def rate_from_counts(
    counts: Sequence[np.ndarray], spatial: Sequence[int], frames: int, miller_madow: bool = True
) -> FactorizedRate:
    """`factorized_entropy` from per-tensor channel histograms (`channel_counts`, summed over
    frames); `spatial[i]` is the number of positions per channel of tensor i (H*W)."""
    per_channel, total_bits, total_elems = [], 0.0, 0
    for c, s in zip(counts, spatial, strict=True):
        h_c = _entropy_from_counts(c, miller_madow)
        per_channel.append(h_c)
        total_bits += float(h_c.sum()) * s
        total_elems += c.shape[0] * s
    return FactorizedRate(
        per_channel=tuple(per_channel),
        bits_per_element=total_bits / total_elems,
        bits_per_frame=total_bits,
        elements_per_frame=total_elems,
        frames=int(frames),
    )


def _row_ids(samples: np.ndarray) -> np.ndarray:
    """Integer id of each row's value (equal rows, equal ids); a 1-D array is one symbol per row."""
    a = np.asarray(samples)
    if a.ndim == 1:
        a = a[:, None]
    a = a.reshape(a.shape[0], -1)
    _, inverse = np.unique(a, axis=0, return_inverse=True)
    return inverse.reshape(-1)


def joint_entropy(samples: np.ndarray, miller_madow: bool = True) -> float:
    """Entropy in bits of the empirical distribution of whole rows (discrete vectors).

    Counts every distinct row as one symbol, so it is only meaningful where the sample covers the
    space well (a few samples per observed row); Miller-Madow on by default for the reason given
    in `factorized_entropy`.
    """
    a = np.asarray(samples)
    if a.shape[0] == 0:
        raise ValueError("joint_entropy needs at least one sample")
    counts = np.bincount(_row_ids(a))
    return float(_entropy_from_counts(counts, miller_madow))


# ---------------------------------------------------------------------------------------- relevance


@dataclass(frozen=True)
class ProbeInfo:
    """Cross-fitted lower bound on I(T;Y), all in bits.

    estimate = h_y - cross_entropy, where h_y is the plug-in entropy of all labels and
    cross_entropy the probe's mean out-of-fold log loss. `h_y_constant` is the out-of-fold log
    loss of the training folds' prior (the best constant predictor), for reference.
    `stderr` comes from the per-sample terms log2 q(y|t) - log2 p(y) (clustered by group when
    groups are given); `fold_estimates` are the per-fold values of the same difference.
    """

    estimate: float
    stderr: float
    h_y: float
    cross_entropy: float
    h_y_constant: float
    accuracy: float
    n: int
    folds: int
    probe: str
    fold_estimates: tuple[float, ...]


def _splits(n: int, groups: np.ndarray | None, folds: int, seed: int):
    from sklearn.model_selection import GroupKFold, KFold

    if groups is None:
        return list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(n)))
    groups = np.asarray(groups)
    if len(np.unique(groups)) < folds:
        raise ValueError(f"need at least {folds} distinct groups for {folds} folds")
    try:
        gkf = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    except TypeError:  # scikit-learn < 1.6 has no shuffled GroupKFold
        gkf = GroupKFold(n_splits=folds)
    return list(gkf.split(np.zeros(n), groups=groups))


def _smoothed_prior(y_train: np.ndarray, k: int, alpha: float) -> np.ndarray:
    counts = np.bincount(y_train, minlength=k).astype(np.float64) + alpha
    return counts / counts.sum()


def _table_predict(
    t_train: np.ndarray, y_train: np.ndarray, t_test: np.ndarray, k: int, n_t: int, alpha: float
) -> np.ndarray:
    """p(y|t) with add-alpha smoothing from the training fold; a t unseen there gets the prior."""
    counts = np.bincount(t_train * k + y_train, minlength=n_t * k).reshape(n_t, k).astype(np.float64)
    cond = (counts + alpha) / (counts.sum(axis=1, keepdims=True) + alpha * k)
    seen = counts.sum(axis=1) > 0
    prior = _smoothed_prior(y_train, k, alpha)
    return np.where(seen[t_test, None], cond[t_test], prior[None, :])


def _logistic_predict(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    k: int,
    c: float | None,
    g_train: np.ndarray | None,
    seed: int,
) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    present = np.unique(y_train)
    prior = _smoothed_prior(y_train, k, 0.5)
    if present.size < 2:  # nothing to discriminate: the probe is the prior
        return np.broadcast_to(prior, (x_test.shape[0], k)).copy()
    if c is None:  # inner CV over C on the training fold, by log loss, respecting groups
        inner = 3
        if g_train is not None and len(np.unique(g_train)) >= inner:
            from sklearn.model_selection import GroupKFold

            cv = list(GroupKFold(n_splits=inner).split(x_train, y_train, g_train))
        else:
            cv = inner
        kw = {}
        params = inspect.signature(LogisticRegressionCV).parameters
        if "l1_ratios" in params:  # scikit-learn >= 1.8: plain L2 spelled explicitly, no warning
            kw["l1_ratios"] = (0.0,)
        if "use_legacy_attributes" in params:
            kw["use_legacy_attributes"] = False
        model = LogisticRegressionCV(
            Cs=np.logspace(-3, 2, 6), cv=cv, scoring="neg_log_loss", max_iter=2000, random_state=seed, **kw
        )
    else:
        model = LogisticRegression(C=c, max_iter=2000)
    pipe = make_pipeline(StandardScaler(), model)
    pipe.fit(x_train, y_train)
    proba = np.zeros((x_test.shape[0], k))
    proba[:, pipe.classes_] = pipe.predict_proba(x_test)
    return (1.0 - PRIOR_MIX) * proba + PRIOR_MIX * prior[None, :]


def probe_information(
    features: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    folds: int = 5,
    seed: int = 0,
    probe: str = "logistic",
    C: float | None = 1.0,
    alpha: float = 0.5,
) -> ProbeInfo:
    """Lower bound on I(T;Y) in bits: H(Y) minus the out-of-fold cross-entropy of a probe q(y|t).

    For any predictor q fitted without the test samples, E[-log2 q(Y|T)] >= H(Y|T), so
    H(Y) - CE <= I(T;Y). Cross-fitting (every sample is scored by a probe that never saw it) makes
    the mean out-of-fold loss an unbiased estimate of that expected loss; with `groups` (e.g. video
    ids) GroupKFold keeps the frames of one video out of the probe that scores them, since near-
    duplicate frames would otherwise let the probe memorize.

    H(Y) is the plug-in entropy of all labels: its expectation is at most the true H(Y) (Jensen),
    so the difference stays a lower bound in expectation. The alternative, the out-of-fold loss of
    the training folds' prior (reported as `h_y_constant`), is a cross-entropy and so biased *up*,
    which could push the bound above I; the two differ by about (K-1)/(2 n ln 2) bits.

    probe="logistic": multinomial logistic regression on standardized features, C=1.0 by default
    (modest L2, stated rather than tuned); C=None picks C in 1e-3..1e2 by an inner 3-fold CV on
    log loss (grouped when groups are given). probe="table": for discrete low-dimensional T, the
    empirical p(y|t) of the training fold with add-`alpha` smoothing (0.5, Krichevsky-Trofimov);
    a t unseen in training is given the training prior.

    Nothing is clipped: a negative estimate means the probe found nothing it could generalize.
    """
    y_raw = np.asarray(labels)
    if y_raw.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y_raw.shape}")
    n = y_raw.shape[0]
    x = np.asarray(features)
    if x.shape[0] != n:
        raise ValueError(f"features have {x.shape[0]} rows, labels {n}")
    x = x.reshape(n, -1) if x.ndim != 1 else x[:, None]
    if groups is not None and np.asarray(groups).shape[0] != n:
        raise ValueError("groups must have one entry per sample")
    if folds < 2:
        raise ValueError("folds must be >= 2")
    if probe not in ("logistic", "table"):
        raise ValueError(f"probe must be 'logistic' or 'table', got {probe!r}")
    classes, y = np.unique(y_raw, return_inverse=True)
    y = y.reshape(-1)
    k = classes.size
    t_ids = _row_ids(x) if probe == "table" else None
    n_t = int(t_ids.max()) + 1 if t_ids is not None else 0
    g = None if groups is None else np.asarray(groups)

    loss = np.empty(n)  # -log2 q(y_i | t_i), out of fold
    const_loss = np.empty(n)  # -log2 prior_train(y_i), out of fold
    correct = np.empty(n, dtype=bool)
    splits = _splits(n, g, folds, seed)
    for train, test in splits:
        if probe == "table":
            q = _table_predict(t_ids[train], y[train], t_ids[test], k, n_t, alpha)
        else:
            q = _logistic_predict(
                x[train], y[train], x[test], k, C, None if g is None else g[train], seed
            )
        loss[test] = -np.log2(q[np.arange(test.size), y[test]])
        const_loss[test] = -np.log2(_smoothed_prior(y[train], k, alpha)[y[test]])
        correct[test] = q.argmax(axis=1) == y[test]

    p_y = np.bincount(y, minlength=k) / n
    h_y = float(-(p_y[p_y > 0] * np.log2(p_y[p_y > 0])).sum())
    # Per-sample terms whose mean is exactly the estimate: mean(-log2 p_y[y]) is the plug-in H(Y).
    d = -np.log2(p_y[y]) - loss
    estimate = float(d.mean())
    if g is None:
        stderr = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    else:  # cluster-robust: samples of one group are not independent
        _, gi = np.unique(g, return_inverse=True)
        resid = np.bincount(gi.reshape(-1), weights=d - estimate)
        n_g = resid.size
        stderr = float(np.sqrt(n_g / max(n_g - 1, 1) * (resid**2).sum()) / n)
    fold_estimates = tuple(float(d[test].mean()) for _, test in splits)
    return ProbeInfo(
        estimate=estimate,
        stderr=stderr,
        h_y=h_y,
        cross_entropy=float(loss.mean()),
        h_y_constant=float(const_loss.mean()),
        accuracy=float(correct.mean()),
        n=int(n),
        folds=len(splits),
        probe=probe,
        fold_estimates=fold_estimates,
    )


def exact_information(
    p_x: np.ndarray | None, t_of_x: np.ndarray, y_given_x: np.ndarray
) -> tuple[float, float]:
    """(H(T), I(T;Y)) in bits by enumerating a finite input space (Lorenzen, Igel & Nielsen 2022).

    `p_x`: (n_x,) input probabilities, or None for uniform; `t_of_x`: the discrete T of each input
    (one row per input; T is a deterministic function of x, e.g. a quantized layer);
    `y_given_x`: (n_x, n_y) label probabilities. H(T) is the entropy of the pushforward of p_x
    through x -> T; I(T;Y) = H(Y) - H(Y|T) with p(t, y) = sum_{x: T(x)=t} p(x) p(y|x). With
    quantized T these are finite, exactly computable quantities, unlike for continuous layers
    where I(X;T) is infinite or depends on an arbitrary binning.
    """
    pyx = np.asarray(y_given_x, dtype=np.float64)
    if pyx.ndim != 2:
        raise ValueError(f"y_given_x must be (n_x, n_y), got shape {pyx.shape}")
    n_x = pyx.shape[0]
    px = np.full(n_x, 1.0 / n_x) if p_x is None else np.asarray(p_x, dtype=np.float64).reshape(-1)
    if px.shape[0] != n_x or np.asarray(t_of_x).shape[0] != n_x:
        raise ValueError("p_x, t_of_x and y_given_x must have one entry per input")
    if np.any(px < 0) or not np.isclose(px.sum(), 1.0):
        raise ValueError("p_x must be a probability vector")
    if np.any(pyx < 0) or not np.allclose(pyx.sum(axis=1), 1.0):
        raise ValueError("each row of y_given_x must be a probability vector")
    ids = _row_ids(np.asarray(t_of_x))
    p_ty = np.zeros((int(ids.max()) + 1, pyx.shape[1]))
    np.add.at(p_ty, ids, px[:, None] * pyx)
    p_t = p_ty.sum(axis=1)
    p_y = p_ty.sum(axis=0)

    def h(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log2(p)).sum())

    h_t = h(p_t)
    return h_t, h(p_y) + h_t - h(p_ty.ravel())  # H(Y) - H(Y|T), H(Y|T) = H(T,Y) - H(T)


# ---------------------------------------------------------------------------------- across depth


@dataclass(frozen=True)
class DPIViolation:
    """A deeper layer whose estimate exceeds a shallower one's by more than 2 combined sigmas."""

    shallow: str
    deep: str
    excess: float  # deep value - shallow value, bits
    sigma: float  # sqrt(se_shallow^2 + se_deep^2)


def dpi_check(estimates: Sequence[tuple[str, float, float]], z: float = 2.0) -> list[DPIViolation]:
    """Every pair (shallow, deep) whose values break the data-processing inequality beyond noise.

    `estimates` are (name, value, stderr) in order of depth. In a feed-forward chain
    X -> T_1 -> T_2 -> ..., each cut state is a function of the previous one, so I(T_l;Y) can only
    fall with depth (with skip connections, T_l must be the whole state crossing the cut). A
    deeper value above a shallower one by more than z * sqrt(se_i^2 + se_j^2) means an estimator
    problem (a weaker probe at the shallow layer, leakage across folds), not information gain.
    """
    out = []
    for i, (name_i, v_i, se_i) in enumerate(estimates):
        for name_j, v_j, se_j in estimates[i + 1 :]:
            sigma = float(np.hypot(se_i, se_j))
            if v_j - v_i > z * sigma:
                out.append(DPIViolation(shallow=name_i, deep=name_j, excess=float(v_j - v_i), sigma=sigma))
    return out


def dpi_envelope(values: Sequence[float]) -> np.ndarray:
    """Running max from deep to shallow: envelope[l] = max(values[l:]).

    A lower bound on I(T_m;Y) at a deeper layer m is also one on I(T_l;Y) for every shallower l
    (the DPI), so the max of all bounds at or below l is a valid, tighter lower bound for l, and
    the result is non-increasing with depth by construction.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    return np.maximum.accumulate(v[::-1])[::-1].copy()
