#include <algorithm>
#include <vector>

#include "kernels/ref/ref.h"

namespace kiln::ref {
namespace {

// C[M,N] += A[M,K] @ B[K,N]; A and B row-major with leading dimensions, C at any strides (so a
// product can be written transposed).
// Blocked for the cache as in GotoBLAS, without packing: a thread owns a kBlockM x kBlockN block
// of C and walks K in kBlockK slices, so the A slice (kBlockM x kBlockK) stays in L2 and each
// kBlockK x kTileN strip of B in L1 while a register tile of kTileM x kTileN accumulators runs
// over it. The inner loop runs along rows of B: it vectorizes without reassociating sums, so
// results do not depend on the thread count.
template <class T>
void gemm_accumulate(int M, int N, int K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t c_row,
                     int64_t c_col) {
  constexpr int kTileM = 6, kTileN = 64 / sizeof(T);  // 12 vector accumulators with AVX2
  constexpr int kBlockM = 16 * kTileM, kBlockN = 512, kBlockK = 256;
  const int blocks_m = (M + kBlockM - 1) / kBlockM, blocks_n = (N + kBlockN - 1) / kBlockN;
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int bn = 0; bn < blocks_n; bn++) {
    for (int bm = 0; bm < blocks_m; bm++) {
      const int m_end = std::min(M, (bm + 1) * kBlockM), n_end = std::min(N, (bn + 1) * kBlockN);
      for (int k0 = 0; k0 < K; k0 += kBlockK) {
        const int k_end = std::min(K, k0 + kBlockK);
        for (int j0 = bn * kBlockN; j0 < n_end; j0 += kTileN) {
          const int cols = std::min(kTileN, n_end - j0);
          for (int i0 = bm * kBlockM; i0 < m_end; i0 += kTileM) {
            const int rows = std::min(kTileM, m_end - i0);
            T acc[kTileM][kTileN] = {};
            if (rows == kTileM && cols == kTileN) {
              for (int k = k0; k < k_end; k++) {
                const T* b = B + (int64_t)k * ldb + j0;
                for (int r = 0; r < kTileM; r++) {
                  const T a = A[(int64_t)(i0 + r) * lda + k];
#pragma omp simd
                  for (int j = 0; j < kTileN; j++) acc[r][j] += a * b[j];
                }
              }
            } else {
              for (int k = k0; k < k_end; k++) {
                const T* b = B + (int64_t)k * ldb + j0;
                for (int r = 0; r < rows; r++) {
                  const T a = A[(int64_t)(i0 + r) * lda + k];
                  for (int j = 0; j < cols; j++) acc[r][j] += a * b[j];
                }
              }
            }
            for (int r = 0; r < rows; r++)
              for (int j = 0; j < cols; j++) C[(int64_t)(i0 + r) * c_row + (int64_t)(j0 + j) * c_col] += acc[r][j];
          }
        }
      }
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

// The products with a transposed operand copy one input transposed. When W is much larger than
// the batch (the LM head), it is cheaper to transpose x and write the product transposed:
// out^T = W x^T and dW^T = x^T dout. Strided writes of C cost TLB misses, hence the factor 8.
template <class T>
void matmul_forward(T* out, const T* x, const T* weight, const T* bias, int N, int C, int OC) {
#pragma omp parallel for
  for (int n = 0; n < N; n++)
    for (int o = 0; o < OC; o++) out[(int64_t)n * OC + o] = bias ? bias[o] : T(0);
  if (OC >= 8 * N) {
    const std::vector<T> x_t = transposed(x, N, C);                   // [C, N]
    gemm_accumulate(OC, N, C, weight, C, x_t.data(), N, out, 1, OC);  // out^T += W x^T
  } else {
    const std::vector<T> weight_t = transposed(weight, OC, C);         // [C, OC]
    gemm_accumulate(N, OC, C, x, C, weight_t.data(), OC, out, OC, 1);  // out += x W^T
  }
}

template <class T>
void matmul_backward(T* dx, T* dweight, T* dbias, const T* dout, const T* x, const T* weight, int N, int C, int OC) {
  gemm_accumulate(N, C, OC, dout, OC, weight, C, dx, C, 1);  // dx += dout W
  if (OC >= 8 * C) {
    const std::vector<T> x_t = transposed(x, N, C);                     // [C, N]
    gemm_accumulate(C, OC, N, x_t.data(), N, dout, OC, dweight, 1, C);  // dW^T += x^T dout
  } else {
    const std::vector<T> dout_t = transposed(dout, N, OC);             // [OC, N]
    gemm_accumulate(OC, C, N, dout_t.data(), N, x, C, dweight, C, 1);  // dW += dout^T x
  }
  if (dbias) {
#pragma omp parallel for
    for (int o = 0; o < OC; o++) {
      T s = 0;
      for (int n = 0; n < N; n++) s += dout[(int64_t)n * OC + o];
      dbias[o] += s;
    }
  }
}

#define KILN_INSTANTIATE(T)                                                         \
  template void matmul_forward<T>(T*, const T*, const T*, const T*, int, int, int); \
  template void matmul_backward<T>(T*, T*, T*, const T*, const T*, const T*, int, int, int);
KILN_INSTANTIATE(float)
KILN_INSTANTIATE(double)

}  // namespace kiln::ref
