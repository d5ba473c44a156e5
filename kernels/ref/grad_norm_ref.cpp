#include <algorithm>

#include "kernels/ref/ref.h"

namespace kiln::ref {

// Summed in a fixed number of chunks, combined in order, so the result does not depend on the
// thread count (bit-exact resume needs the same grad norm on any machine). Each chunk is summed in
// index order; a thread sums kLanes chunks in lockstep, so that kLanes additions are in flight
// instead of one chain bound by the add's latency (4x faster at the same bits).
template <class T>
double sum_squares(const T* x, int64_t n) {
  constexpr int kChunks = 64, kLanes = 4;
  double partial[kChunks];
  const int64_t chunk = (n + kChunks - 1) / kChunks;
#pragma omp parallel for
  for (int group = 0; group < kChunks / kLanes; group++) {
    int64_t begin[kLanes], end[kLanes];
    int64_t common = chunk;  // the lanes' shortest length: the last chunks may be short or empty
    for (int l = 0; l < kLanes; l++) {
      const int64_t c = group * kLanes + l;
      begin[l] = std::min(n, c * chunk);
      end[l] = std::min(n, (c + 1) * chunk);
      common = std::min(common, end[l] - begin[l]);
    }
    double s[kLanes] = {};
    for (int64_t i = 0; i < common; i++)
      for (int l = 0; l < kLanes; l++) s[l] += (double)x[begin[l] + i] * (double)x[begin[l] + i];
    for (int l = 0; l < kLanes; l++) {
      for (int64_t i = begin[l] + common; i < end[l]; i++) s[l] += (double)x[i] * (double)x[i];
      partial[group * kLanes + l] = s[l];
    }
  }
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

#define KILN_INSTANTIATE(T) template double sum_squares<T>(const T*, int64_t);
KILN_INSTANTIATE(float)
KILN_INSTANTIATE(double)

}  // namespace kiln::ref
