"""benchmarks/gpu_report.py: exits 0 with a clear message without a GPU; its GPU path runs here as
far as a CPU allows (planning, the correctness and timing code on the CPU executor with NumPy in
CuPy's place and a fake clock, compute-sanitizer's driver, the report), and fully on a GPU."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minibn.cuda.runtime import gpu_available

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("gpu_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_report"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_report", None)


@pytest.mark.skipif(gpu_available(), reason="the no-GPU mode")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "r")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA GPU here" in proc.stdout and "report.json" in proc.stdout
    assert not (tmp_path / "r").exists()  # nothing measured, nothing written


def test_the_plan_covers_the_awkward_shapes_and_fits_the_memory(report):
    cases, skipped = report.plan_checks(free_bytes=80 * 2**30)
    names = " | ".join(c.name for c in cases)
    for what in ("float4", "H*W % 4 != 0", "misaligned", "65535", "2-D", "over 2^31"):
        assert what in names
    huge = next(c for c in cases if c.name == "over 2^31 elements")
    assert np.prod(huge.shape) > 2**31 and huge.steps == ("K5", "K6") and not skipped
    assert np.prod(next(c for c in cases if "65535" in c.name).shape[:2]) > 65535
    assert all(c.shape[2] * c.shape[3] % 4 for c in cases if "% 4" in c.name)
    small = report.plan_checks(free_bytes=16 * 2**30)
    assert all("2^31" not in c.name for c in small[0]) and "GiB free" in small[1][0][1]
    assert [c.steps for c in report.plan_checks(free_bytes=30 * 2**30)[0] if "2^31" in c.name] == [("K5",)]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_deadline_turns_late_work_into_skipped(report):
    clock = FakeClock()
    deadline = report.Deadline(100, clock)
    clock.now = 95
    assert not deadline.allows(10) and deadline.left() == 5
    results, skipped = report.run_checks(np, report.plan_checks(0)[0], deadline)
    assert results == [] and all(why == "time budget" for _, why in skipped) and len(skipped) == 6
    assert report.run_timings(np, deadline) == ({}, [("timings", "time budget")])


def test_correctness_checks_run_on_the_cpu_executor(report):
    cases = [report.CheckCase("small, float4 path", (3, 4, 4, 4), ("K2", "K5", "K6"), splits=2, block=64),
             report.CheckCase("misaligned", (2, 3, 4, 4), ("K4", "K6"), layout="misaligned", splits=3, block=48)]
    results, skipped = report.run_checks(np, cases, report.Deadline(600), log=lambda *_: None)
    assert not skipped and [(r["case"], r["step"]) for r in results] == [
        ("small, float4 path", "K2"), ("small, float4 path", "K5"), ("small, float4 path", "K6"),
        ("misaligned", "K4"), ("misaligned", "K6")]
    assert all(r["ok"] for r in results), results
    assert all(r["error"] < r["tolerance"] for r in results)


def test_a_wrong_answer_is_reported_not_hidden(report, monkeypatch):
    from minibn.cuda import progression as P

    real = P.forward
    monkeypatch.setattr(P, "forward", lambda *a, **k: (lambda out: (out[0] + 1e-2,) + tuple(out[1:]))(real(*a, **k)))
    results, _ = report.run_checks(np, [report.CheckCase("c", (2, 3, 4, 4), ("K2",), block=64)],
                                   report.Deadline(600), log=lambda *_: None)
    assert results[0]["ok"] is False and results[0]["detail"] == "output off"


def test_determinism_compares_bits(report):
    out, _ = report.run_determinism(np, report.Deadline(600), repeats=3, shape=(2, 3, 4, 4))
    assert [(r["step"], r["identical"]) for r in out] == [("K5 forward", True), ("K6 backward", True)]


class FakeTimer:
    """ms per call: the copy 1.0, each CUDA C step 2.0, a phase 0.5 (calls counted)."""

    launches = 20

    def __init__(self):
        self.calls = 0

    def __call__(self, fn, launches=None, repeats=None):
        fn()
        self.calls += 1
        return {"ms": 1.0 if self.calls == 1 else (2.0 if self.calls % 2 == 0 else 0.5), "launches": 20}


def test_timings_drive_every_step_from_the_table(report):
    timer = FakeTimer()
    timings, skipped = report.run_timings(np, report.Deadline(600), log=lambda *_: None, timer=timer,
                                          shape=(2, 3, 4, 4), copy=lambda: None)
    names = [r["name"].split(":")[0] for r in timings["rows"] if r["phase"] is None]
    assert names == ["copy (device to device)", "forward K0", "forward K1", "forward K2", "forward K3",
                     "forward K4", "forward K5", "backward K6"]
    phases = {r["phase"] for r in timings["rows"] if r["name"].startswith("backward K6") and r["phase"]}
    assert phases == {"reduce", "elementwise"}
    assert ("timing L0", "CuPy's own kernels need a GPU") in skipped
    assert any(what == "torch comparison" for what, _ in skipped)  # this torch has no CUDA
    copy = timings["rows"][0]
    assert copy["gbps"] == pytest.approx(8 * 96 / 1e-3 / 1e9) and timings["copy_gbps"] == copy["gbps"]



def test_bench_kernels_prints_the_reports_whole_step_rows(report):
    spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT.parent / "bench_kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.gpu_report is report  # one timing loop: the report's
    timings, skipped = report.run_timings(np, report.Deadline(600), log=lambda *_: None, timer=FakeTimer(),
                                          shape=(2, 3, 4, 4), copy=lambda: None)
    lines = bench.table(timings, skipped)
    assert lines[0] == f"copy bandwidth measured: {timings['copy_gbps']:.0f} GB/s"
    steps = [line.split(":")[0].split("  ")[0] for line in lines if line.startswith(("forward", "backward", "copy ("))]
    assert steps == ["copy (device to device)", "forward K0", "forward K1", "forward K2", "forward K3",
                     "forward K4", "forward K5", "backward K6"]  # per-phase rows left to the report
    assert "skipped timing L0: CuPy's own kernels need a GPU" in lines

def _fake_report(report):
    from minibn.cuda import gpu_bench as gb

    elements = int(np.prod(report.TIMING_SHAPE))
    copy_gbps = gb.bandwidth(8, elements, 0.137)  # ~3.0 TB/s, an H100's copy
    rows = [gb.row("copy (device to device)", "copy", "copy", 0.137, elements, copy_gbps, launches=20),
            gb.row("forward K5: fused", "ours", "forward", 0.240, elements, copy_gbps, 0.230, launches=20),
            gb.row("forward K5: fused", "ours", "forward", 0.080, elements, copy_gbps, phase="stats"),
            gb.row("backward K6: two passes", "ours", "backward", 0.420, elements, copy_gbps, 0.400),
            gb.row("forward torch cuDNN", "torch", "forward", 0.230, elements, copy_gbps, 0.230)]
    return {"created": "2026-01-01T00:00:00+00:00", "budget_s": 480, "duration_s": 301.0,
            "device": {"name": "NVIDIA H100 80GB HBM3", "SMs": 132},
            "checks": [{"case": "2-D input (N, C)", "shape": [4096, 32], "step": "K5", "ok": True, "error": 3e-7,
                        "tolerance": 1e-4},
                       {"case": "misaligned view", "shape": [4, 8, 16, 16], "step": "K4", "ok": False,
                        "detail": "output off", "error": 0.5, "tolerance": 1e-4}],
            "determinism": [{"step": "K5 forward", "identical": True}],
            "timings": {"shape": list(report.TIMING_SHAPE), "copy_gbps": copy_gbps, "launches": 20, "rows": rows},
            "goals": report.goals(rows), "sanitizer": [{"tool": "racecheck", "ok": True,
                                                        "summary": "ERROR SUMMARY: 0 errors"}],
            "skipped": [("over 2^31 elements", "needs 24 GiB free")]}


def test_goals_and_the_numbers_behind_them(report):
    r = _fake_report(report)
    k5 = r["timings"]["rows"][1]
    assert k5["gbps"] == pytest.approx(12 * 51380224 / 0.240e-3 / 1e9)
    assert k5["pct_copy"] == pytest.approx(100 * (12 / 0.240) / (8 / 0.137))
    assert k5["x_reference"] == pytest.approx(0.240 / 0.230)
    verdicts = {g["goal"]: g["met"] for g in r["goals"]}
    assert verdicts == {"K5 forward, % of copy bandwidth": True,  # 85.6 %
                        "K5 forward, time / cuDNN": True,  # 1.04x
                        "K6 backward, % of copy bandwidth": True}  # 81.5 %
    assert report.goals([])[0]["met"] is None  # unmeasured is not "failed"


def test_the_report_is_written_as_json_and_markdown(report, tmp_path):
    json_path, md_path = report.write_report(_fake_report(report), tmp_path)
    data = json.loads(json_path.read_text())
    assert data["device"]["name"].startswith("NVIDIA H100") and len(data["timings"]["rows"]) == 5
    md = md_path.read_text()
    assert "# Lesson 06 kernels on NVIDIA H100 80GB HBM3" in md
    assert "| forward K5: fused | all | 0.240 | 2569 | 85.6 | 1.04 |" in md
    assert "| forward K5: fused | stats | 0.080 |" in md
    assert "FAIL: output off" in md and "| K5 forward, time / cuDNN | 1.04 | <= 1.1 | yes |" in md
    assert "- racecheck: ERROR SUMMARY: 0 errors" in md and "- over 2^31 elements: needs 24 GiB free" in md


def test_compute_sanitizer_is_driven_per_tool_and_its_verdict_kept(report):
    assert report.run_sanitizer(report.Deadline(600), which=lambda _: None)[0][0]["summary"].startswith(
        "not run: compute-sanitizer not found")
    seen = []

    def fake_run(cmd, **kwargs):
        seen.append(cmd)
        ok = "memcheck" in cmd
        return subprocess.CompletedProcess(cmd, 0 if ok else 17, stdout="", stderr=(
            "========= ERROR SUMMARY: 0 errors" if ok else "========= Race reported\n========= ERROR SUMMARY: 2 errors"))

    results, _ = report.run_sanitizer(report.Deadline(600), which=lambda _: "/usr/bin/compute-sanitizer", run=fake_run)
    assert [(r["tool"], r["ok"], r["summary"]) for r in results] == [
        ("memcheck", True, "========= ERROR SUMMARY: 0 errors"),
        ("racecheck", False, "========= ERROR SUMMARY: 2 errors"),
        ("synccheck", False, "========= ERROR SUMMARY: 2 errors")]
    assert all(c[1:3] == ["--tool", c[2]] and c[-1] == "--sanitizer-target" for c in seen)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU (CuPy)")
def test_the_whole_report_on_a_gpu(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--budget", "480"],
                          capture_output=True, text=True, timeout=540)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["checks"] and all(c["ok"] for c in data["checks"]), proc.stdout[-3000:]
    assert all(r["identical"] for r in data["determinism"])
    assert data["timings"]["copy_gbps"] > 0 and data["duration_s"] < 480
    assert all(q["ok"] for q in data["sync_batchnorm"]["quantities"]), data["sync_batchnorm"]
    assert proc.returncode == 0


# The SyncBatchNorm section's own code (two gloo processes, the per-rank run, the comparison)
# runs here on the CPU; only torch.nn.SyncBatchNorm itself needs the GPU. Its peers here: minibn's
# own module (everything agrees) and torch's per-process BatchNorm2d (statistics of one share,
# which the comparison must report).
def _sync_section(report, monkeypatch, peer):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # spawned processes get this sys.path, so import gpu_report
    section, skipped = report.run_sync_batchnorm(report.Deadline(600), device="cpu", peer=peer,
                                                 log=lambda *_: None)
    assert skipped == []
    return {q["name"]: q for q in section["quantities"]}


def test_the_sync_batchnorm_section_agrees_with_an_equal_peer(report, monkeypatch):
    quantities = _sync_section(report, monkeypatch, "minibn")
    assert set(quantities) == {"output", "input gradient", "weight gradient", "bias gradient",
                               "running_mean", "running_var", "num_batches_tracked"}
    assert all(q["ok"] and q["error"] == 0.0 for q in quantities.values()), quantities


@pytest.mark.slow
def test_the_sync_batchnorm_section_reports_a_peer_that_does_not_synchronize(report, monkeypatch):
    quantities = _sync_section(report, monkeypatch, "local")
    for name in ("output", "input gradient", "running_mean", "running_var"):
        assert not quantities[name]["ok"] and quantities[name]["error"] > 1e-3, quantities
    assert quantities["num_batches_tracked"]["ok"]
    md = report.render_markdown({"created": "now", "duration_s": 1, "budget_s": 2,
                                 "sync_batchnorm": report.compare_sync(
                                     [{"minibn": [{"output": np.ones(2)}], "peer": [{"output": np.ones(2)}]}],
                                     "torch.nn.SyncBatchNorm")})
    assert "## SyncBatchNorm vs torch.nn.SyncBatchNorm" in md and "| output | 0.00e+00 | pass |" in md
