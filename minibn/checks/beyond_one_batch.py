"""Checks for lesson 09-beyond-one-batch (group norm, SyncBN's reduction, Batch Renorm).

Learner functions checked here (NumPy):
- ``group_norm_forward(x, num_groups, gamma, beta, eps=1e-5) -> out``: x ``(N, C, *spatial)``;
  each sample's channels in ``num_groups`` groups of ``C // num_groups``, each group normalized
  over its channels and positions (biased variance, eps inside the root), then per-channel
  ``gamma``/``beta`` ``(C,)``. ``num_groups = 1`` is layer norm, ``num_groups = C`` instance norm.
- ``group_norm_backward(dout, x, num_groups, gamma, eps=1e-5) -> (dx, dgamma, dbeta)``.
- ``merge_moments(a, b) -> (count, mean, m2)``: the operator SyncBN's all-reduce applies to two
  shards' per-channel ``(count, mean, M2)`` triples (Chan et al.); either shard may be empty
  (count 0). The check reduces a batch split over a simulated group of shards with it, in a
  ring order and in a tree order, and compares with the concatenated batch.
- ``renorm_correction(batch_mean, batch_var, running_mean, running_var, rmax, dmax, eps=1e-5)
  -> (r, d)``: Batch Renorm's ``r = clip(sigma_B / sigma, 1/rmax, rmax)`` and
  ``d = clip((mean_B - mean) / sigma, -dmax, dmax)``, sigmas with eps inside the root.

The references are ``minibn.norms`` and the formulas here; ``minibn.nn.SyncBatchNorm`` merges
the same triples with ``minibn.functional.pooled_moments``.
"""
from __future__ import annotations

import numpy as np

from minibn import norms
from minibn.checks._core import Case, Exercise, Hint, assert_close, assert_unchanged, fmt, unpack

__all__ = [
    "check_group_norm_forward", "check_group_norm_forward_randomized",
    "check_group_norm_backward", "check_group_norm_backward_randomized",
    "check_merge_moments", "check_merge_moments_randomized",
    "check_renorm_correction", "check_renorm_correction_randomized",
    "shard_moments",
]


def _tolerance(dtype):
    return (1e-4, 1e-4) if dtype == np.float32 else (1e-9, 1e-7)


def _conditioning(x, g, eps):
    """The largest ``|mean| / sqrt(var + eps)`` of a group, plus 1: float32's rounding of
    ``x - mean`` grows with it (a group of two close values far from 0)."""
    rows = np.asarray(x, np.float64).reshape(x.shape[0], g, -1)
    return 1.0 + float((np.abs(rows.mean(axis=2)) / np.sqrt(rows.var(axis=2) + eps)).max(initial=0))


# ------------------------------------------------------------------------------- group norm

def _gn_variant(x, g, gamma, beta, eps, *, over_batch=False, per_channel=False, ddof=0,
                eps_outside=False):
    """Group norm of x in float64, or one of the usual mistakes."""
    x = np.asarray(x, np.float64)
    n, c = x.shape[:2]
    groups = c if per_channel else g
    rows = x.reshape(n, groups, -1)
    axes = (0, 2) if over_batch else (2,)
    mean = rows.mean(axis=axes, keepdims=True)
    var = rows.var(axis=axes, keepdims=True, ddof=ddof)
    std = np.sqrt(var) + eps if eps_outside else np.sqrt(var + eps)
    x_hat = ((rows - mean) / std).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return x_hat * np.asarray(gamma, np.float64).reshape(shape) + np.asarray(beta, np.float64).reshape(shape)


def _gn_forward_hints(x, g, gamma, beta, eps):
    v = lambda **kw: _gn_variant(x, g, gamma, beta, eps, **kw)  # noqa: E731
    hints = [
        Hint(v(over_batch=True), "the statistics were taken over the whole batch (axis 0 too), "
             "as batch norm does; group norm normalizes each sample on its own: reduce over the "
             "group's channels and positions only."),
        Hint(v(ddof=1), "you used the unbiased variance (ddof=1); normalization uses the biased "
             "one, the mean of the squared deviations."),
        Hint(v(eps_outside=True), "eps was added to the standard deviation; it goes inside the "
             "square root: sqrt(var + eps)."),
    ]
    if g != x.shape[1]:
        hints.append(Hint(v(per_channel=True), "each channel was normalized on its own (instance "
                          "norm); a group holds C // num_groups consecutive channels."))
    return hints


def _gn_case(description, rng, shape, g, dtype=np.float64, offset=0.0, scale=1.0):
    c = shape[1]
    x = rng.normal(offset, scale, shape).astype(dtype)
    return Case(description, {"x": x, "gamma": rng.normal(1, 0.5, c).astype(dtype),
                              "beta": rng.normal(0, 0.5, c).astype(dtype),
                              "dout": rng.normal(0, 1, shape).astype(dtype)},
                {"num_groups": g})


def _gn_public():
    rng = np.random.default_rng(909)
    return [
        _gn_case("x of shape (4, 6, 5, 5), 3 groups of 2 channels", rng, (4, 6, 5, 5), 3),
        _gn_case("x of shape (3, 4, 7), 1 group: layer norm", rng, (3, 4, 7), 1, offset=2.0, scale=3.0),
        _gn_case("x of shape (2, 4, 3, 3), 4 groups of 1 channel: instance norm", rng, (2, 4, 3, 3), 4),
        _gn_case("x of shape (1, 8, 4, 4), one sample, 2 groups", rng, (1, 8, 4, 4), 2, offset=-1.0),
        _gn_case("x of shape (5, 1, 6), one channel, 1 group", rng, (5, 1, 6), 1),
        _gn_case("x of shape (3, 6, 4, 4), float32, 2 groups", rng, (3, 6, 4, 4), 2, np.float32, 0.5, 2.0),
    ]


def _gn_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(6):
        g = int(rng.integers(1, 5))
        c = g * int(rng.integers(1, 4))
        g = [g, 1, c][i % 3]  # a general G, then layer norm and instance norm
        spatial = tuple(int(s) for s in rng.integers(2, 6, int(rng.integers(1, 3))))
        shape = (int(rng.integers(1, 6)), c) + spatial
        dtype = np.float32 if i == 5 else np.float64
        offset, scale = float(rng.normal(0, 2)), float(10 ** rng.uniform(-1, 1))
        kind = {1: "layer norm", c: "instance norm"}.get(g, f"{g} groups")
        cases.append(_gn_case(f"x of shape {shape}, {np.dtype(dtype).name}, {kind}", rng, shape, g,
                              dtype, offset, scale))
    return cases


def _check_gn_forward(fn, case, eps=1e-5):
    x, gamma, beta, g = case["x"], case["gamma"], case["beta"], case["num_groups"]
    copy = x.copy()
    out = fn(x, g, gamma, beta, eps)
    assert_unchanged("x", x, copy, case, "group_norm_forward")
    expected, _ = norms.group_norm(x.astype(np.float64), g, gamma.astype(np.float64),
                                   beta.astype(np.float64), eps)
    atol, rtol = _tolerance(x.dtype)
    atol *= _conditioning(x, g, eps) * (1 + float(np.abs(gamma).max()))
    assert_close("out", out, expected, case, atol=atol, rtol=rtol, dtype=x.dtype,
                 hints=lambda: _gn_forward_hints(x, g, gamma, beta, eps))


GN_FORWARD = Exercise("group_norm_forward", _gn_public, _gn_randomized, _check_gn_forward,
                      summary="group norm's forward pass, with layer norm (G = 1) and instance "
                      "norm (G = C) among the cases, dtype kept, input untouched")
check_group_norm_forward, check_group_norm_forward_randomized = GN_FORWARD.checks(module=__name__)


def _gn_backward_hints(dout, cache, x):
    # dx as if the statistics were constants: the two mean terms of the closed form are missing.
    frozen = dout.astype(np.float64) * cache.gamma * np.repeat(
        cache.inv_std, x[0, :].size // cache.inv_std.shape[1], axis=1).reshape(x.shape)
    return [Hint(frozen, "dx treats the group's mean and variance as constants; they depend on "
                 "every value of the group, so dx = inv_std / M * (M g - sum(g) - x_hat * "
                 "sum(g * x_hat)) over each group's M values, with g = dout * gamma.")]


def _check_gn_backward(fn, case, eps=1e-5):
    x, gamma, dout, g = case["x"], case["gamma"], case["dout"], case["num_groups"]
    copies = (x.copy(), dout.copy())
    result = fn(dout, x, g, gamma, eps)
    dx, dgamma, dbeta = unpack(result, "group_norm_backward", 3, ["dx", "dgamma", "dbeta"])
    assert_unchanged("x", x, copies[0], case, "group_norm_backward")
    assert_unchanged("dout", dout, copies[1], case, "group_norm_backward")
    x64 = x.astype(np.float64)
    _, cache = norms.group_norm(x64, g, gamma.astype(np.float64), np.zeros(x.shape[1]), eps)
    want_dx, want_dgamma, want_dbeta = norms.norm_backward(dout.astype(np.float64), cache)
    atol, rtol = _tolerance(x.dtype)
    atol *= _conditioning(x, g, eps)
    scale = 1.0 + float(np.abs(want_dx).max())
    assert_close("dbeta", dbeta, want_dbeta, case, atol=atol * (1 + np.abs(want_dbeta).max()),
                 rtol=rtol, dtype=x.dtype)
    assert_close("dgamma", dgamma, want_dgamma, case, atol=atol * (1 + np.abs(want_dgamma).max()),
                 rtol=rtol, dtype=x.dtype)
    assert_close("dx", dx, want_dx, case, atol=atol * scale, rtol=rtol, dtype=x.dtype,
                 hints=lambda: _gn_backward_hints(dout, cache, x64))


GN_BACKWARD = Exercise("group_norm_backward", _gn_public, _gn_randomized, _check_gn_backward,
                       summary="group norm's closed-form backward (dx, dgamma, dbeta), layer and "
                       "instance norm included, against minibn.norms")
check_group_norm_backward, check_group_norm_backward_randomized = GN_BACKWARD.checks(
    module=__name__)


# --------------------------------------------------------------------- SyncBN's reduction

def shard_moments(shard):
    """``(count, mean, M2)`` per channel of one process's share ``(n, C, *spatial)`` of a batch:
    the values per channel, their mean and the sum of squared deviations (two passes); zeros
    for an empty share."""
    c = shard.shape[1]
    values = np.moveaxis(np.asarray(shard, np.float64), 1, 0).reshape(c, -1)
    count = values.shape[1]
    if count == 0:
        return 0, np.zeros(c), np.zeros(c)
    mean = values.mean(axis=1)
    return count, mean, ((values - mean[:, None]) ** 2).sum(axis=1)


def _ring(op, triples):
    total = triples[0]
    for t in triples[1:]:
        total = op(total, t)
    return total


def _tree(op, triples):
    # Recursive halving, the order a tree all-reduce combines in.
    while len(triples) > 1:
        pairs = [op(triples[i], triples[i + 1]) for i in range(0, len(triples) - 1, 2)]
        triples = pairs + ([triples[-1]] if len(triples) % 2 else [])
    return triples[0]


def _merge_variant(a, b, *, weighted=True, between=True):
    na, ma, m2a = a
    nb, mb, m2b = b
    n = na + nb
    if n == 0:
        return 0, ma, m2a
    mean = (na * ma + nb * mb) / n if weighted else (ma + mb) / 2
    delta = mb - ma
    m2 = m2a + m2b + (delta ** 2 * na * nb / n if between else 0)
    return n, mean, m2


def _split(x, sizes):
    return np.split(x, np.cumsum(sizes)[:-1], axis=0)


def _merge_case(description, rng, sizes, c, spatial=(), offset=0.0, scale=1.0, order="ring"):
    shape = (sum(sizes), c) + tuple(spatial)
    x = rng.normal(offset, scale, shape) + rng.normal(0, scale, (1, c) + (1,) * len(spatial))
    return Case(description, {"x": x}, {"sizes": tuple(sizes), "order": order})


def _merge_public():
    rng = np.random.default_rng(919)
    return [
        _merge_case("2 shards of sizes (3, 5), x of shape (8, 4), ring order", rng, (3, 5), 4),
        _merge_case("3 shards of sizes (5, 0, 2) (an empty one), x of shape (7, 3, 4, 4), ring order",
                    rng, (5, 0, 2), 3, (4, 4)),
        _merge_case("4 shards of sizes (0, 1, 6, 1), x of shape (8, 2, 5), tree order", rng,
                    (0, 1, 6, 1), 2, (5,), order="tree"),
        _merge_case("3 shards of sizes (4, 4, 1), mean 1e6, std 1, x of shape (9, 5), tree order",
                    rng, (4, 4, 1), 5, offset=1e6, order="tree"),
        _merge_case("4 shards of sizes (0, 0, 3, 4) (two empty ones meet first), x of shape "
                    "(7, 1, 3), one channel, ring order", rng, (0, 0, 3, 4), 1, (3,)),
    ]


def _merge_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(5):
        p = int(rng.integers(3 if i == 0 else 2, 7))
        sizes = [int(s) for s in rng.integers(0, 7, p)]
        if i == 0:  # always one case where two empty shards are merged with each other
            sizes[:2] = [0, 0]
        if sum(sizes) < 2:
            sizes[-1] += 2
        spatial = tuple(int(s) for s in rng.integers(1, 5, int(rng.integers(0, 3))))
        shape = (sum(sizes), int(rng.integers(1, 6))) + spatial
        order = ("ring", "tree")[i % 2]
        offset = float(rng.choice([0.0, 10 ** rng.uniform(0, 4)]))
        cases.append(_merge_case(f"{p} shards of sizes {tuple(sizes)}, x of shape {shape}, mean "
                                 f"about {offset:.3g}, {order} order", rng, sizes, shape[1], spatial,
                                 offset, float(10 ** rng.uniform(-1, 1)), order))
    return cases


def _check_merge(fn, case):
    x, sizes, order = case["x"], case["sizes"], case["order"]
    triples = [shard_moments(s) for s in _split(x, sizes)]
    copies = [(n, m.copy(), v.copy()) for n, m, v in triples]
    reduce = _ring if order == "ring" else _tree

    def op(a, b):
        return unpack(fn(a, b), "merge_moments", 3, ["count", "mean", "m2"])

    count, mean, m2 = reduce(op, triples)
    for (_, m, v), (_, mc, vc) in zip(triples, copies):
        assert_unchanged("a shard's mean or m2", m, mc, case, "merge_moments")
        assert_unchanged("a shard's mean or m2", v, vc, case, "merge_moments")
    want_n, want_mean, want_m2 = shard_moments(x)
    try:
        got_n = int(count)
    except (TypeError, ValueError):
        raise AssertionError(f"merge_moments must return the count as a number, got "
                             f"{type(count).__name__} ({case.description})") from None
    if got_n != want_n:
        raise AssertionError(f"count is {got_n}, expected {want_n} values per channel "
                             f"({case.description}): the merged count is n_a + n_b.")
    if 0 in sizes and isinstance(mean, np.ndarray) and not np.isfinite(mean).all():
        raise AssertionError(f"mean contains NaN or inf ({case.description}): merging with an "
                             "empty shard (count 0) divided by zero; when one count is 0 the "
                             "result is the other triple.")
    # Fresh triples for the hints: the learner's function saw (and may have kept) the others.
    exact = [shard_moments(s) for s in _split(x, sizes)]
    spread = float(np.abs(want_mean).max()) + 1.0
    assert_close("mean", mean, want_mean, case, atol=1e-12 * spread, rtol=1e-9,
                 hints=lambda: _merge_hints(reduce, exact, 1))
    assert_close("m2", m2, want_m2, case, atol=1e-9 * (1 + float(np.abs(want_m2).max())),
                 rtol=1e-7, hints=lambda: _merge_hints(reduce, exact, 2))


def _merge_hints(reduce, triples, which):
    return [
        Hint(reduce(lambda a, b: _merge_variant(a, b, weighted=False), triples)[which],
             "the means were averaged without their counts; a shard of 6 values counts six "
             "times as much as one of 1: mean = (n_a mean_a + n_b mean_b) / (n_a + n_b)."),
        Hint(reduce(lambda a, b: _merge_variant(a, b, between=False), triples)[which],
             "M2 = M2_a + M2_b misses the spread *between* the shards' means: add "
             "(mean_b - mean_a)**2 * n_a * n_b / (n_a + n_b)."),
    ]


MERGE = Exercise("merge_moments", _merge_public, _merge_randomized, _check_merge,
                 summary="the (count, mean, M2) merge of two shards, folded over a simulated "
                 "group of unequal and empty shards in ring and tree order")
check_merge_moments, check_merge_moments_randomized = MERGE.checks(module=__name__)


# ------------------------------------------------------------------- Batch Renorm's r and d

def _renorm_variant(mb, vb, mr, vr, rmax, dmax, eps, *, inverted=False, d_sign=1.0,
                    d_over_batch=False, no_eps=False, r_low=None):
    e = 0.0 if no_eps else eps
    sigma_b, sigma = np.sqrt(vb + e), np.sqrt(vr + e)
    ratio = sigma / sigma_b if inverted else sigma_b / sigma
    r = np.clip(ratio, 1.0 / rmax if r_low is None else r_low, rmax)
    d = np.clip(d_sign * (mb - mr) / (sigma_b if d_over_batch else sigma), -dmax, dmax)
    return np.stack([r, d])


def _renorm_hints(args):
    v = lambda **kw: _renorm_variant(*args, **kw)  # noqa: E731
    rmax = args[4]
    return [
        Hint(v(inverted=True), "r is upside down: r = sigma_B / sigma, the factor that turns the "
             "batch's normalization into the running one's."),
        Hint(v(d_sign=-1.0), "d has the wrong sign: d = (mean_B - mean) / sigma."),
        Hint(v(d_over_batch=True), "d was divided by the batch's sigma_B; the correction is in "
             "units of the running sigma: d = (mean_B - mean) / sigma."),
        Hint(v(no_eps=True), "eps is missing: both sigmas are sqrt(var + eps)."),
        Hint(v(r_low=0.0), f"r was clipped to [0, rmax]; the paper clips it to [1/rmax, rmax] "
             f"(here [{fmt(1 / rmax)}, {fmt(rmax)}])."),
    ]


def _renorm_case(description, rng, c, rmax, dmax, dtype=np.float64, spread=1.0):
    mr = rng.normal(0, 1, c)
    vr = 10 ** rng.uniform(-1, 1, c)
    # Batch statistics around the running ones, some far enough to be clipped.
    mb = mr + rng.normal(0, spread, c) * np.sqrt(vr)
    vb = vr * 10 ** rng.normal(0, 0.5 * spread, c)
    arrays = {k: a.astype(dtype) for k, a in (("batch_mean", mb), ("batch_var", vb),
                                               ("running_mean", mr), ("running_var", vr))}
    return Case(description, arrays, {"rmax": rmax, "dmax": dmax})


def _renorm_public():
    rng = np.random.default_rng(929)
    return [
        _renorm_case("8 channels, rmax 3, dmax 5 (the paper's end values), little clipping", rng, 8,
                     3.0, 5.0, spread=0.5),
        _renorm_case("10 channels, rmax 1.5, dmax 0.5: many clipped", rng, 10, 1.5, 0.5, spread=2.0),
        _renorm_case("5 channels, rmax 1, dmax 0: plain batch norm (r = 1, d = 0)", rng, 5, 1.0, 0.0),
        _renorm_case("6 channels, float32, rmax 2, dmax 1", rng, 6, 2.0, 1.0, np.float32, 1.5),
    ]


def _renorm_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(5):
        c = int(rng.integers(1, 12))
        rmax, dmax = float(rng.uniform(1, 4)), float(rng.uniform(0, 5))
        dtype = np.float32 if i == 4 else np.float64
        spread = float(rng.uniform(0.3, 2.5))
        cases.append(_renorm_case(f"{c} channels, {np.dtype(dtype).name}, rmax {rmax:.3g}, "
                                  f"dmax {dmax:.3g}", rng, c, rmax, dmax, dtype, spread))
    return cases


def _check_renorm(fn, case, eps=1e-5):
    keys = ("batch_mean", "batch_var", "running_mean", "running_var")
    arrays = [case[k] for k in keys]
    copies = [a.copy() for a in arrays]
    result = fn(*arrays, case["rmax"], case["dmax"], eps)
    r, d = unpack(result, "renorm_correction", 2, ["r", "d"])
    for k, a, c in zip(keys, arrays, copies):
        assert_unchanged(k, a, c, case, "renorm_correction")
    args = tuple(a.astype(np.float64) for a in arrays) + (case["rmax"], case["dmax"], eps)
    expected = _renorm_variant(*args)
    atol, rtol = _tolerance(arrays[0].dtype)
    for i, (name, got) in enumerate((("r", r), ("d", d))):
        assert_close(name, got, expected[i], case, atol=atol, rtol=rtol, dtype=arrays[0].dtype,
                     hints=lambda i=i: [Hint(h.expected_if_buggy[i], h.message)
                                        for h in _renorm_hints(args)])


RENORM = Exercise("renorm_correction", _renorm_public, _renorm_randomized, _check_renorm,
                  summary="Batch Renorm's clipped r and d from batch and running statistics")
check_renorm_correction, check_renorm_correction_randomized = RENORM.checks(module=__name__)

EXERCISES = (GN_FORWARD, GN_BACKWARD, MERGE, RENORM)
