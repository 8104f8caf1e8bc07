"""What every experiment returns: curves, summary numbers and the claims it tests.

An experiment module ``minibn.experiments.<name>`` exposes ``config(fast, seed, **overrides)``,
``run(cfg, progress) -> Result``, ``claims(result) -> [Claim]`` and ``plot(result) -> [Figure]``.
``Result.save(out_dir)`` writes ``<name>.json`` and one PNG per figure.

A claim's criterion is a list of ``Check``s, each one inequality ``statistic op threshold``.
An *asserted* claim passes when every check holds; a *reported* one records its checks (so
``calibrate`` can show their spread) but has ``passed = None``. The thresholds and their
calibration over seeds and CPU code paths are in docs/reproductions.md.
"""
from __future__ import annotations

import json
import math
import operator
import os
from dataclasses import asdict, dataclass, field

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass
class Check:
    """One inequality of a criterion: ``value op threshold``; a NaN or None value fails."""

    statistic: str
    value: float | None
    op: str
    threshold: float

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"op must be one of {sorted(OPS)}, got {self.op!r}")
        self.value = None if self.value is None else float(self.value)

    @property
    def holds(self):
        return (self.value is not None and not math.isnan(self.value)
                and OPS[self.op](self.value, self.threshold))


@dataclass
class Claim:
    """One paper claim checked at small scale.

    claim: what the paper says, in a sentence.
    source: where (e.g. "Ioffe & Szegedy 2015, Fig. 1a").
    ours: our measured number, as a short string with units.
    criterion: the pass rule in words, starting with its label (e.g. "F1a: ...").
    passed: True/False when the criterion is asserted; None when the claim is reported but not
        asserted (it does not reproduce robustly at small scale, or the run was shortened).
    label: the criterion's label (F1a, S1, ...), defined in docs/reproductions.md.
    checks: the criterion's inequalities (``Check`` as dicts), asserted or not.
    """

    claim: str
    source: str
    ours: str
    criterion: str
    passed: bool | None
    label: str = ""
    checks: list = field(default_factory=list)


def claim(label, text, source, ours, criterion, checks=(), asserted=True):
    """A ``Claim`` whose verdict is computed from ``checks`` (a list of ``Check``).

    ``asserted=False`` (or a string saying why) records the checks and reports the claim.
    """
    checks = list(checks)
    if asserted is True and not checks:
        raise ValueError(f"{label}: an asserted claim needs at least one check")
    passed = all(c.holds for c in checks) if asserted is True else None
    if isinstance(asserted, str):
        criterion = f"{criterion} ({asserted})"
    return Claim(text, source, ours, f"{label}: {criterion}" if label else criterion, passed,
                 label, [asdict(c) for c in checks])


def ratio(a, b):
    """``a / b`` with None or NaN for "missing" and inf for a zero denominator."""
    if a is None or b is None:
        return math.nan
    return math.inf if b == 0 else a / b


def usable_lrs(accuracy_at, lrs, threshold):
    """The learning rates whose ``accuracy_at(lr)`` reached ``threshold`` (NaN = diverged: no)."""
    return [lr for lr in lrs if accuracy_at(lr) >= threshold]


def unasserted_if_changed(cfg, standard, keys):
    """True when ``cfg`` has the calibrated values of ``keys``, else a reason string.

    Criteria are calibrated on the standard fast configuration (docs/reproductions.md); a full
    run, or one with fewer steps or another size, still reports its numbers and checks, but
    asserts nothing.
    """
    if not cfg.get("fast", True):
        return "not asserted: the criteria are calibrated in fast mode"
    changed = [k for k in keys if cfg.get(k) != standard.get(k)]
    if not changed:
        return True
    return "not asserted: " + ", ".join(f"{k}={cfg.get(k)!r}" for k in changed) + \
        " differs from the calibrated configuration"


@dataclass
class Result:
    name: str
    config: dict
    curves: dict = field(default_factory=dict)   # series name -> {"x": [...], "y": [...]}
    summary: dict = field(default_factory=dict)  # number name -> float
    claims: list = field(default_factory=list)   # Claim

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(d["name"], d["config"], d.get("curves", {}), d.get("summary", {}),
                   [Claim(**c) for c in d.get("claims", [])])

    def save(self, out_dir, figures=()):
        """Write ``<name>.json`` and ``<name>-<i>.png`` for each figure; return the paths."""
        os.makedirs(out_dir, exist_ok=True)
        paths = [os.path.join(out_dir, f"{self.name}.json")]
        with open(paths[0], "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        for i, fig in enumerate(figures):
            path = os.path.join(out_dir, f"{self.name}-{i}.png")
            fig.savefig(path, dpi=100, bbox_inches="tight")
            paths.append(path)
        return paths
