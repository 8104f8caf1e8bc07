// K1: one block per channel; the block's threads stride through the channel together (adjacent
// threads read adjacent addresses: coalesced), then add their partial sums in a shared-memory
// tree: log2(blockDim.x) halving steps, each ended by __syncthreads() so that no thread reads
// a slot its neighbour has not written yet.
// Statistics in one pass, sum(x) and sum(x^2): var = E[x^2] - E[x]^2. Cheap, but in float32 it
// cancels catastrophically once |mean| >> std (see minibn.cuda.progression.variance_error).
// The loop runs over the channel's N rows, and inside a row over its H*W columns: no division
// per element (threads past H*W idle on short rows; K2 onwards keep them busy).
// Launch: grid = C, block = a power of two, shared_mem = 2 * blockDim.x * sizeof(float).

extern "C" __global__ void bn_stats_k1(const float* __restrict__ x, float* __restrict__ mean,
                                       float* __restrict__ var, int N, int C, int HW) {
    extern __shared__ float smem[];
    float* s_sum = smem;
    float* s_sq = smem + blockDim.x;
    int c = blockIdx.x, t = threadIdx.x;
    float sum = 0.0f, sq = 0.0f;
    for (int n = 0; n < N; ++n) {
        const float* row = x + ((long long)n * C + c) * HW;
        for (int i = t; i < HW; i += blockDim.x) {
            float v = row[i];
            sum += v;
            sq += v * v;
        }
    }
    s_sum[t] = sum;
    s_sq[t] = sq;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (t < stride) {
            s_sum[t] += s_sum[t + stride];
            s_sq[t] += s_sq[t + stride];
        }
        __syncthreads();
    }
    if (t == 0) {
        float m = (float)((long long)N * HW);
        float mu = s_sum[0] / m;
        mean[c] = mu;
        var[c] = fmaxf(s_sq[0] / m - mu * mu, 0.0f);
    }
}
