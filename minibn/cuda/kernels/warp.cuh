// warp.cuh: the lanes of a warp that exist, and sums over them.
// A block of B threads has ceil(B / 32) warps; when B is not a multiple of 32 the last one is
// partial, and a shuffle whose mask names lanes that do not exist is undefined on a GPU (the CPU
// sanitizer's synccheck stops it). So every collective here names only the lanes that exist, and
// a lane adds a shuffled value only when its source lane exists.

// Lanes in this thread's warp: 32, or fewer in a partial last warp.
__device__ __forceinline__ int warp_lanes() {
    int n = (int)blockDim.x - (int)(threadIdx.x & ~31u);
    return n < 32 ? n : 32;
}

__device__ __forceinline__ unsigned lanes_mask(int lanes) {
    return lanes >= 32 ? 0xffffffffu : (1u << lanes) - 1u;
}

// Sum of a pair over the warp's `lanes` lanes, by shuffling down: lane 0 gets the total.
__device__ __forceinline__ float2 warp_sum2(float2 v, int lanes) {
    unsigned mask = lanes_mask(lanes);
    int lane = threadIdx.x & 31;
    for (int offset = 16; offset > 0; offset >>= 1) {
        float a = __shfl_down_sync(mask, v.x, offset);
        float b = __shfl_down_sync(mask, v.y, offset);
        if (lane + offset < lanes) {
            v.x += a;
            v.y += b;
        }
    }
    return v;
}
