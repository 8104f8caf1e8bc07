// K6: the training backward pass in two launches, 20 bytes per element (read x and dy for the
// sums, read them again and write dx). With x_hat = (x - mean) * invstd and m = N*H*W:
//   dbeta = sum(dy),  dgamma = sum(dy * x_hat) = invstd * sum(dy * (x - mean))
//   dx    = gamma * invstd * (dy - dbeta / m - x_hat * dgamma / m)
// bn_bwd_reduce, grid = (S, C): both sums in one pass, reduced as a pair (two shuffles per step),
// partials per slice and the last-block ticket of K5. bn_bwd_elemt: dx, one row per grid y.
// Keeping the sums apart from dx is what lets SyncBatchNorm all-reduce them between the launches.

extern "C" __global__ void bn_bwd_reduce(const float* __restrict__ dy, const float* __restrict__ x,
                                         const float* __restrict__ mean, const float* __restrict__ invstd,
                                         float* __restrict__ partial, unsigned* __restrict__ counter,
                                         float* __restrict__ dgamma, float* __restrict__ dbeta,
                                         int N, int C, int HW) {
    __shared__ float2 warp_sums[32];
    __shared__ int is_last;
    int s = blockIdx.x, S = gridDim.x, c = blockIdx.y;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    long long m = (long long)N * HW;
    long long chunk = (m + S - 1) / S;
    long long begin = s * chunk, end = begin + chunk < m ? begin + chunk : m;
    float mu = mean[c];
    float sum_dy = 0.0f, sum_dy_xmu = 0.0f;
    for (long long j = begin + threadIdx.x; j < end; j += blockDim.x) {
        long long n = j / HW;
        long long o = (n * C + c) * HW + (j - n * HW);
        float g = dy[o];
        sum_dy += g;
        sum_dy_xmu += g * (x[o] - mu);
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        sum_dy += __shfl_down_sync(0xffffffffu, sum_dy, offset);
        sum_dy_xmu += __shfl_down_sync(0xffffffffu, sum_dy_xmu, offset);
    }
    if (lane == 0) warp_sums[warp] = make_float2(sum_dy, sum_dy_xmu);
    __syncthreads();
    if (warp == 0) {
        float2 v = lane < (int)(blockDim.x / 32) ? warp_sums[lane] : make_float2(0.0f, 0.0f);
        for (int offset = 16; offset > 0; offset >>= 1) {
            v.x += __shfl_down_sync(0xffffffffu, v.x, offset);
            v.y += __shfl_down_sync(0xffffffffu, v.y, offset);
        }
        if (lane == 0) {
            volatile float* p = partial + ((long long)c * S + s) * 2;
            p[0] = v.x;
            p[1] = v.y;
            __threadfence();
            is_last = atomicAdd(&counter[c], 1u) == (unsigned)(S - 1);
        }
    }
    __syncthreads();
    if (!is_last || threadIdx.x != 0) return;
    float a = 0.0f, b = 0.0f;
    for (int k = 0; k < S; ++k) {
        volatile const float* p = partial + ((long long)c * S + k) * 2;
        a += p[0];
        b += p[1];
    }
    dbeta[c] = a;
    dgamma[c] = b * invstd[c];
    counter[c] = 0u;
}

extern "C" __global__ void bn_bwd_elemt(const float* __restrict__ dy, const float* __restrict__ x,
                                        const float* __restrict__ mean, const float* __restrict__ invstd,
                                        const float* __restrict__ gamma, const float* __restrict__ dgamma,
                                        const float* __restrict__ dbeta, float* __restrict__ dx,
                                        int N, int C, int HW) {
    float inv_m = 1.0f / (float)((long long)N * HW);
    for (int row = blockIdx.y; row < N * C; row += gridDim.y) {
        int c = row % C;
        float k = gamma[c] * invstd[c], mu = mean[c], is = invstd[c];
        float mean_dy = dbeta[c] * inv_m, mean_dy_xhat = dgamma[c] * inv_m;
        long long base = (long long)row * HW;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < HW; i += blockDim.x * gridDim.x) {
            float xhat = (x[base + i] - mu) * is;
            dx[base + i] = k * (dy[base + i] - mean_dy - xhat * mean_dy_xhat);
        }
    }
}
