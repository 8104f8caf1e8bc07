// slice.cuh: one thread's Welford summary of its share of slice s (of S) of channel c, with
// float4 loads when every row of the channel is 16-byte aligned (H*W % 4 == 0, aligned x).
// The four lanes of a float4 feed four independent Welford accumulators: four dependency chains
// in flight per thread (instruction-level parallelism) and one reciprocal 1/n shared by all four
// instead of a divide per element. Rows of other widths fall back to scalar loads.
#include "welford.cuh"

__device__ __forceinline__ void welford_push_inv(Welford& w, float x, float inv_n) {
    float d = x - w.mean;
    w.mean += d * inv_n;
    w.m2 += d * (x - w.mean);
}

__device__ __forceinline__ Welford welford_thread_slice(const float* __restrict__ x, int c, int s, int S,
                                                        int N, int C, int HW) {
    Welford w = {0.0f, 0.0f, 0.0f};
    if (HW % 4 == 0 && ((unsigned long long)x % 16) == 0) {
        int HW4 = HW / 4;
        long long m4 = (long long)N * HW4;
        long long chunk = (m4 + S - 1) / S;
        long long begin = s * chunk, end = begin + chunk < m4 ? begin + chunk : m4;
        Welford q[4] = {{0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f}};
        float count = 0.0f;
        for (long long v = begin + threadIdx.x; v < end; v += blockDim.x) {
            long long n = v / HW4;
            float4 f = *reinterpret_cast<const float4*>(x + (n * C + c) * HW + 4 * (v - n * HW4));
            count += 1.0f;
            float inv = 1.0f / count;
            welford_push_inv(q[0], f.x, inv);
            welford_push_inv(q[1], f.y, inv);
            welford_push_inv(q[2], f.z, inv);
            welford_push_inv(q[3], f.w, inv);
        }
        for (int k = 0; k < 4; ++k) {
            q[k].n = count;
            w = welford_merge(w, q[k]);
        }
    } else {
        long long m = (long long)N * HW;
        long long chunk = (m + S - 1) / S;
        long long begin = s * chunk, end = begin + chunk < m ? begin + chunk : m;
        for (long long j = begin + threadIdx.x; j < end; j += blockDim.x) welford_push(w, x[nchw_offset(j, c, C, HW)]);
    }
    return w;
}
