// welford.cuh: Welford's running (count, mean, M2) and Chan's merge of two such summaries.
// Included by the kernels that need it (minibn.cuda.sources inlines it, for NVRTC and g++ alike).
//
// Per element:  n += 1;  d = x - mean;  mean += d / n;  M2 += d * (x - mean)
// Merge a, b:   n = na + nb;  d = mean_b - mean_a;  mean = mean_a + d * nb / n;
//               M2 = M2a + M2b + d * d * na * nb / n
// M2 is the sum of squared deviations, so var = M2 / n; unlike sum(x^2) - n * mean^2 it never
// subtracts two large, nearly equal numbers.

struct Welford {
    float n, mean, m2;
};

__device__ __forceinline__ void welford_push(Welford& w, float x) {
    w.n += 1.0f;
    float d = x - w.mean;
    w.mean += d / w.n;
    w.m2 += d * (x - w.mean);
}

__device__ __forceinline__ Welford welford_merge(Welford a, Welford b) {
    float n = a.n + b.n;
    if (b.n == 0.0f) return a;
    if (a.n == 0.0f) return b;
    float d = b.mean - a.mean;
    float fb = b.n / n;
    Welford r;
    r.n = n;
    r.mean = a.mean + d * fb;
    r.m2 = a.m2 + b.m2 + d * d * a.n * fb;
    return r;
}

// Offset of element j (0 <= j < N*HW) of channel c in an NCHW tensor: row n = j / HW of the
// channel, column j % HW.
__device__ __forceinline__ long long nchw_offset(long long j, int c, int C, int HW) {
    long long n = j / HW;
    return (n * C + c) * HW + (j - n * HW);
}
