// GELU (tanh approximation, as GPT-2 and kernels/ref/gelu_ref.cpp) on bf16 tensors, fp32 math.
//
//   gelu(x)  = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   gelu'(x) = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
//
// Elementwise over n values. When every pointer is 16-byte aligned the kernels move 8 values per
// 128-bit load/store and finish the last n % 8 one at a time; otherwise they go one at a time
// throughout (same results). The output may be the same buffer as an input (in place), but must
// not partially overlap one.
#pragma once

#include <cstdint>

#include "kernels/device/runtime.h"

namespace kiln::KILN_NS {

// out[i] = gelu(x[i]).
void gelu_forward(const Stream& stream, __nv_bfloat16* out, const __nv_bfloat16* x, int64_t n);

// dx[i] = dout[i] * gelu'(x[i]).
// Unlike kiln::ref::gelu_backward, this WRITES dx instead of accumulating into it: in the MLP's
// backward pass the gradient of GELU's input is a fresh buffer (it feeds the first matmul's
// backward and nothing else), so reading and adding to it would be wasted traffic. dx may be
// dout itself (llm.c's in-place variant).
void gelu_backward(const Stream& stream, __nv_bfloat16* dx, const __nv_bfloat16* x, const __nv_bfloat16* dout,
                   int64_t n);

}  // namespace kiln::KILN_NS
