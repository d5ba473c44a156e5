#include <cmath>

#include "kernels/ref/ref.h"

namespace kiln::ref {

constexpr double kLayerNormEps = 1e-5;

template <class T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* x, const T* weight, const T* bias, int N, int C) {
#pragma omp parallel for
  for (int n = 0; n < N; n++) {
    const T* xr = x + (int64_t)n * C;
    T m = 0;
    for (int c = 0; c < C; c++) m += xr[c];
    m /= C;
    T var = 0;  // two-pass variance: no cancellation when |mean| >> std
    for (int c = 0; c < C; c++) var += (xr[c] - m) * (xr[c] - m);
    var /= C;
    const T s = T(1) / std::sqrt(var + T(kLayerNormEps));
    T* o = out + (int64_t)n * C;
    for (int c = 0; c < C; c++) o[c] = (xr[c] - m) * s * weight[c] + bias[c];
    mean[n] = m;
    rstd[n] = s;
  }
}

// With xhat = (x - mean) * rstd and dxhat = dout * weight:
//   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),
//   dweight = sum_n dout * xhat,  dbias = sum_n dout.
template <class T>
void layernorm_backward(T* dx, T* dweight, T* dbias, const T* dout, const T* x, const T* weight, const T* mean,
                        const T* rstd, int N, int C) {
#pragma omp parallel for
  for (int n = 0; n < N; n++) {
    const T* xr = x + (int64_t)n * C;
    const T* g = dout + (int64_t)n * C;
    T mean_dxhat = 0, mean_dxhat_xhat = 0;
    for (int c = 0; c < C; c++) {
      const T xhat = (xr[c] - mean[n]) * rstd[n];
      const T dxhat = g[c] * weight[c];
      mean_dxhat += dxhat;
      mean_dxhat_xhat += dxhat * xhat;
    }
    mean_dxhat /= C;
    mean_dxhat_xhat /= C;
    T* d = dx + (int64_t)n * C;
    for (int c = 0; c < C; c++) {
      const T xhat = (xr[c] - mean[n]) * rstd[n];
      d[c] += rstd[n] * (g[c] * weight[c] - mean_dxhat - xhat * mean_dxhat_xhat);
    }
  }
  // Parameter gradients reduce over rows: parallel over channels keeps it race-free.
#pragma omp parallel for
  for (int c = 0; c < C; c++) {
    T dw = 0, db = 0;
    for (int n = 0; n < N; n++) {
      const T g = dout[(int64_t)n * C + c];
      dw += g * (x[(int64_t)n * C + c] - mean[n]) * rstd[n];
      db += g;
    }
    dweight[c] += dw;
    dbias[c] += db;
  }
}

#define KILN_INSTANTIATE(T)                                                               \
  template void layernorm_forward<T>(T*, T*, T*, const T*, const T*, const T*, int, int); \
  template void layernorm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, int, int);
KILN_INSTANTIATE(float)
KILN_INSTANTIATE(double)

}  // namespace kiln::ref
