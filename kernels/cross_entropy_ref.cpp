#include <cmath>
#include <limits>

#include "kernels/ref.h"

namespace kiln::ref {

// loss = logsumexp(z) - z[y];  dloss/dz_v = softmax(z)_v - [v == y].
template <class T>
void cross_entropy_forward_backward(T* losses, T* dlogits, const T* logits, const int32_t* targets, int N, int V,
                                    int Vp, T dloss) {
#pragma omp parallel for
  for (int n = 0; n < N; n++) {
    const T* z = logits + (int64_t)n * Vp;
    T* dz = dlogits ? dlogits + (int64_t)n * Vp : nullptr;
    const int y = targets[n];
    if (y < 0) {
      losses[n] = 0;
      if (dz)
        for (int v = 0; v < Vp; v++) dz[v] = 0;
      continue;
    }
    T max_z = -std::numeric_limits<T>::infinity();
    for (int v = 0; v < V; v++) max_z = std::max(max_z, z[v]);
    T sum = 0;
    for (int v = 0; v < V; v++) sum += std::exp(z[v] - max_z);
    const T lse = max_z + std::log(sum);
    losses[n] = lse - z[y];
    if (dz) {
      for (int v = 0; v < V; v++) dz[v] = dloss * (std::exp(z[v] - lse) - (v == y ? T(1) : T(0)));
      for (int v = V; v < Vp; v++) dz[v] = 0;
    }
  }
}

template void cross_entropy_forward_backward<float>(float*, float*, const float*, const int32_t*, int, int, int,
                                                    float);
template void cross_entropy_forward_backward<double>(double*, double*, const double*, const int32_t*, int, int,
                                                     int, double);

}  // namespace kiln::ref
