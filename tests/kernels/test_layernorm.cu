// LayerNorm kernels (kernels/cuda/layernorm.cu) against the CPU reference (kernels/ref/layernorm_ref.cpp)
// in double: the inputs are rounded to bf16 on the host first and the reference gets the same
// rounded values. Outputs are poisoned with NaN bytes before each launch, so a value never written
// fails. On the emulator every case also runs under the forward, reverse and random thread orders
// and must agree bit for bit; on the GPU, repeated runs must.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cuda/layernorm.h"
#include "kernels/ref/ref.h"
#include "tests/device_test.h"

namespace kiln::KILN_NS {
namespace {

const int kRows[] = {1, 3, 64};
const int kChannels[] = {3, 8, 100, 768};  // C % 8 != 0 takes the scalar path, 8 and 768 the 128-bit one

// ---- Helpers -------------------------------------------------------------------------------

using LayerNorm = DeviceTest;

template <class T>
void append_bytes(std::vector<unsigned char>& out, const std::vector<T>& v) {
  const size_t at = out.size();
  out.resize(at + v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(out.data() + at, v.data(), v.size() * sizeof(T));
}

// Runs `run` (which returns the bytes of its results) several times and expects bitwise equal
// results: on the emulator under the forward, reverse and random (seeds 1, 2) orders and forward
// again; on the GPU three times.
void expect_reproducible(const std::function<std::vector<unsigned char>()>& run) {
#ifdef KILN_EMU
  using ::kiln::emu::Order;
  ::kiln::emu::Settings& s = ::kiln::emu::settings();
  const ::kiln::emu::Settings saved = s;
  s.order = Order::forward;
  const std::vector<unsigned char> reference = run();
  const struct {
    Order order;
    unsigned seed;
    const char* name;
  } others[] = {{Order::reverse, 0, "reverse"},
                {Order::random, 1, "random (seed 1)"},
                {Order::random, 2, "random (seed 2)"},
                {Order::forward, 0, "forward, repeated"}};
  for (const auto& o : others) {
    s.order = o.order;
    s.seed = o.seed;
    const std::vector<unsigned char> got = run();
    ASSERT_EQ(got.size(), reference.size()) << o.name;
    const auto diff = std::mismatch(got.begin(), got.end(), reference.begin());
    EXPECT_TRUE(diff.first == got.end()) << "order " << o.name << " differs from forward at byte "
                                         << (diff.first - got.begin());
  }
  s = saved;
#else
  const std::vector<unsigned char> reference = run();
  for (int rep = 1; rep < 3; rep++)
    EXPECT_TRUE(run() == reference) << "repetition " << rep << " differs from the first";
#endif
}

// Uniform in [lo, hi], rounded to bf16 (the host keeps the rounded values for the reference).
std::vector<bf16> random_bf16(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<bf16> v(n);
  for (bf16& x : v) x = __float2bfloat16(dist(rng));
  return v;
}

std::vector<float> random_floats(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Activation-like rows: row n is offset_n + scale_n * u with u uniform in [-1, 1], |offset_n| in
// [0.5, 2] (so that no row's mean is near 0 and the fp32 mean can be held to a relative 1e-5) and
// scale_n in [0.05, 3] (small variances make eps matter to rstd).
std::vector<bf16> random_rows(int N, int C, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f), magnitude(0.5f, 2.0f), scale(0.05f, 3.0f);
  std::vector<bf16> v((size_t)N * C);
  for (int n = 0; n < N; n++) {
    const float offset = (u(rng) < 0 ? -1.0f : 1.0f) * magnitude(rng), sc = scale(rng);
    for (int c = 0; c < C; c++) v[(size_t)n * C + c] = __float2bfloat16(offset + sc * u(rng));
  }
  return v;
}

// max |got - want| / max |want|; infinite if anything in `got` is not finite (NaN never passes).
template <class T>
double rel_error(const std::vector<T>& got, const std::vector<double>& want) {
  EXPECT_EQ(got.size(), want.size());
  double max_diff = 0.0, max_want = 0.0;
  for (size_t i = 0; i < got.size() && i < want.size(); i++) {
    const double g = as_double(got[i]);
    if (!std::isfinite(g)) return INFINITY;
    max_diff = std::max(max_diff, std::fabs(g - want[i]));
    max_want = std::max(max_want, std::fabs(want[i]));
  }
  return max_want > 0.0 ? max_diff / max_want : max_diff;
}

// Worst relative errors seen over a test's cases, printed at its end for the record.
struct Worst {
  const char* names[3];
  double err[3] = {0, 0, 0};
  void update(int i, double e) { err[i] = std::max(err[i], e); }
  void print(const char* what) const {
    std::printf("%s worst relative errors: %s %.3g, %s %.3g, %s %.3g\n", what, names[0], err[0], names[1], err[1],
                names[2], err[2]);
  }
};

constexpr double kBf16Tol = 1e-2;  // bf16 outputs: one rounding is at most 2^-9 relative
constexpr double kF32Tol = 1e-5;   // fp32 outputs from the same rounded inputs

// The reference forward on bf16 inputs, in double.
struct ForwardRef {
  std::vector<double> out, mean, rstd;
};
ForwardRef reference_forward(const std::vector<bf16>& x, const std::vector<bf16>& weight, const std::vector<bf16>& bias,
                             int N, int C) {
  ForwardRef r{std::vector<double>((size_t)N * C), std::vector<double>(N), std::vector<double>(N)};
  const std::vector<double> xd = to_double(x), wd = to_double(weight), bd = to_double(bias);
  ref::layernorm_forward<double>(r.out.data(), r.mean.data(), r.rstd.data(), xd.data(), wd.data(), bd.data(), N, C);
  return r;
}

// ---- Forward -------------------------------------------------------------------------------

TEST_F(LayerNorm, ForwardMatchesReference) {
  Worst worst{{"out", "mean", "rstd"}};
  for (int N : kRows)
    for (int C : kChannels) {
      SCOPED_TRACE("N = " + std::to_string(N) + ", C = " + std::to_string(C));
      const uint32_t seed = 1000 * N + C;
      const std::vector<bf16> x = random_rows(N, C, seed), weight = random_bf16(C, 0.5f, 1.5f, seed + 1),
                              bias = random_bf16(C, -0.5f, 0.5f, seed + 2);
      const ForwardRef want = reference_forward(x, weight, bias, N, C);
      expect_reproducible([&] {
        Stream s;
        DeviceBuffer<bf16> d_x = to_device(x, s), d_w = to_device(weight, s), d_b = to_device(bias, s);
        DeviceBuffer<bf16> d_out = poisoned<bf16>((size_t)N * C, s);
        DeviceBuffer<float> d_mean = poisoned<float>(N, s), d_rstd = poisoned<float>(N, s);
        layernorm_forward(s, d_out.data(), d_mean.data(), d_rstd.data(), d_x.data(), d_w.data(), d_b.data(), N, C);
        const std::vector<bf16> out = d_out.to_host(s);
        const std::vector<float> mean = d_mean.to_host(s), rstd = d_rstd.to_host(s);
        const double e_out = rel_error(out, want.out), e_mean = rel_error(mean, want.mean),
                     e_rstd = rel_error(rstd, want.rstd);
        EXPECT_LT(e_out, kBf16Tol);
        EXPECT_LT(e_mean, kF32Tol);
        EXPECT_LT(e_rstd, kF32Tol);
        worst.update(0, e_out), worst.update(1, e_mean), worst.update(2, e_rstd);
        std::vector<unsigned char> bytes;
        append_bytes(bytes, out), append_bytes(bytes, mean), append_bytes(bytes, rstd);
        return bytes;
      });
    }
  worst.print("layernorm_forward");
}

// residual_out is exactly bf16(float(a) + float(b)); out, mean and rstd are the LayerNorm of that
// rounded residual: against the reference, and bitwise against layernorm_forward(residual_out).
TEST_F(LayerNorm, ResidualForwardMatchesReference) {
  Worst worst{{"out", "mean", "rstd"}};
  for (int N : kRows)
    for (int C : kChannels) {
      SCOPED_TRACE("N = " + std::to_string(N) + ", C = " + std::to_string(C));
      const uint32_t seed = 2000 * N + C;
      const std::vector<bf16> a = random_rows(N, C, seed), b = random_bf16((size_t)N * C, -0.3f, 0.3f, seed + 3),
                              weight = random_bf16(C, 0.5f, 1.5f, seed + 1),
                              bias = random_bf16(C, -0.5f, 0.5f, seed + 2);
      std::vector<bf16> residual(a.size());
      for (size_t i = 0; i < a.size(); i++)
        residual[i] = __float2bfloat16(__bfloat162float(a[i]) + __bfloat162float(b[i]));
      const ForwardRef want = reference_forward(residual, weight, bias, N, C);
      expect_reproducible([&] {
        Stream s;
        DeviceBuffer<bf16> d_a = to_device(a, s), d_b = to_device(b, s), d_w = to_device(weight, s),
                           d_bias = to_device(bias, s);
        DeviceBuffer<bf16> d_res = poisoned<bf16>((size_t)N * C, s), d_out = poisoned<bf16>((size_t)N * C, s),
                           d_out2 = poisoned<bf16>((size_t)N * C, s);
        DeviceBuffer<float> d_mean = poisoned<float>(N, s), d_rstd = poisoned<float>(N, s),
                            d_mean2 = poisoned<float>(N, s), d_rstd2 = poisoned<float>(N, s);
        residual_layernorm_forward(s, d_res.data(), d_out.data(), d_mean.data(), d_rstd.data(), d_a.data(), d_b.data(),
                                   d_w.data(), d_bias.data(), N, C);
        layernorm_forward(s, d_out2.data(), d_mean2.data(), d_rstd2.data(), d_res.data(), d_w.data(), d_bias.data(), N,
                          C);
        const std::vector<bf16> res = d_res.to_host(s), out = d_out.to_host(s), out2 = d_out2.to_host(s);
        const std::vector<float> mean = d_mean.to_host(s), rstd = d_rstd.to_host(s), mean2 = d_mean2.to_host(s),
                                 rstd2 = d_rstd2.to_host(s);
        EXPECT_EQ(std::memcmp(res.data(), residual.data(), res.size() * sizeof(bf16)), 0)
            << "residual_out != bf16(a + b)";
        const double e_out = rel_error(out, want.out), e_mean = rel_error(mean, want.mean),
                     e_rstd = rel_error(rstd, want.rstd);
        EXPECT_LT(e_out, kBf16Tol);
        EXPECT_LT(e_mean, kF32Tol);
        EXPECT_LT(e_rstd, kF32Tol);
        worst.update(0, e_out), worst.update(1, e_mean), worst.update(2, e_rstd);
        EXPECT_EQ(std::memcmp(out.data(), out2.data(), out.size() * sizeof(bf16)), 0) << "fused out differs";
        EXPECT_EQ(std::memcmp(mean.data(), mean2.data(), mean.size() * sizeof(float)), 0) << "fused mean differs";
        EXPECT_EQ(std::memcmp(rstd.data(), rstd2.data(), rstd.size() * sizeof(float)), 0) << "fused rstd differs";
        std::vector<unsigned char> bytes;
        append_bytes(bytes, res), append_bytes(bytes, out), append_bytes(bytes, mean), append_bytes(bytes, rstd);
        return bytes;
      });
    }
  worst.print("residual_layernorm_forward");
}

// ---- Backward ------------------------------------------------------------------------------

// One backward case: dx, dweight and dbias start from nonzero values and must come back as those
// plus the gradient (they accumulate). mean and rstd are the reference's, rounded to float, and
// both sides get the same floats.
void check_backward(int N, int C, uint32_t seed, Worst& worst) {
  SCOPED_TRACE("N = " + std::to_string(N) + ", C = " + std::to_string(C));
  const std::vector<bf16> x = random_rows(N, C, seed), weight = random_bf16(C, 0.5f, 1.5f, seed + 1),
                          bias = random_bf16(C, -0.5f, 0.5f, seed + 2),
                          dout = random_bf16((size_t)N * C, -1.0f, 1.0f, seed + 3),
                          dx0 = random_bf16((size_t)N * C, -1.0f, 1.0f, seed + 4);
  const std::vector<float> dweight0 = random_floats(C, -1.0f, 1.0f, seed + 5),
                           dbias0 = random_floats(C, -1.0f, 1.0f, seed + 6);
  const ForwardRef fwd = reference_forward(x, weight, bias, N, C);
  std::vector<float> mean(N), rstd(N);
  for (int n = 0; n < N; n++) mean[n] = (float)fwd.mean[n], rstd[n] = (float)fwd.rstd[n];

  std::vector<double> want_dx = to_double(dx0), want_dw = to_double(dweight0), want_db = to_double(dbias0);
  {
    const std::vector<double> xd = to_double(x), wd = to_double(weight), gd = to_double(dout), md = to_double(mean),
                              rd = to_double(rstd);
    ref::layernorm_backward<double>(want_dx.data(), want_dw.data(), want_db.data(), gd.data(), xd.data(), wd.data(),
                                    md.data(), rd.data(), N, C);
  }
  expect_reproducible([&] {
    Stream s;
    DeviceBuffer<bf16> d_x = to_device(x, s), d_w = to_device(weight, s), d_dout = to_device(dout, s),
                       d_dx = to_device(dx0, s);
    DeviceBuffer<float> d_dw = to_device(dweight0, s), d_db = to_device(dbias0, s), d_mean = to_device(mean, s),
                        d_rstd = to_device(rstd, s);
    DeviceBuffer<float> scratch = poisoned<float>(layernorm_backward_scratch_floats(N, C), s);
    layernorm_backward(s, d_dx.data(), d_dw.data(), d_db.data(), scratch.data(), d_dout.data(), d_x.data(), d_w.data(),
                       d_mean.data(), d_rstd.data(), N, C);
    const std::vector<bf16> dx = d_dx.to_host(s);
    const std::vector<float> dw = d_dw.to_host(s), db = d_db.to_host(s);
    const double e_dx = rel_error(dx, want_dx), e_dw = rel_error(dw, want_dw), e_db = rel_error(db, want_db);
    EXPECT_LT(e_dx, kBf16Tol);
    EXPECT_LT(e_dw, kF32Tol);
    EXPECT_LT(e_db, kF32Tol);
    worst.update(0, e_dx), worst.update(1, e_dw), worst.update(2, e_db);
    std::vector<unsigned char> bytes;
    append_bytes(bytes, dx), append_bytes(bytes, dw), append_bytes(bytes, db);
    return bytes;
  });
}

TEST_F(LayerNorm, BackwardAccumulatesAndMatchesReference) {
  Worst worst{{"dx", "dweight", "dbias"}};
  for (int N : kRows)
    for (int C : kChannels) check_backward(N, C, 3000 * N + C, worst);
  worst.print("layernorm_backward");
}

// Enough rows that each block handles more than one row per warp (4099 rows over at most 512
// blocks: 9 rows per block, the last block only 4), so the per-warp accumulators sum several rows.
TEST_F(LayerNorm, BackwardWithManyRowsPerBlock) {
  Worst worst{{"dx", "dweight", "dbias"}};
  EXPECT_EQ(layernorm_backward_scratch_floats(4099, 8), (size_t)456 * 2 * 8);
  check_backward(4099, 8, 7, worst);
  check_backward(4099, 3, 8, worst);
  worst.print("layernorm_backward, many rows");
}

// Rows wide enough that the kernels opt into more than 48 KB of dynamic shared memory (the
// emulator, like the GPU, refuses a launch that did not): the backward's per-warp accumulators at
// C = 1600 (GPT-2 XL) take 51200 bytes, the forward's row cache at C = 8000 takes 64000.
TEST_F(LayerNorm, WideRowsUseMoreSharedMemory) {
  Worst backward{{"dx", "dweight", "dbias"}};
  check_backward(3, 1600, 9, backward);
  backward.print("layernorm_backward, C = 1600");

  const int N = 2, C = 8000;
  const std::vector<bf16> x = random_rows(N, C, 10), weight = random_bf16(C, 0.5f, 1.5f, 11),
                          bias = random_bf16(C, -0.5f, 0.5f, 12);
  const ForwardRef want = reference_forward(x, weight, bias, N, C);
  Stream s;
  DeviceBuffer<bf16> d_x = to_device(x, s), d_w = to_device(weight, s), d_b = to_device(bias, s);
  DeviceBuffer<bf16> d_out = poisoned<bf16>((size_t)N * C, s);
  DeviceBuffer<float> d_mean = poisoned<float>(N, s), d_rstd = poisoned<float>(N, s);
  layernorm_forward(s, d_out.data(), d_mean.data(), d_rstd.data(), d_x.data(), d_w.data(), d_b.data(), N, C);
  EXPECT_LT(rel_error(d_out.to_host(s), want.out), kBf16Tol);
  EXPECT_LT(rel_error(d_mean.to_host(s), want.mean), kF32Tol);
  EXPECT_LT(rel_error(d_rstd.to_host(s), want.rstd), kF32Tol);
}

TEST_F(LayerNorm, ScratchSize) {
  // One row of 2C floats per backward block; a block takes at least 4 rows (one per warp) and
  // there are at most 512 blocks.
  EXPECT_EQ(layernorm_backward_scratch_floats(1, 3), (size_t)1 * 6);
  EXPECT_EQ(layernorm_backward_scratch_floats(64, 768), (size_t)16 * 1536);
  EXPECT_EQ(layernorm_backward_scratch_floats(2048, 768), (size_t)512 * 1536);
  EXPECT_EQ(layernorm_backward_scratch_floats(8192, 768), (size_t)512 * 1536);
  EXPECT_THROW(layernorm_backward_scratch_floats(0, 768), std::invalid_argument);
  EXPECT_THROW(layernorm_backward_scratch_floats(64, -1), std::invalid_argument);
}

// ---- Argument checks -----------------------------------------------------------------------

// Device buffers with room for a pointer one element past the start (misaligned for 128-bit).
struct Buffers {
  static constexpr int N = 2, C = 8;
  Stream s;
  DeviceBuffer<bf16> x{N * C + 8}, a{N * C + 8}, b{N * C + 8}, res{N * C + 8}, out{N * C + 8}, weight{C + 8},
      bias{C + 8}, dx{N * C + 8}, dout{N * C + 8};
  DeviceBuffer<float> mean{N + 1}, rstd{N + 1}, dweight{C + 1}, dbias{C + 1}, scratch{1024};
};

struct ForwardArgs {
  bf16 *res, *out;
  float *mean, *rstd;
  const bf16 *a, *b, *weight, *bias;
  int N, C;
};

TEST_F(LayerNorm, ForwardRejectsBadArguments) {
  Buffers buf;
  const ForwardArgs good{buf.res.data(), buf.out.data(),    buf.mean.data(), buf.rstd.data(), buf.a.data(),
                         buf.b.data(),   buf.weight.data(), buf.bias.data(), Buffers::N,      Buffers::C};
  // Each case spoils one argument; `x` is the plain forward's name for `a`.
  const struct {
    std::function<void(ForwardArgs&)> spoil;
    std::string name;  // how the message names the argument ("" for the size cases)
    std::string problem;
    bool plain;  // also an argument of layernorm_forward
  } cases[] = {
      {[](ForwardArgs& g) { g.N = 0; }, "", "N = 0 must be positive", true},
      {[](ForwardArgs& g) { g.N = -3; }, "", "N = -3 must be positive", true},
      {[](ForwardArgs& g) { g.C = 0; }, "", "C = 0 must be positive", true},
      {[](ForwardArgs& g) { g.C = 29064; }, "", "C = 29064 is too large", true},
      {[](ForwardArgs& g) { g.res = nullptr; }, "residual_out", " is null", false},
      {[](ForwardArgs& g) { g.out = nullptr; }, "out", " is null", true},
      {[](ForwardArgs& g) { g.mean = nullptr; }, "mean", " is null", true},
      {[](ForwardArgs& g) { g.rstd = nullptr; }, "rstd", " is null", true},
      {[](ForwardArgs& g) { g.a = nullptr; }, "a", " is null", true},
      {[](ForwardArgs& g) { g.b = nullptr; }, "b", " is null", false},
      {[](ForwardArgs& g) { g.weight = nullptr; }, "weight", " is null", true},
      {[](ForwardArgs& g) { g.bias = nullptr; }, "bias", " is null", true},
      {[](ForwardArgs& g) { g.res += 1; }, "residual_out", " is not 16-byte aligned", false},
      {[](ForwardArgs& g) { g.out += 1; }, "out", " is not 16-byte aligned", true},
      {[](ForwardArgs& g) { g.a += 1; }, "a", " is not 16-byte aligned", true},
      {[](ForwardArgs& g) { g.b += 1; }, "b", " is not 16-byte aligned", false},
      {[](ForwardArgs& g) { g.weight += 1; }, "weight", " is not 16-byte aligned", true},
      {[](ForwardArgs& g) { g.bias += 1; }, "bias", " is not 16-byte aligned", true},
  };
  for (const auto& c : cases) {
    ForwardArgs g = good;
    c.spoil(g);
    SCOPED_TRACE(c.name + c.problem);
    expect_invalid(
        [&] { residual_layernorm_forward(buf.s, g.res, g.out, g.mean, g.rstd, g.a, g.b, g.weight, g.bias, g.N, g.C); },
        "residual_layernorm_forward: " + c.name + c.problem);
    if (c.plain)
      expect_invalid([&] { layernorm_forward(buf.s, g.out, g.mean, g.rstd, g.a, g.weight, g.bias, g.N, g.C); },
                     "layernorm_forward: " + (c.name == "a" ? std::string("x") : c.name) + c.problem);
  }
  // With C % 8 != 0 the scalar path needs no 16-byte alignment: an offset pointer is accepted.
  ForwardArgs g = good;
  g.C = 7, g.a += 1, g.out += 1;
  buf.a.fill_bytes(0, buf.s), buf.out.fill_bytes(0, buf.s);
  buf.weight.fill_bytes(0, buf.s), buf.bias.fill_bytes(0, buf.s);
  EXPECT_NO_THROW(layernorm_forward(buf.s, g.out, g.mean, g.rstd, g.a, g.weight, g.bias, g.N, g.C));
  buf.s.synchronize();
}

struct BackwardArgs {
  bf16* dx;
  float *dweight, *dbias, *scratch;
  const bf16 *dout, *x, *weight;
  const float *mean, *rstd;
  int N, C;
};

TEST_F(LayerNorm, BackwardRejectsBadArguments) {
  Buffers buf;
  const BackwardArgs good{buf.dx.data(),   buf.dweight.data(), buf.dbias.data(),  buf.scratch.data(),
                          buf.dout.data(), buf.x.data(),       buf.weight.data(), buf.mean.data(),
                          buf.rstd.data(), Buffers::N,         Buffers::C};
  const struct {
    std::function<void(BackwardArgs&)> spoil;
    std::string message;
  } cases[] = {
      {[](BackwardArgs& g) { g.N = 0; }, "N = 0 must be positive"},
      {[](BackwardArgs& g) { g.C = -8; }, "C = -8 must be positive"},
      {[](BackwardArgs& g) { g.C = 7272; }, "C = 7272 is too large"},
      {[](BackwardArgs& g) { g.dx = nullptr; }, "dx is null"},
      {[](BackwardArgs& g) { g.dweight = nullptr; }, "dweight is null"},
      {[](BackwardArgs& g) { g.dbias = nullptr; }, "dbias is null"},
      {[](BackwardArgs& g) { g.scratch = nullptr; }, "scratch is null"},
      {[](BackwardArgs& g) { g.dout = nullptr; }, "dout is null"},
      {[](BackwardArgs& g) { g.x = nullptr; }, "x is null"},
      {[](BackwardArgs& g) { g.weight = nullptr; }, "weight is null"},
      {[](BackwardArgs& g) { g.mean = nullptr; }, "mean is null"},
      {[](BackwardArgs& g) { g.rstd = nullptr; }, "rstd is null"},
      {[](BackwardArgs& g) { g.dx += 1; }, "dx is not 16-byte aligned"},
      {[](BackwardArgs& g) { g.dout += 1; }, "dout is not 16-byte aligned"},
      {[](BackwardArgs& g) { g.x += 1; }, "x is not 16-byte aligned"},
      {[](BackwardArgs& g) { g.weight += 1; }, "weight is not 16-byte aligned"},
  };
  for (const auto& c : cases) {
    BackwardArgs g = good;
    c.spoil(g);
    SCOPED_TRACE(c.message);
    expect_invalid(
        [&] {
          layernorm_backward(buf.s, g.dx, g.dweight, g.dbias, g.scratch, g.dout, g.x, g.weight, g.mean, g.rstd, g.N,
                             g.C);
        },
        "layernorm_backward: " + c.message);
  }
}

}  // namespace
}  // namespace kiln::KILN_NS
