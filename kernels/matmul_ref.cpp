#include <algorithm>
#include <vector>

#include "kernels/ref.h"

namespace kiln::ref {
namespace {

// C[M,N] += A[M,K] @ B[K,N], all row-major with leading dimensions.
// Register-blocked: each task owns a kRows x kCols tile of C, kept in a local accumulator, and
// streams K; the inner loop runs along rows of B, so it vectorizes without reassociating sums.
// Tasks walk column panels outermost so a K x kCols panel of B stays in cache across row tiles.
template <class T>
void gemm_accumulate(int M, int N, int K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc) {
  constexpr int kRows = 4, kCols = 32;
  const int row_tiles = (M + kRows - 1) / kRows, col_tiles = (N + kCols - 1) / kCols;
#pragma omp parallel for collapse(2) schedule(static)
  for (int jt = 0; jt < col_tiles; jt++) {
    for (int it = 0; it < row_tiles; it++) {
      const int i0 = it * kRows, j0 = jt * kCols;
      const int rows = std::min(kRows, M - i0), cols = std::min(kCols, N - j0);
      T acc[kRows][kCols] = {};
      if (rows == kRows && cols == kCols) {
        for (int k = 0; k < K; k++) {
          const T* b = B + (int64_t)k * ldb + j0;
          for (int r = 0; r < kRows; r++) {
            const T a = A[(int64_t)(i0 + r) * lda + k];
#pragma omp simd
            for (int j = 0; j < kCols; j++) acc[r][j] += a * b[j];
          }
        }
      } else {
        for (int k = 0; k < K; k++) {
          const T* b = B + (int64_t)k * ldb + j0;
          for (int r = 0; r < rows; r++) {
            const T a = A[(int64_t)(i0 + r) * lda + k];
            for (int j = 0; j < cols; j++) acc[r][j] += a * b[j];
          }
        }
      }
      for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++) C[(int64_t)(i0 + r) * ldc + j0 + j] += acc[r][j];
    }
  }
}

// dst[cols, rows] = src[rows, cols]^T
template <class T>
std::vector<T> transposed(const T* src, int rows, int cols) {
  std::vector<T> dst((size_t)rows * cols);
#pragma omp parallel for
  for (int c = 0; c < cols; c++)
    for (int r = 0; r < rows; r++) dst[(size_t)c * rows + r] = src[(int64_t)r * cols + c];
  return dst;
}

}  // namespace

template <class T>
void matmul_forward(T* out, const T* x, const T* weight, const T* bias, int N, int C, int OC) {
#pragma omp parallel for
  for (int n = 0; n < N; n++)
    for (int o = 0; o < OC; o++) out[(int64_t)n * OC + o] = bias ? bias[o] : T(0);
  const std::vector<T> weight_t = transposed(weight, OC, C);  // [C, OC]
  gemm_accumulate(N, OC, C, x, C, weight_t.data(), OC, out, OC);
}

template <class T>
void matmul_backward(T* dx, T* dweight, T* dbias, const T* dout, const T* x, const T* weight, int N, int C,
                     int OC) {
  gemm_accumulate(N, C, OC, dout, OC, weight, C, dx, C);                  // dx += dout @ W
  const std::vector<T> dout_t = transposed(dout, N, OC);                  // [OC, N]
  gemm_accumulate(OC, C, N, dout_t.data(), N, x, C, dweight, C);          // dW += dout^T @ x
  if (dbias) {
#pragma omp parallel for
    for (int o = 0; o < OC; o++) {
      T s = 0;
      for (int n = 0; n < N; n++) s += dout_t[(size_t)o * N + n];
      dbias[o] += s;
    }
  }
}

#define KILN_INSTANTIATE(T)                                                                          \
  template void matmul_forward<T>(T*, const T*, const T*, const T*, int, int, int);                   \
  template void matmul_backward<T>(T*, T*, T*, const T*, const T*, const T*, int, int, int);
KILN_INSTANTIATE(float)
KILN_INSTANTIATE(double)

}  // namespace kiln::ref
