"""Calibration: seeds, the per-check table and its margins, and a real run on both CPU paths."""
import math

import pytest

from minibn.experiments import calibrate


def _run(values, asserted=True):
    return {"seconds": 1.0, "claims": [{"label": "Z1", "passed": True if asserted else None,
                                        "checks": [{"statistic": "ratio", "value": v, "op": ">=",
                                                    "threshold": 3.0} for v in values]}]}


def test_parse_seeds():
    assert calibrate.parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert calibrate.parse_seeds("5") == [5]


def test_table_reports_spread_worst_margin_and_failures():
    runs = {("native", 0): _run([6.0]), ("native", 1): _run([4.5]), ("avx2", 2): _run([2.0])}
    (row,) = calibrate.table(runs)
    assert (row["min"], row["median"], row["max"]) == (2.0, 4.5, 6.0)
    assert row["fails"] == 1 and row["runs"] == 3 and row["asserted"]
    assert row["margin"] == "-1 (-33%)"
    runs[("avx2", 2)] = _run([3.6])
    assert calibrate.table(runs)[0]["margin"] == "+0.6 (+20%)"
    text = calibrate.markdown("tiny", runs, calibrate.table(runs))
    assert "avx2 seeds 2; native seeds 0-1" in text
    assert "| Z1 | ratio | >= 3 | 3.6 | 4.5 | 6 | +0.6 (+20%) | 0/3 | yes |" in text


def test_cached_runs_are_rejudged_with_the_current_thresholds():
    from minibn.experiments import e7_convnet as e7

    cfg = e7.config(seed=0, lrs=[])
    summary = {"track_max_abs_loss_gap": 5e-8, "track_max_abs_weight_gap": 1e-12,
               "best_steps_bn": None, "best_steps_plain": None}
    stale = {"seconds": 1.0, "config": cfg, "summary": summary,
             "claims": [{"label": "T1", "passed": False, "checks": []}]}
    (t1,) = calibrate.rejudge("convnet", stale)["claims"]
    assert t1["label"] == "T1" and t1["passed"] is True and t1["checks"][0]["value"] == 5e-8
    assert calibrate.rejudge("convnet", {"claims": []}) == {"claims": []}, "old caches stay"


def test_update_docs_replaces_only_its_own_block(tmp_path):
    doc = tmp_path / "r.md"
    doc.write_text("# E\n<!-- calibration:tiny -->\nafter\n## F\n")
    calibrate.update_docs(doc, "tiny", "| table 1 |\n")
    calibrate.update_docs(doc, "tiny", "| table 2 |\n")
    assert doc.read_text() == ("# E\n<!-- calibration:tiny -->\n| table 2 |\n"
                               "<!-- /calibration:tiny -->\nafter\n## F\n")
    with pytest.raises(ValueError, match="no line '<!-- calibration:other -->'"):
        calibrate.update_docs(doc, "other", "x")


def test_a_missing_value_is_a_failure_with_no_margin():
    runs = {("native", 0): _run([None]), ("native", 1): _run([5.0])}
    (row,) = calibrate.table(runs)
    assert row["fails"] == 1 and row["margin"].startswith("n/a")
    assert not math.isnan(row["max"])


def test_the_avx2_path_switches_every_library_s_kernels():
    env = calibrate.CPU_PATHS["avx2"]
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert env["OPENBLAS_CORETYPE"] == "Haswell" and "X86_V4" in env["NPY_DISABLE_CPU_FEATURES"]
    assert calibrate.CPU_PATHS["native"] == {}


@pytest.mark.slow
def test_calibrating_the_tracking_claim_on_both_paths(tmp_path, capsys):
    out = tmp_path / "cal"
    args = ["convnet", "--seeds", "4", "--paths", "native,avx2", "--out", str(out), "--check"]
    assert calibrate.main(args) == 0
    assert "2 runs to do" in capsys.readouterr().out
    assert (out / "convnet" / "avx2" / "seed-4.json").exists()
    table = (out / "convnet.md").read_text()
    assert "| T1 | max \\|loss gap\\| | <= 1e-07 |" in table and "0/2 | yes |" in table
    assert calibrate.main(args) == 0
    assert "runs to do" not in capsys.readouterr().out, "cached runs must not run again"
