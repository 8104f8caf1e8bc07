"""Checks for lesson 08-why-bn-works (Santurkar et al. 2018).

Learner functions checked here (NumPy):
- ``lp_normalize(x, p, eps=1e-5) -> out``: x ``(N, D)``; subtract each unit's batch mean and
  divide by its average ℓp norm over the batch, taken before the mean shift:
  ``mean(|x|**p)**(1/p) + eps`` (``max|x| + eps`` for p = inf).
- ``internal_covariate_shift(grad_fn, weights, i, lr) -> (distance, cosine)``: Definition 2.1.
  ``weights`` is a list of arrays (one per layer), ``grad_fn(weights)`` returns the list of their
  gradients on one fixed batch. G = gradient of layer i; G' = gradient of layer i after layers
  0..i-1 (only those) took the step ``w - lr * grad``; returns ``||G - G'||`` and ``cos(G, G')``.
- ``loss_along_gradient(loss_fn, grad_fn, theta, lr, multipliers) -> (losses, grad_changes)``:
  with g = grad_fn(theta), for each m the loss at ``theta - m * lr * g`` and
  ``||grad_fn(theta - m * lr * g) - g||``, each an array of shape ``(len(multipliers),)``.

The last two take functions, which cannot cross into the re-grade's sandbox, so their exercises
have a ``compute`` half (run next to the learner's code, on the case rebuilt there) and a
``judge`` half (``_core.Exercise``).
"""
from __future__ import annotations

import numpy as np

from minibn.checks._core import Case, Exercise, Hint, Split, assert_close, assert_unchanged, fmt, unpack

__all__ = [
    "check_lp_normalize", "check_lp_normalize_randomized",
    "check_internal_covariate_shift", "check_internal_covariate_shift_randomized",
    "check_loss_along_gradient", "check_loss_along_gradient_randomized",
]


# ------------------------------------------------------------------------------ ℓp normalization

def _lp_variant(x, p, eps, *, centre_first=False, centre=True, axis=0, average=True, root=True,
                signed=False):
    x = np.asarray(x, np.float64)
    base = x - x.mean(axis=axis, keepdims=True) if centre_first else x
    if np.isinf(p):
        norm = (base if signed else np.abs(base)).max(axis=axis, keepdims=True)
    else:
        power = np.abs(base) ** p
        total = power.mean(axis=axis, keepdims=True) if average else power.sum(axis=axis, keepdims=True)
        norm = total ** (1.0 / p) if root else total
    shifted = x - x.mean(axis=axis, keepdims=True) if centre else x
    with np.errstate(divide="ignore", invalid="ignore"):
        return shifted / (norm + eps)


def _lp_hints(x, p, eps):
    v = lambda **kw: _lp_variant(x, p, eps, **kw)  # noqa: E731
    hints = [
        Hint(v(centre_first=True), "the norm was taken after subtracting the mean; Santurkar et "
             "al. take the average ℓp norm of the activations *before* the mean shift "
             "(for p = 2 your version is just BatchNorm's standard deviation)."),
        Hint(v(centre=False), "the batch mean was not subtracted: out = (x - mean) / norm."),
        Hint(v(axis=1), "the statistics were taken per sample (over axis 1); take them per unit, "
             "over the batch (axis 0)."),
    ]
    if not np.isinf(p):
        hints += [
            Hint(v(average=False), "you used the plain ℓp norm (a sum over the batch); use the "
                 "*average*: mean(|x|**p)**(1/p), so the scale does not grow with the batch size."),
            Hint(v(root=False), "the 1/p-th root is missing: norm = mean(|x|**p)**(1/p)."),
        ]
    else:
        hints.append(Hint(v(signed=True), "for p = inf the norm is max |x| (absolute values), "
                          "not max x."))
    return hints


def _lp_cases():
    rng = np.random.default_rng(338)
    return [
        Case(f"x of shape (8, 5), mean 2, std 3, p={p}", {"x": rng.normal(2, 3, (8, 5))}, {"p": p})
        for p in (1, 2, np.inf)
    ] + [
        Case("x of shape (6, 4), mean -1 (mostly negative), p=inf",
             {"x": rng.normal(-1, 0.5, (6, 4))}, {"p": np.inf}),
        Case("x of shape (16, 3), float32, p=1", {"x": rng.normal(0.5, 1, (16, 3)).astype(np.float32)},
             {"p": 1}),
        Case("x of shape (5, 7), ReLU outputs (non-negative), p=2",
             {"x": np.maximum(rng.normal(0, 1, (5, 7)), 0) + 0.01}, {"p": 2}),
        Case("x of shape (9, 1), one unit, p=3", {"x": rng.normal(1, 2, (9, 1))}, {"p": 3}),
    ]


def _check_lp_case(fn, case, eps=1e-5):
    x, p = case["x"], case["p"]
    copy = np.array(x, copy=True)
    out = fn(x, p, eps)
    assert_unchanged("x", x, copy, case, "lp_normalize")
    atol, rtol = (1e-5, 1e-4) if x.dtype == np.float32 else (1e-9, 1e-7)
    assert_close("out", out, _lp_variant(x, p, eps), case, atol=atol, rtol=rtol, dtype=x.dtype,
                 hints=lambda: _lp_hints(x, p, eps))


def _lp_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(6):
        shape = (int(rng.integers(2, 20)), int(rng.integers(1, 9)))
        if i == 5:  # mostly negative: max x and max |x| differ
            p, x = np.inf, rng.normal(-abs(rng.normal(2, 1)), 10 ** rng.uniform(-1, 0), shape)
        else:
            p = [1, 2, np.inf, 3][i % 4]
            x = rng.normal(rng.normal(0, 3), 10 ** rng.uniform(-1, 1), shape)
        cases.append(Case(f"x of shape {shape}, float64, p={p}", {"x": x}, {"p": p}))
    return cases


LP = Exercise("lp_normalize", _lp_cases, _lp_randomized, _check_lp_case,
              summary="Santurkar's ℓp normalization for p = 1, 2, 3, inf, dtype kept, input "
              "untouched")
check_lp_normalize, check_lp_normalize_randomized = LP.checks(module=__name__)


# ------------------------------------------------------------------ a small net with gradients

def _deep_net(seed, depth, width, n):
    """A ``depth``-layer tanh net with a squared loss, as ``(weights, grad_fn, loss_fn)``.

    ``grad_fn(weights)`` is the exact gradient (backprop by hand) on one fixed batch.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, width))
    y = rng.normal(0, 1, (n, width))
    weights = [rng.normal(0, 1.2 / np.sqrt(width), (width, width)) for _ in range(depth)]

    def forward(ws):
        acts = [x]
        for w in ws[:-1]:
            acts.append(np.tanh(acts[-1] @ w))
        return acts, acts[-1] @ ws[-1]

    def loss_fn(ws):
        return float(0.5 * ((forward(ws)[1] - y) ** 2).sum() / n)

    def grad_fn(ws):
        acts, out = forward(ws)
        delta = (out - y) / n
        grads = [None] * len(ws)
        for j in range(len(ws) - 1, -1, -1):
            grads[j] = acts[j].T @ delta
            if j:
                delta = (delta @ ws[j].T) * (1 - acts[j] ** 2)
        return grads

    return weights, grad_fn, loss_fn


# ---------------------------------------------------------------- internal covariate shift (2.1)

def _ics_variant(grad_fn, weights, i, lr, *, moved=None, sign=-1.0, sequential=False, relative=False):
    """ICS of layer i with the layers in ``moved`` stepped (default: the preceding ones)."""
    moved = range(i) if moved is None else moved
    g = grad_fn([w.copy() for w in weights])
    new = [w.copy() for w in weights]
    for j in moved:
        step = grad_fn([w.copy() for w in new])[j] if sequential else g[j]
        new[j] = new[j] + sign * lr * step
    g2 = grad_fn(new)[i]
    dist = float(np.linalg.norm(g[i] - g2))
    cos = float((g[i] * g2).sum() / (np.linalg.norm(g[i]) * np.linalg.norm(g2)))
    return np.array([dist / np.linalg.norm(g[i]) if relative else dist, cos])


def _ics_hints(grad_fn, weights, i, lr):
    k = len(weights)
    v = lambda **kw: _ics_variant(grad_fn, weights, i, lr, **kw)  # noqa: E731
    return [
        Hint(v(moved=range(i + 1)), "layer i itself was updated too; Definition 2.1 steps only "
             "the layers *before* i (W_1..W_{i-1}) and keeps W_i..W_k at step t."),
        Hint(v(moved=range(k)), "every layer was updated; only the layers before i move."),
        Hint(v(moved=range(i + 1, k)), "the layers *after* i were updated; ICS is about the "
             "layers feeding layer i, those before it."),
        Hint(v(sign=+1.0), "the step went uphill: an SGD step is w - lr * grad."),
        Hint(v(sequential=True), "each preceding layer's step used a gradient recomputed after "
             "the earlier layers moved; all steps use the gradients G_t computed once at step t."),
        Hint(v(relative=True), "you returned the relative distance ||G - G'|| / ||G||; the "
             "exercise asks for ||G - G'||."),
    ]


class _CountingGradFn:
    """Wraps ``grad_fn`` to count calls and hand out copies (so learners cannot alias them)."""

    def __init__(self, grad_fn):
        self.grad_fn, self.calls = grad_fn, 0

    def __call__(self, weights):
        self.calls += 1
        return [np.array(g, copy=True) for g in self.grad_fn([np.asarray(w) for w in weights])]


def _numbers(value):
    """A returned sequence of numbers as float64 data, or its type's name (the judge says so)."""
    try:
        return np.asarray(value, np.float64)
    except (TypeError, ValueError):
        return type(value).__name__


def _ics_compute(fn, case):
    weights, grad_fn, i, lr = case["weights"], case["grad_fn"], case["i"], case["lr"]
    copies = [w.copy() for w in weights]
    result = fn(_CountingGradFn(grad_fn), weights, i, lr)
    dist, cos = unpack(result, "internal_covariate_shift", 2, ["distance", "cosine"])
    for j, (w, c) in enumerate(zip(weights, copies)):
        assert_unchanged(f"weights[{j}]", w, c, case, "internal_covariate_shift")
    try:
        return {"result": np.array([float(dist), float(cos)])}
    except (TypeError, ValueError):
        return {"result": f"{type(dist).__name__} and {type(cos).__name__}"}


def _ics_judge(answers, case):
    got = answers["result"]
    if isinstance(got, str):
        raise AssertionError("internal_covariate_shift must return two numbers (distance, cosine), "
                             f"got {got}")
    weights, grad_fn, i, lr = case["weights"], case["grad_fn"], case["i"], case["lr"]
    assert_close("(distance, cosine)", got, _ics_variant(grad_fn, weights, i, lr), case, atol=1e-10,
                 rtol=1e-7, hints=lambda: _ics_hints(grad_fn, weights, i, lr))


def _ics_case(description, seed, depth, i, lr, width=4, n=6):
    weights, grad_fn, _ = _deep_net(seed, depth, width, n)
    return Case(description, {}, {"weights": weights, "grad_fn": grad_fn, "i": i, "lr": lr})


def _ics_public():
    return [
        _ics_case("a 4-layer tanh net, layer i=2, lr 0.5", 1, 4, 2, 0.5),
        _ics_case("a 5-layer tanh net, the last layer i=4, lr 0.3", 2, 5, 4, 0.3),
        _ics_case("a 3-layer tanh net, layer i=1, lr 1.0", 3, 3, 1, 1.0),
    ]


_FIRST = "a 3-layer tanh net, layer i=0 (nothing precedes it)"


def _ics_first_layer(internal_covariate_shift):
    """layer 0, which nothing precedes: distance 0 and cosine 1"""
    first = _ics_case(_FIRST, 4, 3, 0, 0.5)
    dist, cos = unpack(internal_covariate_shift(first["grad_fn"], first["weights"], 0, 0.5),
                       "internal_covariate_shift", 2, ["distance", "cosine"])
    return {"result": [float(dist), float(cos)]}


def _ics_first_layer_judge(answers):
    dist, cos = answers["result"]
    if not (abs(dist) < 1e-12 and abs(cos - 1) < 1e-9):
        raise AssertionError(
            f"layer 0 has no preceding layers, so G' = G: expected distance 0 and cosine 1, "
            f"got {fmt(dist)} and {fmt(cos)} ({_FIRST}).")


def _ics_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(4):
        depth = int(rng.integers(3, 7))
        i = int(rng.integers(1, depth))
        lr = float(10 ** rng.uniform(-1.5, 0.3))
        cases.append(_ics_case(f"a {depth}-layer tanh net, layer i={i}, lr {lr:.4g}",
                               int(rng.integers(2**31)), depth, i, lr,
                               width=int(rng.integers(2, 6)), n=int(rng.integers(3, 9))))
    return cases


ICS = Exercise("internal_covariate_shift", _ics_public, _ics_randomized, None,
               summary="Definition 2.1 on small tanh nets with exact gradients",
               extra_checks=(Split(_ics_first_layer, _ics_first_layer_judge,
                                   "layer 0, which nothing precedes: distance 0 and cosine 1"),),
               compute=_ics_compute, judge=_ics_judge)
check_internal_covariate_shift, check_internal_covariate_shift_randomized = ICS.checks(
    module=__name__)


# ------------------------------------------------------------------- the loss along the gradient

def _along_variant(loss_fn, grad_fn, theta, lr, mults, *, sign=-1.0, use_lr=True, relative=False,
                   unit=False):
    g = grad_fn(theta.copy())
    direction = g / np.linalg.norm(g) if unit else g
    losses, changes = [], []
    for m in mults:
        t = theta + sign * (m * lr if use_lr else m) * direction
        losses.append(loss_fn(t))
        change = np.linalg.norm(grad_fn(t) - g)
        changes.append(change / np.linalg.norm(g) if relative else change)
    return np.array(losses), np.array(changes)


def _flat_net(seed, depth, width, n):
    """A ``_deep_net`` seen through one flat parameter vector ``theta``."""
    weights, grad_fn, loss_fn = _deep_net(seed, depth, width, n)
    shapes = [w.shape for w in weights]
    sizes = [int(np.prod(s)) for s in shapes]

    def split(theta):
        parts = np.split(np.asarray(theta, np.float64), np.cumsum(sizes)[:-1])
        return [p.reshape(s) for p, s in zip(parts, shapes)]

    theta = np.concatenate([w.ravel() for w in weights])
    return theta, (lambda t: loss_fn(split(t))), (lambda t: np.concatenate(
        [g.ravel() for g in grad_fn(split(t))]))


def _along_compute(fn, case):
    theta, loss_fn, grad_fn, lr, mults = (case[k] for k in ("theta", "loss_fn", "grad_fn", "lr", "mults"))
    copy = theta.copy()
    result = fn(loss_fn, grad_fn, theta, lr, mults)
    losses, changes = unpack(result, "loss_along_gradient", 2, ["losses", "grad_changes"])
    assert_unchanged("theta", theta, copy, case, "loss_along_gradient")
    return {"losses": _numbers(losses), "grad_changes": _numbers(changes)}


def _along_judge(answers, case):
    theta, loss_fn, grad_fn, lr, mults = (case[k] for k in ("theta", "loss_fn", "grad_fn", "lr", "mults"))
    expected = _along_variant(loss_fn, grad_fn, theta, lr, mults)
    v = lambda which, **kw: _along_variant(loss_fn, grad_fn, theta, lr, mults, **kw)[which]  # noqa: E731
    for which, name in ((0, "losses"), (1, "grad_changes")):
        got = answers[name]
        if isinstance(got, str):
            raise AssertionError(f"{name} must be an array of {len(mults)} numbers, got {got} "
                                 f"({case.description})")
        hints = [
            Hint(v(which, sign=+1.0), "you moved uphill: probe theta - m * lr * g, along the "
                 "direction an SGD step takes."),
            Hint(v(which, use_lr=False), "the step is m * lr * g: the multipliers are in units "
                 "of the learning rate."),
            Hint(v(which, unit=True), "you moved along the unit gradient g / ||g||; move by "
                 "m * lr * g, as SGD would."),
        ]
        if which == 1:
            hints.append(Hint(v(1, relative=True), "grad_changes should be ||grad(theta') - g||, "
                              "not divided by ||g||."))
        assert_close(name, got, expected[which], case, atol=1e-10, rtol=1e-7, hints=hints)


def _along_case(description, seed, depth, lr, mults, width=4, n=6):
    theta, loss_fn, grad_fn = _flat_net(seed, depth, width, n)
    return Case(description, {"theta": theta},
                {"loss_fn": loss_fn, "grad_fn": grad_fn, "lr": lr, "mults": tuple(mults)})


def _along_public():
    return [
        _along_case("a 3-layer tanh net, lr 0.5, multipliers (0.5, 1, 2, 4)", 5, 3, 0.5, (0.5, 1, 2, 4)),
        _along_case("a 4-layer tanh net, lr 2, multipliers (0.25, 3)", 6, 4, 2.0, (0.25, 3.0)),
        _along_case("a 2-layer tanh net, lr 0.2, one multiplier (1.5,)", 7, 2, 0.2, (1.5,)),
    ]


def _along_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(3):
        depth, lr = int(rng.integers(2, 5)), float(10 ** rng.uniform(-1, 0.5))
        mults = tuple(np.round(rng.uniform(0.1, 4, int(rng.integers(1, 6))), 3))
        cases.append(_along_case(f"a {depth}-layer tanh net, lr {lr:.4g}, multipliers {mults}",
                                 int(rng.integers(2**31)), depth, lr, mults))
    return cases


ALONG = Exercise("loss_along_gradient", _along_public, _along_randomized, None,
                 summary="the loss and gradient change at theta - m * lr * g, against exact "
                 "losses and gradients of small tanh nets", compute=_along_compute, judge=_along_judge)
check_loss_along_gradient, check_loss_along_gradient_randomized = ALONG.checks(module=__name__)

EXERCISES = (LP, ICS, ALONG)
