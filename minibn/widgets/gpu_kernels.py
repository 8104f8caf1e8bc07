"""Explorer for lesson 06: how block size, registers and the grid split decide how much of a GPU
a BatchNorm statistics kernel can keep busy (an H100: 132 SMs, 64 resident warps per SM)."""
from __future__ import annotations

from minibn.cuda.device import H100_SM_COUNT
from minibn.cuda.nvrtc import ARCHS, occupancy
from minibn.widgets import explore

# The figure explains an H100, whatever machine draws it.
SMS = H100_SM_COUNT


def busy_sms(channels, splits, blocks_per_sm, sms=SMS):
    """SMs with at least one block, and waves, for a grid of ``channels * splits`` blocks."""
    blocks = channels * splits
    return min(sms, blocks), blocks / (blocks_per_sm * sms)


def step_blocks(channels, block=256, batch=256, hw=56 * 56, sms=SMS):
    """``{step: blocks}`` of each CUDA C step's statistics launch (its first kernel) at
    ``batch x channels x hw``, from the progression's own launch table; steps that cannot launch
    with this block size are left out."""
    from minibn.cuda.progression import STEPS

    found = {}
    for step in STEPS:
        if "stats" not in step.modes:
            continue
        try:
            plan = step.launch(batch, channels, hw, block=block, mode="stats", sm_count=sms)
        except ValueError:  # this step refuses the block size (K1's tree needs a power of two)
            continue
        first = plan.launches[0]
        grid = first.grid + (1,) * (3 - len(first.grid))
        found[step.key] = grid[0] * grid[1] * grid[2]
    return found


def draw_occupancy(block=256, registers=40, channels=64, splits=1, arch="sm_90"):
    """Left: resident warps per SM against the block size at this register count. Right: how many
    of the 132 SMs a grid of ``channels * splits`` blocks keeps busy as the split grows, with
    where each step of the progression stands."""
    import matplotlib.pyplot as plt

    max_warps = ARCHS[arch].max_warps
    sizes = list(range(32, 1025, 32))
    warps = [occupancy(registers, b, 0, arch)[0] for b in sizes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(sizes, [w / max_warps for w in warps], color="tab:blue")
    chosen, limiter = occupancy(registers, block, 0, arch)
    left.scatter([block], [chosen / max_warps], color="tab:red", zorder=3,
                 label=f"block {block}: {chosen}/{max_warps} warps ({limiter})")
    left.set(xlabel="threads per block", ylabel="occupancy (resident warps / 64)", ylim=(0, 1.05),
             title=f"{registers} registers per thread, {arch}")
    left.legend(loc="lower right", fontsize=8)

    blocks_per_sm = max(1, chosen // -(-block // 32))
    split_range = list(range(1, 33))
    busy = [busy_sms(channels, s, blocks_per_sm)[0] for s in split_range]
    right.plot(split_range, busy, color="tab:green")
    now, waves = busy_sms(channels, splits, blocks_per_sm)
    right.scatter([splits], [now], color="tab:red", zorder=3,
                  label=f"S={splits}: {channels * splits} blocks, {now}/{SMS} SMs busy, {waves:.2f} waves")
    steps = step_blocks(channels, block)
    for key, blocks in steps.items():
        if key in ("K1", "K3"):  # K1/K2 and K3-K5 share a grid: one marker each
            s = max(1, blocks // channels)
            right.annotate(f"{key}{'-K2' if key == 'K1' else '-K5'}", (s, min(SMS, blocks)), fontsize=8,
                           textcoords="offset points", xytext=(4, -10), color="grey")
    right.axhline(SMS, color="grey", lw=0.8, ls="--")
    right.set(xlabel="blocks per channel S (grid split)", ylabel="SMs with work", ylim=(0, SMS * 1.1),
              title=f"C = {channels} channels (steps at 256x{channels}x56x56)")
    right.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    plt.show()


def occupancy_explorer(block=256, registers=40, channels=64, splits=1):
    """Sliders for block size, registers per thread, channels and split (static when headless)."""
    import ipywidgets as w

    explore(
        draw_occupancy,
        block=w.IntSlider(value=block, min=32, max=1024, step=32, description="block"),
        registers=w.IntSlider(value=registers, min=16, max=128, step=2, description="registers"),
        channels=w.IntSlider(value=channels, min=1, max=512, description="C"),
        splits=w.IntSlider(value=splits, min=1, max=32, description="split S"),
        arch=w.Dropdown(options=list(ARCHS), value="sm_90", description="arch"),
    )
