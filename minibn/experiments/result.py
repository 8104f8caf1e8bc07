"""What every experiment returns: curves, summary numbers and the claims it tests.

An experiment module ``minibn.experiments.<name>`` exposes
``run(fast=True, seed=0, progress=True) -> Result`` and ``plot(result) -> list of matplotlib
Figures``. ``Result.save(out_dir)`` writes ``<name>.json`` and one PNG per figure.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field


@dataclass
class Claim:
    """One paper claim checked at small scale.

    claim: what the paper says, in a sentence.
    source: where (e.g. "Ioffe & Szegedy 2015, Fig. 1a").
    ours: our measured number, as a short string with units.
    criterion: the pass rule (from shared/papers.md), e.g. "BN acc at step 500 >= no-BN + 0.05".
    passed: True/False when the criterion is evaluated; None when the claim is reported but not
        asserted (it does not reproduce robustly at small scale).
    """

    claim: str
    source: str
    ours: str
    criterion: str
    passed: bool | None


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
