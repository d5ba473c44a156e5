// The ops interface the model is written against (docs/design.md §2). One implementation per
// backend: CPU (fp32 host memory, kernels/ reference and fast ops) and CUDA (model/cuda_ops.cu:
// bf16 storage and the fused kernels, on a GPU or on the emulator).
// Gradient semantics: parameter gradients (dweight, dbias, dwte, dwpe) ACCUMULATE (+=), so that
// micro-batches add up; an op's input gradient is WRITTEN (dx of matmul and gelu, dqkv), except
// layernorm's dx, which accumulates into the residual stream's gradient.
#pragma once

#include <map>
#include <span>
#include <string>

#include "kernels/ref/ref.h"
#include "model/tensor.h"
#include "parallel/comm/comm.h"

namespace kiln {

// The largest batch the model will run, and the widths of its layers: what a backend sizes its
// scratch for, once, before any step.
struct OpsShape {
  int64_t rows = 0;  // B * T
  int batch = 0, seq = 0, channels = 0, heads = 0, head_size = 0;
  int widest = 0;  // the largest output width of any matmul (3A, H, C, padded vocabulary)
  int hidden = 0;  // the MLP's width (H)
};

class Ops {
 public:
  virtual ~Ops() = default;
  virtual std::string name() const = 0;
  // Seconds spent per op category ("matmul", "attention", ...) since the backend was made.
  virtual const std::map<std::string, double>& op_seconds() const = 0;

  // What parameters and activations are stored in: f32 on the CPU, bf16 on CUDA. Gradients,
  // master weights, optimizer state, layernorm statistics and losses are always f32.
  virtual DType compute_dtype() const = 0;
  // Allocates the backend's scratch for batches up to `shape` (once, before any step); returns all
  // the bytes the backend holds besides the tensors it allocates (scratch, library workspaces).
  virtual int64_t reserve_workspace(const OpsShape& shape) = 0;

  // Memory. Buffers come back zero-filled. Uploads and downloads convert between float and the
  // tensor's dtype, and are complete when they return.
  virtual Buffer allocate(int64_t numel, DType dtype) = 0;
  virtual void zero(const Tensor& t) = 0;
  virtual void upload(const Tensor& dst, std::span<const float> src) = 0;
  virtual void upload(const Tensor& dst, std::span<const int32_t> src) = 0;
  virtual void download(std::span<float> dst, const Tensor& src) = 0;
  // dst = src, both of the same dtype and size, stream-ordered like the ops.
  virtual void copy(const Tensor& dst, const Tensor& src) = 0;
  // Waits for the work queued so far (the CUDA backend's ops are asynchronous): before a host-side
  // collective reads the tensors they wrote.
  virtual void synchronize() = 0;
  // The device stream the ops run on (a cudaStream_t), for a device Comm to order its collectives
  // after them with an event instead of a host wait; null for a host backend.
  virtual void* stream_handle() { return nullptr; }

  // out[B,T,C] = wte[token] + wpe[t], wte holding vocab rows [vocab_begin, vocab_begin + vocab_rows).
  virtual void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& wte, const Tensor& wpe, int B,
                                 int T, int C, int vocab_begin, int vocab_rows) = 0;
  // host_tokens: the same tokens in host memory (the CUDA backend groups positions by token there).
  virtual void embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& dout, const Tensor& tokens,
                                  std::span<const int32_t> host_tokens, int B, int T, int C, int vocab_begin,
                                  int vocab_rows) = 0;

  virtual void layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& x,
                                 const Tensor& weight, const Tensor& bias, int N, int C) = 0;
  // residual_out = a + b; out = layernorm(residual_out). One pass on the GPU.
  virtual void residual_layernorm_forward(const Tensor& residual_out, const Tensor& out, const Tensor& mean,
                                          const Tensor& rstd, const Tensor& a, const Tensor& b, const Tensor& weight,
                                          const Tensor& bias, int N, int C) = 0;
  virtual void layernorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                                  const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd, int N,
                                  int C) = 0;

  // out[N,OC] = x[N,C] @ weight[OC,C]^T + bias (bias may be an empty Tensor).
  virtual void matmul_forward(const Tensor& out, const Tensor& x, const Tensor& weight, const Tensor& bias, int N,
                              int C, int OC) = 0;
  virtual void matmul_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                               const Tensor& x, const Tensor& weight, int N, int C, int OC) = 0;

  // The MLP's first layer with its GELU: pre[N,OC] = x @ weight^T + bias, out = gelu(pre) (one
  // GEMM with a GELU epilogue on the GPU).
  virtual void matmul_gelu_forward(const Tensor& out, const Tensor& pre, const Tensor& x, const Tensor& weight,
                                   const Tensor& bias, int N, int C, int OC) = 0;
  // Backward of the layer after a GELU, x = gelu(pre) [N,C], and of that GELU: dweight and dbias
  // accumulate as in matmul_backward; dpre = (dout @ weight) * gelu'(pre) is written and
  // dbias_pre += sum_n dpre, the bias gradient of the layer that made pre (whose own
  // matmul_backward then takes no dbias).
  virtual void matmul_gelu_backward(const Tensor& dpre, const Tensor& dbias_pre, const Tensor& dweight,
                                    const Tensor& dbias, const Tensor& dout, const Tensor& x, const Tensor& weight,
                                    const Tensor& pre, int N, int C, int OC) = 0;

  // Causal attention over qkv[B,T,3,NH,HS]; lse[B,NH,T] is saved for the backward.
  virtual void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& qkv, int B, int T, int NH,
                                 int HS) = 0;
  virtual void attention_backward(const Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& out,
                                  const Tensor& lse, int B, int T, int NH, int HS) = 0;

  virtual void gelu_forward(const Tensor& out, const Tensor& x, int64_t n) = 0;
  virtual void gelu_backward(const Tensor& dx, const Tensor& x, const Tensor& dout, int64_t n) = 0;

  // Per-row losses[N]; if with_grad, logits are overwritten in place by dloss * d(loss)/d(logits).
  virtual void cross_entropy(const Tensor& losses, const Tensor& logits, const Tensor& targets, int N, int V, int Vp,
                             bool with_grad, float dloss) = 0;

  // The vocab-parallel cross-entropy of a tensor-parallel rank (ref::cross_entropy_stats and
  // ref::cross_entropy_from_stats): the slice's row statistics; combining them across ranks, where
  // row_sumexp is rescaled from the slice's max to the global one (in place); then the losses and
  // the slice's gradient in place over the logits.
  virtual void cross_entropy_stats(const Tensor& row_max, const Tensor& row_sumexp, const Tensor& target_logit,
                                   const Tensor& logits, const Tensor& targets, int N, int vocab_begin, int valid,
                                   int Vp_local) = 0;
  virtual void rescale_sumexp(const Tensor& row_sumexp, const Tensor& row_max, const Tensor& global_max, int N) = 0;
  virtual void cross_entropy_from_stats(const Tensor& losses, const Tensor& logits, const Tensor& targets,
                                        const Tensor& global_max, const Tensor& global_sumexp,
                                        const Tensor& global_target_logit, int N, int vocab_begin, int valid,
                                        int Vp_local, bool with_grad, float dloss) = 0;

  // Sum of squares of an f32 tensor (the squared gradient norm).
  virtual double sum_squares(const Tensor& x) = 0;
  // An AdamW range table (offsets relative to the elements an update covers) in backend memory,
  // made once when the optimizer is built: a u8 tensor of ranges.size() entries.
  virtual Buffer make_adamw_table(std::span<const ref::AdamWRange> ranges) = 0;
  // One AdamW step over master (f32) with weight decay hp.weight_decay inside the table's decaying
  // ranges and 0 elsewhere; params = master in the compute dtype (the same buffer on the CPU).
  virtual void adamw_update(const Tensor& master, const Tensor& params, const Tensor& grads, const Tensor& m,
                            const Tensor& v, const Tensor& table, const ref::AdamWParams& hp) = 0;
};

// Makes `comm`'s next collectives see what `ops` queued so far: ordered on the device by an event
// when the Comm can (NCCL on the backend's stream), else by waiting for the ops on the host.
inline void make_ready_for(Ops& ops, Comm& comm) {
  void* stream = ops.stream_handle();
  if (!stream || !comm.order_after(stream)) ops.synchronize();
}

}  // namespace kiln
