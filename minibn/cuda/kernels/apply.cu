// apply.cu: the elementwise half of the forward pass, for the statistics kernels K0-K4.
// y = (x - mean[c]) * rsqrt(var[c] + eps) * gamma[c] + beta[c] on an NCHW tensor.
// Grid: x covers H*W, y covers the N*C rows (strided, since gridDim.y is at most 65535), so the
// channel comes from the row index once per row, not from a division per element.

extern "C" __global__ void bn_apply(const float* __restrict__ x, float* __restrict__ y,
                                   const float* __restrict__ mean, const float* __restrict__ var,
                                   const float* __restrict__ gamma, const float* __restrict__ beta,
                                   float eps, int N, int C, int HW) {
    for (int row = blockIdx.y; row < N * C; row += gridDim.y) {
        int c = row % C;
        float scale = gamma[c] * rsqrtf(var[c] + eps);
        float shift = beta[c] - mean[c] * scale;
        const float* xr = x + (long long)row * HW;
        float* yr = y + (long long)row * HW;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < HW; i += blockDim.x * gridDim.x)
            yr[i] = xr[i] * scale + shift;
    }
}
