#include "kernels/bench/bench.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cuda/adamw.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cross_entropy.h"
#include "kernels/device/runtime.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/gelu.h"
#include "kernels/cuda/layernorm.h"
#include "kernels/cuda/matmul.h"

namespace kiln::KILN_NS {
namespace {

using bf16 = __nv_bfloat16;

// What the kernels' shapes depend on in a GPT-2 size (model/config.cpp's presets).
struct ModelShape {
  const char* name;
  int C, layers;
  int T;      // context length: wpe rows, and the B*T split of the embedding
  int V, Vp;  // vocabulary, and its padding to a multiple of 128
};
constexpr ModelShape kModels[] = {{"124m", 768, 12, 1024, 50257, 50304},
                                  {"350m", 1024, 24, 1024, 50257, 50304},
                                  {"1558m", 1600, 48, 1024, 50257, 50304}};
constexpr ModelShape kTiny{"tiny", 64, 2, 32, 500, 512};
constexpr int kTinyTokens = 64;

constexpr size_t kCopyBytes = size_t(1) << 30;        // the copy-bandwidth reference
constexpr size_t kL2FlushBytes = size_t(256) << 20;   // several times an H100's 50 MB L2
constexpr size_t kTinyBufferBytes = size_t(1) << 20;  // both, on the emulator

// A linear layer of the block or the LM head: x[N, in] @ W[out, in]^T (+ bias[out]).
struct Linear {
  const char* name;
  int in, out;
  bool bias;
  bool gelu_output;  // fc: its forward fuses GELU (forward_gelu)
  bool gelu_input;   // mlp_proj: its input is gelu(fc's pre), so its dgrad fuses GELU's backward
};
std::vector<Linear> gpt2_linears(const ModelShape& m) {
  const int C = m.C;
  return {{"qkv", C, 3 * C, true, false, false},
          {"attn_proj", C, C, true, false, false},
          {"fc", C, 4 * C, true, true, false},
          {"mlp_proj", 4 * C, C, true, false, true},
          {"lm_head", C, m.Vp, false, false, false}};
}

// The model's parameter tensors in the order of model/params.cpp, decay on the matrices: the
// table adamw_update searches, as long as the real one.
std::vector<AdamWRange> gpt2_parameter_ranges(const ModelShape& m) {
  const int64_t C = m.C;
  std::vector<AdamWRange> ranges;
  int64_t offset = 0;
  auto add = [&](int64_t count, bool decay) {
    ranges.push_back({offset, count, decay});
    offset += count;
  };
  add(m.Vp * C, true);  // wte
  add(m.T * C, true);   // wpe
  for (int l = 0; l < m.layers; l++) {
    add(C, false), add(C, false);             // ln_1
    add(3 * C * C, true), add(3 * C, false);  // attn.c_attn
    add(C * C, true), add(C, false);          // attn.c_proj
    add(C, false), add(C, false);             // ln_2
    add(4 * C * C, true), add(4 * C, false);  // mlp.c_fc
    add(4 * C * C, true), add(C, false);      // mlp.c_proj
  }
  add(C, false), add(C, false);  // ln_f
  return ranges;
}

std::string dims(int64_t rows, int64_t cols) { return std::to_string(rows) + "x" + std::to_string(cols); }

// One benchmark run: the stream, the timing settings, the reference bandwidth and the rows so far.
class Bench {
 public:
  Bench(int warmup, int reps, size_t l2_flush_bytes) : warmup_(warmup), reps_(reps), l2_flush_(l2_flush_bytes) {}
  const Stream& stream() const { return stream_; }

  // Median milliseconds of reps runs of `work` after warmup untimed ones. All runs are queued
  // before the first wait, so the device never idles between a start event and the work, and
  // the time excludes the host's launch latency; the median drops outliers (clock ramp-up).
  // Before each run, untimed, a write over a buffer larger than the L2 cache evicts the inputs
  // that the previous run left there: at 8k tokens a 124M activation (12-50 MB) would otherwise
  // stay cached and "beat" the DRAM copy bandwidth that the rows are compared with.
  template <class F>
  double time_ms(F&& work) {
    for (int i = 0; i < warmup_; i++) work();
    std::deque<Event> events;  // an Event cannot move; a deque never relocates its elements
    for (int i = 0; i < reps_; i++) {
      l2_flush_.fill_bytes(0, stream_);
      events.emplace_back(true).record(stream_);
      work();
      events.emplace_back(true).record(stream_);
    }
    events.back().synchronize();
    std::vector<double> ms;
    for (int i = 0; i < reps_; i++) ms.push_back(events[2 * i + 1].elapsed_ms_since(events[2 * i]));
    std::sort(ms.begin(), ms.end());
    return (ms[(reps_ - 1) / 2] + ms[reps_ / 2]) / 2;
  }

  // n values uniform in [lo, hi). One host block of random values is uploaded and repeated over
  // the buffer by doubling device copies: generating billions of values on the host (the 1.5B
  // model's optimizer state) would take longer than the benchmark, and no kernel's time depends
  // on the values beyond their being finite numbers (fresh device memory may hold NaNs; on the
  // emulator it does).
  template <class T>
  DeviceBuffer<T> random(size_t n, float lo, float hi) {
    constexpr size_t kBlock = 1 << 20;
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<T> host(std::min(n, kBlock));
    for (T& x : host) {
      if constexpr (std::is_same_v<T, bf16>)
        x = __float2bfloat16(dist(rng_));
      else
        x = dist(rng_);
    }
    DeviceBuffer<T> d(n);
    KILN_CHECK(
        KILN_RT cudaMemcpyAsync(d.data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, stream_.get()));
    for (size_t filled = host.size(); filled < n;) {
      const size_t count = std::min(filled, n - filled);
      KILN_CHECK(KILN_RT cudaMemcpyAsync(d.data() + filled, d.data(), count * sizeof(T), cudaMemcpyDeviceToDevice,
                                         stream_.get()));
      filled += count;
    }
    stream_.synchronize();  // `host` must outlive its copy
    return d;
  }
  // n integers uniform in [0, bound), on the host (token ids, targets: small).
  std::vector<int32_t> random_ids(size_t n, int bound) {
    std::uniform_int_distribution<int32_t> dist(0, bound - 1);
    std::vector<int32_t> ids(n);
    for (int32_t& id : ids) id = dist(rng_);
    return ids;
  }
  template <class T>
  DeviceBuffer<T> upload(const std::vector<T>& host) {
    DeviceBuffer<T> d(host.size());
    d.upload(host, stream_);
    stream_.synchronize();
    return d;
  }
  // Accumulated outputs (gradients) start at zero.
  template <class T>
  DeviceBuffer<T> zeros(size_t n) {
    DeviceBuffer<T> d(n);
    d.fill_bytes(0, stream_);
    return d;
  }

  // A device-to-device copy of `bytes`, counted twice (read + write): the practical ceiling that
  // every memory-bound kernel is compared with. Runs first; the rows are relative to it.
  void measure_copy_bandwidth(size_t bytes) {
    DeviceBuffer<std::byte> src(bytes), dst(bytes);
    const double ms = time_ms([&] {
      KILN_CHECK(KILN_RT cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice, stream_.get()));
    });
    copy_gb_per_s_ = 2.0 * bytes / (ms * 1e-3) / 1e9;
  }
  double copy_gb_per_s() const { return copy_gb_per_s_; }

  // Adds a row for `kernel` at this shape, which moves `bytes` (its minimal traffic) in `ms`; for a
  // matmul also its `flops` and `plain_ms`, the time of the plain GEMM of the same shape.
  void add(const char* kernel, const ModelShape& m, int64_t tokens, const std::string& shape, double bytes, double ms,
           double flops = 0, double plain_ms = 0) {
    KernelBenchRow r;
    r.kernel = kernel;
    r.model = m.name;
    r.tokens = tokens;
    r.shape = shape;
    r.median_ms = ms;
    r.bytes = bytes;
    r.gb_per_s = bytes / (ms * 1e-3) / 1e9;
    r.copy_fraction = r.gb_per_s / copy_gb_per_s_;
    if (flops > 0) {
      r.flops = flops;
      r.tflops = flops / (ms * 1e-3) / 1e12;
      if (plain_ms > 0) r.plain_tflops = flops / (plain_ms * 1e-3) / 1e12;
    }
    rows_.push_back(std::move(r));
  }
  // Times `work` and adds its row.
  template <class F>
  void measure(const char* kernel, const ModelShape& m, int64_t tokens, const std::string& shape, double bytes,
               F&& work) {
    add(kernel, m, tokens, shape, bytes, time_ms(work));
  }
  std::vector<KernelBenchRow>& rows() { return rows_; }

 private:
  Stream stream_;
  int warmup_, reps_;
  DeviceBuffer<std::byte> l2_flush_;
  std::mt19937 rng_{20240609};  // fixed: every run fills the same values
  double copy_gb_per_s_ = 0;
  std::vector<KernelBenchRow> rows_;
};

void bench_layernorm(Bench& b, const ModelShape& m, int N) {
  const int C = m.C;
  const size_t NC = (size_t)N * C;
  // residual_out = residual_in + branch (the block's attention or MLP output), then normalised.
  const DeviceBuffer<bf16> residual_in = b.random<bf16>(NC, -1, 1), branch = b.random<bf16>(NC, -1, 1);
  const DeviceBuffer<bf16> weight = b.random<bf16>(C, 0.5f, 1.5f), bias = b.random<bf16>(C, -0.1f, 0.1f);
  const DeviceBuffer<bf16> dout = b.random<bf16>(NC, -1, 1);
  DeviceBuffer<bf16> residual(NC), out(NC), dx = b.random<bf16>(NC, -1, 1);
  DeviceBuffer<float> mean(N), rstd(N), scratch(layernorm_backward_scratch_floats(N, C));
  DeviceBuffer<float> dweight = b.zeros<float>(C), dbias = b.zeros<float>(C);
  const std::string shape = dims(N, C);
  // residual_in, branch read and residual, out written (2NC bytes each); weight, bias read (2C
  // each); mean, rstd written (4N each).
  b.measure("residual_layernorm_forward", m, N, shape, 8.0 * NC + 4.0 * C + 8.0 * N, [&] {
    residual_layernorm_forward(b.stream(), residual.data(), out.data(), mean.data(), rstd.data(), residual_in.data(),
                               branch.data(), weight.data(), bias.data(), N, C);
  });
  // dout and x (the residual) read, dx read and written (2NC each); weight read (2C); mean, rstd
  // read (4N each); dweight, dbias read and written (8C each). The per-block partial sums in
  // scratch are the kernel's own traffic, not the minimum.
  b.measure("layernorm_backward", m, N, shape, 8.0 * NC + 2.0 * C + 8.0 * N + 16.0 * C, [&] {
    layernorm_backward(b.stream(), dx.data(), dweight.data(), dbias.data(), scratch.data(), dout.data(),
                       residual.data(), weight.data(), mean.data(), rstd.data(), N, C);
  });
}

// On the MLP's hidden activation, N x 4C.
void bench_gelu(Bench& b, const ModelShape& m, int N) {
  const int64_t n = (int64_t)N * 4 * m.C;
  const DeviceBuffer<bf16> x = b.random<bf16>(n, -3, 3), dout = b.random<bf16>(n, -1, 1);
  DeviceBuffer<bf16> out(n), dx(n);
  const std::string shape = dims(N, 4 * m.C);
  // x read, out written: 2n bytes each.
  b.measure("gelu_forward", m, N, shape, 4.0 * n, [&] { gelu_forward(b.stream(), out.data(), x.data(), n); });
  // x, dout read, dx written: 2n each.
  b.measure("gelu_backward", m, N, shape, 6.0 * n,
            [&] { gelu_backward(b.stream(), dx.data(), x.data(), dout.data(), n); });
}

// B = N / T sequences of random tokens. The backward plan is built on the host once, outside the
// timing: in training the host builds it while the device runs the previous step.
void bench_embedding(Bench& b, const ModelShape& m, int N) {
  const int C = m.C, T = m.T, B = N / T;
  const std::vector<int32_t> host_tokens = b.random_ids(N, m.V);
  const EmbeddingBackwardPlan plan = make_embedding_backward_plan(host_tokens.data(), B, T, 0, m.Vp);
  const int S = plan.segments();  // distinct tokens: the wte rows read and updated
  const DeviceBuffer<int32_t> tokens = b.upload(host_tokens), order = b.upload(plan.order),
                              segment_starts = b.upload(plan.segment_starts);
  const DeviceBuffer<bf16> wte = b.random<bf16>((size_t)m.Vp * C, -0.1f, 0.1f),
                           wpe = b.random<bf16>((size_t)T * C, -0.1f, 0.1f);
  const DeviceBuffer<bf16> dout = b.random<bf16>((size_t)N * C, -1, 1);
  DeviceBuffer<bf16> out((size_t)N * C);
  DeviceBuffer<float> dwte = b.zeros<float>((size_t)m.Vp * C), dwpe = b.zeros<float>((size_t)T * C);
  const std::string shape = "B=" + std::to_string(B) + " T=" + std::to_string(T) + " C=" + std::to_string(C) + ", " +
                            std::to_string(S) + " distinct tokens";
  // tokens read (4N bytes); the S used rows of wte and all of wpe read (2SC + 2TC); out written
  // (2NC).
  b.measure("embedding_forward", m, N, shape, 4.0 * N + 2.0 * S * C + 2.0 * T * C + 2.0 * N * C, [&] {
    embedding_forward(b.stream(), out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C, 0, m.Vp);
  });
  // dout read (2NC); tokens and the plan's order read (4N each), its segment starts (4(S+1)); the
  // S rows of dwte and all of dwpe read and written (8SC + 8TC, fp32).
  const double backward_bytes = 2.0 * N * C + 8.0 * N + 4.0 * (S + 1) + 8.0 * S * C + 8.0 * T * C;
  b.measure("embedding_backward", m, N, shape, backward_bytes, [&] {
    embedding_backward(b.stream(), dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C, 0, m.Vp, order.data(),
                       segment_starts.data(), S);
  });
}

// Over the padded vocabulary, with the gradient (training's case). The gradient overwrites the
// logits, so later runs read the previous run's dlogits as logits: finite values like any others.
void bench_cross_entropy(Bench& b, const ModelShape& m, int N) {
  DeviceBuffer<bf16> logits = b.random<bf16>((size_t)N * m.Vp, -4, 4);
  const DeviceBuffer<int32_t> targets = b.upload(b.random_ids(N, m.V));
  DeviceBuffer<float> losses(N);
  const std::string shape = dims(N, m.Vp) + " (V=" + std::to_string(m.V) + ")";
  // logits read and dlogits written in place (2 N Vp bytes each); targets read, losses written
  // (4N each).
  b.measure("cross_entropy_forward_backward", m, N, shape, 4.0 * N * m.Vp + 8.0 * N, [&] {
    cross_entropy_forward_backward(b.stream(), losses.data(), logits.data(), targets.data(), N, m.V, m.Vp, 1.0f / N,
                                   true);
  });
}

// Over the whole model's parameters (the padded flat buffer), once per model.
void bench_optimizer(Bench& b, const ModelShape& m) {
  const std::vector<AdamWRange> table = gpt2_parameter_ranges(m);
  const int64_t n = table.back().offset + table.back().count;
  const DeviceBuffer<AdamWRange> ranges = b.upload(table);
  DeviceBuffer<float> master = b.random<float>(n, -0.1f, 0.1f), m1 = b.random<float>(n, -1e-3f, 1e-3f),
                      m2 = b.random<float>(n, 0, 1e-6f);
  const DeviceBuffer<float> grads = b.random<float>(n, -1e-3f, 1e-3f);
  DeviceBuffer<bf16> params(n);
  DeviceBuffer<float> norm(1), partials(kGradNormPartials);
  const ref::AdamWParams hp{6e-4, 0.9, 0.95, 1e-8, 0.1, 1, 1.0};
  const std::string shape = "n=" + std::to_string(n) + ", " + std::to_string(table.size()) + " ranges";
  // master, m, v read and written (8n bytes each), grads read (4n), params written (2n).
  b.measure("adamw_update", m, 0, shape, 30.0 * n, [&] {
    adamw_update(b.stream(), master.data(), params.data(), grads.data(), m1.data(), m2.data(), ranges.data(),
                 (int)table.size(), n, hp);
  });
  // grads read (4n); the 512 partial sums are the kernel's own traffic.
  b.measure("grad_norm_squared", m, 0, shape, 4.0 * n,
            [&] { grad_norm_squared(b.stream(), norm.data(), partials.data(), grads.data(), n); });
}

// The layer's forward, input gradient and weight gradient, each against the plain GEMM of the
// same N x in x out (Matmul::forward without bias: no epilogue), which does the same FLOPs.
void bench_linear(Bench& b, Matmul& matmul, const ModelShape& m, int N, const Linear& l) {
  const size_t NI = (size_t)N * l.in, NO = (size_t)N * l.out, W = (size_t)l.out * l.in;
  const DeviceBuffer<bf16> x = b.random<bf16>(NI, -1, 1), weight = b.random<bf16>(W, -0.02f, 0.02f);
  const DeviceBuffer<bf16> bias = b.random<bf16>(l.bias ? l.out : 0, -0.1f, 0.1f);
  const DeviceBuffer<bf16> dout = b.random<bf16>(NO, -1e-2f, 1e-2f);
  const DeviceBuffer<bf16> pre_input = b.random<bf16>(l.gelu_input ? NI : 0, -3, 3);  // fc's pre, for mlp_proj
  DeviceBuffer<bf16> out(NO), pre(l.gelu_output ? NO : 0), dx(NI);
  DeviceBuffer<float> dweight = b.zeros<float>(W), dbias = b.zeros<float>(l.out),
                      dbias_input = b.zeros<float>(l.gelu_input ? l.in : 0);
  DeviceBuffer<float> scratch(std::max(matmul_scratch_floats(N, l.out), matmul_scratch_floats(N, l.in)));
  float* dbias_or_null = l.bias ? dbias.data() : nullptr;
  const double flops = 2.0 * N * l.in * l.out;
  const double bias_bytes = l.bias ? 2.0 * l.out : 0;
  const std::string shape = std::string(l.name) + " " + std::to_string(l.in) + "->" + std::to_string(l.out);

  const double plain_ms =
      b.time_ms([&] { matmul.forward(b.stream(), out.data(), x.data(), weight.data(), nullptr, N, l.in, l.out); });
  auto measure = [&](const char* kernel, double bytes, auto&& work) {
    b.add(kernel, m, N, shape, bytes, b.time_ms(work), flops, plain_ms);
  };
  if (l.gelu_output) {
    // x, W, bias read; pre and out written (2 N out bytes each).
    measure("matmul_forward_gelu", 2.0 * NI + 2.0 * W + bias_bytes + 4.0 * NO, [&] {
      matmul.forward_gelu(b.stream(), out.data(), pre.data(), x.data(), weight.data(), bias.data(), N, l.in, l.out);
    });
  } else if (l.bias) {
    // x, W, bias read, out written.
    measure("matmul_forward", 2.0 * NI + 2.0 * W + bias_bytes + 2.0 * NO,
            [&] { matmul.forward(b.stream(), out.data(), x.data(), weight.data(), bias.data(), N, l.in, l.out); });
  } else {
    // Without a bias the forward is the plain GEMM itself: x, W read, out written.
    b.add("matmul_forward", m, N, shape, 2.0 * NI + 2.0 * W + 2.0 * NO, plain_ms, flops, plain_ms);
  }
  if (l.gelu_input) {
    // dout, W and pre read, dpre written (2 N in), the producing layer's bias gradient read and
    // written (8 in, fp32).
    measure("matmul_backward_input_gelu", 2.0 * NO + 2.0 * W + 4.0 * NI + 8.0 * l.in, [&] {
      matmul.backward_input_gelu(b.stream(), dx.data(), dbias_input.data(), scratch.data(), dout.data(), weight.data(),
                                 pre_input.data(), N, l.in, l.out);
    });
  } else {
    // dout, W read, dx written.
    measure("matmul_backward_input", 2.0 * NO + 2.0 * W + 2.0 * NI,
            [&] { matmul.backward_input(b.stream(), dx.data(), dout.data(), weight.data(), N, l.in, l.out); });
  }
  // dout, x read; dW read and written (8 out in, fp32), and the bias gradient (8 out).
  measure("matmul_backward_weight", 2.0 * NO + 2.0 * NI + 8.0 * W + (l.bias ? 8.0 * l.out : 0), [&] {
    matmul.backward_weight(b.stream(), dweight.data(), dbias_or_null, scratch.data(), dout.data(), x.data(), N, l.in,
                           l.out);
  });
}

// Causal attention over qkv[B, T, 3, H, D], counted as FlashAttention does: 4 B T^2 H D FLOPs for
// the forward (two GEMMs), halved for causal, and 2.5x that for the backward (five GEMMs, one of
// them recomputing the scores), in both modes: the deterministic one's separate dq pass does 1.4x
// that work, and is credited only with the same count, so its TFLOP/s compare times directly.
void bench_attention(Bench& b, const ModelShape& m, const AttentionShape& s) {
  const size_t rows = (size_t)s.B * s.T, width = (size_t)s.H * s.D;
  const DeviceBuffer<bf16> qkv = b.random<bf16>(rows * 3 * width, -1, 1), dout = b.random<bf16>(rows * width, -1, 1);
  DeviceBuffer<bf16> out(rows * width), dqkv(rows * 3 * width);
  DeviceBuffer<float> lse((size_t)s.B * s.H * s.T), scratch(attention_backward_scratch_floats(s));  // fast: the larger
  const double forward_flops = 4.0 * s.B * s.T * (double)s.T * s.H * s.D / (s.causal ? 2 : 1);
  const std::string shape = "B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) + " H=" + std::to_string(s.H) +
                            " D=" + std::to_string(s.D);
  attention_forward(b.stream(), out.data(), lse.data(), qkv.data(), s);  // out and lse for the backward
  // qkv read, out written (bf16), lse written (fp32).
  const double forward_bytes = 2.0 * rows * 3 * width + 2.0 * rows * width + 4.0 * s.B * s.H * s.T;
  b.add("attention_forward", m, (int64_t)rows, shape, forward_bytes,
        b.time_ms([&] { attention_forward(b.stream(), out.data(), lse.data(), qkv.data(), s); }), forward_flops);
  // qkv, out, dout read, dqkv written (bf16), lse read (fp32).
  const double backward_bytes = 2.0 * rows * 3 * width * 2 + 2.0 * rows * width * 2 + 4.0 * s.B * s.H * s.T;
  for (const AttentionMode mode : {AttentionMode::fast, AttentionMode::deterministic})
    b.add(mode == AttentionMode::fast ? "attention_backward" : "attention_backward_deterministic", m, (int64_t)rows,
          shape, backward_bytes, b.time_ms([&] {
            attention_backward(b.stream(), dqkv.data(), scratch.data(), dout.data(), qkv.data(), out.data(), lse.data(),
                               s, AttentionKernel::tensor_core, mode);
          }),
          2.5 * forward_flops);
}

// Head dim 128 at long contexts (2k to 8k), 16 heads, at about 16k tokens per batch.
constexpr int kLongContexts[] = {2048, 4096, 8192};
constexpr int kLongContextTokens = 16384, kLongContextHeads = 16;
constexpr ModelShape kLongContextRows{"D=128", kLongContextHeads * 128, 0, 0, 0, 0};  // labels the rows

const ModelShape& find_model(const std::string& name) {
  for (const ModelShape& m : kModels)
    if (name == m.name) return m;
  std::string names;
  for (const ModelShape& m : kModels) names += std::string(names.empty() ? "" : ", ") + m.name;
  throw std::invalid_argument("kiln bench kernels: unknown model '" + name + "' (expected one of " + names + ")");
}

}  // namespace

KernelBenchReport run_kernel_benchmarks(const KernelBenchOptions& o) {
  if (o.warmup < 0 || o.reps < 1) throw std::invalid_argument("kiln bench kernels: needs warmup >= 0 and reps >= 1");
  std::vector<ModelShape> models;
  std::vector<int> token_counts;
  if (o.tiny) {
    models = {kTiny};
    token_counts = {kTinyTokens};
  } else {
    for (const std::string& name : o.models) models.push_back(find_model(name));
    token_counts = o.tokens;
  }
  for (const int N : token_counts)
    for (const ModelShape& m : models)
      if (N <= 0 || N % m.T != 0)
        throw std::invalid_argument("kiln bench kernels: " + std::to_string(N) +
                                    " tokens: must be a positive multiple of T = " + std::to_string(m.T));

  KernelBenchReport report;
  cudaDeviceProp prop{};
  KILN_CHECK(KILN_RT cudaGetDeviceProperties(&prop, 0));
  report.device_name = prop.name;
  Bench b(o.warmup, o.reps, o.tiny ? kTinyBufferBytes : kL2FlushBytes);
  b.measure_copy_bandwidth(o.tiny ? kTinyBufferBytes : kCopyBytes);
  report.copy_gb_per_s = b.copy_gb_per_s();
  Matmul matmul;  // one algorithm cache for the run, as in training
  for (const ModelShape& m : models) {
    bench_optimizer(b, m);
    for (const int N : token_counts) {
      bench_layernorm(b, m, N);
      bench_gelu(b, m, N);
      bench_embedding(b, m, N);
      bench_cross_entropy(b, m, N);
      for (const Linear& l : gpt2_linears(m)) bench_linear(b, matmul, m, N, l);
      bench_attention(b, m, {N / m.T, m.T, m.C / 64, 64});  // GPT-2: 64-wide heads
    }
  }
  if (o.tiny) {
    bench_attention(b, kTiny, {1, 2 * kTiny.T, 1, 128});
  } else {
    for (const int T : kLongContexts)
      bench_attention(b, kLongContextRows, {kLongContextTokens / T, T, kLongContextHeads, 128});
  }
  report.rows = std::move(b.rows());
  return report;
}

}  // namespace kiln::KILN_NS
