// The ops interface the model is written against (design.md §2). One implementation per
// backend: CPU (fp32, kernels/ reference ops) now, CUDA (bf16 storage, fused kernels) later.
// Semantics follow kernels/ref.h: backward ops accumulate (+=) into the gradients they produce.
#pragma once

#include <map>
#include <span>
#include <string>

#include "kernels/ref.h"
#include "model/tensor.h"

namespace kiln {

class Ops {
 public:
  virtual ~Ops() = default;
  virtual std::string name() const = 0;
  // Seconds spent per op category ("matmul", "attention", ...) since the backend was made.
  virtual const std::map<std::string, double>& op_seconds() const = 0;

  // Memory. Buffers come back zero-filled.
  virtual Buffer allocate(int64_t numel, DType dtype) = 0;
  virtual void zero(const Tensor& t) = 0;
  virtual void upload(const Tensor& dst, std::span<const float> src) = 0;
  virtual void upload(const Tensor& dst, std::span<const int32_t> src) = 0;
  virtual void download(std::span<float> dst, const Tensor& src) = 0;

  // out[B,T,C] = wte[token] + wpe[t], wte holding vocab rows [vocab_begin, vocab_begin + vocab_rows).
  virtual void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& wte, const Tensor& wpe, int B,
                                 int T, int C, int vocab_begin, int vocab_rows) = 0;
  virtual void embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& dout, const Tensor& tokens,
                                  int B, int T, int C, int vocab_begin, int vocab_rows) = 0;

  virtual void layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& x,
                                 const Tensor& weight, const Tensor& bias, int N, int C) = 0;
  // residual_out = a + b; out = layernorm(residual_out). One pass on the GPU.
  virtual void residual_layernorm_forward(const Tensor& residual_out, const Tensor& out, const Tensor& mean,
                                          const Tensor& rstd, const Tensor& a, const Tensor& b,
                                          const Tensor& weight, const Tensor& bias, int N, int C) = 0;
  virtual void layernorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                                  const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                                  int N, int C) = 0;

  // out[N,OC] = x[N,C] @ weight[OC,C]^T + bias (bias may be an empty Tensor).
  virtual void matmul_forward(const Tensor& out, const Tensor& x, const Tensor& weight, const Tensor& bias, int N,
                              int C, int OC) = 0;
  virtual void matmul_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                               const Tensor& x, const Tensor& weight, int N, int C, int OC) = 0;

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

  virtual double sum_squares(const Tensor& x) = 0;
  virtual void adamw_update(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                            const ref::AdamWParams& hp) = 0;
};

}  // namespace kiln
