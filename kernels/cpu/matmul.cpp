#include <algorithm>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/ops.h"

namespace kiln::cpu {

// out = x W^T + bias: the bias rows are the product's initial value (beta = 1). One row (the
// decoder's step with a KV cache) goes through sgemv, which streams W once: on one thread, OpenBLAS
// 0.3.21's sgemm with M = 1 took 104 ms for GPT-2 124M's decoding products, its sgemv 42 ms.
void matmul_forward(float* out, const float* x, const float* weight, const float* bias, int N, int C, int OC) {
  if (N == 1) {
    if (bias)
      std::copy(bias, bias + OC, out);
    else
      std::fill(out, out + OC, 0.0f);  // beta = 1 either way: out is never scaled by 0 (NaN * 0)
    sgemv(OC, C, 1.0f, weight, C, x, 1.0f, out);
    return;
  }
  if (bias) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) std::copy(bias, bias + OC, out + (int64_t)n * OC);
  }
  sgemm(false, true, N, OC, C, 1.0f, x, C, weight, C, bias ? 1.0f : 0.0f, out, OC);
}

void matmul_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x, const float* weight,
                     int N, int C, int OC) {
  sgemm(false, false, N, C, OC, 1.0f, dout, OC, weight, C, 1.0f, dx, C);  // dx += dout W
  sgemm(true, false, OC, C, N, 1.0f, dout, OC, x, C, 1.0f, dweight, C);   // dW += dout^T x
  if (dbias) bias_backward(dbias, dout, N, OC);
}

void bias_backward(float* dbias, const float* dout, int N, int OC) {
  // Column sums in blocks of columns: each thread owns its columns, rows summed in order.
  constexpr int kColumns = 64;
#pragma omp parallel for
  for (int o0 = 0; o0 < OC; o0 += kColumns) {
    const int o1 = std::min(OC, o0 + kColumns);
    float sum[kColumns] = {};
    for (int n = 0; n < N; n++) {
      const float* row = dout + (int64_t)n * OC;
#pragma omp simd
      for (int o = o0; o < o1; o++) sum[o - o0] += row[o];
    }
    for (int o = o0; o < o1; o++) dbias[o] += sum[o - o0];
  }
}

}  // namespace kiln::cpu
