// K4: K3's grid split with float4 loads and four Welford accumulators per thread (slice.cuh).
// Little's law: to stream at ~3 TB/s with ~0.6 us of DRAM latency, ~1.8 MB must be in flight,
// ~14 KB per SM; one 4-byte load per thread gives a 512-thread block only 2 KB. A float4 load
// moves 16 bytes per instruction and four independent chains keep more of them outstanding.
// Launch: as K3 (grid = (S, C), block = up to 1024 threads), then bn_stats_k4_finalize.
#include "finalize.cuh"
#include "slice.cuh"
#include "welford_block.cuh"

extern "C" __global__ void bn_stats_k4_partial(const float* __restrict__ x, float* __restrict__ partial,
                                               int N, int C, int HW) {
    int s = blockIdx.x, S = gridDim.x, c = blockIdx.y;
    Welford w = welford_block_merge(welford_thread_slice(x, c, s, S, N, C, HW));
    if (threadIdx.x == 0) {
        float* p = partial + ((long long)c * S + s) * 3;
        p[0] = w.n;
        p[1] = w.mean;
        p[2] = w.m2;
    }
}

extern "C" __global__ void bn_stats_k4_finalize(const float* __restrict__ partial, float* __restrict__ mean,
                                                float* __restrict__ var, int C, int S) {
    finalize_channels(partial, mean, var, C, S);
}
