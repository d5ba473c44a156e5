// GPT-2's input embedding, token plus position, on bf16 tables with fp32 gradients (as
// kernels/ref/embedding_ref.cpp). Shapes: B batch, T sequence, C channels; tokens[B*T] on the device.
//
// wte holds rows [vocab_begin, vocab_begin + vocab_rows) of the vocabulary (a tensor-parallel
// shard, or all of it with vocab_begin = 0). A token outside that range (another shard's, or an
// invalid id: tokens live on the device, so the launchers cannot check them) contributes no token
// embedding here: its output row is wpe[t] alone, and it adds nothing to dwte.
//
// The backward pass is deterministic: every gradient element is summed by one thread in a fixed
// order, with no float atomics. dwpe[t] sums over b in order. For dwte, the positions that share
// a token must be grouped first; that grouping is made on the HOST, from the host copy of the
// tokens (the data loader has them there anyway, and llm.c does the same), by
// make_embedding_backward_plan: a stable sort of B*T ~ 1e4 ints is microseconds on the CPU, while
// a deterministic device sort without CUB would be more code than the whole embedding. The caller
// uploads the plan's two arrays and passes them to embedding_backward; each token's row then sums
// its positions in position order, exactly the order kiln::ref::embedding_backward adds them.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/device/runtime.h"

namespace kiln::KILN_NS {

// out[b,t,:] = wte[tokens[b,t] - vocab_begin, :] + wpe[t, :]  (only wpe[t, :] for an out-of-shard
// token). out[B*T*C], wte[vocab_rows*C], wpe[T*C] (at least T rows).
void embedding_forward(const Stream& stream, __nv_bfloat16* out, const int32_t* tokens, const __nv_bfloat16* wte,
                       const __nv_bfloat16* wpe, int B, int T, int C, int vocab_begin, int vocab_rows);

// The positions p = b*T + t whose token lies in the shard, grouped by token: group g is
// order[segment_starts[g] .. segment_starts[g+1]), its positions ascending, groups in ascending
// token order. Out-of-shard positions appear nowhere.
struct EmbeddingBackwardPlan {
  std::vector<int32_t> order;
  std::vector<int32_t> segment_starts;  // segments() + 1 entries; {0} when no token is in the shard
  int segments() const { return (int)segment_starts.size() - 1; }
};

// Builds the plan from the HOST copy of tokens[B*T] (the same values as the device tokens later
// passed to embedding_backward).
EmbeddingBackwardPlan make_embedding_backward_plan(const int32_t* host_tokens, int B, int T, int vocab_begin,
                                                   int vocab_rows);

// dwte[token - vocab_begin, :] += dout[b,t,:] for every in-shard position, dwpe[t, :] += dout[b,t,:]
// for every position: ACCUMULATES, like kiln::ref::embedding_backward (callers zero the gradients).
// order and segment_starts are device copies of a plan's arrays made from these tokens, with
// `segments` = plan.segments(); they may be null when segments is 0 (no token in the shard: only
// dwpe changes). dwte[vocab_rows*C], dwpe[T*C] in fp32; dout[B*T*C] in bf16.
void embedding_backward(const Stream& stream, float* dwte, float* dwpe, const __nv_bfloat16* dout,
                        const int32_t* tokens, int B, int T, int C, int vocab_begin, int vocab_rows,
                        const int32_t* order, const int32_t* segment_starts, int segments);

}  // namespace kiln::KILN_NS
