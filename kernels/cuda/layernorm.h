// LayerNorm over the last axis on the device (GPT-2, eps = 1e-5): bf16 activations and parameters,
// fp32 statistics and parameter gradients, all arithmetic in fp32. The math is
// ref::layernorm_forward / ref::layernorm_backward (kernels/ref/layernorm_ref.cpp):
//   forward:  mean = sum_c x / C,  rstd = 1 / sqrt(sum_c (x - mean)^2 / C + eps),
//             out = (x - mean) * rstd * weight + bias
//   backward: with xhat = (x - mean) * rstd and dxhat = dout * weight,
//             dx += rstd * (dxhat - mean_c(dxhat) - xhat * mean_c(dxhat * xhat)),
//             dweight += sum_n dout * xhat,  dbias += sum_n dout.
// Rows are N = B*T of C channels. When C % 8 == 0 rows are moved with 128-bit accesses, and every
// bf16 pointer must then be 16-byte aligned (checked); otherwise element by element.
// Results are bitwise reproducible: every sum is formed in a fixed order, no float atomics.
// The launchers throw std::invalid_argument (naming the launcher and the argument) on null
// pointers, N or C <= 0, misaligned pointers, or a C whose shared memory exceeds the device's.
#pragma once

#include <cstddef>

#include "kernels/device/runtime.h"

namespace kiln::KILN_NS {

// out[N,C] = LayerNorm(x); saves mean[N] and rstd[N] (fp32) for the backward.
// Needs C <= 29056 (the row cache in shared memory).
void layernorm_forward(const Stream& stream, __nv_bfloat16* out, float* mean, float* rstd, const __nv_bfloat16* x,
                       const __nv_bfloat16* weight, const __nv_bfloat16* bias, int N, int C);

// Fused residual add + LayerNorm: residual_out = bf16(a + b), out = LayerNorm(residual_out). The
// statistics are those of the bf16-rounded residual, the values the next layer will read, so the
// result equals layernorm_forward(residual_out) bit for bit.
void residual_layernorm_forward(const Stream& stream, __nv_bfloat16* residual_out, __nv_bfloat16* out, float* mean,
                                float* rstd, const __nv_bfloat16* a, const __nv_bfloat16* b,
                                const __nv_bfloat16* weight, const __nv_bfloat16* bias, int N, int C);

// Floats of `scratch` that layernorm_backward needs for N rows of C channels: one row of 2C
// partial sums (dweight then dbias) per block of the backward kernel. Throws unless N, C >= 1.
size_t layernorm_backward_scratch_floats(int N, int C);

// Backward of layernorm_forward, ACCUMULATING: dx = bf16(dx + computed) (dx is the residual
// stream's gradient), dweight += ..., dbias += ... (fp32). One fused pass over the rows writes
// per-block partial sums of dweight and dbias into scratch (layernorm_backward_scratch_floats(N, C)
// floats, contents overwritten), then a second kernel adds them up in a fixed order.
// Needs C <= 7264 (per-warp dweight/dbias accumulators in shared memory).
void layernorm_backward(const Stream& stream, __nv_bfloat16* dx, float* dweight, float* dbias, float* scratch,
                        const __nv_bfloat16* dout, const __nv_bfloat16* x, const __nv_bfloat16* weight,
                        const float* mean, const float* rstd, int N, int C);

}  // namespace kiln::KILN_NS
