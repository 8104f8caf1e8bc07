"""Command line: ``python -m minibn.experiments NAME|all [--fast|--full] [--seed S] [--out DIR]``.

Runs the experiment(s), writes ``<name>.json`` and ``<name>-<i>.png`` per experiment into
``--out``, then (re)writes ``report.md`` there from every result the folder holds.
``--check`` exits 1 when an asserted claim failed.

``python -m minibn.experiments calibrate NAME|all --seeds 0-19`` measures every criterion over
seeds and CPU code paths (see ``minibn.experiments.calibrate``).
"""
from __future__ import annotations

import argparse
import sys
import time

from minibn.experiments import EXPERIMENTS, load


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m minibn.experiments",
                                description="Reproduce the BatchNorm papers' claims at small scale.")
    p.add_argument("name", choices=[*EXPERIMENTS, "all"], help="experiment to run, or all")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fast", dest="fast", action="store_true", default=True,
                      help="small sizes, about a minute each on 2 cores (default)")
    mode.add_argument("--full", dest="fast", action="store_false", help="the papers' sizes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="build/experiments", help="output folder (default %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars")
    p.add_argument("--check", action="store_true", help="exit 1 if an asserted claim failed")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["calibrate"]:
        from minibn.experiments.calibrate import main as calibrate

        return calibrate(argv[1:])
    args = parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minibn.experiments.report import write_report

    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    notes, failed = {}, []
    for name in names:
        try:
            module = load(name)
        except ModuleNotFoundError as err:
            if err.name != EXPERIMENTS[name]:
                raise
            notes[name] = "not implemented yet (module missing)"
            print(f"{name}: skipped, {notes[name]}")
            continue
        start = time.monotonic()
        result = module.run(module.config(fast=args.fast, seed=args.seed), progress=args.progress)
        figures = module.plot(result)
        paths = result.save(args.out, figures)
        plt.close("all")
        verdicts = [c.passed for c in result.claims]
        failed += [name] * verdicts.count(False)
        print(f"{name}: {time.monotonic() - start:.0f} s, claims passed {verdicts.count(True)}, "
              f"failed {verdicts.count(False)}, reported {verdicts.count(None)}; wrote {paths[0]}")
    print("report:", write_report(args.out, notes))
    if failed:
        # A failed claim is a finding to read in the report, not a crash, unless --check.
        print("claims that FAILED in:", ", ".join(sorted(set(failed))))
        return 1 if args.check else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
