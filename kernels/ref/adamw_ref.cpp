#include <cmath>

#include "kernels/ref/ref.h"

namespace kiln::ref {

template <class T>
void adamw_update(T* params, const T* grads, T* m, T* v, int64_t n, const AdamWParams& hp) {
  const T b1 = T(hp.beta1), b2 = T(hp.beta2);
  const T decay = T(1 - hp.lr * hp.weight_decay);
  const T step_size = T(hp.lr / (1 - std::pow(hp.beta1, (double)hp.step)));
  const T inv_sqrt_bc2 = T(1 / std::sqrt(1 - std::pow(hp.beta2, (double)hp.step)));
  const T eps = T(hp.eps), grad_scale = T(hp.grad_scale);
#pragma omp parallel for simd
  for (int64_t i = 0; i < n; i++) {
    const T g = grads[i] * grad_scale;
    m[i] = b1 * m[i] + (T(1) - b1) * g;
    v[i] = b2 * v[i] + (T(1) - b2) * g * g;
    params[i] = params[i] * decay - step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
  }
}

#define KILN_INSTANTIATE(T) template void adamw_update<T>(T*, const T*, T*, T*, int64_t, const AdamWParams&);
KILN_INSTANTIATE(float)
KILN_INSTANTIATE(double)

}  // namespace kiln::ref
