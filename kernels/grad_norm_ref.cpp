#include <algorithm>

#include "kernels/ref.h"

namespace kiln::ref {

// Summed in a fixed number of chunks, combined in order, so the result does not depend on the
// thread count (bit-exact resume needs the same grad norm on any machine).
template <class T>
double sum_squares(const T* x, int64_t n) {
  constexpr int kChunks = 64;
  double partial[kChunks];
  const int64_t chunk = (n + kChunks - 1) / kChunks;
#pragma omp parallel for
  for (int c = 0; c < kChunks; c++) {
    double s = 0;
    const int64_t end = std::min(n, (c + 1) * chunk);
    for (int64_t i = c * chunk; i < end; i++) s += (double)x[i] * (double)x[i];
    partial[c] = s;
  }
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

#define KILN_INSTANTIATE(T) template double sum_squares<T>(const T*, int64_t);
KILN_INSTANTIATE(float)
KILN_INSTANTIATE(double)

}  // namespace kiln::ref
