// finalize.cuh: merging a channel's S partial Welford summaries (n, mean, M2), stored channel-
// major at partial[(c * S + s) * 3], the second half of every grid-split statistics kernel.
#include "warp.cuh"
#include "welford.cuh"

// volatile: in K5's last block the partials come from other blocks of the same launch, and a
// volatile load cannot be served from a stale copy in this SM's L1 cache.
__device__ __forceinline__ Welford load_partial(const float* partial, int c, int s, int S) {
    volatile const float* p = partial + ((long long)c * S + s) * 3;
    Welford w = {p[0], p[1], p[2]};
    return w;
}

// One thread merges the S partials in slice order (K3's and K4's finalize kernels).
__device__ __forceinline__ Welford merge_partials(const float* partial, int c, int S) {
    Welford w = {0.0f, 0.0f, 0.0f};
    for (int s = 0; s < S; ++s) w = welford_merge(w, load_partial(partial, c, s, S));
    return w;
}

// The calling warp merges them: lane l takes slices l, l + 32, ... in order, then the lanes merge
// in a shuffle tree; lane 0 gets the total. S serial merges become ~S/32 + 5 (K5's last block).
// The order of the float operations depends only on S, so the result is the same on every run.
__device__ __forceinline__ Welford merge_partials_warp(const float* partial, int c, int S) {
    int lanes = warp_lanes(), lane = threadIdx.x & 31;
    Welford w = {0.0f, 0.0f, 0.0f};
    for (int s = lane; s < S; s += lanes) w = welford_merge(w, load_partial(partial, c, s, S));
    unsigned mask = lanes_mask(lanes);
    for (int offset = 16; offset > 0; offset >>= 1) {
        Welford o;
        o.n = __shfl_down_sync(mask, w.n, offset);
        o.mean = __shfl_down_sync(mask, w.mean, offset);
        o.m2 = __shfl_down_sync(mask, w.m2, offset);
        if (lane + offset < lanes) w = welford_merge(w, o);
    }
    return w;
}

// K3/K4's finalize kernels: thread c writes channel c's mean and biased variance.
__device__ __forceinline__ void finalize_channels(const float* __restrict__ partial, float* __restrict__ mean,
                                                  float* __restrict__ var, int C, int S) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    Welford w = merge_partials(partial, c, S);
    mean[c] = w.mean;
    var[c] = w.m2 / w.n;
}
