// Row passes, vectorised (`omp simd`, with libmvec's expf/tanhf) and threaded over rows.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vector_math.h"

namespace kiln::cpu {
namespace {

constexpr float kLayerNormEps = 1e-5f;
constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;

// Normalises row x (two-pass variance) into out; returns mean and rstd.
void normalize_row(float* out, float& mean, float& rstd, const float* x, const float* weight, const float* bias,
                   int C) {
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int c = 0; c < C; c++) sum += x[c];
  const float m = sum / C;
  float var = 0;
#pragma omp simd reduction(+ : var)
  for (int c = 0; c < C; c++) var += (x[c] - m) * (x[c] - m);
  const float s = 1.0f / std::sqrt(var / C + kLayerNormEps);
#pragma omp simd
  for (int c = 0; c < C; c++) out[c] = (x[c] - m) * s * weight[c] + bias[c];
  mean = m;
  rstd = s;
}

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                       int N, int C) {
#pragma omp parallel for
  for (int n = 0; n < N; n++)
    normalize_row(out + (int64_t)n * C, mean[n], rstd[n], x + (int64_t)n * C, weight, bias, C);
}

void residual_layernorm_forward(float* residual_out, float* out, float* mean, float* rstd, const float* a,
                                const float* b, const float* weight, const float* bias, int N, int C) {
#pragma omp parallel for
  for (int n = 0; n < N; n++) {
    float* r = residual_out + (int64_t)n * C;
    const float *ar = a + (int64_t)n * C, *br = b + (int64_t)n * C;
#pragma omp simd
    for (int c = 0; c < C; c++) r[c] = ar[c] + br[c];
    normalize_row(out + (int64_t)n * C, mean[n], rstd[n], r, weight, bias, C);  // row still in L1
  }
}

// dx as in kernels/ref/layernorm_ref.cpp. dweight and dbias are summed per chunk of rows into
// partials, then the chunks are added in order: threaded, and the same bits for any thread count.
void layernorm_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x, const float* weight,
                        const float* mean, const float* rstd, int N, int C) {
  constexpr int kChunks = 16;
  const int chunk_rows = (N + kChunks - 1) / kChunks;
  thread_local std::vector<float> partial;
  std::vector<float>& part = partial;
  part.assign((size_t)kChunks * 2 * C, 0.0f);
#pragma omp parallel for
  for (int chunk = 0; chunk < kChunks; chunk++) {
    float* dw = part.data() + (size_t)chunk * 2 * C;
    float* db = dw + C;
    const int end = std::min(N, (chunk + 1) * chunk_rows);
    for (int n = chunk * chunk_rows; n < end; n++) {
      const float *xr = x + (int64_t)n * C, *g = dout + (int64_t)n * C;
      const float m = mean[n], s = rstd[n];
      float mean_dxhat = 0, mean_dxhat_xhat = 0;
#pragma omp simd reduction(+ : mean_dxhat, mean_dxhat_xhat)
      for (int c = 0; c < C; c++) {
        const float xhat = (xr[c] - m) * s, dxhat = g[c] * weight[c];
        mean_dxhat += dxhat;
        mean_dxhat_xhat += dxhat * xhat;
        dw[c] += g[c] * xhat;
        db[c] += g[c];
      }
      mean_dxhat /= C;
      mean_dxhat_xhat /= C;
      float* d = dx + (int64_t)n * C;
#pragma omp simd
      for (int c = 0; c < C; c++) d[c] += s * (g[c] * weight[c] - mean_dxhat - (xr[c] - m) * s * mean_dxhat_xhat);
    }
  }
  for (int chunk = 0; chunk < kChunks; chunk++) {
    const float* dw = part.data() + (size_t)chunk * 2 * C;
#pragma omp simd
    for (int c = 0; c < C; c++) {
      dweight[c] += dw[c];
      dbias[c] += dw[C + c];
    }
  }
}

void gelu_forward(float* out, const float* x, int64_t n) {
#pragma omp parallel for simd
  for (int64_t i = 0; i < n; i++) {
    const float v = x[i];
    out[i] = 0.5f * v * (1.0f + tanhf(kGeluScale * (v + kGeluCubic * v * v * v)));
  }
}

void gelu_backward(float* dx, const float* x, const float* dout, int64_t n) {
#pragma omp parallel for simd
  for (int64_t i = 0; i < n; i++) {
    const float v = x[i];
    const float th = tanhf(kGeluScale * (v + kGeluCubic * v * v * v));
    const float du = kGeluScale * (1.0f + 3.0f * kGeluCubic * v * v);
    dx[i] += dout[i] * (0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * du);
  }
}

void cross_entropy_forward_backward(float* losses, float* dlogits, const float* logits, const int32_t* targets, int N,
                                    int V, int Vp, float dloss) {
#pragma omp parallel for
  for (int n = 0; n < N; n++) {
    const float* z = logits + (int64_t)n * Vp;
    float* dz = dlogits ? dlogits + (int64_t)n * Vp : nullptr;
    const int y = targets[n];
    if (y < 0) {
      losses[n] = 0;
      if (dz) std::fill(dz, dz + Vp, 0.0f);
      continue;
    }
    float max_z = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : max_z)
    for (int v = 0; v < V; v++) max_z = std::max(max_z, z[v]);
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int v = 0; v < V; v++) sum += expf(z[v] - max_z);
    const float lse = max_z + std::log(sum);
    const float target_logit = z[y];  // read before dz (which may alias z) is written
    losses[n] = lse - target_logit;
    if (!dz) continue;
#pragma omp simd
    for (int v = 0; v < V; v++) dz[v] = dloss * expf(z[v] - lse);
    dz[y] -= dloss;
    std::fill(dz + V, dz + Vp, 0.0f);
  }
}

}  // namespace kiln::cpu
