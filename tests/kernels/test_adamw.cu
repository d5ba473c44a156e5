// AdamW and the gradient norm (kernels/cuda/adamw.cu) against ref::adamw_update<double> and a double sum
// of squares on the same fp32 inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/adamw.h"
#include "kernels/ref/ref.h"
#include "tests/device_test.h"

namespace kiln::KILN_NS {
namespace {

// ---- Helpers -------------------------------------------------------------------------------

using AdamW = DeviceTest;

std::vector<float> normal_floats(size_t n, float stddev, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

ref::AdamWParams hyperparameters(int64_t step, double grad_scale) {
  ref::AdamWParams hp{};
  hp.lr = 1e-2;  // large, so that a step moves the master weights well beyond their rounding
  hp.beta1 = 0.9;
  hp.beta2 = 0.95;
  hp.eps = 1e-8;
  hp.weight_decay = 0.1;
  hp.step = step;
  hp.grad_scale = grad_scale;
  return hp;
}

// The optimizer state on the host (double, the reference) and on the device.
struct State {
  std::vector<double> master, m, v;
};

// One reference step: ref::adamw_update<double> over each run of elements with the same decay
// (weight_decay 0 outside decaying ranges).
void reference_step(State& st, const std::vector<float>& grads, const std::vector<AdamWRange>& ranges,
                    const ref::AdamWParams& hp) {
  const int64_t n = (int64_t)st.master.size();
  std::vector<char> decays(n, 0);
  for (const AdamWRange& r : ranges)
    for (int64_t i = r.offset; i < r.offset + r.count; i++) decays[i] = r.decay;
  const std::vector<double> g = to_double(grads);
  for (int64_t begin = 0; begin < n;) {
    int64_t end = begin;
    while (end < n && decays[end] == decays[begin]) end++;
    ref::AdamWParams h = hp;
    if (!decays[begin]) h.weight_decay = 0;
    ref::adamw_update<double>(&st.master[begin], &g[begin], &st.m[begin], &st.v[begin], end - begin, h);
    begin = end;
  }
}

struct DeviceState {
  DeviceBuffer<float> master, grads, m, v;
  DeviceBuffer<bf16> params;
  DeviceBuffer<AdamWRange> ranges;
};

// Runs `steps` steps from the given state (steps first_step, first_step + 1, ...) on the device
// and the reference, checking after each: master to 1e-6 and the moments to 1e-5 (fp32 rounding
// of each operation, against double), and the bf16 parameters equal to the rounded master.
void check_steps(int64_t n, const std::vector<AdamWRange>& ranges, int steps, int64_t first_step, double grad_scale,
                 bool fresh_moments, uint32_t seed) {
  const std::string what = "n=" + std::to_string(n) + " ranges=" + std::to_string(ranges.size()) +
                           " grad_scale=" + std::to_string(grad_scale);
  check_adamw_ranges(ranges, n);
  const std::vector<float> master0 = normal_floats(n, 0.05f, seed);
  std::vector<float> m0(n, 0.0f), v0(n, 0.0f);
  if (!fresh_moments) {  // mid-training moments: m ~ g, v ~ g^2
    m0 = normal_floats(n, 0.01f, seed + 1);
    v0 = normal_floats(n, 1e-4f, seed + 2);
    for (float& x : v0) x = std::abs(x);
  }
  State st{to_double(master0), to_double(m0), to_double(v0)};
  Stream s;
  DeviceBuffer<float> master = to_device(master0, s), m = to_device(m0, s), v = to_device(v0, s), grads(n);
  DeviceBuffer<bf16> params(n);
  DeviceBuffer<AdamWRange> d_ranges = to_device(ranges, s);
  for (int k = 0; k < steps; k++) {
    // Gradients of mixed sizes, some zero (v stays tiny: eps matters).
    std::vector<float> g = normal_floats(n, 0.02f, seed + 10 + k);
    for (int64_t i = 0; i < n; i += 7) g[i] *= 50.0f;
    for (int64_t i = 3; i < n; i += 11) g[i] = 0.0f;
    grads.upload(g, s);
    params.fill_bytes(0xff, s);
    const ref::AdamWParams hp = hyperparameters(first_step + k, grad_scale);
    adamw_update(s, master.data(), params.data(), grads.data(), m.data(), v.data(), d_ranges.data(), (int)ranges.size(),
                 n, hp);
    reference_step(st, g, ranges, hp);

    const std::vector<float> got_master = master.to_host(s), got_m = m.to_host(s), got_v = v.to_host(s);
    const std::vector<bf16> got_params = params.to_host(s);
    const std::string at = what + " step " + std::to_string(first_step + k);
    const double master_error = rel_error(got_master, st.master);
    EXPECT_LT(master_error, 1e-6) << at << ": master";
    EXPECT_LT(rel_error(got_m, st.m), 1e-5) << at << ": m";
    EXPECT_LT(rel_error(got_v, st.v), 1e-5) << at << ": v";
    for (int64_t i = 0; i < n; i++) {
      const bf16 want = __float2bfloat16(got_master[i]);
      ASSERT_EQ(std::memcmp(&got_params[i], &want, sizeof want), 0) << at << ": params[" << i << "]";
    }
    // The update must have moved the weights (else the comparison above proves little).
    double moved = 0;
    for (int64_t i = 0; i < n; i++) moved = std::max(moved, std::abs((double)got_master[i] - master0[i]));
    EXPECT_GT(moved, 1e-3) << at;
    std::printf("%s: master error %.2e\n", at.c_str(), master_error);
  }
}

// Tensors of awkward sizes: starts not multiples of 4, a gap (no decay), an empty range.
std::vector<AdamWRange> awkward_ranges() {
  return {{0, 37, true},   {37, 5, false},    {42, 1, true},   {43, 0, true},
          {43, 600, true}, {700, 300, false}, {1000, 29, true}};
}

// ---- AdamW -----------------------------------------------------------------------------------

TEST_F(AdamW, OneStepMatchesReference) {
  check_steps(1029, awkward_ranges(), 1, 1, 1.0, true, 1);
  check_steps(1029, awkward_ranges(), 1, 1, 0.37, true, 2);
}

TEST_F(AdamW, ThreeStepsMatchReference) {
  check_steps(1029, awkward_ranges(), 3, 1, 0.37, true, 3);
  check_steps(1029, awkward_ranges(), 3, 10, 2.5, false, 4);  // later steps: bias corrections near 1
}

TEST_F(AdamW, SmallAndTailSizes) {
  for (int64_t n : {1, 3, 4, 5, 7, 8, 4099}) {
    check_steps(n, {{0, n, true}}, 2, 1, 0.8, true, 20 + (uint32_t)n);
    check_steps(n, {{0, n / 2, false}, {n / 2, n - n / 2, true}}, 2, 1, 1.0, false, 40 + (uint32_t)n);
  }
}

// Weight decay follows the table: with zero gradients and fresh moments the update is only the
// decay, so decaying elements shrink by exactly (1 - lr wd) and the others stay put.
TEST_F(AdamW, DecayOnlyWhereTheTableSays) {
  const int64_t n = 1029;
  const std::vector<AdamWRange> ranges = awkward_ranges();
  const std::vector<float> master0 = normal_floats(n, 1.0f, 5);
  const std::vector<float> zeros(n, 0.0f);  // uploads are asynchronous: the host data must outlive them
  Stream s;
  DeviceBuffer<float> master = to_device(master0, s), grads = to_device(zeros, s), m = to_device(zeros, s),
                      v = to_device(zeros, s);
  DeviceBuffer<bf16> params(n);
  DeviceBuffer<AdamWRange> d_ranges = to_device(ranges, s);
  const ref::AdamWParams hp = hyperparameters(1, 1.0);
  adamw_update(s, master.data(), params.data(), grads.data(), m.data(), v.data(), d_ranges.data(), (int)ranges.size(),
               n, hp);
  const std::vector<float> got = master.to_host(s);
  std::vector<bool> decays(n, false);
  for (const AdamWRange& r : ranges)
    for (int64_t i = r.offset; i < r.offset + r.count; i++) decays[i] = r.decay;
  const float factor = (float)(1 - hp.lr * hp.weight_decay);
  for (int64_t i = 0; i < n; i++) ASSERT_EQ(got[i], decays[i] ? master0[i] * factor : master0[i]) << "element " << i;
}

TEST_F(AdamW, Deterministic) {
  const int64_t n = 4099;
  const std::vector<AdamWRange> ranges = awkward_ranges();
  const std::vector<float> master0 = normal_floats(n, 0.05f, 6), g = normal_floats(n, 0.02f, 7), zeros(n, 0.0f);
  expect_same_under_orders([&] {
    Stream s;
    DeviceBuffer<float> master = to_device(master0, s), grads = to_device(g, s), m = to_device(zeros, s),
                        v = to_device(zeros, s);
    DeviceBuffer<bf16> params(n);
    DeviceBuffer<AdamWRange> d_ranges = to_device(ranges, s);
    for (int64_t step = 1; step <= 2; step++)
      adamw_update(s, master.data(), params.data(), grads.data(), m.data(), v.data(), d_ranges.data(),
                   (int)ranges.size(), n, hyperparameters(step, 0.5));
    std::vector<float> out = master.to_host(s);
    for (const std::vector<float>& x : {m.to_host(s), v.to_host(s)}) out.insert(out.end(), x.begin(), x.end());
    for (bf16 p : params.to_host(s)) out.push_back(__bfloat162float(p));
    return out;
  });
}

#ifndef KILN_EMU
// On the GPU only (too big to emulate): more elements than one pass of the grid covers
// (256 threads x 4 elements x 65536 blocks), so the grid-stride loop takes a second turn.
TEST_F(AdamW, GridStrideOnGpu) {
  const int64_t n = (int64_t)256 * 4 * 65536 + 4099;
  check_steps(n, {{0, n / 3, true}, {n / 3 + 1, n / 3, false}, {2 * (n / 3) + 5, n / 4, true}}, 1, 1, 0.5, false, 9);
}
#endif

// ---- Gradient norm --------------------------------------------------------------------------

float run_norm(const std::vector<float>& g) {
  Stream s;
  DeviceBuffer<float> grads = to_device(g, s), partials(kGradNormPartials), result(1);
  partials.fill_bytes(0xff, s);
  result.fill_bytes(0xff, s);
  grad_norm_squared(s, result.data(), partials.data(), grads.data(), (int64_t)g.size());
  return result.to_host(s)[0];
}

TEST_F(AdamW, GradNormMatchesDoubleSum) {
  // 600001: more 4-element packs than threads (512 x 256), so threads take several.
  for (int64_t n : {1, 3, 4, 5, 1000, 4099, 600001}) {
    std::vector<float> g = normal_floats(n, 0.01f, 30 + (uint32_t)n);
    for (int64_t i = 0; i < n; i += 97) g[i] *= 100.0f;  // a few large gradients
    double want = 0;
    for (float x : g) want += (double)x * x;
    const float got = run_norm(g);
    const double error = std::abs(got - want) / want;
    EXPECT_LT(error, 1e-5) << "n = " << n << ": got " << got << ", want " << want;
    std::printf("n = %lld: sum of squares %.6e, relative error %.2e\n", (long long)n, got, error);
  }
}

TEST_F(AdamW, GradNormDeterministic) {
  for (int64_t n : {4099, 600001}) {
    const std::vector<float> g = normal_floats(n, 1.0f, 50);
    expect_same_under_orders([&] { return std::vector<float>{run_norm(g), run_norm(g)}; });
  }
}

// ---- Launcher errors ----------------------------------------------------------------------------

TEST_F(AdamW, RangeTableErrors) {
  const std::string name = "check_adamw_ranges: ";
  EXPECT_NO_THROW(check_adamw_ranges(awkward_ranges(), 1029));
  EXPECT_NO_THROW(check_adamw_ranges({}, 10));
  expect_invalid(
      [] {
        check_adamw_ranges(std::vector<AdamWRange>{{0, 4, true}, {4, -1, false}}, 10);
      },
      name + "range 1 [4, +-1) has a negative count");
  expect_invalid(
      [] {
        check_adamw_ranges(std::vector<AdamWRange>{{0, 4, true}, {3, 2, false}}, 10);
      },
      name + "range 1 [3, +2) starts before the end of the previous range (4)");
  expect_invalid(
      [] {
        check_adamw_ranges(std::vector<AdamWRange>{{5, 2, true}, {0, 2, false}}, 10);
      },
      name + "range 1 [0, +2) starts before the end of the previous range (7)");
  expect_invalid(
      [] {
        check_adamw_ranges(std::vector<AdamWRange>{{-1, 2, true}}, 10);
      },
      name + "range 0 [-1, +2) starts before");
  expect_invalid(
      [] {
        check_adamw_ranges(std::vector<AdamWRange>{{0, 4, true}, {4, 7, false}}, 10);
      },
      name + "range 1 [4, +7) ends beyond n = 10");
}

TEST_F(AdamW, UpdateLauncherErrors) {
  Stream s;
  const int64_t n = 64;
  DeviceBuffer<float> master(n), grads(n), m(n), v(n);
  DeviceBuffer<bf16> params(n);
  DeviceBuffer<AdamWRange> ranges(1);
  float *pm = master.data(), *pg = grads.data(), *m1 = m.data(), *v1 = v.data();
  bf16* pp = params.data();
  const AdamWRange* r = ranges.data();
  const ref::AdamWParams hp = hyperparameters(1, 1.0);
  auto call = [&](float* a, bf16* b, float* c, float* d, float* e, const AdamWRange* f, int count, int64_t size,
                  const ref::AdamWParams& h) { adamw_update(s, a, b, c, d, e, f, count, size, h); };
  const std::string name = "adamw_update: ";
  expect_invalid([&] { call(nullptr, pp, pg, m1, v1, r, 1, n, hp); }, name + "master is null");
  expect_invalid([&] { call(pm, nullptr, pg, m1, v1, r, 1, n, hp); }, name + "params is null");
  expect_invalid([&] { call(pm, pp, nullptr, m1, v1, r, 1, n, hp); }, name + "grads is null");
  expect_invalid([&] { call(pm, pp, pg, nullptr, v1, r, 1, n, hp); }, name + "m is null");
  expect_invalid([&] { call(pm, pp, pg, m1, nullptr, r, 1, n, hp); }, name + "v is null");
  expect_invalid([&] { call(pm, pp, pg, m1, v1, nullptr, 1, n, hp); }, name + "ranges is null");
  expect_invalid([&] { call(pm, pp, pg, m1, v1, r, 1, 0, hp); }, name + "n = 0 must be >= 1");
  expect_invalid([&] { call(pm, pp, pg, m1, v1, r, 0, n, hp); }, name + "num_ranges = 0 must be >= 1");
  expect_invalid([&] { call(pm + 1, pp, pg, m1, v1, r, 1, n - 1, hp); }, name + "master must be 16-byte aligned");
  expect_invalid([&] { call(pm, pp, pg + 2, m1, v1, r, 1, n - 2, hp); }, name + "grads must be 16-byte aligned");
  expect_invalid([&] { call(pm, pp, pg, m1 + 3, v1, r, 1, n - 3, hp); }, name + "m must be 16-byte aligned");
  expect_invalid([&] { call(pm, pp, pg, m1, v1 + 1, r, 1, n - 1, hp); }, name + "v must be 16-byte aligned");
  expect_invalid([&] { call(pm, pp + 2, pg, m1, v1, r, 1, n - 2, hp); }, name + "params must be 8-byte aligned");
  auto with = [&](auto change) {
    ref::AdamWParams h = hp;
    change(h);
    return h;
  };
  expect_invalid([&] { call(pm, pp, pg, m1, v1, r, 1, n, with([](auto& h) { h.step = 0; })); },
                 name + "hp.step = 0 must be >= 1");
  expect_invalid([&] { call(pm, pp, pg, m1, v1, r, 1, n, with([](auto& h) { h.beta1 = 1; })); },
                 name + "hp.beta1 = 1.000000 must be in [0, 1)");
  expect_invalid([&] { call(pm, pp, pg, m1, v1, r, 1, n, with([](auto& h) { h.beta2 = -0.5; })); },
                 name + "hp.beta2 = -0.500000 must be in [0, 1)");
  expect_invalid([&] { call(pm, pp, pg, m1, v1, r, 1, n, with([](auto& h) { h.lr = -1; })); },
                 name + "hp.lr = -1.000000 must be >= 0");
  expect_invalid([&] { call(pm, pp, pg, m1, v1, r, 1, n, with([](auto& h) { h.eps = -1e-8; })); },
                 name + "hp.eps = -0.000000 must be >= 0");
  expect_invalid([&] { call(pm, pp, pg, m1, v1, r, 1, n, with([](auto& h) { h.weight_decay = -0.1; })); },
                 name + "hp.weight_decay = -0.100000 must be >= 0");
  expect_invalid([&] { call(pm, pp, pg, m1, v1, r, 1, n, with([](auto& h) { h.grad_scale = INFINITY; })); },
                 name + "hp.grad_scale = inf must be finite");
  expect_invalid([&] { call(pm, pp, pg, m1, v1, r, 1, n, with([](auto& h) { h.grad_scale = NAN; })); },
                 name + "hp.grad_scale = nan must be finite");
}

TEST_F(AdamW, GradNormLauncherErrors) {
  Stream s;
  DeviceBuffer<float> result(1), partials(kGradNormPartials), grads(16);
  const std::string name = "grad_norm_squared: ";
  expect_invalid([&] { grad_norm_squared(s, nullptr, partials.data(), grads.data(), 16); }, name + "result is null");
  expect_invalid([&] { grad_norm_squared(s, result.data(), nullptr, grads.data(), 16); }, name + "partials is null");
  expect_invalid([&] { grad_norm_squared(s, result.data(), partials.data(), nullptr, 16); }, name + "grads is null");
  expect_invalid([&] { grad_norm_squared(s, result.data(), partials.data(), grads.data(), 0); },
                 name + "n = 0 must be >= 1");
  expect_invalid([&] { grad_norm_squared(s, result.data(), partials.data(), grads.data() + 1, 15); },
                 name + "grads must be 16-byte aligned");
}

}  // namespace
}  // namespace kiln::KILN_NS
