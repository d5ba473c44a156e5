#include <cmath>
#include <limits>

#include "kernels/ref/ref.h"

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

template <class T>
void cross_entropy_stats(T* row_max, T* row_sumexp, T* target_logit, const T* logits, const int32_t* targets, int N,
                         int vocab_begin, int valid, int Vp_local) {
#pragma omp parallel for
  for (int n = 0; n < N; n++) {
    const T* z = logits + (int64_t)n * Vp_local;
    const int y = targets[n] - vocab_begin;  // the target's column in this slice
    T max_z = -std::numeric_limits<T>::infinity(), sum = 0;
    for (int v = 0; v < valid; v++) max_z = std::max(max_z, z[v]);
    for (int v = 0; v < valid; v++) sum += std::exp(z[v] - max_z);
    row_max[n] = max_z;
    row_sumexp[n] = sum;
    target_logit[n] = targets[n] >= 0 && y >= 0 && y < valid ? z[y] : T(0);
  }
}

template <class T>
void rescale_sumexp(T* row_sumexp, const T* row_max, const T* global_max, int N) {
  for (int n = 0; n < N; n++)
    if (row_sumexp[n] != 0) row_sumexp[n] *= std::exp(row_max[n] - global_max[n]);
}

template <class T>
void cross_entropy_from_stats(T* losses, T* dlogits, const T* logits, const int32_t* targets, const T* global_max,
                              const T* global_sumexp, const T* global_target_logit, int N, int vocab_begin, int valid,
                              int Vp_local, T dloss) {
#pragma omp parallel for
  for (int n = 0; n < N; n++) {
    const T* z = logits + (int64_t)n * Vp_local;
    T* dz = dlogits ? dlogits + (int64_t)n * Vp_local : nullptr;
    if (targets[n] < 0) {
      losses[n] = 0;
      if (dz)
        for (int v = 0; v < Vp_local; v++) dz[v] = 0;
      continue;
    }
    const T lse = global_max[n] + std::log(global_sumexp[n]);
    losses[n] = lse - global_target_logit[n];
    if (dz) {
      const int y = targets[n] - vocab_begin;
      for (int v = 0; v < valid; v++) dz[v] = dloss * (std::exp(z[v] - lse) - (v == y ? T(1) : T(0)));
      for (int v = valid; v < Vp_local; v++) dz[v] = 0;
    }
  }
}

template void cross_entropy_forward_backward<float>(float*, float*, const float*, const int32_t*, int, int, int, float);
template void cross_entropy_forward_backward<double>(double*, double*, const double*, const int32_t*, int, int, int,
                                                     double);

template void rescale_sumexp<float>(float*, const float*, const float*, int);
template void rescale_sumexp<double>(double*, const double*, const double*, int);
template void cross_entropy_stats<float>(float*, float*, float*, const float*, const int32_t*, int, int, int, int);
template void cross_entropy_stats<double>(double*, double*, double*, const double*, const int32_t*, int, int, int, int);
template void cross_entropy_from_stats<float>(float*, float*, const float*, const int32_t*, const float*, const float*,
                                              const float*, int, int, int, int, float);
template void cross_entropy_from_stats<double>(double*, double*, const double*, const int32_t*, const double*,
                                               const double*, const double*, int, int, int, int, double);

}  // namespace kiln::ref
