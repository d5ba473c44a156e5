// CPU reference ops for GPT-2: forward and backward of every op the model uses.
//
// Plain functions on raw row-major pointers, templated on float (the CPU backend) and double
// (finite-difference gradient checks). Backward functions ACCUMULATE (+=) into every gradient
// they produce, so that gradients from several uses and micro-batches add up; callers zero them.
// Shapes: B batch, T sequence, C channels, OC output channels, V vocabulary, N = B*T rows.
#pragma once

#include <cstdint>

namespace kiln::ref {

// out[b,t,:] = wte[tokens[b,t] - vocab_begin, :] + wpe[t, :].
// wte holds rows [vocab_begin, vocab_begin + vocab_rows) of the vocabulary (its tensor-parallel
// shard); a token outside that range contributes no token embedding on this shard.
template <class T>
void embedding_forward(T* out, const int32_t* tokens, const T* wte, const T* wpe, int B, int Tn, int C, int vocab_begin,
                       int vocab_rows);
template <class T>
void embedding_backward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int B, int Tn, int C, int vocab_begin,
                        int vocab_rows);

// out = (x - mean) * rstd * weight + bias over the last axis, eps = 1e-5 as GPT-2.
// Saves mean[N] and rstd[N] for the backward pass.
template <class T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* x, const T* weight, const T* bias, int N, int C);
template <class T>
void layernorm_backward(T* dx, T* dweight, T* dbias, const T* dout, const T* x, const T* weight, const T* mean,
                        const T* rstd, int N, int C);

// out[N,OC] = x[N,C] @ weight[OC,C]^T + bias[OC] (bias may be null). weight is in nn.Linear layout.
template <class T>
void matmul_forward(T* out, const T* x, const T* weight, const T* bias, int N, int C, int OC);
// dx[N,C] += dout @ weight; dweight[OC,C] += dout^T @ x; dbias[OC] += sum_n dout (dbias may be null).
template <class T>
void matmul_backward(T* dx, T* dweight, T* dbias, const T* dout, const T* x, const T* weight, int N, int C, int OC);

// Causal multi-head self-attention. qkv[B,T,3*NH*HS] holds q, k, v in that order, head h at
// columns h*HS..(h+1)*HS of each. out[B,T,NH*HS]. lse[B,NH,T] saves each row's log-sum-exp of
// the scaled scores, so the backward recomputes probabilities instead of storing a T x T matrix.
template <class T>
void attention_forward(T* out, T* lse, const T* qkv, int B, int Tn, int NH, int HS);
template <class T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse, int B, int Tn, int NH,
                        int HS);

// GELU, tanh approximation (GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
template <class T>
void gelu_forward(T* out, const T* x, int64_t n);
template <class T>
void gelu_backward(T* dx, const T* x, const T* dout, int64_t n);

// out = a + b; backward da += dout, db += dout.
template <class T>
void residual_forward(T* out, const T* a, const T* b, int64_t n);
template <class T>
void residual_backward(T* da, T* db, const T* dout, int64_t n);

// Fused softmax cross-entropy over the first V of Vp (padded) logit columns.
// losses[n] = logsumexp(logits[n, :V]) - logits[n, target[n]]; a target < 0 is ignored (loss 0,
// gradient 0). If dlogits is not null it receives dloss * (softmax - onehot) for valid columns and
// 0 for the padding; dlogits may alias logits.
template <class T>
void cross_entropy_forward_backward(T* losses, T* dlogits, const T* logits, const int32_t* targets, int N, int V,
                                    int Vp, T dloss);

// The tensor-parallel split of cross_entropy_forward_backward (as kernels/cuda/cross_entropy.h): a rank
// holds columns [vocab_begin, vocab_begin + Vp_local) of every row, the first `valid` of them real.
// Per rank, per row: row_max (-inf when valid = 0), row_sumexp = sum exp(z - row_max) over the valid
// columns, target_logit = z[target] if this rank holds the target, else 0 (0 for ignored rows).
// Combined over the ranks (global max M, sum of row_sumexp * exp(row_max - M), sum of target
// logits), cross_entropy_from_stats writes every rank's losses (log S + M - target logit) and, if
// dlogits is not null, the slice's gradient dloss * (exp(z - M) / S - onehot), 0 in the padding.
template <class T>
void cross_entropy_stats(T* row_max, T* row_sumexp, T* target_logit, const T* logits, const int32_t* targets, int N,
                         int vocab_begin, int valid, int Vp_local);
// row_sumexp[n] *= exp(row_max[n] - global_max[n]), a slice's sum-exp rescaled to the global max
// before the sum over ranks (0 stays 0: a slice without valid logits has row_max -inf).
template <class T>
void rescale_sumexp(T* row_sumexp, const T* row_max, const T* global_max, int N);
template <class T>
void cross_entropy_from_stats(T* losses, T* dlogits, const T* logits, const int32_t* targets, const T* global_max,
                              const T* global_sumexp, const T* global_target_logit, int N, int vocab_begin, int valid,
                              int Vp_local, T dloss);

// One AdamW step (decoupled weight decay, bias correction) on n parameters, as torch.optim.AdamW,
// on gradients g = grad_scale * grads (global-norm clipping folded in, saving a pass):
//   p -= lr * wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
//   p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps).   t counts from 1.
struct AdamWParams {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;
  double grad_scale = 1.0;
};
template <class T>
void adamw_update(T* params, const T* grads, T* m, T* v, int64_t n, const AdamWParams& hp);
// A tensor's elements [offset, offset + count) of a flat parameter buffer, and whether weight
// decay applies to them (GPT-2: to the matrices, not to biases and layernorm parameters).
struct AdamWRange {
  int64_t offset, count;
  bool decay;
};

// Sum of squares of n values, accumulated in double.
template <class T>
double sum_squares(const T* x, int64_t n);
// Factor to multiply gradients by so their global norm is at most max_norm (1 when already inside).
inline double clip_factor(double grad_norm, double max_norm) {
  return (max_norm > 0 && grad_norm > max_norm) ? max_norm / (grad_norm + 1e-6) : 1.0;
}

}  // namespace kiln::ref
