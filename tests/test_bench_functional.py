"""`make bench` keeps working: the functional benchmark runs end to end on a tiny shape."""
import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_functional.py"


def test_bench_measures_both_sides_and_the_copy():
    spec = importlib.util.spec_from_file_location("bench_functional", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.bench((4, 3, 2, 2), np.float32, repeats=2, inner=1)
    assert set(r) == {"minibn", "torch", "ratio", "gbps", "torch_gbps", "copy_gbps"}
    assert all(v > 0 for v in r.values())
    assert r["ratio"] == r["minibn"] / r["torch"]

