"""Calibrate the criteria: every check's statistic over many seeds and two CPU code paths.

``python -m minibn.experiments calibrate NAME[,NAME...]|all --seeds 0-19 --paths native,avx2``
runs each experiment's fast configuration once per (seed, path) in its own process (``--jobs``
at a time) and caches each run, its summary included, as ``OUT/NAME/PATH/seed-S.json``. A rerun
computes only what is missing and re-judges the cached runs with the current thresholds.
``--paths native:0-9,avx2:10-19`` gives each path its own seeds. It then prints, per check, its
value in every run, min/median/max, the threshold, the margin of the worst run and how many
runs failed; ``OUT/NAME.md`` gets the same table.
``--check`` exits 1 when an asserted claim failed in any run (the tests use it);
``--docs docs/reproductions.md`` writes each table there, between the lines
``<!-- calibration:NAME -->`` and ``<!-- /calibration:NAME -->``.

The runs use ``module.CALIBRATION``: config overrides that drop the parts of a run no asserted
claim reads (each part draws from its own seeded generator, so the asserted numbers are the
ones ``python -m minibn.experiments NAME --fast`` gets).

CPU code paths: the same seed gives other numbers on a CPU with other SIMD kernels (sums in
another order, then chaos). ``avx2`` makes this machine compute like an AVX2-only one: ATen's
kernels, MKL's (torch's matmul) and OpenBLAS's (NumPy's matmul) AVX2 code paths, and NumPy's
dispatch without AVX-512.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np

from minibn.experiments import EXPERIMENTS, load
from minibn.experiments.progress import progress_bar
from minibn.experiments.result import Check, Result

_NO_AVX512 = "X86_V4 AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"
CPU_PATHS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "OPENBLAS_CORETYPE": "Haswell", "NPY_DISABLE_CPU_FEATURES": _NO_AVX512},
}


def parse_seeds(text):
    """``"0-9,12"`` -> [0, 1, ..., 9, 12]."""
    seeds = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += range(int(lo), int(hi or lo) + 1)
    return seeds


def run_one(name, seed):
    """The calibration run of ``name`` at ``seed`` in this process: a JSON-ready dict."""
    module = load(name)
    cfg = module.config(fast=True, seed=seed, **getattr(module, "CALIBRATION", {}))
    start = time.monotonic()
    result = module.run(cfg, progress=False)
    return {"name": name, "seed": seed, "seconds": time.monotonic() - start,
            "config": result.config, "summary": result.summary,
            "claims": [vars(c) for c in result.claims]}


def rejudge(name, run):
    """``run`` with its claims recomputed from its summary by the current ``claims()``, so a
    changed threshold is judged on cached runs without running them again."""
    if "summary" not in run:
        return run
    result = Result(name, run["config"], {}, run["summary"])
    return {**run, "claims": [vars(c) for c in load(name).claims(result)]}


def _run_in_subprocess(name, path, seed, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **CPU_PATHS[path]}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    cmd = [sys.executable, "-m", "minibn.experiments.calibrate", "--worker", name, str(seed), out]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"calibration run {name} seed {seed} ({path}) failed:\n{done.stderr}")


def _missing(name, plan, out_dir):
    """The runs of ``plan`` ({path: seeds}) not cached yet: ``(name, path, seed, file)``."""
    return [(name, path, seed, file) for path, seeds in plan.items() for seed in seeds
            if not os.path.exists(file := os.path.join(out_dir, name, path, f"seed-{seed}.json"))]


def run_missing(todo, jobs=2, label="calibrate", log=print):
    """Run ``todo`` (from ``_missing``, of one or several experiments) ``jobs`` at a time."""
    if todo:
        log(f"{label}: {len(todo)} runs to do, {jobs} at a time")
    with ThreadPoolExecutor(max_workers=jobs) as pool, \
            progress_bar(len(todo), label, bool(todo)) as bar:
        futures = {pool.submit(_run_in_subprocess, n, p, s, f): (n, p, s) for n, p, s, f in todo}
        for fut in as_completed(futures):
            fut.result()
            bar.set_postfix_str("{} {} seed {}".format(*futures[fut]))
            bar.update()


def collect(name, plan, out_dir, jobs=2, log=print):
    """Run what is missing of ``plan`` ({path: seeds}); return ``{(path, seed): run dict}``."""
    run_missing(_missing(name, plan, out_dir), jobs, f"calibrate {name}", log)
    runs = {}
    for path, seeds in plan.items():
        for seed in seeds:
            with open(os.path.join(out_dir, name, path, f"seed-{seed}.json")) as f:
                runs[(path, seed)] = rejudge(name, json.load(f))
    return runs


def _worst(values, op):
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if len(finite) < len(values):
        return math.nan
    return min(finite) if op in (">=", ">") else max(finite)


def _margin(worst, op, threshold):
    """How far the worst run is from the threshold, in the threshold's direction."""
    if math.isnan(worst):
        return "n/a (a run had no value)"
    gap = worst - threshold if op in (">=", ">") else threshold - worst
    if threshold != 0 and math.isfinite(gap):
        return f"{gap:+.3g} ({100 * gap / abs(threshold):+.0f}%)"
    return f"{gap:+.3g}"


def table(runs):
    """Rows (one per check of every claim): label, statistic, rule, min/median/max, margin."""
    first = next(iter(runs.values()))
    rows = []
    for ci, c in enumerate(first["claims"]):
        for ki, k in enumerate(c["checks"]):
            values = [r["claims"][ci]["checks"][ki]["value"] for r in runs.values()]
            fails = sum(not _holds(v, k["op"], k["threshold"]) for v in values)
            arr = np.array([math.nan if v is None else v for v in values], float)
            worst = _worst(values, k["op"])
            rows.append({
                "label": c["label"], "statistic": k["statistic"],
                "rule": f"{k['op']} {k['threshold']:g}",
                "asserted": c["passed"] is not None,
                "min": float(np.nanmin(arr)) if np.isfinite(arr).any() else math.nan,
                "median": float(np.nanmedian(arr)) if np.isfinite(arr).any() else math.nan,
                "max": float(np.nanmax(arr)) if np.isfinite(arr).any() else math.nan,
                "margin": _margin(worst, k["op"], k["threshold"]), "fails": fails,
                "runs": len(values),
            })
    return rows


def _holds(value, op, threshold):
    return Check("", value, op, threshold).holds


def markdown(name, runs, rows):
    paths = sorted({p for p, _ in runs})
    seeds = {p: sorted(s for q, s in runs if q == p) for p in paths}
    secs = [r["seconds"] for r in runs.values()]
    head = [f"`{name}`: {len(runs)} fast-mode runs, "
            + "; ".join(f"{p} seeds {_span(seeds[p])}" for p in paths)
            + f"; {np.median(secs):.0f} s per run (median).", "",
            "| criterion | statistic | rule | min | median | max | margin of the worst run | "
            "failed runs | asserted |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head.append(f"| {r['label']} | {_cell(r['statistic'])} | {r['rule']} | {r['min']:.3g} | "
                    f"{r['median']:.3g} | {r['max']:.3g} | {r['margin']} | "
                    f"{r['fails']}/{r['runs']} | {'yes' if r['asserted'] else 'reported'} |")
    return "\n".join(head) + "\n"


def _cell(text):
    return str(text).replace("|", "\\|")


def _span(seeds):
    if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def per_seed(runs, rows):
    """One line per run: every check's value (the raw data behind the table)."""
    lines = []
    for (path, seed), r in sorted(runs.items()):
        values = [k["value"] for c in r["claims"] for k in c["checks"]]
        lines.append(f"{path:>6} seed {seed:>3}: "
                     + " ".join("nan" if v is None else f"{v:.3g}" for v in values))
    return "\n".join(lines)


def update_docs(path, name, text):
    """Put ``text`` between ``<!-- calibration:NAME -->`` and its closing marker in ``path``."""
    start, end = f"<!-- calibration:{name} -->", f"<!-- /calibration:{name} -->"
    with open(path) as f:
        doc = f.read()
    if start not in doc:
        raise ValueError(f"{path} has no line {start!r} to put the {name} table under")
    head, _, rest = doc.partition(start)
    tail = rest.partition(end)[2] if end in rest else rest
    with open(path, "w") as f:
        f.write(f"{head}{start}\n{text}{end}{tail}")


def main(argv):
    p = argparse.ArgumentParser(prog="python -m minibn.experiments calibrate",
                                description="Measure every criterion over seeds and CPU paths.")
    p.add_argument("names", help="experiment name(s), comma-separated, or all")
    p.add_argument("--seeds", default="0-19", help="e.g. 0-19 or 0-4,12 (default %(default)s)")
    p.add_argument("--paths", default="native,avx2",
                   help=f"CPU code paths, comma-separated, of {', '.join(CPU_PATHS)}; "
                   "PATH:SEEDS gives a path its own seeds")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default %(default)s)")
    p.add_argument("--out", default="build/calibration", help="cache and tables (default %(default)s)")
    p.add_argument("--check", action="store_true", help="exit 1 if an asserted claim failed")
    p.add_argument("--docs", help="also write each table into this Markdown file's markers")
    args = p.parse_args(argv)
    names = list(EXPERIMENTS) if args.names == "all" else args.names.split(",")
    for n in names:
        load(n)  # a clear error for an unknown name before any run starts
    plan = {}
    for item in args.paths.split(","):
        path, _, seeds = item.partition(":")
        if path not in CPU_PATHS:
            p.error(f"unknown CPU path {path!r}; choose from {list(CPU_PATHS)}")
        plan[path] = parse_seeds(seeds or args.seeds)
    # Every experiment's missing runs in one pool: with one seed each (a quick check), runs of
    # different experiments are what can share the cores.
    run_missing([r for n in names for r in _missing(n, plan, args.out)], args.jobs)
    failed = False
    for name in names:
        runs = collect(name, plan, args.out, args.jobs)
        rows = table(runs)
        text = markdown(name, runs, rows)
        with open(os.path.join(args.out, f"{name}.md"), "w") as f:
            f.write(text)
        if args.docs:
            update_docs(args.docs, name, text)
        print(per_seed(runs, rows))
        print(text)
        failed |= any(r["asserted"] and r["fails"] for r in rows)
    if args.check and failed:
        print("an asserted claim FAILED in at least one run")
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        _, _, name, seed, out = sys.argv
        data = run_one(name, int(seed))
        with open(out + ".tmp", "w") as f:
            json.dump(data, f)
        os.replace(out + ".tmp", out)
    else:
        sys.exit(main(sys.argv[1:]))
