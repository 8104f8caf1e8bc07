"""Lesson 06's occupancy explorer: one figure headless, numbers from the occupancy calculator."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from minibn.widgets.gpu_kernels import SMS, busy_sms, occupancy_explorer  # noqa: E402


def test_busy_sms_counts_blocks_and_waves():
    assert busy_sms(64, 1, blocks_per_sm=5) == (64, 64 / (5 * SMS))  # C=64: most SMs idle
    busy, waves = busy_sms(64, 9, blocks_per_sm=5)
    assert busy == SMS and waves == pytest.approx(576 / 660)


def test_explorer_draws_one_figure_headless(monkeypatch):
    monkeypatch.setenv("MINIBN_STATIC", "1")
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(plt.gcf()))
    occupancy_explorer(block=256, registers=42, channels=64, splits=2)
    assert len(shown) == 1
    left, right = shown[0].axes
    assert "40/64 warps (registers)" in left.get_legend().get_texts()[0].get_text()
    assert "128 blocks, 128/132 SMs busy" in right.get_legend().get_texts()[0].get_text()
    plt.close("all")


def test_every_block_size_the_slider_offers_draws():
    # The slider moves in steps of 32; K1's tree only takes powers of two, so the explorer must
    # leave K1's marker out rather than raise (a learner's first nudge, 256 -> 288, did).
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minibn.widgets import gpu_kernels as g

    for block in range(32, 1025, 32):
        g.draw_occupancy(block=block)
        plt.close("all")
    assert "K1" not in g.step_blocks(64, block=288) and "K3" in g.step_blocks(64, block=288)
