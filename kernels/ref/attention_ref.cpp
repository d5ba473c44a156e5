#include <cmath>
#include <limits>
#include <vector>

#include "kernels/ref/ref.h"

namespace kiln::ref {
namespace {

template <class T>
T dot(const T* a, const T* b, int n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

// Row t of head h in batch b: q, k, v are strided views into qkv[B, T, 3, NH, HS].
struct QkvView {
  const int Tn, NH, HS;
  int64_t row_stride() const { return 3LL * NH * HS; }
  int64_t offset(int b, int t, int part, int h) const {
    return ((int64_t)b * Tn + t) * row_stride() + (int64_t)part * NH * HS + (int64_t)h * HS;
  }
};

}  // namespace

// For query row t: s_j = q_t . k_j / sqrt(HS) for j <= t; p = softmax(s); out_t = sum_j p_j v_j.
template <class T>
void attention_forward(T* out, T* lse, const T* qkv, int B, int Tn, int NH, int HS) {
  const QkvView view{Tn, NH, HS};
  const T scale = T(1) / std::sqrt(T(HS));
#pragma omp parallel
  {
    std::vector<T> scores(Tn);
#pragma omp for collapse(3)
    for (int b = 0; b < B; b++) {
      for (int h = 0; h < NH; h++) {
        for (int t = 0; t < Tn; t++) {
          const T* q = qkv + view.offset(b, t, 0, h);
          T max_score = -std::numeric_limits<T>::infinity();
          for (int j = 0; j <= t; j++) {
            scores[j] = dot(q, qkv + view.offset(b, j, 1, h), HS) * scale;
            max_score = std::max(max_score, scores[j]);
          }
          T sum = 0;
          for (int j = 0; j <= t; j++) {
            scores[j] = std::exp(scores[j] - max_score);
            sum += scores[j];
          }
          T* o = out + ((int64_t)b * Tn + t) * NH * HS + (int64_t)h * HS;
          for (int d = 0; d < HS; d++) o[d] = 0;
          for (int j = 0; j <= t; j++) {
            const T p = scores[j] / sum;
            const T* v = qkv + view.offset(b, j, 2, h);
            for (int d = 0; d < HS; d++) o[d] += p * v[d];
          }
          lse[((int64_t)b * NH + h) * Tn + t] = max_score + std::log(sum);
        }
      }
    }
  }
}

// FlashAttention-style backward from the saved log-sum-exp, per query row t:
//   p_j = exp(s_j - lse_t),  dv_j += p_j dout_t,  dp_j = dout_t . v_j,
//   D_t = sum_j p_j dp_j = dout_t . out_t,  ds_j = p_j (dp_j - D_t),
//   dq_t += scale sum_j ds_j k_j,  dk_j += scale ds_j q_t.
// One (batch, head) per task, so its dq/dk/dv columns are written by one thread only.
template <class T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse, int B, int Tn, int NH,
                        int HS) {
  const QkvView view{Tn, NH, HS};
  const T scale = T(1) / std::sqrt(T(HS));
#pragma omp parallel for collapse(2)
  for (int b = 0; b < B; b++) {
    for (int h = 0; h < NH; h++) {
      for (int t = 0; t < Tn; t++) {
        const int64_t orow = ((int64_t)b * Tn + t) * NH * HS + (int64_t)h * HS;
        const T* q = qkv + view.offset(b, t, 0, h);
        const T* g = dout + orow;
        const T D = dot(g, out + orow, HS);
        const T row_lse = lse[((int64_t)b * NH + h) * Tn + t];
        T* dq = dqkv + view.offset(b, t, 0, h);
        for (int j = 0; j <= t; j++) {
          const T* k = qkv + view.offset(b, j, 1, h);
          const T* v = qkv + view.offset(b, j, 2, h);
          const T p = std::exp(dot(q, k, HS) * scale - row_lse);
          const T ds = p * (dot(g, v, HS) - D) * scale;
          T* dk = dqkv + view.offset(b, j, 1, h);
          T* dv = dqkv + view.offset(b, j, 2, h);
          for (int d = 0; d < HS; d++) {
            dq[d] += ds * k[d];
            dk[d] += ds * q[d];
            dv[d] += p * g[d];
          }
        }
      }
    }
  }
}

#define KILN_INSTANTIATE(T)                                                 \
  template void attention_forward<T>(T*, T*, const T*, int, int, int, int); \
  template void attention_backward<T>(T*, const T*, const T*, const T*, const T*, int, int, int, int);
KILN_INSTANTIATE(float)
KILN_INSTANTIATE(double)

}  // namespace kiln::ref
