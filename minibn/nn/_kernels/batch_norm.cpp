// Batch norm's training passes, fused (minibn/nn/fused.py), over a tensor whose memory is a
// row-major (outer, C, inner) array: outer = N and inner = prod(spatial) for a contiguous
// (N, C, *spatial) tensor; outer = N * prod(spatial) and inner = 1 for a channels_last one.
//
// Every pass reads memory front to back. With inner = 1 the channel loop is innermost and
// contiguous, and g++ vectorizes it with the per-channel accumulators side by side in a vector
// register. With inner > 1 each channel's run of `inner` values is reduced by an `omp simd`
// reduction (built with -fopenmp-simd: vector code, no OpenMP runtime), which lets the compiler
// keep several partial sums.
//
// Sums accumulate in double whatever T is: a channel has tens of thousands of values, and a float
// running sum keeps about 7 digits of it. The variance is two-pass (the mean, then the mean of
// squared deviations): E[x^2] - E[x]^2 cancels when |mean| >> std.
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// out = (x - mean) * weight / sqrt(var + eps) + bias; mean and biased var to mean_out, var_out.
template <typename T>
void forward(const T* __restrict__ x, int64_t outer, int64_t channels, int64_t inner,
             const T* weight, const T* bias, double eps, T* __restrict__ out, T* mean_out,
             T* var_out) {
  const int64_t m = outer * inner;
  std::vector<double> mean(channels, 0.0), sq(channels, 0.0);
  double* __restrict__ mu = mean.data();
  double* __restrict__ acc = sq.data();
  for (int64_t o = 0; o < outer; ++o) {
    const T* __restrict__ block = x + o * channels * inner;
    if (inner == 1) {
      for (int64_t c = 0; c < channels; ++c) mu[c] += block[c];
    } else {
      for (int64_t c = 0; c < channels; ++c) {
        const T* __restrict__ run = block + c * inner;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < inner; ++i) s += run[i];
        mu[c] += s;
      }
    }
  }
  for (int64_t c = 0; c < channels; ++c) mu[c] /= m;
  for (int64_t o = 0; o < outer; ++o) {
    const T* __restrict__ block = x + o * channels * inner;
    if (inner == 1) {
      for (int64_t c = 0; c < channels; ++c) {
        double d = block[c] - mu[c];
        acc[c] += d * d;
      }
    } else {
      for (int64_t c = 0; c < channels; ++c) {
        const T* __restrict__ run = block + c * inner;
        const double center = mu[c];
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < inner; ++i) {
          double d = run[i] - center;
          s += d * d;
        }
        acc[c] += s;
      }
    }
  }
  // The normalize pass runs in T, with per-channel coefficients rounded to T once.
  std::vector<T> mean_t(channels), alpha(channels), beta(channels);
  for (int64_t c = 0; c < channels; ++c) {
    double var = acc[c] / m;
    mean_out[c] = static_cast<T>(mu[c]);
    var_out[c] = static_cast<T>(var);
    double a = 1.0 / std::sqrt(var + eps);
    mean_t[c] = static_cast<T>(mu[c]);
    alpha[c] = static_cast<T>(weight ? a * weight[c] : a);
    beta[c] = bias ? bias[c] : T(0);
  }
  const T* __restrict__ mc = mean_t.data();
  const T* __restrict__ s = alpha.data();
  const T* __restrict__ b = beta.data();
  for (int64_t o = 0; o < outer; ++o) {
    const T* __restrict__ block = x + o * channels * inner;
    T* __restrict__ dst = out + o * channels * inner;
    if (inner == 1) {
      for (int64_t c = 0; c < channels; ++c) dst[c] = (block[c] - mc[c]) * s[c] + b[c];
    } else {
      for (int64_t c = 0; c < channels; ++c) {
        const T center = mc[c], scale = s[c], shift = b[c];
        const T* __restrict__ run = block + c * inner;
        T* __restrict__ to = dst + c * inner;
        for (int64_t i = 0; i < inner; ++i) to[i] = (run[i] - center) * scale + shift;
      }
    }
  }
}

// The closed-form backward (minibn/nn/function.py), with c = x - mean, inv_std = 1/sqrt(var+eps):
//   dbias = sum(dy), dweight = inv_std * sum(dy * c),
//   dx = gain * dy + k * c + k0, gain = weight * inv_std, k = -gain * inv_std * dweight / m
//        (+ 2 dvar / m), k0 = -gain * dbias / m (+ dmean / m).
// Both sums in one pass over x and dy, dx in a second. Null pointers: no such input / output.
template <typename T>
void backward(const T* __restrict__ x, const T* __restrict__ dy, int64_t outer, int64_t channels,
              int64_t inner, const T* mean, const T* var, const T* weight, double eps,
              const T* dmean, const T* dvar, T* __restrict__ dx, T* dweight, T* dbias) {
  const int64_t m = outer * inner;
  std::vector<double> centers(channels), sum_dy(channels, 0.0), sum_dyc(channels, 0.0);
  for (int64_t c = 0; c < channels; ++c) centers[c] = mean[c];
  {
    const double* __restrict__ mu = centers.data();
    double* __restrict__ s0 = sum_dy.data();
    double* __restrict__ s1 = sum_dyc.data();
    for (int64_t o = 0; o < outer; ++o) {
      const T* __restrict__ xb = x + o * channels * inner;
      const T* __restrict__ gb = dy + o * channels * inner;
      if (inner == 1) {
        for (int64_t c = 0; c < channels; ++c) {
          double g = gb[c];
          s0[c] += g;
          s1[c] += g * (xb[c] - mu[c]);
        }
      } else {
        for (int64_t c = 0; c < channels; ++c) {
          const T* __restrict__ xr = xb + c * inner;
          const T* __restrict__ gr = gb + c * inner;
          const double center = mu[c];
          double a0 = 0.0, a1 = 0.0;
#pragma omp simd reduction(+ : a0, a1)
          for (int64_t i = 0; i < inner; ++i) {
            double g = gr[i];
            a0 += g;
            a1 += g * (xr[i] - center);
          }
          s0[c] += a0;
          s1[c] += a1;
        }
      }
    }
  }
  std::vector<T> mean_t(channels), gain(channels), k(channels), k0(channels);
  for (int64_t c = 0; c < channels; ++c) {
    double inv_std = 1.0 / std::sqrt(static_cast<double>(var[c]) + eps);
    double dw = inv_std * sum_dyc[c];
    if (dweight) dweight[c] = static_cast<T>(dw);
    if (dbias) dbias[c] = static_cast<T>(sum_dy[c]);
    double g = weight ? inv_std * weight[c] : inv_std;
    double kc = -g * inv_std * dw / m;
    double k0c = -g * sum_dy[c] / m;
    if (dvar) kc += 2.0 * dvar[c] / m;
    if (dmean) k0c += static_cast<double>(dmean[c]) / m;
    mean_t[c] = mean[c];
    gain[c] = static_cast<T>(g);
    k[c] = static_cast<T>(kc);
    k0[c] = static_cast<T>(k0c);
  }
  if (!dx) return;
  const T* __restrict__ mc = mean_t.data();
  const T* __restrict__ a = gain.data();
  const T* __restrict__ b = k.data();
  const T* __restrict__ z = k0.data();
  for (int64_t o = 0; o < outer; ++o) {
    const T* __restrict__ xb = x + o * channels * inner;
    const T* __restrict__ gb = dy + o * channels * inner;
    T* __restrict__ db = dx + o * channels * inner;
    if (inner == 1) {
      for (int64_t c = 0; c < channels; ++c) db[c] = a[c] * gb[c] + b[c] * (xb[c] - mc[c]) + z[c];
    } else {
      for (int64_t c = 0; c < channels; ++c) {
        const T center = mc[c], ac = a[c], bc = b[c], zc = z[c];
        const T* __restrict__ xr = xb + c * inner;
        const T* __restrict__ gr = gb + c * inner;
        T* __restrict__ to = db + c * inner;
        for (int64_t i = 0; i < inner; ++i) to[i] = ac * gr[i] + bc * (xr[i] - center) + zc;
      }
    }
  }
}

}  // namespace

#define MINIBN_EXPORT(T, suffix)                                                                   \
  extern "C" void minibn_bn_forward_##suffix(const T* x, int64_t outer, int64_t channels,          \
                                             int64_t inner, const T* weight, const T* bias,        \
                                             double eps, T* out, T* mean, T* var) {                \
    forward(x, outer, channels, inner, weight, bias, eps, out, mean, var);                         \
  }                                                                                                \
  extern "C" void minibn_bn_backward_##suffix(                                                     \
      const T* x, const T* dy, int64_t outer, int64_t channels, int64_t inner, const T* mean,      \
      const T* var, const T* weight, double eps, const T* dmean, const T* dvar, T* dx,             \
      T* dweight, T* dbias) {                                                                      \
    backward(x, dy, outer, channels, inner, mean, var, weight, eps, dmean, dvar, dx, dweight,     \
             dbias);                                                                               \
  }

MINIBN_EXPORT(float, f32)
MINIBN_EXPORT(double, f64)
