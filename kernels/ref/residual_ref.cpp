#include "kernels/ref/ref.h"

namespace kiln::ref {

template <class T>
void residual_forward(T* out, const T* a, const T* b, int64_t n) {
#pragma omp parallel for simd
  for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

template <class T>
void residual_backward(T* da, T* db, const T* dout, int64_t n) {
#pragma omp parallel for simd
  for (int64_t i = 0; i < n; i++) {
    da[i] += dout[i];
    db[i] += dout[i];
  }
}

#define KILN_INSTANTIATE(T)                                           \
  template void residual_forward<T>(T*, const T*, const T*, int64_t); \
  template void residual_backward<T>(T*, T*, const T*, int64_t);
KILN_INSTANTIATE(float)
KILN_INSTANTIATE(double)

}  // namespace kiln::ref
