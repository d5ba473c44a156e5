#include "model/cpu_ops.h"

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include "kernels/cpu/ops.h"

namespace kiln {
namespace {

// Adds the time of its scope to one op category of the breakdown.
class OpTimer {
 public:
  OpTimer(std::map<std::string, double>& times, const char* op) : slot_(times[op]) {}
  ~OpTimer() { slot_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }

 private:
  double& slot_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

class CpuOps final : public Ops {
 public:
  explicit CpuOps(CpuPath path) : fast_(path == CpuPath::fast) {}
  std::string name() const override { return fast_ ? "cpu" : "cpu-reference"; }
  const std::map<std::string, double>& op_seconds() const override { return times_; }
  DType compute_dtype() const override { return DType::f32; }
  // matmul_gelu_backward's two passes go through one [rows, hidden] buffer.
  int64_t reserve_workspace(const OpsShape& shape) override {
    gelu_scratch_ = allocate(shape.rows * shape.hidden, DType::f32);
    return shape.rows * shape.hidden * (int64_t)sizeof(float);
  }

  Buffer allocate(int64_t numel, DType dtype) override {
    if (dtype == DType::bf16) throw std::invalid_argument("cpu backend stores f32, i32 and u8 only, not bf16");
    const size_t bytes = ((size_t)numel * dtype_size(dtype) + 63) / 64 * 64;  // cache-line aligned
    void* p = std::aligned_alloc(64, bytes ? bytes : 64);
    if (!p)
      throw std::runtime_error("cpu backend: out of host memory allocating a buffer of " + std::to_string(bytes >> 20) +
                               " MiB (" + std::to_string(numel) + " elements)");
    std::memset(p, 0, bytes);
    return Buffer({p, dtype, numel}, std::shared_ptr<void>(p, std::free));
  }
  void zero(const Tensor& t) override {
    OpTimer timer(times_, "other");
    clear(t);
  }
  void copy(const Tensor& dst, const Tensor& src) override {
    OpTimer timer(times_, "other");
    require_same("copy", dst, src);
    std::memcpy(dst.data, src.data, (size_t)src.numel * dtype_size(src.dtype));
  }
  void upload(const Tensor& dst, std::span<const float> src) override { copy(dst.f32(), dst.numel, src); }
  void upload(const Tensor& dst, std::span<const int32_t> src) override { copy(dst.i32(), dst.numel, src); }
  void download(std::span<float> dst, const Tensor& src) override {
    copy(dst.data(), (int64_t)dst.size(), std::span<const float>(src.f32(), src.numel));
  }

  void synchronize() override {}  // every op is complete when it returns

  void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& wte, const Tensor& wpe, int B, int T,
                         int C, int vocab_begin, int vocab_rows) override {
    OpTimer t(times_, "embedding");
    ref::embedding_forward(out.f32(), tokens.i32(), wte.f32(), wpe.f32(), B, T, C, vocab_begin, vocab_rows);
  }
  void embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& dout, const Tensor& tokens,
                          std::span<const int32_t>, int B, int T, int C, int vocab_begin, int vocab_rows) override {
    OpTimer t(times_, "embedding");
    ref::embedding_backward(dwte.f32(), dwpe.f32(), dout.f32(), tokens.i32(), B, T, C, vocab_begin, vocab_rows);
  }
  void layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& x,
                         const Tensor& weight, const Tensor& bias, int N, int C) override {
    OpTimer t(times_, "layernorm");
    (fast_ ? cpu::layernorm_forward : ref::layernorm_forward<float>)(out.f32(), mean.f32(), rstd.f32(), x.f32(),
                                                                     weight.f32(), bias.f32(), N, C);
  }
  void residual_layernorm_forward(const Tensor& residual_out, const Tensor& out, const Tensor& mean, const Tensor& rstd,
                                  const Tensor& a, const Tensor& b, const Tensor& weight, const Tensor& bias, int N,
                                  int C) override {
    OpTimer t(times_, "layernorm");
    if (fast_) {
      cpu::residual_layernorm_forward(residual_out.f32(), out.f32(), mean.f32(), rstd.f32(), a.f32(), b.f32(),
                                      weight.f32(), bias.f32(), N, C);
      return;
    }
    ref::residual_forward(residual_out.f32(), a.f32(), b.f32(), (int64_t)N * C);
    ref::layernorm_forward(out.f32(), mean.f32(), rstd.f32(), residual_out.f32(), weight.f32(), bias.f32(), N, C);
  }
  void layernorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                          const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd, int N,
                          int C) override {
    OpTimer t(times_, "layernorm");
    (fast_ ? cpu::layernorm_backward : ref::layernorm_backward<float>)(dx.f32(), dweight.f32(), dbias.f32(), dout.f32(),
                                                                       x.f32(), weight.f32(), mean.f32(), rstd.f32(), N,
                                                                       C);
  }
  void matmul_forward(const Tensor& out, const Tensor& x, const Tensor& weight, const Tensor& bias, int N, int C,
                      int OC) override {
    OpTimer t(times_, "matmul");
    (fast_ ? cpu::matmul_forward : ref::matmul_forward<float>)(out.f32(), x.f32(), weight.f32(), bias.f32(), N, C, OC);
  }
  void matmul_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                       const Tensor& x, const Tensor& weight, int N, int C, int OC) override {
    OpTimer t(times_, "matmul");
    clear(dx);  // the references accumulate; the interface writes dx
    (fast_ ? cpu::matmul_backward : ref::matmul_backward<float>)(dx.f32(), dweight.f32(), dbias.f32(), dout.f32(),
                                                                 x.f32(), weight.f32(), N, C, OC);
  }
  void matmul_gelu_forward(const Tensor& out, const Tensor& pre, const Tensor& x, const Tensor& weight,
                           const Tensor& bias, int N, int C, int OC) override {
    matmul_forward(pre, x, weight, bias, N, C, OC);
    gelu_forward(out, pre, (int64_t)N * OC);
  }
  void matmul_gelu_backward(const Tensor& dpre, const Tensor& dbias_pre, const Tensor& dweight, const Tensor& dbias,
                            const Tensor& dout, const Tensor& x, const Tensor& weight, const Tensor& pre, int N, int C,
                            int OC) override {
    const Tensor scratch = gelu_scratch_.view().slice(0, (int64_t)N * C);
    matmul_backward(scratch, dweight, dbias, dout, x, weight, N, C, OC);  // scratch = dout @ weight
    gelu_backward(dpre, pre, scratch, (int64_t)N * C);
    OpTimer t(times_, "matmul");
    cpu::bias_backward(dbias_pre.f32(), dpre.f32(), N, C);
  }
  void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& qkv, int B, int T, int NH,
                         int HS) override {
    OpTimer t(times_, "attention");
    (fast_ ? cpu::attention_forward : ref::attention_forward<float>)(out.f32(), lse.f32(), qkv.f32(), B, T, NH, HS);
  }
  void attention_backward(const Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& out,
                          const Tensor& lse, int B, int T, int NH, int HS) override {
    OpTimer t(times_, "attention");
    clear(dqkv);
    (fast_ ? cpu::attention_backward : ref::attention_backward<float>)(dqkv.f32(), dout.f32(), qkv.f32(), out.f32(),
                                                                       lse.f32(), B, T, NH, HS);
  }
  void gelu_forward(const Tensor& out, const Tensor& x, int64_t n) override {
    OpTimer t(times_, "gelu");
    (fast_ ? cpu::gelu_forward : ref::gelu_forward<float>)(out.f32(), x.f32(), n);
  }
  void gelu_backward(const Tensor& dx, const Tensor& x, const Tensor& dout, int64_t n) override {
    OpTimer t(times_, "gelu");
    clear(dx);
    (fast_ ? cpu::gelu_backward : ref::gelu_backward<float>)(dx.f32(), x.f32(), dout.f32(), n);
  }
  void cross_entropy(const Tensor& losses, const Tensor& logits, const Tensor& targets, int N, int V, int Vp,
                     bool with_grad, float dloss) override {
    OpTimer t(times_, "cross_entropy");
    (fast_ ? cpu::cross_entropy_forward_backward
           : ref::cross_entropy_forward_backward<float>)(losses.f32(), with_grad ? logits.f32() : nullptr, logits.f32(),
                                                         targets.i32(), N, V, Vp, dloss);
  }
  void cross_entropy_stats(const Tensor& row_max, const Tensor& row_sumexp, const Tensor& target_logit,
                           const Tensor& logits, const Tensor& targets, int N, int vocab_begin, int valid,
                           int Vp_local) override {
    OpTimer t(times_, "cross_entropy");
    ref::cross_entropy_stats(row_max.f32(), row_sumexp.f32(), target_logit.f32(), logits.f32(), targets.i32(), N,
                             vocab_begin, valid, Vp_local);
  }
  void rescale_sumexp(const Tensor& row_sumexp, const Tensor& row_max, const Tensor& global_max, int N) override {
    OpTimer t(times_, "cross_entropy");
    ref::rescale_sumexp(row_sumexp.f32(), row_max.f32(), global_max.f32(), N);
  }
  void cross_entropy_from_stats(const Tensor& losses, const Tensor& logits, const Tensor& targets,
                                const Tensor& global_max, const Tensor& global_sumexp,
                                const Tensor& global_target_logit, int N, int vocab_begin, int valid, int Vp_local,
                                bool with_grad, float dloss) override {
    OpTimer t(times_, "cross_entropy");
    ref::cross_entropy_from_stats(losses.f32(), with_grad ? logits.f32() : nullptr, logits.f32(), targets.i32(),
                                  global_max.f32(), global_sumexp.f32(), global_target_logit.f32(), N, vocab_begin,
                                  valid, Vp_local, dloss);
  }
  double sum_squares(const Tensor& x) override {
    OpTimer t(times_, "adamw");
    return ref::sum_squares(x.f32(), x.numel);
  }
  Buffer make_adamw_table(std::span<const ref::AdamWRange> ranges) override {
    Buffer table = allocate((int64_t)ranges.size_bytes(), DType::u8);
    std::memcpy(table.view().data, ranges.data(), ranges.size_bytes());
    return table;
  }
  void adamw_update(const Tensor& master, const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                    const Tensor& table, const ref::AdamWParams& hp) override {
    OpTimer t(times_, "adamw");
    if (master.data != params.data)
      throw std::invalid_argument("cpu backend: the parameters are their own master copy");
    const std::span<const ref::AdamWRange> ranges(static_cast<const ref::AdamWRange*>(table.data),
                                                  (size_t)table.numel / sizeof(ref::AdamWRange));
    // The ranges and the gaps between them (no decay), in order.
    auto update = [&](int64_t begin, int64_t end, bool decay) {
      if (end <= begin) return;
      ref::AdamWParams range_hp = hp;
      if (!decay) range_hp.weight_decay = 0;
      ref::adamw_update(master.f32() + begin, grads.f32() + begin, m.f32() + begin, v.f32() + begin, end - begin,
                        range_hp);
    };
    int64_t done = 0;
    for (const ref::AdamWRange& r : ranges) {
      update(done, r.offset, false);
      update(r.offset, r.offset + r.count, r.decay);
      done = r.offset + r.count;
    }
    update(done, master.numel, false);
  }

 private:
  bool fast_;
  Buffer gelu_scratch_;
  std::map<std::string, double> times_;  // seconds per op category, since construction
  static void clear(const Tensor& t) { std::memset(t.data, 0, (size_t)t.numel * dtype_size(t.dtype)); }
  template <class T>
  static void copy(T* dst, int64_t dst_numel, std::span<const T> src) {
    if ((int64_t)src.size() != dst_numel)
      throw std::invalid_argument("copy of " + std::to_string(src.size()) + " elements into a tensor of " +
                                  std::to_string(dst_numel));
    std::memcpy(dst, src.data(), src.size() * sizeof(T));
  }
};

}  // namespace

std::unique_ptr<Ops> make_cpu_ops(CpuPath path) { return std::make_unique<CpuOps>(path); }

}  // namespace kiln
