// K2: one block per channel, as K1, but each thread keeps a Welford (count, mean, M2) and the
// block merges them with Chan's formula: first within each warp through register shuffles
// (no shared memory, no __syncthreads), then the 32 warp totals through shared memory.
// This is the structure of ATen's batch_norm_collect_statistics_kernel. Stable in float32.
// Launch: grid = C, block = a multiple of 32 (at most 1024), no dynamic shared memory.
#include "welford_block.cuh"

extern "C" __global__ void bn_stats_k2(const float* __restrict__ x, float* __restrict__ mean,
                                       float* __restrict__ var, int N, int C, int HW) {
    int c = blockIdx.x;
    long long m = (long long)N * HW;
    Welford w = {0.0f, 0.0f, 0.0f};
    for (long long j = threadIdx.x; j < m; j += blockDim.x) welford_push(w, x[nchw_offset(j, c, C, HW)]);
    w = welford_block_merge(w);
    if (threadIdx.x == 0) {
        mean[c] = w.mean;
        var[c] = w.m2 / w.n;
    }
}
