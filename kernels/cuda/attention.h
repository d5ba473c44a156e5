// Causal scaled-dot-product attention on the device, FlashAttention-2 style: bf16 inputs and
// outputs, fp32 softmax statistics and accumulation, no T x T matrix in memory. The math is
// ref::attention_forward / ref::attention_backward (kernels/ref/attention_ref.cpp):
//   s_tj = q_t . k_j / sqrt(D) for j <= t (all j when not causal),  p = softmax_j(s),
//   out_t = sum_j p_tj v_j,  lse_t = log sum_j exp(s_tj)  (saved for the backward),
//   backward from lse: p_tj = exp(s_tj - lse_t), Delta_t = dout_t . out_t,
//   ds_tj = p_tj (dout_t . v_j - Delta_t),  dq_t = sum_j ds_tj k_j / sqrt(D),
//   dk_j = sum_t ds_tj q_t / sqrt(D),  dv_j = sum_t p_tj dout_t.
//
// Layout: the model's fused QKV projection, qkv[B, T, 3, H, D] (q, k, v of head h at columns
// h*D, (H + h)*D, (2H + h)*D of each row); out and dout [B, T, H, D]; lse [B, H, T]; dqkv like qkv,
// written (not accumulated). Head dims 64 and 128, any T >= 1. qkv, out, dout and dqkv must be
// 16-byte aligned (tiles are copied 16 bytes at a time).
//
// Two implementations of the same function:
//   reference:   one warp per row on CUDA cores, the simplest correct version; the oracle for
//   tensor_core: 64-query tiles on mma.sync m16n8k16 with ldmatrix and cp.async double-buffered
//                K/V tiles; causal launches skip the tiles above the diagonal.
// The backward has two modes on the tensor cores:
//   fast:          FlashAttention-2: one pass over key tiles computes dk, dv and each tile's dq
//                  contribution, added into fp32 scratch with atomics (an order that varies from
//                  run to run, so results vary in the last bits), then converted to bf16.
//   deterministic: no float atomics: a dq pass over query tiles and a dk/dv pass over key tiles,
//                  each row summed by one warp in a fixed order. It recomputes the scores and dP in
//                  both passes: 7 GEMMs per tile pair instead of 5 (1.4x the backward's FLOPs), and
//                  needs no fp32 dq buffer (B*T*H*D floats less scratch).
// The reference kernels are always deterministic.
#pragma once

#include <cstddef>

#include "kernels/device/runtime.h"

namespace kiln::KILN_NS {

enum class AttentionKernel { reference, tensor_core };
enum class AttentionMode { fast, deterministic };

struct AttentionShape {
  int B, T, H, D;
  bool causal = true;
};

// out = attention(qkv), lse = its row log-sum-exp (natural log).
void attention_forward(const Stream& stream, __nv_bfloat16* out, float* lse, const __nv_bfloat16* qkv,
                       const AttentionShape& shape, AttentionKernel kernel = AttentionKernel::tensor_core);

// Floats of scratch for attention_backward: Delta, one per row (B * H * T), and in the fast mode
// the fp32 dq accumulator (B * T * H * D).
size_t attention_backward_scratch_floats(const AttentionShape& shape,
                                         AttentionKernel kernel = AttentionKernel::tensor_core,
                                         AttentionMode mode = AttentionMode::fast);

// dqkv = d(loss)/d(qkv) from dout, the forward's out and lse.
void attention_backward(const Stream& stream, __nv_bfloat16* dqkv, float* scratch, const __nv_bfloat16* dout,
                        const __nv_bfloat16* qkv, const __nv_bfloat16* out, const float* lse,
                        const AttentionShape& shape, AttentionKernel kernel = AttentionKernel::tensor_core,
                        AttentionMode mode = AttentionMode::fast);

}  // namespace kiln::KILN_NS
