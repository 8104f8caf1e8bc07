// K5: the training forward pass in two launches, 12 bytes of traffic per element (read x for
// the statistics, read x again and write y), the floor for a tensor too large to keep on chip.
//
// bn_fwd_stats, grid = (S, C): each block writes its Welford partial, then takes a ticket from a
// per-channel counter. The last-block ticket: a block fences after writing its partial and before
// its atomicAdd (release), and the block that draws the last ticket fences after its atomicAdd
// (acquire), so it sees every partial of its channel. Its first warp merges them (lane l takes
// slices l, l + 32, ...; a fixed order, so the same bits on every run), and lane 0 writes mean,
// var and invstd, updates the running statistics and resets the counter for the next launch.
// One launch replaces K3/K4's partial + finalize pair (the ATen/Apex channels-last pattern).
// bn_fwd_apply, grid = (ceil(H*W / 4 / blockDim.x), N*C rows): y = x * scale[c] + shift[c].
#include "finalize.cuh"
#include "slice.cuh"
#include "welford_block.cuh"

extern "C" __global__ void bn_fwd_stats(const float* __restrict__ x, float* __restrict__ partial,
                                        unsigned* __restrict__ counter, float* __restrict__ mean,
                                        float* __restrict__ var, float* __restrict__ invstd,
                                        float* __restrict__ running_mean, float* __restrict__ running_var,
                                        int N, int C, int HW, float eps, float momentum, int update_running) {
    __shared__ int is_last;
    int s = blockIdx.x, S = gridDim.x, c = blockIdx.y;
    Welford w = welford_block_merge(welford_thread_slice(x, c, s, S, N, C, HW));
    if (threadIdx.x == 0) {
        volatile float* p = partial + ((long long)c * S + s) * 3;
        p[0] = w.n;
        p[1] = w.mean;
        p[2] = w.m2;
        __threadfence();  // release: the partial is visible to every block before the ticket is
        is_last = atomicAdd(&counter[c], 1u) == (unsigned)(S - 1);
        if (is_last) __threadfence();  // acquire: and this block sees every released partial
    }
    __syncthreads();
    if (!is_last || threadIdx.x >= 32) return;
    Welford total = merge_partials_warp(partial, c, S);
    if (threadIdx.x != 0) return;
    float v = total.m2 / total.n;
    mean[c] = total.mean;
    var[c] = v;
    invstd[c] = rsqrtf(v + eps);
    if (update_running) {
        // The running variance estimates the population variance: unbiased, n / (n - 1). The rule
        // is minibn.conventions' (update_running_stat, unbiased_variance), which C cannot call;
        // tests/test_bn_conventions.py pins this copy to it.
        running_mean[c] = (1.0f - momentum) * running_mean[c] + momentum * total.mean;
        running_var[c] = (1.0f - momentum) * running_var[c] + momentum * v * total.n / (total.n - 1.0f);
    }
    counter[c] = 0u;
}

extern "C" __global__ void bn_fwd_apply(const float* __restrict__ x, float* __restrict__ y,
                                        const float* __restrict__ mean, const float* __restrict__ invstd,
                                        const float* __restrict__ gamma, const float* __restrict__ beta,
                                        int N, int C, int HW) {
    bool vec = HW % 4 == 0 && ((unsigned long long)x % 16) == 0 && ((unsigned long long)y % 16) == 0;
    for (int row = blockIdx.y; row < N * C; row += gridDim.y) {
        int c = row % C;
        float scale = gamma[c] * invstd[c];
        float shift = beta[c] - mean[c] * scale;
        const float* xr = x + (long long)row * HW;
        float* yr = y + (long long)row * HW;
        if (vec) {
            for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < HW / 4; i += blockDim.x * gridDim.x) {
                float4 f = reinterpret_cast<const float4*>(xr)[i];
                reinterpret_cast<float4*>(yr)[i] =
                    make_float4(f.x * scale + shift, f.y * scale + shift, f.z * scale + shift, f.w * scale + shift);
            }
        } else {
            for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < HW; i += blockDim.x * gridDim.x)
                yr[i] = xr[i] * scale + shift;
        }
    }
}
