// welford_block.cuh: Chan's merge of per-thread Welford summaries across a warp (register
// shuffles) and across a block (shared memory between warps), the structure of ATen's
// batch_norm_collect_statistics_kernel. Any block size up to 1024: the warp count is
// ceil(blockDim.x / 32), and a partial last warp merges only the lanes it has (warp.cuh).
#include "warp.cuh"
#include "welford.cuh"

// Merge across the `lanes` lanes of a warp: 5 shuffle-down steps; lane 0 gets the total.
__device__ __forceinline__ Welford welford_warp_merge(Welford w, int lanes) {
    unsigned mask = lanes_mask(lanes);
    int lane = threadIdx.x & 31;
    for (int offset = 16; offset > 0; offset >>= 1) {
        Welford o;
        o.n = __shfl_down_sync(mask, w.n, offset);
        o.mean = __shfl_down_sync(mask, w.mean, offset);
        o.m2 = __shfl_down_sync(mask, w.m2, offset);
        if (lane + offset < lanes) w = welford_merge(w, o);
    }
    return w;
}

// Merge across a whole block. Warps merge in registers, warp leaders meet in shared memory, warp 0
// merges those. Thread 0 gets the result. Call it once per kernel (its shared slots are reused
// without a barrier before the first write).
__device__ __forceinline__ Welford welford_block_merge(Welford w) {
    __shared__ Welford warp_totals[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int warps = (blockDim.x + 31) / 32;
    w = welford_warp_merge(w, warp_lanes());
    if (lane == 0) warp_totals[warp] = w;
    __syncthreads();
    if (warp == 0) {
        Welford zero = {0.0f, 0.0f, 0.0f};
        w = lane < warps ? warp_totals[lane] : zero;
        w = welford_warp_merge(w, warp_lanes());
    }
    return w;
}
