// The CUDA backend (model/cuda_ops.h): each op is one or two launches of kernels/ on the backend's
// stream. Host code sees results only through download() and sum_squares(), which synchronize.
#include "kernels/device/cuda_lang.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/adamw.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cross_entropy.h"
#include "kernels/device/runtime.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/gelu.h"
#include "kernels/cuda/layernorm.h"
#include "kernels/cuda/matmul.h"
#include "model/cuda_ops.h"

namespace kiln::KILN_NS {
namespace {

using bf16 = __nv_bfloat16;

bf16* bf(const Tensor& t) { return t.as<bf16>(DType::bf16); }

AttentionMode attention_mode(const CudaOpsOptions& o) {
  return o.deterministic ? AttentionMode::deterministic : AttentionMode::fast;
}

// The one scratch buffer the backward ops share (they run one after another on one stream).
size_t scratch_floats(const OpsShape& s, const CudaOpsOptions& o) {
  const AttentionShape attention{s.batch, s.seq, s.heads, s.head_size, true};
  return std::max({matmul_scratch_floats((int)s.rows, s.widest),
                   layernorm_backward_scratch_floats((int)s.rows, s.channels),
                   attention_backward_scratch_floats(attention, AttentionKernel::tensor_core, attention_mode(o))});
}

// The embedding backward's plan (order[rows], segment_starts[rows + 1]) and the grad norm's
// result and partials.
int64_t fixed_bytes(const OpsShape& s) {
  return (2 * s.rows + 1) * (int64_t)sizeof(int32_t) + (1 + kGradNormPartials) * (int64_t)sizeof(float);
}

class CudaOps final : public Ops {
 public:
  explicit CudaOps(const CudaOpsOptions& options)
      : options_(options),
        matmul_(MatmulOptions{.deterministic = options.deterministic}),
        norm_(1 + kGradNormPartials) {}
  ~CudaOps() override { stream_.synchronize(); }

#ifdef KILN_EMU
  std::string name() const override { return "emu"; }
#else
  std::string name() const override { return "cuda"; }
#endif
  // Kernels run asynchronously: host timers would measure launches, not ops.
  const std::map<std::string, double>& op_seconds() const override { return no_times_; }
  DType compute_dtype() const override { return DType::bf16; }

  int64_t reserve_workspace(const OpsShape& s) override {
    scratch_ = DeviceBuffer<float>(scratch_floats(s, options_));
    order_ = DeviceBuffer<int32_t>(s.rows);
    segment_starts_ = DeviceBuffer<int32_t>(s.rows + 1);
    staging_ = PinnedBuffer<int32_t>(s.rows);
    return cuda_ops_workspace_bytes(s, options_);  // with what the constructor allocated
  }

  Buffer allocate(int64_t numel, DType dtype) override {
    const size_t bytes = (size_t)numel * dtype_size(dtype);
    void* p = device_malloc(bytes);
    Buffer buffer({p, dtype, numel}, std::shared_ptr<void>(p, [](void* q) { KILN_RT cudaFree(q); }));
    zero(buffer);
    stream_.synchronize();
    return buffer;
  }
  void zero(const Tensor& t) override {
    KILN_CHECK(KILN_RT cudaMemsetAsync(t.data, 0, (size_t)t.numel * dtype_size(t.dtype), stream_.get()));
  }
  void* stream_handle() override { return stream_.get(); }
  void copy(const Tensor& dst, const Tensor& src) override {
    require_same("copy", dst, src);
    KILN_CHECK(KILN_RT cudaMemcpyAsync(dst.data, src.data, (size_t)src.numel * dtype_size(src.dtype),
                                       cudaMemcpyDeviceToDevice, stream_.get()));
  }
  void upload(const Tensor& dst, std::span<const float> src) override {
    check_size("upload", dst, src.size());
    if (dst.dtype == DType::f32) return copy_in(dst.f32(), src.data(), src.size_bytes());
    std::vector<bf16> host(src.size());
    for (size_t i = 0; i < src.size(); i++) host[i] = __float2bfloat16(src[i]);
    copy_in(bf(dst), host.data(), host.size() * sizeof(bf16));
  }
  // Tokens and targets, every step: through pinned staging, so the copy is a DMA.
  void upload(const Tensor& dst, std::span<const int32_t> src) override {
    check_size("upload", dst, src.size());
    if (src.size() > staging_.size()) return copy_in(dst.i32(), src.data(), src.size_bytes());
    std::copy(src.begin(), src.end(), staging_.data());
    copy_in(dst.i32(), staging_.data(), src.size_bytes());
  }
  void download(std::span<float> dst, const Tensor& src) override {
    check_size("download", src, dst.size());
    if (src.dtype == DType::f32) return copy_out(dst.data(), src.f32(), dst.size_bytes());
    std::vector<bf16> host(dst.size());
    copy_out(host.data(), bf(src), host.size() * sizeof(bf16));
    for (size_t i = 0; i < dst.size(); i++) dst[i] = __bfloat162float(host[i]);
  }

  void synchronize() override { stream_.synchronize(); }

  void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& wte, const Tensor& wpe, int B, int T,
                         int C, int vocab_begin, int vocab_rows) override {
    kiln::KILN_NS::embedding_forward(stream_, bf(out), tokens.i32(), bf(wte), bf(wpe), B, T, C, vocab_begin,
                                     vocab_rows);
  }
  void embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& dout, const Tensor& tokens,
                          std::span<const int32_t> host_tokens, int B, int T, int C, int vocab_begin,
                          int vocab_rows) override {
    if ((int64_t)host_tokens.size() != (int64_t)B * T || (size_t)B * T > order_.size())
      throw std::invalid_argument("embedding_backward: " + std::to_string(host_tokens.size()) +
                                  " host tokens for a batch of " + std::to_string(B * T) +
                                  " (reserve_workspace sized for " + std::to_string(order_.size()) + ")");
    const EmbeddingBackwardPlan plan = make_embedding_backward_plan(host_tokens.data(), B, T, vocab_begin, vocab_rows);
    copy_in(order_.data(), plan.order.data(), plan.order.size() * sizeof(int32_t));
    copy_in(segment_starts_.data(), plan.segment_starts.data(), plan.segment_starts.size() * sizeof(int32_t));
    kiln::KILN_NS::embedding_backward(stream_, dwte.f32(), dwpe.f32(), bf(dout), tokens.i32(), B, T, C, vocab_begin,
                                      vocab_rows, order_.data(), segment_starts_.data(), plan.segments());
  }

  void layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& x,
                         const Tensor& weight, const Tensor& bias, int N, int C) override {
    kiln::KILN_NS::layernorm_forward(stream_, bf(out), mean.f32(), rstd.f32(), bf(x), bf(weight), bf(bias), N, C);
  }
  void residual_layernorm_forward(const Tensor& residual_out, const Tensor& out, const Tensor& mean, const Tensor& rstd,
                                  const Tensor& a, const Tensor& b, const Tensor& weight, const Tensor& bias, int N,
                                  int C) override {
    kiln::KILN_NS::residual_layernorm_forward(stream_, bf(residual_out), bf(out), mean.f32(), rstd.f32(), bf(a), bf(b),
                                              bf(weight), bf(bias), N, C);
  }
  void layernorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                          const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd, int N,
                          int C) override {
    kiln::KILN_NS::layernorm_backward(stream_, bf(dx), dweight.f32(), dbias.f32(), scratch(), bf(dout), bf(x),
                                      bf(weight), mean.f32(), rstd.f32(), N, C);
  }

  void matmul_forward(const Tensor& out, const Tensor& x, const Tensor& weight, const Tensor& bias, int N, int C,
                      int OC) override {
    matmul_.forward(stream_, bf(out), bf(x), bf(weight), bias ? bf(bias) : nullptr, N, C, OC);
  }
  void matmul_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                       const Tensor& x, const Tensor& weight, int N, int C, int OC) override {
    matmul_.backward_input(stream_, bf(dx), bf(dout), bf(weight), N, C, OC);
    matmul_.backward_weight(stream_, dweight.f32(), dbias ? dbias.f32() : nullptr, scratch(), bf(dout), bf(x), N, C,
                            OC);
  }

  void matmul_gelu_forward(const Tensor& out, const Tensor& pre, const Tensor& x, const Tensor& weight,
                           const Tensor& bias, int N, int C, int OC) override {
    matmul_.forward_gelu(stream_, bf(out), bf(pre), bf(x), bf(weight), bias ? bf(bias) : nullptr, N, C, OC);
  }
  // One GEMM for dweight, one with the DGELU_BGRAD epilogue for dpre and dbias_pre: no scratch.
  void matmul_gelu_backward(const Tensor& dpre, const Tensor& dbias_pre, const Tensor& dweight, const Tensor& dbias,
                            const Tensor& dout, const Tensor& x, const Tensor& weight, const Tensor& pre, int N, int C,
                            int OC) override {
    matmul_.backward_weight(stream_, dweight.f32(), dbias ? dbias.f32() : nullptr, scratch(), bf(dout), bf(x), N, C,
                            OC);
    matmul_.backward_input_gelu(stream_, bf(dpre), dbias_pre.f32(), scratch(), bf(dout), bf(weight), bf(pre), N, C, OC);
  }
  void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& qkv, int B, int T, int NH,
                         int HS) override {
    kiln::KILN_NS::attention_forward(stream_, bf(out), lse.f32(), bf(qkv), {B, T, NH, HS, true});
  }
  void attention_backward(const Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& out,
                          const Tensor& lse, int B, int T, int NH, int HS) override {
    kiln::KILN_NS::attention_backward(stream_, bf(dqkv), scratch(), bf(dout), bf(qkv), bf(out), lse.f32(),
                                      {B, T, NH, HS, true}, AttentionKernel::tensor_core, attention_mode(options_));
  }

  void gelu_forward(const Tensor& out, const Tensor& x, int64_t n) override {
    kiln::KILN_NS::gelu_forward(stream_, bf(out), bf(x), n);
  }
  void gelu_backward(const Tensor& dx, const Tensor& x, const Tensor& dout, int64_t n) override {
    kiln::KILN_NS::gelu_backward(stream_, bf(dx), bf(x), bf(dout), n);
  }

  void cross_entropy(const Tensor& losses, const Tensor& logits, const Tensor& targets, int N, int V, int Vp,
                     bool with_grad, float dloss) override {
    cross_entropy_forward_backward(stream_, losses.f32(), bf(logits), targets.i32(), N, V, Vp, dloss, with_grad);
  }
  void cross_entropy_stats(const Tensor& row_max, const Tensor& row_sumexp, const Tensor& target_logit,
                           const Tensor& logits, const Tensor& targets, int N, int vocab_begin, int valid,
                           int Vp_local) override {
    kiln::KILN_NS::cross_entropy_stats(stream_, row_max.f32(), row_sumexp.f32(), target_logit.f32(), bf(logits),
                                       targets.i32(), N, vocab_begin, valid, Vp_local);
  }
  void rescale_sumexp(const Tensor& row_sumexp, const Tensor& row_max, const Tensor& global_max, int N) override {
    kiln::KILN_NS::rescale_sumexp(stream_, row_sumexp.f32(), row_max.f32(), global_max.f32(), N);
  }
  void cross_entropy_from_stats(const Tensor& losses, const Tensor& logits, const Tensor& targets,
                                const Tensor& global_max, const Tensor& global_sumexp,
                                const Tensor& global_target_logit, int N, int vocab_begin, int valid, int Vp_local,
                                bool with_grad, float dloss) override {
    kiln::KILN_NS::cross_entropy_from_stats(stream_, losses.f32(), bf(logits), targets.i32(), global_max.f32(),
                                            global_sumexp.f32(), global_target_logit.f32(), N, vocab_begin, valid,
                                            Vp_local, dloss, with_grad);
  }

  double sum_squares(const Tensor& x) override {
    grad_norm_squared(stream_, norm_.data(), norm_.data() + 1, x.f32(), x.numel);
    float squares = 0;
    copy_out(&squares, norm_.data(), sizeof(float));
    return squares;
  }
  Buffer make_adamw_table(std::span<const ref::AdamWRange> ranges) override {
    check_adamw_ranges(ranges, ranges.empty() ? 0 : ranges.back().offset + ranges.back().count);
    Buffer table = allocate((int64_t)ranges.size_bytes(), DType::u8);
    copy_in(table.view().data, ranges.data(), ranges.size_bytes());
    return table;
  }
  void adamw_update(const Tensor& master, const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                    const Tensor& table, const ref::AdamWParams& hp) override {
    for (const Tensor* t : {&params, &grads, &m, &v})
      if (t->numel != master.numel) throw std::invalid_argument("adamw_update: tensors of different sizes");
    kiln::KILN_NS::adamw_update(stream_, master.f32(), bf(params), grads.f32(), m.f32(), v.f32(),
                                static_cast<const AdamWRange*>(table.data),
                                (int)(table.numel / (int64_t)sizeof(AdamWRange)), master.numel, hp);
  }

 private:
  float* scratch() const {
    if (!scratch_.data()) throw std::logic_error(name() + " backend: reserve_workspace was not called");
    return scratch_.data();
  }
  static void check_size(const char* what, const Tensor& t, size_t n) {
    if ((int64_t)n != t.numel)
      throw std::invalid_argument(std::string(what) + " of " + std::to_string(n) + " values for a tensor of " +
                                  std::to_string(t.numel));
  }
  // Copies complete before returning, so the host side may be reused at once.
  void copy_in(void* device, const void* host, size_t bytes) {
    KILN_CHECK(KILN_RT cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream_.get()));
    stream_.synchronize();
  }
  void copy_out(void* host, const void* device, size_t bytes) {
    KILN_CHECK(KILN_RT cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream_.get()));
    stream_.synchronize();
  }

  CudaOpsOptions options_;
  Stream stream_;
  Matmul matmul_;
  DeviceBuffer<float> norm_, scratch_;
  DeviceBuffer<int32_t> order_, segment_starts_;
  PinnedBuffer<int32_t> staging_;
  std::map<std::string, double> no_times_;
};

}  // namespace

std::unique_ptr<Ops> make_cuda_ops(const CudaOpsOptions& options) {
#ifdef KILN_EMU
  if (options.emulated_memory_bytes > 0) set_device_memory((size_t)options.emulated_memory_bytes);
#endif
  KILN_CHECK(KILN_RT cudaSetDevice(options.device));
  return std::make_unique<CudaOps>(options);
}

int64_t device_allocation_count() { return device_allocations(); }

int64_t cuda_ops_workspace_bytes(const OpsShape& shape, const CudaOpsOptions& options) {
  return (int64_t)(scratch_floats(shape, options) * sizeof(float)) + fixed_bytes(shape) +
         (int64_t)MatmulOptions{}.workspace_bytes;
}

}  // namespace kiln::KILN_NS
