// The fast fp32 CPU path (kiln train --device cpu): BLAS matmuls, attention through BLAS in row
// blocks, and fused, vectorised row passes. Same contracts as kernels/ref/ref.h (backward ops
// accumulate into their gradients), checked against those references by tests/kernels/test_cpu_ops.cpp.
#pragma once

#include <cstdint>

namespace kiln::cpu {

void matmul_forward(float* out, const float* x, const float* weight, const float* bias, int N, int C, int OC);
void matmul_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x, const float* weight,
                     int N, int C, int OC);
// dbias[OC] += sum over the N rows of dout[N, OC], in row order (the bias gradient).
void bias_backward(float* dbias, const float* dout, int N, int OC);

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int NH, int HS);
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out, const float* lse, int B,
                        int T, int NH, int HS);

// residual_out = a + b; out = layernorm(residual_out), in one pass over each row.
void residual_layernorm_forward(float* residual_out, float* out, float* mean, float* rstd, const float* a,
                                const float* b, const float* weight, const float* bias, int N, int C);
void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                       int N, int C);
void layernorm_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x, const float* weight,
                        const float* mean, const float* rstd, int N, int C);

void gelu_forward(float* out, const float* x, int64_t n);
void gelu_backward(float* dx, const float* x, const float* dout, int64_t n);

void cross_entropy_forward_backward(float* losses, float* dlogits, const float* logits, const int32_t* targets, int N,
                                    int V, int Vp, float dloss);

}  // namespace kiln::cpu
