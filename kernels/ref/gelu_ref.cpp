#include <cmath>

#include "kernels/ref/ref.h"

namespace kiln::ref {

// gelu(x) = 0.5 x (1 + tanh(u)),  u = k (x + a x^3),  k = sqrt(2/pi),  a = 0.044715
// gelu'(x) = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) k (1 + 3 a x^2)
constexpr double kGeluScale = 0.7978845608028654;  // sqrt(2 / pi)
constexpr double kGeluCubic = 0.044715;

template <class T>
void gelu_forward(T* out, const T* x, int64_t n) {
#pragma omp parallel for simd
  for (int64_t i = 0; i < n; i++) {
    const T u = T(kGeluScale) * (x[i] + T(kGeluCubic) * x[i] * x[i] * x[i]);
    out[i] = T(0.5) * x[i] * (T(1) + std::tanh(u));
  }
}

template <class T>
void gelu_backward(T* dx, const T* x, const T* dout, int64_t n) {
#pragma omp parallel for simd
  for (int64_t i = 0; i < n; i++) {
    const T xi = x[i];
    const T th = std::tanh(T(kGeluScale) * (xi + T(kGeluCubic) * xi * xi * xi));
    const T du = T(kGeluScale) * (T(1) + T(3 * kGeluCubic) * xi * xi);
    dx[i] += dout[i] * (T(0.5) * (T(1) + th) + T(0.5) * xi * (T(1) - th * th) * du);
  }
}

#define KILN_INSTANTIATE(T)                             \
  template void gelu_forward<T>(T*, const T*, int64_t); \
  template void gelu_backward<T>(T*, const T*, const T*, int64_t);
KILN_INSTANTIATE(float)
KILN_INSTANTIATE(double)

}  // namespace kiln::ref
