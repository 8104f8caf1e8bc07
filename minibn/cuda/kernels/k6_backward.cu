// K6: the training backward pass in two launches, 20 bytes per element (read x and dy for the
// sums, read them again and write dx). With x_hat = (x - mean) * invstd and m = N*H*W:
//   dbeta = sum(dy),  dgamma = sum(dy * x_hat) = invstd * sum(dy * (x - mean))
//   dx    = gamma * invstd * (dy - dbeta / m - x_hat * dgamma / m)
// bn_bwd_reduce, grid = (S, C): both sums in one pass (float4 loads when rows are 16-byte
// aligned), reduced as a pair (two shuffles per step), partials per slice and K5's last-block
// ticket (fence, atomicAdd, fence). bn_bwd_elemt: dx, one row per grid y, float4 when aligned.
// Keeping the sums apart from dx is what lets SyncBatchNorm all-reduce them between the launches.
#include "slice.cuh"
#include "warp.cuh"

__device__ __forceinline__ bool aligned16(const void* p) { return ((unsigned long long)p % 16) == 0; }

extern "C" __global__ void bn_bwd_reduce(const float* __restrict__ dy, const float* __restrict__ x,
                                         const float* __restrict__ mean, const float* __restrict__ invstd,
                                         float* __restrict__ partial, unsigned* __restrict__ counter,
                                         float* __restrict__ dgamma, float* __restrict__ dbeta,
                                         int N, int C, int HW) {
    __shared__ float2 warp_sums[32];
    __shared__ int is_last;
    int s = blockIdx.x, S = gridDim.x, c = blockIdx.y;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
    float mu = mean[c];
    float2 v = make_float2(0.0f, 0.0f);
    long long begin, end;
    if (HW % 4 == 0 && aligned16(dy) && aligned16(x)) {
        const float4* dy4 = reinterpret_cast<const float4*>(dy);
        const float4* x4 = reinterpret_cast<const float4*>(x);
        slice_bounds((long long)N * (HW / 4), s, S, &begin, &end);
        for_each_in_slice(begin, end, c, C, HW / 4, [&](long long o) {
            float4 g = dy4[o], a = x4[o];
            v.x += (g.x + g.y) + (g.z + g.w);
            v.y += (g.x * (a.x - mu) + g.y * (a.y - mu)) + (g.z * (a.z - mu) + g.w * (a.w - mu));
        });
    } else {
        slice_bounds((long long)N * HW, s, S, &begin, &end);
        for_each_in_slice(begin, end, c, C, HW, [&](long long o) {
            float g = dy[o];
            v.x += g;
            v.y += g * (x[o] - mu);
        });
    }
    v = warp_sum2(v, warp_lanes());
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < warps ? warp_sums[lane] : make_float2(0.0f, 0.0f);
        v = warp_sum2(v, warp_lanes());
        if (lane == 0) {
            volatile float* p = partial + ((long long)c * S + s) * 2;
            p[0] = v.x;
            p[1] = v.y;
            __threadfence();  // release, as in K5
            is_last = atomicAdd(&counter[c], 1u) == (unsigned)(S - 1);
            if (is_last) __threadfence();  // acquire
        }
    }
    __syncthreads();
    if (!is_last || warp != 0) return;
    // The first warp adds the S partial pairs: lane l takes slices l, l + 32, ..., then a shuffle
    // tree; a fixed order, so the same bits on every run.
    float2 t = make_float2(0.0f, 0.0f);
    for (int k = lane; k < S; k += warp_lanes()) {
        volatile const float* p = partial + ((long long)c * S + k) * 2;
        t.x += p[0];
        t.y += p[1];
    }
    t = warp_sum2(t, warp_lanes());
    if (lane == 0) {
        dbeta[c] = t.x;
        dgamma[c] = t.y * invstd[c];
        counter[c] = 0u;
    }
}

extern "C" __global__ void bn_bwd_elemt(const float* __restrict__ dy, const float* __restrict__ x,
                                        const float* __restrict__ mean, const float* __restrict__ invstd,
                                        const float* __restrict__ gamma, const float* __restrict__ dgamma,
                                        const float* __restrict__ dbeta, float* __restrict__ dx,
                                        int N, int C, int HW) {
    float inv_m = 1.0f / (float)((long long)N * HW);
    bool vec = HW % 4 == 0 && aligned16(dy) && aligned16(x) && aligned16(dx);
    for (int row = blockIdx.y; row < N * C; row += gridDim.y) {
        int c = row % C;
        float is = invstd[c], k = gamma[c] * is, mu = mean[c];
        float mean_dy = dbeta[c] * inv_m, mean_dy_xhat = dgamma[c] * inv_m;
        long long base = (long long)row * HW;
        if (vec) {
            const float4* dy4 = reinterpret_cast<const float4*>(dy + base);
            const float4* x4 = reinterpret_cast<const float4*>(x + base);
            float4* dx4 = reinterpret_cast<float4*>(dx + base);
            for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < HW / 4; i += blockDim.x * gridDim.x) {
                float4 g = dy4[i], a = x4[i];
                dx4[i] = make_float4(k * (g.x - mean_dy - (a.x - mu) * is * mean_dy_xhat),
                                     k * (g.y - mean_dy - (a.y - mu) * is * mean_dy_xhat),
                                     k * (g.z - mean_dy - (a.z - mu) * is * mean_dy_xhat),
                                     k * (g.w - mean_dy - (a.w - mu) * is * mean_dy_xhat));
            }
        } else {
            for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < HW; i += blockDim.x * gridDim.x) {
                float xhat = (x[base + i] - mu) * is;
                dx[base + i] = k * (dy[base + i] - mean_dy - xhat * mean_dy_xhat);
            }
        }
    }
}
