// K3: split each channel over S blocks, so C*S blocks fill the GPU even when C is small
// (C = 64 gives 64 blocks for 132 SMs under K1/K2; S = 9 gives 576). Block (s, c) summarizes
// its slice of the channel with Welford and writes a partial (n, mean, M2); a second, tiny kernel
// merges each channel's S partials. A grid-wide reduction in two launches.
// Launch: bn_stats_k3_partial grid = (S, C), block = up to 1024 threads;
//         bn_stats_k3_finalize grid = ceil(C / blockDim.x), partial holds C * S * 3 floats.
#include "finalize.cuh"
#include "slice.cuh"
#include "welford_block.cuh"

extern "C" __global__ void bn_stats_k3_partial(const float* __restrict__ x, float* __restrict__ partial,
                                               int N, int C, int HW) {
    int s = blockIdx.x, S = gridDim.x, c = blockIdx.y;
    Welford w = welford_block_merge(welford_slice_scalar(x, c, s, S, N, C, HW));
    if (threadIdx.x == 0) {
        float* p = partial + ((long long)c * S + s) * 3;
        p[0] = w.n;
        p[1] = w.mean;
        p[2] = w.m2;
    }
}

extern "C" __global__ void bn_stats_k3_finalize(const float* __restrict__ partial, float* __restrict__ mean,
                                                float* __restrict__ var, int C, int S) {
    finalize_channels(partial, mean, var, C, S);
}
