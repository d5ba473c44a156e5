// Softmax cross-entropy over the vocabulary on the device: bf16 logits, fp32 statistics and losses,
// bf16 gradients written in place over the logits (the logits are not needed after the backward).
// The math is ref::cross_entropy_forward_backward (kernels/ref/cross_entropy_ref.cpp):
//   loss_n = logsumexp(z_n[:V]) - z_n[y_n],   dz_n[v] = dloss * (softmax(z_n)[v] - [v == y_n]).
// Rows are N = B*T; each row has Vp columns (the vocabulary padded to a multiple of 128 in kiln),
// of which the first V are real logits: the padding is never read into the softmax and its
// gradient is 0. A target < 0 is ignored: loss 0 and a zero gradient row.
#pragma once

#include <cstdint>

#include "kernels/device/runtime.h"

namespace kiln::KILN_NS {

// Fused forward and backward, one block per row. losses[N] fp32; logits_and_dlogits[N, Vp] bf16
// holds the logits and, if with_grad, is overwritten with dloss * (softmax - onehot) (0 in the
// padding columns [V, Vp)); without with_grad the logits are left untouched.
// A target >= V (outside the vocabulary) gives a NaN loss, so that it cannot pass unnoticed.
// Needs N, V >= 1, V <= Vp, and a 16-byte aligned buffer when Vp % 8 == 0 (128-bit loads).
void cross_entropy_forward_backward(const Stream& stream, float* losses, __nv_bfloat16* logits_and_dlogits,
                                    const int32_t* targets, int N, int V, int Vp, float dloss, bool with_grad);

// Tensor-parallel split: each rank holds the vocabulary slice [vocab_begin, vocab_begin + Vp_local)
// of every row (row stride Vp_local), of which the first V_local_valid columns are real logits
// (V_local_valid may be 0 for a slice made only of padding).
//
// Step 1, per rank: the slice's statistics of each row, fp32:
//   row_max[n]      = max of the slice's valid logits (-inf when the slice has none),
//   row_sumexp[n]   = sum over the slice's valid logits of exp(z - row_max[n]) (0 when none),
//   target_logit[n] = z[targets[n]] if the target falls in this slice's valid columns, else 0,
//                     so that summing over ranks gives the target's logit (0 for ignored rows).
// Step 2, the caller (an all-reduce max, rescale_sumexp, an all-reduce sum): global_max = max over ranks of row_max;
//   global_sumexp = sum over ranks of row_sumexp * exp(row_max - global_max);
//   global_target_logit = sum over ranks of target_logit.
// Step 3, per rank: losses[n] = (global_max - global_target_logit) + log(global_sumexp) (every
// rank writes the same losses; 0 for ignored rows) and, if with_grad, the slice's gradient in
// place, dloss * (exp(z - global_max) / global_sumexp - onehot), as the fused kernel.
// The split path cannot know the whole vocabulary, so a target beyond it is the caller's to
// reject (the fused kernel flags one with a NaN loss).
// With one slice (vocab_begin 0, V_local_valid = V, Vp_local = Vp) both steps give bitwise the
// fused kernel's losses and gradients.
void cross_entropy_stats(const Stream& stream, float* row_max, float* row_sumexp, float* target_logit,
                         const __nv_bfloat16* logits, const int32_t* targets, int N, int vocab_begin, int V_local_valid,
                         int Vp_local);
// Step 2's rescaling on each rank, before the sum over ranks:
//   row_sumexp[n] *= exp(row_max[n] - global_max[n])   (a slice without valid logits stays 0).
void rescale_sumexp(const Stream& stream, float* row_sumexp, const float* row_max, const float* global_max, int N);
void cross_entropy_from_stats(const Stream& stream, float* losses, __nv_bfloat16* logits_and_dlogits,
                              const int32_t* targets, const float* global_max, const float* global_sumexp,
                              const float* global_target_logit, int N, int vocab_begin, int V_local_valid, int Vp_local,
                              float dloss, bool with_grad);

}  // namespace kiln::KILN_NS
