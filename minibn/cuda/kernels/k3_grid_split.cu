// K3: split each channel over S blocks, so C*S blocks fill the GPU even when C is small
// (C = 64 gives 64 blocks for 132 SMs under K1/K2; S = 8 gives 512). Block (s, c) summarizes
// its slice of the channel with Welford and writes a partial (n, mean, M2); a second, tiny kernel
// merges each channel's S partials. A grid-wide reduction in two launches.
// Launch: bn_stats_k3_partial grid = (S, C), block = a multiple of 32;
//         bn_stats_k3_finalize grid = ceil(C / blockDim.x), partial holds C * S * 3 floats.
#include "welford_block.cuh"

extern "C" __global__ void bn_stats_k3_partial(const float* __restrict__ x, float* __restrict__ partial,
                                               int N, int C, int HW) {
    int s = blockIdx.x, S = gridDim.x, c = blockIdx.y;
    long long m = (long long)N * HW;
    long long chunk = (m + S - 1) / S;
    long long begin = s * chunk, end = begin + chunk < m ? begin + chunk : m;
    Welford w = {0.0f, 0.0f, 0.0f};
    for (long long j = begin + threadIdx.x; j < end; j += blockDim.x) welford_push(w, x[nchw_offset(j, c, C, HW)]);
    w = welford_block_merge(w);
    if (threadIdx.x == 0) {
        float* p = partial + ((long long)c * S + s) * 3;
        p[0] = w.n;
        p[1] = w.mean;
        p[2] = w.m2;
    }
}

extern "C" __global__ void bn_stats_k3_finalize(const float* __restrict__ partial, float* __restrict__ mean,
                                                float* __restrict__ var, int C, int S) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    Welford w = {0.0f, 0.0f, 0.0f};
    for (int s = 0; s < S; ++s) {
        const float* p = partial + ((long long)c * S + s) * 3;
        Welford o = {p[0], p[1], p[2]};
        w = welford_merge(w, o);
    }
    mean[c] = w.mean;
    var[c] = w.m2 / w.n;
}
