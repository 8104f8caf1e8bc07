// K1: one block per channel; the block's threads stride through the channel together (adjacent
// threads read adjacent addresses: coalesced), then add their partial sums in a shared-memory
// tree: log2(blockDim.x) halving steps, each ended by __syncthreads() so that no thread reads
// a slot its neighbour has not written yet.
// Statistics in one pass, sum(x) and sum(x^2): var = E[x^2] - E[x]^2. Cheap, but in float32 it
// cancels catastrophically once |mean| >> std (see minibn.cuda.progression.variance_error).
// Launch: grid = C, block = a power of two, shared_mem = 2 * blockDim.x * sizeof(float).

extern "C" __global__ void bn_stats_k1(const float* __restrict__ x, float* __restrict__ mean,
                                       float* __restrict__ var, int N, int C, int HW) {
    extern __shared__ float smem[];
    float* s_sum = smem;
    float* s_sq = smem + blockDim.x;
    int c = blockIdx.x, t = threadIdx.x;
    long long m = (long long)N * HW;
    float sum = 0.0f, sq = 0.0f;
    for (long long j = t; j < m; j += blockDim.x) {
        long long n = j / HW;
        float v = x[(n * C + c) * HW + (j - n * HW)];
        sum += v;
        sq += v * v;
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
        float mu = s_sum[0] / (float)m;
        mean[c] = mu;
        var[c] = fmaxf(s_sq[0] / (float)m - mu * mu, 0.0f);
    }
}
