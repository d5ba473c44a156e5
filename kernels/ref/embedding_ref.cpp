#include "kernels/ref/ref.h"

namespace kiln::ref {

template <class T>
void embedding_forward(T* out, const int32_t* tokens, const T* wte, const T* wpe, int B, int Tn, int C, int vocab_begin,
                       int vocab_rows) {
#pragma omp parallel for collapse(2)
  for (int b = 0; b < B; b++) {
    for (int t = 0; t < Tn; t++) {
      T* o = out + ((int64_t)b * Tn + t) * C;
      const T* p = wpe + (int64_t)t * C;
      const int row = tokens[b * Tn + t] - vocab_begin;
      if (row >= 0 && row < vocab_rows) {
        const T* e = wte + (int64_t)row * C;
        for (int c = 0; c < C; c++) o[c] = e[c] + p[c];
      } else {
        for (int c = 0; c < C; c++) o[c] = p[c];
      }
    }
  }
}

template <class T>
void embedding_backward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int B, int Tn, int C, int vocab_begin,
                        int vocab_rows) {
  // Parallel over channels: several positions may share a token row, so rows would race.
#pragma omp parallel for
  for (int c = 0; c < C; c++) {
    for (int b = 0; b < B; b++) {
      for (int t = 0; t < Tn; t++) {
        const T g = dout[((int64_t)b * Tn + t) * C + c];
        dwpe[(int64_t)t * C + c] += g;
        const int row = tokens[b * Tn + t] - vocab_begin;
        if (row >= 0 && row < vocab_rows) dwte[(int64_t)row * C + c] += g;
      }
    }
  }
}

#define KILN_INSTANTIATE(T)                                                                            \
  template void embedding_forward<T>(T*, const int32_t*, const T*, const T*, int, int, int, int, int); \
  template void embedding_backward<T>(T*, T*, const T*, const int32_t*, int, int, int, int, int);
KILN_INSTANTIATE(float)
KILN_INSTANTIATE(double)

}  // namespace kiln::ref
