// GPT-2 decoder: forward and backward written out layer by layer against the Ops interface.
// Every buffer (parameters, gradients, activations, scratch) is allocated once, in the constructor,
// for batches of up to max_batch x max_seq tokens. Parameters and activations are stored in the
// backend's compute dtype (bf16 on CUDA), gradients and the master weights in fp32.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/config.h"
#include "model/ops.h"
#include "model/params.h"
#include "parallel/comm/comm.h"

namespace kiln {

// Bytes the model allocated, by category (the optimizer's moments are AdamW's).
struct ModelMemory {
  int64_t parameters = 0;   // in the compute dtype
  int64_t master = 0;       // fp32 master weights, when the parameters are not fp32 themselves
  int64_t gradients = 0;    // fp32
  int64_t activations = 0;  // saved for the backward, and the tokens and targets
  int64_t logits = 0;       // logits (their gradient overwrites them) and the per-row losses
  int64_t workspace = 0;    // backward scratch and the backend's (reserve_workspace)
  int64_t total() const { return parameters + master + gradients + activations + logits + workspace; }
};

// ZeRO-1 over `shards` data-parallel ranks, this rank being `index`: the flat parameter and
// gradient buffers are padded to `shards` equal shards, so that the gradients reduce-scatter and
// the parameters all-gather in place, and the fp32 master weights (where the parameters are not
// fp32 themselves) are kept for this rank's shard only.
struct ZeroSharding {
  int shards = 1, index = 0;
};

class GPT {
 public:
  // Under tensor parallelism (tp.size > 1, tp_comm its group: one that reaches the backend's
  // memory, MPI for the CPU and the emulator, NCCL for a GPU) the model is Megatron's:
  // heads and the MLP column-parallel into row-parallel projections whose outputs are all-reduced,
  // the embedding and LM head vocab-parallel with a vocab-parallel cross-entropy, the gradients at
  // the column-parallel inputs all-reduced. Replicated parameters (ParamSpec::replicated:
  // layernorms, row-parallel biases, wpe) get identical gradients on every rank.
  // recompute: what the backward rebuilds (model/config.h) instead of keeping it from the forward.
  GPT(const GPTConfig& cfg, Ops& ops, int max_batch, int max_seq, TensorParallel tp = {}, Comm* tp_comm = nullptr,
      Recompute recompute = Recompute::none, ZeroSharding zero = {});

  const GPTConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  TensorParallel tensor_parallel() const { return tp_; }
  Ops& ops() const { return ops_; }
  const Tensor& params() const { return params_view_; }
  // The fp32 parameters AdamW updates, elements [master_first(), master_first() + numel) of the
  // flat layout: params() itself when that is fp32.
  const Tensor& master() const { return master_; }
  int64_t master_first() const { return master_first_; }
  // Every parameter of this rank as fp32: the master weights, or the compute-dtype copy where
  // they are sharded.
  std::vector<float> download_weights() const;
  const Tensor& grads() const { return grads_view_; }
  // ZeRO-1's shard of the flat buffers (the whole of them without ZeRO-1), and the buffers with
  // their padding to shards x shard().size elements.
  const FlatShard& shard() const { return shard_; }
  const Tensor& padded_params() const { return params_; }
  const Tensor& padded_grads() const { return grads_; }
  const ModelMemory& memory() const { return memory_; }
  Recompute recompute() const { return recompute_; }

  // GPT-2 initialisation: weights N(0, 0.02), residual output projections N(0, 0.02/sqrt(2 n_layer)),
  // biases 0, layernorm gain 1; padding rows of the embedding 0. Deterministic in the seed, and
  // drawn for the whole model, so that every tensor-parallel rank gets its slice of the same
  // weights as one process.
  void init_weights(uint64_t seed);
  // Every parameter of this rank from host floats in the layout's order (the master weights, and
  // the compute-dtype copy rounded from them).
  void set_weights(std::span<const float> host);

  // Mean cross-entropy over positions whose target is >= 0. Logits stay readable until the next call.
  double forward(std::span<const int32_t> tokens, std::span<const int32_t> targets, int B, int T);
  // [B, T, padded_vocab] logits of the last forward().
  void download_logits(std::span<float> out);
  // Called during the backward pass with each range [offset, offset + count) of the flat gradient
  // buffer as soon as it is final, in backward order: ln_f, blocks n_layer-1 .. 0, the embeddings.
  // Each range ends where the previous one began, so consecutive ranges form one contiguous span.
  using GradsReady = std::function<void(int64_t offset, int64_t count)>;
  // forward, then grads += d(loss_scale * mean loss)/d(params). Returns the mean loss.
  double forward_backward(std::span<const int32_t> tokens, std::span<const int32_t> targets, int B, int T,
                          float loss_scale = 1.0f, const GradsReady& ready = {});
  void zero_grads() { ops_.zero(grads_view_); }

 private:
  struct BlockActivations {
    Buffer ln1, ln1_mean, ln1_rstd, qkv, att, lse, att_proj, residual2;
    Buffer ln2, ln2_mean, ln2_rstd, fc, fc_gelu, fc_proj, residual3;
  };
  double run_forward(std::span<const int32_t> tokens, std::span<const int32_t> targets, int B, int T, bool with_grad,
                     float loss_scale);
  // Block l from its ln_1 output to the MLP's projection (the residual add and the next layernorm
  // follow in run_forward); rerun by the backward under block recompute.
  void block_forward(int l, int B, int T);
  void backward(int B, int T, const GradsReady& ready);
  // [first, end) of the flat buffer: the embeddings, each block, ln_f.
  struct Range {
    int64_t first, end;
  };
  Range embedding_range_, lnf_range_;
  std::vector<Range> block_ranges_;

  // The sum over the tensor-parallel group of a tensor every rank holds a part of (no-op alone).
  void tp_all_reduce(const Tensor& t);

  GPTConfig cfg_;
  Ops& ops_;
  TensorParallel tp_;
  Comm* tp_comm_;
  LocalShape local_;
  ParamLayout layout_;
  int max_batch_, max_seq_;
  Recompute recompute_;
  FlatShard shard_;
  Buffer params_, master_, grads_;   // params_ and grads_ padded to whole shards
  Tensor params_view_, grads_view_;  // their first layout_.total() elements
  int64_t master_first_ = 0;
  ModelTensors w_, g_;

  // Saved activations; sizes for max_batch x max_seq.
  Buffer tokens_, targets_, encoded_, lnf_, lnf_mean_, lnf_rstd_, logits_, losses_;
  // Tensor parallel only: zeros for wpe on ranks other than 0 (so the all-reduced embedding adds
  // it once), and the cross-entropy statistics: max, global max, then sum-exp and target logit.
  Buffer zero_wpe_, ce_max_, ce_global_max_, ce_sums_;
  // Per block; under recompute the rebuilt activations share one set of buffers across blocks.
  std::vector<BlockActivations> blocks_;
  // Backward scratch, reused by every layer.
  Buffer d_residual_, d_ln_, d_qkv_, d_att_, d_fc_;
  std::vector<float> host_losses_;
  std::vector<int32_t> host_tokens_;  // the last forward's, for the embedding backward
  ModelMemory memory_;
  int last_B_ = 0, last_T_ = 0;
};

}  // namespace kiln
