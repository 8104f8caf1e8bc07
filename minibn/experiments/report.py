"""The reproduction report: every figure and a table of claim -> our number -> pass/fail.

``write_report(out_dir)`` reads the ``<name>.json`` and ``<name>-<i>.png`` files that
``Result.save`` wrote into ``out_dir`` and writes ``out_dir/report.md``.
"""
from __future__ import annotations

import glob
import json
import os
import platform
import time

from minibn.experiments import EXPERIMENTS
from minibn.experiments.result import Result

VERDICT = {True: "pass", False: "**FAIL**", None: "reported (not asserted)"}


def load_results(out_dir):
    """{name: Result} for every experiment whose JSON is in ``out_dir``, in registry order."""
    found = {}
    for name in EXPERIMENTS:
        path = os.path.join(out_dir, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                found[name] = Result.from_dict(json.load(f))
    return found


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(results, figures, notes=None):
    """The Markdown text: ``results`` {name: Result}, ``figures`` {name: [relative paths]}."""
    notes = notes or {}
    modes = sorted({"fast" if r.config.get("fast", True) else "full" for r in results.values()})
    lines = [
        "# minibn: the BatchNorm papers, reproduced at small scale",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()} "
        f"({os.cpu_count()} CPUs), Python {platform.python_version()}; "
        f"mode: {', '.join(modes) or 'none'}. Criteria, their calibration and the papers' setups: docs/reproductions.md.",
        "",
        "## Claims",
        "",
        "| experiment | claim | source | ours | criterion | result |",
        "|---|---|---|---|---|---|",
    ]
    counts = {True: 0, False: 0, None: 0}
    for name, r in results.items():
        for c in r.claims:
            counts[c.passed] += 1
            lines.append(f"| {name} | {_cell(c.claim)} | {_cell(c.source)} | {_cell(c.ours)} | "
                         f"{_cell(c.criterion)} | {VERDICT[c.passed]} |")
    lines += ["", f"{counts[True]} passed, {counts[False]} failed, {counts[None]} reported "
              "without being asserted (shown, not claimed: each one's criterion column says why).",
              ""]
    missing = [n for n in EXPERIMENTS if n not in results]
    if missing:
        lines += ["## Not run", ""]
        lines += [f"- `{n}`: {notes.get(n, 'no result in this folder')}" for n in missing]
        lines.append("")
    for name, r in results.items():
        lines += [f"## {name}", "", f"Seed {r.config.get('seed')}; config: "
                  + ", ".join(f"`{k}={v}`" for k, v in r.config.items()), ""]
        lines += [f"![{name} figure {i}]({p})" for i, p in enumerate(figures.get(name, []))]
        if r.summary:
            lines += ["", "| number | value |", "|---|---|"]
            for k, v in r.summary.items():
                shown = f"{v:.4g}" if isinstance(v, float) else str(v)
                lines.append(f"| {k} | {shown} |")
        lines.append("")
    return "\n".join(lines)


def write_report(out_dir, notes=None):
    """Write ``out_dir/report.md`` from the results there; return its path."""
    results = load_results(out_dir)
    figures = {
        name: sorted((os.path.basename(p) for p in glob.glob(os.path.join(out_dir, f"{name}-*.png"))),
                     key=lambda p: int(p.rsplit("-", 1)[1].split(".")[0]))
        for name in results
    }
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write(render(results, figures, notes))
    return path
