// welford_block.cuh: Chan's merge of per-thread Welford summaries across a warp (register
// shuffles) and across a block (shared memory between warps), the structure of ATen's
// batch_norm_collect_statistics_kernel.
#include "welford.cuh"

// Merge across the 32 lanes of a warp: 5 XOR steps, after which every lane holds the total.
__device__ __forceinline__ Welford welford_warp_merge(Welford w) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        Welford o;
        o.n = __shfl_xor_sync(0xffffffffu, w.n, offset);
        o.mean = __shfl_xor_sync(0xffffffffu, w.mean, offset);
        o.m2 = __shfl_xor_sync(0xffffffffu, w.m2, offset);
        w = welford_merge(w, o);
    }
    return w;
}

// Merge across a whole block (blockDim.x a multiple of 32, at most 1024). Warps merge in
// registers, warp leaders meet in shared memory, warp 0 merges those. Thread 0 gets the result.
__device__ __forceinline__ Welford welford_block_merge(Welford w) {
    __shared__ Welford warp_totals[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    w = welford_warp_merge(w);
    if (lane == 0) warp_totals[warp] = w;
    __syncthreads();
    if (warp == 0) {
        Welford zero = {0.0f, 0.0f, 0.0f};
        w = lane < (int)(blockDim.x / 32) ? warp_totals[lane] : zero;
        w = welford_warp_merge(w);
    }
    return w;
}
