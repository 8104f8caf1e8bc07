// slice.cuh: one thread's share of slice s (of S) of channel c, visited rows outer, columns inner.
//
// Channel c of an NCHW tensor is N rows of L = H*W contiguous values, C*L apart. Slice s of S is
// the values [s * chunk, (s + 1) * chunk) of the channel (chunk = ceil(N*L / S)), which may start
// and end inside a row. Indexing value j as (j / L, j % L) would cost a 64-bit division per
// element, a large share of the ~40 instructions per element an H100 can spend at full bandwidth.
// So the loop runs over rows and, inside a row, over columns (as ATen's statistics kernel does):
// thread t takes columns t, t + B, ... of each row (B = blockDim.x); when rows are shorter than
// the block, the block covers R = B / L rows at a time and thread t keeps column t % L of row t / L
// (ATen's 2-D block, done with a 1-D one). One division per thread, none per element.
#include "welford.cuh"

// Call f(offset) for every value of [begin, end) of channel c this thread owns, `offset` counted
// in units of the row (floats, or float4s with L = H*W / 4).
template <class F>
__device__ __forceinline__ void for_each_in_slice(long long begin, long long end, int c, int C, int L, F f) {
    if (begin >= end) return;
    int B = blockDim.x, t = threadIdx.x;
    int R = L >= B ? 1 : B / L;   // rows per step
    int r = t / L;                // this thread's row within a step (0 when L >= B)
    int i0 = t - r * L;           // and its first column
    if (r >= R) return;           // the few threads past R * L have no column
    long long n0 = begin / L, n1 = (end - 1) / L;
    for (long long n = n0 + r; n <= n1; n += R) {
        int lo = n == n0 ? (int)(begin - n0 * L) : 0;
        int hi = n == n1 ? (int)(end - n1 * L) : L;
        long long base = (n * C + c) * (long long)L;
        int i = i0;
        if (lo > i) i += (lo - i + B - 1) / B * B;  // first column of this thread at or after lo
        for (; i < hi; i += B) f(base + i);
    }
}

__device__ __forceinline__ void slice_bounds(long long m, int s, int S, long long* begin, long long* end) {
    long long chunk = (m + S - 1) / S;
    *begin = s * chunk;
    *end = *begin + chunk < m ? *begin + chunk : m;
}

// Welford over this thread's values of slice s: one scalar load and one divide per value (K3).
__device__ __forceinline__ Welford welford_slice_scalar(const float* __restrict__ x, int c, int s, int S,
                                                        int N, int C, int HW) {
    Welford w = {0.0f, 0.0f, 0.0f};
    long long begin, end;
    slice_bounds((long long)N * HW, s, S, &begin, &end);
    for_each_in_slice(begin, end, c, C, HW, [&](long long o) { welford_push(w, x[o]); });
    return w;
}

__device__ __forceinline__ void welford_push_inv(Welford& w, float x, float inv_n) {
    float d = x - w.mean;
    w.mean += d * inv_n;
    w.m2 += d * (x - w.mean);
}

// K4's version: float4 loads when every row of the channel is 16-byte aligned (H*W % 4 == 0,
// aligned x). The four lanes of a float4 feed four independent Welford accumulators: four
// dependency chains in flight per thread (instruction-level parallelism) and one reciprocal 1/n
// shared by all four instead of a divide per element. Rows of other widths use scalar loads.
__device__ __forceinline__ Welford welford_thread_slice(const float* __restrict__ x, int c, int s, int S,
                                                        int N, int C, int HW) {
    if (HW % 4 != 0 || ((unsigned long long)x % 16) != 0) return welford_slice_scalar(x, c, s, S, N, C, HW);
    int HW4 = HW / 4;
    long long begin, end;
    slice_bounds((long long)N * HW4, s, S, &begin, &end);
    Welford q[4] = {{0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f}};
    float count = 0.0f;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    for_each_in_slice(begin, end, c, C, HW4, [&](long long o) {
        float4 f = x4[o];
        count += 1.0f;
        float inv = 1.0f / count;
        welford_push_inv(q[0], f.x, inv);
        welford_push_inv(q[1], f.y, inv);
        welford_push_inv(q[2], f.z, inv);
        welford_push_inv(q[3], f.w, inv);
    });
    Welford w = {0.0f, 0.0f, 0.0f};
    for (int k = 0; k < 4; ++k) {
        q[k].n = count;
        w = welford_merge(w, q[k]);
    }
    return w;
}
