// Causal attention per (batch, head) in blocks of query rows, FlashAttention-style: a block's
// scores against the keys up to its last row go through BLAS, then an exact softmax per row.
// Memory is one kBlock x T score block per thread, linear in T; keys after a block are skipped.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/vector_math.h"

namespace kiln::cpu {
namespace {

constexpr int kBlock = 64;

// Offsets into qkv[B, T, 3, NH, HS] and out[B, T, NH, HS] for head h of batch b.
struct Heads {
  int T, NH, HS;
  int64_t qkv_row() const { return 3LL * NH * HS; }
  int64_t out_row() const { return (int64_t)NH * HS; }
  int64_t qkv(int b, int part, int h) const {
    return (int64_t)b * T * qkv_row() + (int64_t)part * NH * HS + (int64_t)h * HS;
  }
  int64_t out(int b, int h) const { return (int64_t)b * T * out_row() + (int64_t)h * HS; }
};

// Per-thread score blocks, grown once (no allocation in later steps).
std::vector<float>& scratch(size_t n) {
  thread_local std::vector<float> buffer;
  if (buffer.size() < n) buffer.resize(n);
  return buffer;
}

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int NH, int HS) {
  const Heads at{T, NH, HS};
  const float scale = 1.0f / std::sqrt((float)HS);
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int b = 0; b < B; b++) {
    for (int h = 0; h < NH; h++) {
      const float *q = qkv + at.qkv(b, 0, h), *k = qkv + at.qkv(b, 1, h), *v = qkv + at.qkv(b, 2, h);
      float* o = out + at.out(b, h);
      float* row_lse = lse + ((int64_t)b * NH + h) * T;
      float* s = scratch((size_t)kBlock * T).data();
      for (int r0 = 0; r0 < T; r0 += kBlock) {
        const int rows = std::min(kBlock, T - r0), cols = r0 + rows;  // keys 0 .. last row of the block
        sgemm(false, true, rows, cols, HS, scale, q + r0 * at.qkv_row(), (int)at.qkv_row(), k, (int)at.qkv_row(), 0.0f,
              s, cols);
        for (int i = 0; i < rows; i++) {
          float* p = s + (int64_t)i * cols;
          const int valid = r0 + i + 1;  // causal: keys 0..t
          float max_s = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : max_s)
          for (int j = 0; j < valid; j++) max_s = std::max(max_s, p[j]);
          float sum = 0;
#pragma omp simd reduction(+ : sum)
          for (int j = 0; j < valid; j++) {
            p[j] = expf(p[j] - max_s);
            sum += p[j];
          }
          const float inv = 1.0f / sum;
#pragma omp simd
          for (int j = 0; j < valid; j++) p[j] *= inv;
          std::fill(p + valid, p + cols, 0.0f);
          row_lse[r0 + i] = max_s + std::log(sum);
        }
        sgemm(false, false, rows, HS, cols, 1.0f, s, cols, v, (int)at.qkv_row(), 0.0f, o + r0 * at.out_row(),
              (int)at.out_row());
      }
    }
  }
}

// Per block of query rows, with P recomputed from the saved log-sum-exp:
//   dV += P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)) * scale,  dQ += dS K,  dK += dS^T Q.
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out, const float* lse, int B,
                        int T, int NH, int HS) {
  const Heads at{T, NH, HS};
  const float scale = 1.0f / std::sqrt((float)HS);
  const int qkv_row = (int)at.qkv_row(), out_row = (int)at.out_row();
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int b = 0; b < B; b++) {
    for (int h = 0; h < NH; h++) {
      const float *q = qkv + at.qkv(b, 0, h), *k = qkv + at.qkv(b, 1, h), *v = qkv + at.qkv(b, 2, h);
      float *dq = dqkv + at.qkv(b, 0, h), *dk = dqkv + at.qkv(b, 1, h), *dv = dqkv + at.qkv(b, 2, h);
      const float *o = out + at.out(b, h), *g = dout + at.out(b, h);
      const float* row_lse = lse + ((int64_t)b * NH + h) * T;
      float* p = scratch(2 * (size_t)kBlock * T).data();
      float* dp = p + (size_t)kBlock * T;
      for (int r0 = 0; r0 < T; r0 += kBlock) {
        const int rows = std::min(kBlock, T - r0), cols = r0 + rows;
        sgemm(false, true, rows, cols, HS, scale, q + r0 * at.qkv_row(), qkv_row, k, qkv_row, 0.0f, p, cols);
        for (int i = 0; i < rows; i++) {
          float* pi = p + (int64_t)i * cols;
          const int valid = r0 + i + 1;
          const float l = row_lse[r0 + i];
#pragma omp simd
          for (int j = 0; j < valid; j++) pi[j] = expf(pi[j] - l);
          std::fill(pi + valid, pi + cols, 0.0f);
        }
        const float* g_blk = g + r0 * at.out_row();
        sgemm(true, false, cols, HS, rows, 1.0f, p, cols, g_blk, out_row, 1.0f, dv, qkv_row);
        sgemm(false, true, rows, cols, HS, 1.0f, g_blk, out_row, v, qkv_row, 0.0f, dp, cols);
        for (int i = 0; i < rows; i++) {
          const float* gi = g_blk + i * at.out_row();
          const float* oi = o + (r0 + i) * at.out_row();
          float D = 0;
#pragma omp simd reduction(+ : D)
          for (int d = 0; d < HS; d++) D += gi[d] * oi[d];
          float *pi = p + (int64_t)i * cols, *dpi = dp + (int64_t)i * cols;
#pragma omp simd
          for (int j = 0; j < cols; j++) dpi[j] = pi[j] * (dpi[j] - D) * scale;  // dS; zero where P is
        }
        sgemm(false, false, rows, HS, cols, 1.0f, dp, cols, k, qkv_row, 1.0f, dq + r0 * at.qkv_row(), qkv_row);
        sgemm(true, false, cols, HS, rows, 1.0f, dp, cols, q + r0 * at.qkv_row(), qkv_row, 1.0f, dk, qkv_row);
      }
    }
  }
}

}  // namespace kiln::cpu
