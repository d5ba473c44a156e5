// kiln's one entry point to BLAS: OpenBLAS, OpenMP build (docs/cpu.md has the measurements
// behind the choice). It runs on the same OpenMP thread pool as kiln's own loops, so BLAS
// threads and OpenMP threads never oversubscribe the cores; called inside a parallel region it
// runs single-threaded.
#pragma once

#include <string>

namespace kiln::cpu {

// C[M,N] = alpha * op(A)[M,K] op(B)[K,N] + beta * C, all row-major; op transposes when asked.
void sgemm(bool transpose_a, bool transpose_b, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc);

// y[M] = alpha * A[M,N] x[N] + beta * y, A row-major (lda >= N), x and y contiguous.
void sgemv(int M, int N, float alpha, const float* A, int lda, const float* x, float beta, float* y);

std::string blas_name();  // OpenBLAS's build description, e.g. "OpenBLAS 0.3.21 ... USE_OPENMP Zen"

}  // namespace kiln::cpu
