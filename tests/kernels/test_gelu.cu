// kernels/cuda/gelu.cu against kiln::ref's GELU: both paths (128-bit packs with a scalar tail, and the
// scalar fallback for misaligned pointers), in place, bitwise determinism, and the launchers'
// argument checks.
#include "kernels/cuda/gelu.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/ref/ref.h"
#include "tests/device_test.h"

namespace kiln::KILN_NS {
namespace {

using gelu = DeviceTest;

// Random values rounded to bf16; `rounded` receives the same values as float for the reference.
std::vector<bf16> random_bf16(size_t n, float lo, float hi, uint32_t seed, std::vector<float>& rounded) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<bf16> out(n);
  rounded.resize(n);
  for (size_t i = 0; i < n; i++) {
    out[i] = __float2bfloat16(dist(rng));
    rounded[i] = __bfloat162float(out[i]);
  }
  return out;
}

// A device copy of `host` starting `offset` elements into its buffer (offset 1: 2-byte aligned
// only, which forces the scalar path). Poisoned (0xff bytes: NaN) around and, if `host` is empty,
// throughout.
struct Placed {
  DeviceBuffer<bf16> buffer;
  bf16* data;
};
Placed place(const std::vector<bf16>& host, size_t n, int offset, const Stream& s) {
  Placed p{DeviceBuffer<bf16>(n + 8), nullptr};
  p.buffer.fill_bytes(0xff, s);
  p.data = p.buffer.data() + offset;
  if (!host.empty())
    KILN_CHECK(KILN_RT cudaMemcpyAsync(p.data, host.data(), n * sizeof(bf16), cudaMemcpyHostToDevice, s.get()));
  return p;
}
std::vector<bf16> fetch(const Placed& p, size_t n, const Stream& s) {
  std::vector<bf16> out(n);
  KILN_CHECK(KILN_RT cudaMemcpyAsync(out.data(), p.data, n * sizeof(bf16), cudaMemcpyDeviceToHost, s.get()));
  s.synchronize();
  return out;
}

constexpr int64_t kSizes[] = {1, 7, 8, 1000, 4099};
// (x offset, out offset) in elements: both aligned (vector path with a tail), both misaligned, and
// only one misaligned (both scalar).
constexpr int kOffsets[][2] = {{0, 0}, {1, 1}, {0, 1}, {1, 0}};

TEST_F(gelu, ForwardMatchesReference) {
  double worst = 0;
  for (int64_t n : kSizes) {
    std::vector<float> xf;
    const std::vector<bf16> x = random_bf16(n, -6.0f, 6.0f, (uint32_t)n, xf);
    std::vector<float> want(n);
    ref::gelu_forward(want.data(), xf.data(), n);
    for (const auto& [xo, oo] : kOffsets) {
      SCOPED_TRACE("n = " + std::to_string(n) + ", offsets x " + std::to_string(xo) + ", out " + std::to_string(oo));
      expect_same_under_all_orders([&] {
        Stream s;
        Placed dx = place(x, n, xo, s), dout = place({}, n, oo, s);
        gelu_forward(s, dout.data, dx.data, n);
        const std::vector<bf16> got = fetch(dout, n, s);
        const double err = relative_error(got, want);
        EXPECT_LT(err, 1e-2);
        worst = std::max(worst, err);
        return got;
      });
    }
  }
  std::printf("gelu_forward: worst relative error %.3g\n", worst);
}

TEST_F(gelu, BackwardMatchesReference) {
  double worst = 0;
  for (int64_t n : kSizes) {
    std::vector<float> xf, gf;
    const std::vector<bf16> x = random_bf16(n, -6.0f, 6.0f, 100 + (uint32_t)n, xf);
    const std::vector<bf16> g = random_bf16(n, -2.0f, 2.0f, 200 + (uint32_t)n, gf);
    std::vector<float> want(n, 0.0f);  // the reference accumulates; the kernel writes
    ref::gelu_backward(want.data(), xf.data(), gf.data(), n);
    for (const auto& [xo, oo] : kOffsets) {
      SCOPED_TRACE("n = " + std::to_string(n) + ", offsets x and dout " + std::to_string(xo) + ", dx " +
                   std::to_string(oo));
      expect_same_under_all_orders([&] {
        Stream s;
        Placed dx_in = place(x, n, xo, s), dout = place(g, n, xo, s), dx = place({}, n, oo, s);
        gelu_backward(s, dx.data, dx_in.data, dout.data, n);
        const std::vector<bf16> got = fetch(dx, n, s);
        const double err = relative_error(got, want);
        EXPECT_LT(err, 1e-2);
        worst = std::max(worst, err);
        return got;
      });
    }
  }
  std::printf("gelu_backward: worst relative error %.3g\n", worst);
}

// Large |x| (tanh saturated: gelu(x) -> x or 0, gelu'(x) -> 1 or 0) and exact zero.
TEST_F(gelu, SaturatedAndZeroInputs) {
  std::vector<float> xf = {0.0f, -0.0f, 10.0f, -10.0f, 30.0f, -30.0f, 100.0f, -100.0f};
  const int64_t n = (int64_t)xf.size();
  std::vector<bf16> x(n), g(n);
  std::vector<float> gf(n, 1.0f);
  for (int64_t i = 0; i < n; i++) x[i] = __float2bfloat16(xf[i]), g[i] = __float2bfloat16(1.0f);
  std::vector<float> want_y(n), want_dx(n, 0.0f);
  ref::gelu_forward(want_y.data(), xf.data(), n);
  ref::gelu_backward(want_dx.data(), xf.data(), gf.data(), n);
  Stream s;
  Placed dx_in = place(x, n, 0, s), dg = place(g, n, 0, s), y = place({}, n, 0, s), dx = place({}, n, 0, s);
  gelu_forward(s, y.data, dx_in.data, n);
  gelu_backward(s, dx.data, dx_in.data, dg.data, n);
  const std::vector<bf16> got_y = fetch(y, n, s), got_dx = fetch(dx, n, s);
  for (int64_t i = 0; i < n; i++) {
    EXPECT_NEAR(__bfloat162float(got_y[i]), want_y[i], 1e-2 * std::abs(want_y[i]) + 1e-6) << "gelu(" << xf[i] << ")";
    EXPECT_NEAR(__bfloat162float(got_dx[i]), want_dx[i], 1e-2 * std::abs(want_dx[i]) + 1e-6)
        << "gelu'(" << xf[i] << ")";
  }
}

// out == x and dx == dout: each element's inputs are read before its output is written.
TEST_F(gelu, InPlace) {
  for (int64_t n : {int64_t{7}, int64_t{4099}}) {
    for (int offset : {0, 1}) {
      SCOPED_TRACE("n = " + std::to_string(n) + ", offset " + std::to_string(offset));
      std::vector<float> xf, gf;
      const std::vector<bf16> x = random_bf16(n, -5.0f, 5.0f, 300 + (uint32_t)n, xf);
      const std::vector<bf16> g = random_bf16(n, -1.0f, 1.0f, 400 + (uint32_t)n, gf);
      std::vector<float> want_y(n), want_dx(n, 0.0f);
      ref::gelu_forward(want_y.data(), xf.data(), n);
      ref::gelu_backward(want_dx.data(), xf.data(), gf.data(), n);
      Stream s;
      Placed dx_in = place(x, n, offset, s), y = place(x, n, offset, s), dg = place(g, n, offset, s);
      gelu_backward(s, dg.data, dx_in.data, dg.data, n);  // dx written over dout
      gelu_forward(s, y.data, y.data, n);                 // out written over x
      EXPECT_LT(relative_error(fetch(y, n, s), want_y), 1e-2);
      EXPECT_LT(relative_error(fetch(dg, n, s), want_dx), 1e-2);
    }
  }
}

// Only the first n values are written: the poisoned element after them stays poisoned.
TEST_F(gelu, WritesNothingBeyondN) {
  for (int64_t n : {int64_t{7}, int64_t{8}, int64_t{1000}}) {
    std::vector<float> xf;
    const std::vector<bf16> x = random_bf16(n, -3.0f, 3.0f, 500, xf);
    Stream s;
    Placed dx_in = place(x, n, 0, s), y = place({}, n, 0, s), dx = place({}, n, 0, s);
    gelu_forward(s, y.data, dx_in.data, n);
    gelu_backward(s, dx.data, dx_in.data, dx_in.data, n);
    const std::vector<bf16> all_y = fetch(y, n + 8, s), all_dx = fetch(dx, n + 8, s);
    for (int64_t i = n; i < n + 8; i++) {
      uint16_t by, bdx;
      std::memcpy(&by, &all_y[i], 2);
      std::memcpy(&bdx, &all_dx[i], 2);
      EXPECT_EQ(by, 0xffff) << "n = " << n << ", element " << i;
      EXPECT_EQ(bdx, 0xffff) << "n = " << n << ", element " << i;
    }
  }
}

// Every argument check of both launchers, with its message.
TEST_F(gelu, LauncherErrors) {
  Stream s;
  DeviceBuffer<bf16> a(16), b(16), c(16);
  bf16* odd = reinterpret_cast<bf16*>(reinterpret_cast<char*>(a.data()) + 1);
  expect_invalid([&] { gelu_forward(s, nullptr, b.data(), 16); }, "gelu_forward: out is null");
  expect_invalid([&] { gelu_forward(s, a.data(), nullptr, 16); }, "gelu_forward: x is null");
  expect_invalid([&] { gelu_forward(s, a.data(), b.data(), 0); }, "gelu_forward: n must be positive, got 0");
  expect_invalid([&] { gelu_forward(s, a.data(), b.data(), -5); }, "gelu_forward: n must be positive, got -5");
  expect_invalid([&] { gelu_forward(s, odd, b.data(), 4); }, "gelu_forward: out is not aligned to 2 bytes");
  expect_invalid([&] { gelu_forward(s, b.data(), odd, 4); }, "gelu_forward: x is not aligned to 2 bytes");
  expect_invalid([&] { gelu_backward(s, nullptr, b.data(), c.data(), 16); }, "gelu_backward: dx is null");
  expect_invalid([&] { gelu_backward(s, a.data(), nullptr, c.data(), 16); }, "gelu_backward: x is null");
  expect_invalid([&] { gelu_backward(s, a.data(), b.data(), nullptr, 16); }, "gelu_backward: dout is null");
  expect_invalid([&] { gelu_backward(s, a.data(), b.data(), c.data(), 0); },
                 "gelu_backward: n must be positive, got 0");
  expect_invalid([&] { gelu_backward(s, a.data(), b.data(), c.data(), -1); },
                 "gelu_backward: n must be positive, got -1");
  expect_invalid([&] { gelu_backward(s, odd, b.data(), c.data(), 4); }, "gelu_backward: dx is not aligned to 2 bytes");
  expect_invalid([&] { gelu_backward(s, b.data(), odd, c.data(), 4); }, "gelu_backward: x is not aligned to 2 bytes");
  expect_invalid([&] { gelu_backward(s, b.data(), c.data(), odd, 4); },
                 "gelu_backward: dout is not aligned to 2 bytes");
  s.synchronize();
}

}  // namespace
}  // namespace kiln::KILN_NS
