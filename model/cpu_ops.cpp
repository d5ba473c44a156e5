#include "model/cpu_ops.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace kiln {
namespace {

class CpuOps final : public Ops {
 public:
  std::string name() const override { return "cpu"; }

  Buffer allocate(int64_t numel, DType dtype) override {
    if (dtype == DType::bf16) throw std::invalid_argument("cpu backend stores f32 and i32 only, not bf16");
    const size_t bytes = ((size_t)numel * dtype_size(dtype) + 63) / 64 * 64;  // cache-line aligned
    void* p = std::aligned_alloc(64, bytes ? bytes : 64);
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes);
    return Buffer({p, dtype, numel}, std::shared_ptr<void>(p, std::free));
  }
  void zero(const Tensor& t) override { std::memset(t.data, 0, (size_t)t.numel * dtype_size(t.dtype)); }
  void upload(const Tensor& dst, std::span<const float> src) override { copy(dst.f32(), dst.numel, src); }
  void upload(const Tensor& dst, std::span<const int32_t> src) override { copy(dst.i32(), dst.numel, src); }
  void download(std::span<float> dst, const Tensor& src) override {
    copy(dst.data(), (int64_t)dst.size(), std::span<const float>(src.f32(), src.numel));
  }

  void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& wte, const Tensor& wpe, int B, int T,
                         int C, int vocab_begin, int vocab_rows) override {
    ref::embedding_forward(out.f32(), tokens.i32(), wte.f32(), wpe.f32(), B, T, C, vocab_begin, vocab_rows);
  }
  void embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& dout, const Tensor& tokens, int B,
                          int T, int C, int vocab_begin, int vocab_rows) override {
    ref::embedding_backward(dwte.f32(), dwpe.f32(), dout.f32(), tokens.i32(), B, T, C, vocab_begin, vocab_rows);
  }
  void layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& x,
                         const Tensor& weight, const Tensor& bias, int N, int C) override {
    ref::layernorm_forward(out.f32(), mean.f32(), rstd.f32(), x.f32(), weight.f32(), bias.f32(), N, C);
  }
  void residual_layernorm_forward(const Tensor& residual_out, const Tensor& out, const Tensor& mean,
                                  const Tensor& rstd, const Tensor& a, const Tensor& b, const Tensor& weight,
                                  const Tensor& bias, int N, int C) override {
    ref::residual_forward(residual_out.f32(), a.f32(), b.f32(), (int64_t)N * C);
    ref::layernorm_forward(out.f32(), mean.f32(), rstd.f32(), residual_out.f32(), weight.f32(), bias.f32(), N, C);
  }
  void layernorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                          const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd, int N,
                          int C) override {
    ref::layernorm_backward(dx.f32(), dweight.f32(), dbias.f32(), dout.f32(), x.f32(), weight.f32(), mean.f32(),
                            rstd.f32(), N, C);
  }
  void matmul_forward(const Tensor& out, const Tensor& x, const Tensor& weight, const Tensor& bias, int N, int C,
                      int OC) override {
    ref::matmul_forward(out.f32(), x.f32(), weight.f32(), bias.f32(), N, C, OC);
  }
  void matmul_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                       const Tensor& x, const Tensor& weight, int N, int C, int OC) override {
    ref::matmul_backward(dx.f32(), dweight.f32(), dbias.f32(), dout.f32(), x.f32(), weight.f32(), N, C, OC);
  }
  void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& qkv, int B, int T, int NH,
                         int HS) override {
    ref::attention_forward(out.f32(), lse.f32(), qkv.f32(), B, T, NH, HS);
  }
  void attention_backward(const Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& out,
                          const Tensor& lse, int B, int T, int NH, int HS) override {
    ref::attention_backward(dqkv.f32(), dout.f32(), qkv.f32(), out.f32(), lse.f32(), B, T, NH, HS);
  }
  void gelu_forward(const Tensor& out, const Tensor& x, int64_t n) override {
    ref::gelu_forward(out.f32(), x.f32(), n);
  }
  void gelu_backward(const Tensor& dx, const Tensor& x, const Tensor& dout, int64_t n) override {
    ref::gelu_backward(dx.f32(), x.f32(), dout.f32(), n);
  }
  void cross_entropy(const Tensor& losses, const Tensor& logits, const Tensor& targets, int N, int V, int Vp,
                     bool with_grad, float dloss) override {
    ref::cross_entropy_forward_backward(losses.f32(), with_grad ? logits.f32() : nullptr, logits.f32(),
                                        targets.i32(), N, V, Vp, dloss);
  }
  double sum_squares(const Tensor& x) override { return ref::sum_squares(x.f32(), x.numel); }
  void scale(const Tensor& x, double s) override { ref::scale(x.f32(), x.numel, s); }
  void adamw_update(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                    const ref::AdamWParams& hp) override {
    ref::adamw_update(params.f32(), grads.f32(), m.f32(), v.f32(), params.numel, hp);
  }

 private:
  template <class T>
  static void copy(T* dst, int64_t dst_numel, std::span<const T> src) {
    if ((int64_t)src.size() != dst_numel)
      throw std::invalid_argument("copy of " + std::to_string(src.size()) + " elements into a tensor of " +
                                  std::to_string(dst_numel));
    std::memcpy(dst, src.data(), src.size() * sizeof(T));
  }
};

}  // namespace

std::unique_ptr<Ops> make_cpu_ops() { return std::make_unique<CpuOps>(); }

}  // namespace kiln
