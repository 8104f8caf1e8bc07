// K2: one block per channel, as K1, but each thread keeps a Welford (count, mean, M2) and the
// block merges them with Chan's formula: first within each warp through register shuffles
// (no shared memory, no __syncthreads), then the warp totals through shared memory.
// This is the structure of ATen's batch_norm_collect_statistics_kernel. Stable in float32.
// Launch: grid = C, block = any size up to 1024 (a partial last warp merges the lanes it has),
// no dynamic shared memory.
#include "slice.cuh"
#include "welford_block.cuh"

extern "C" __global__ void bn_stats_k2(const float* __restrict__ x, float* __restrict__ mean,
                                       float* __restrict__ var, int N, int C, int HW) {
    int c = blockIdx.x;
    Welford w = welford_block_merge(welford_slice_scalar(x, c, 0, 1, N, C, HW));
    if (threadIdx.x == 0) {
        mean[c] = w.mean;
        var[c] = w.m2 / w.n;
    }
}
