// Cross-entropy kernels (kernels/cuda/cross_entropy.cu) against ref::cross_entropy_forward_backward in
// double on the same bf16-rounded logits: the fused kernel, and the tensor-parallel split (per-slice
// statistics, combined on the host, then losses and gradients per slice).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cross_entropy.h"
#include "kernels/ref/ref.h"
#include "tests/device_test.h"

namespace kiln::KILN_NS {
namespace {

// ---- Helpers -------------------------------------------------------------------------------

using CrossEntropy = DeviceTest;

int round_up(int x, int multiple) { return (x + multiple - 1) / multiple * multiple; }

std::vector<float> to_float(const std::vector<bf16>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); i++) out[i] = __bfloat162float(x[i]);
  return out;
}

bool same_bits(bf16 a, bf16 b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// A problem: N rows of V logits (normal, std 4, plus `offset`, rounded to bf16) padded to Vp
// columns with NaN and huge values, which must never count. Targets uniform in [0, V), with row
// 1 targeting column 0, row 2 column V - 1, and every fifth row from row 3 ignored (-1).
struct Problem {
  int N, V, Vp;
  std::vector<bf16> logits;        // [N, Vp]
  std::vector<double> logits_ref;  // the same values, for the reference (padding unused)
  std::vector<int32_t> targets;
};

Problem make_problem(int N, int V, int Vp, float offset, uint32_t seed) {
  Problem p{N, V, Vp, std::vector<bf16>((size_t)N * Vp), std::vector<double>((size_t)N * Vp), std::vector<int32_t>(N)};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  for (int n = 0; n < N; n++)
    for (int v = 0; v < Vp; v++) {
      const size_t i = (size_t)n * Vp + v;
      const float pad = (v % 2) ? std::numeric_limits<float>::quiet_NaN() : 3e38f;
      p.logits[i] = __float2bfloat16(v < V ? offset + normal(rng) : pad);
      p.logits_ref[i] = __bfloat162float(p.logits[i]);
    }
  std::uniform_int_distribution<int> target(0, V - 1);
  for (int n = 0; n < N; n++) p.targets[n] = n == 1 ? 0 : n == 2 ? V - 1 : n % 5 == 3 ? -1 : target(rng);
  return p;
}

struct Reference {
  std::vector<double> losses, dlogits;
};

Reference reference(const Problem& p, float dloss) {
  Reference r{std::vector<double>(p.N), std::vector<double>((size_t)p.N * p.Vp)};
  ref::cross_entropy_forward_backward<double>(r.losses.data(), r.dlogits.data(), p.logits_ref.data(), p.targets.data(),
                                              p.N, p.V, p.Vp, (double)dloss);
  return r;
}

// Checks device losses and (if given) gradients against the reference: losses to 1e-5, gradients
// (bf16) to 1e-2 over the valid columns, exact zeros in the padding and in ignored rows.
void check_against_reference(const Problem& p, const Reference& r, const std::vector<float>& losses,
                             const std::vector<float>* dlogits, const std::string& what) {
  const double loss_error = rel_error(losses, r.losses);
  EXPECT_LT(loss_error, 1e-5) << what << ": losses";
  for (int n = 0; n < p.N; n++)
    if (p.targets[n] < 0) {
      EXPECT_EQ(losses[n], 0.0f) << what << ": ignored row " << n;
    }
  if (!dlogits) return;
  const double grad_error = rel_error(*dlogits, r.dlogits, [&](size_t i) { return (int)(i % p.Vp) < p.V; });
  EXPECT_LT(grad_error, 1e-2) << what << ": gradients";
  for (int n = 0; n < p.N; n++)
    for (int v = 0; v < p.Vp; v++) {
      const float d = (*dlogits)[(size_t)n * p.Vp + v];
      if (v >= p.V || p.targets[n] < 0) {
        ASSERT_EQ(d, 0.0f) << what << ": row " << n << ", column " << v << " must be 0";
        ASSERT_FALSE(std::signbit(d)) << what << ": row " << n << ", column " << v << " is -0";
      }
    }
  std::printf("%s: loss error %.2e, gradient error %.2e\n", what.c_str(), loss_error, grad_error);
}

struct FusedResult {
  std::vector<float> losses;
  std::vector<bf16> logits;  // after the call: gradients, or the logits untouched
};

FusedResult run_fused(const Problem& p, float dloss, bool with_grad) {
  Stream s;
  DeviceBuffer<bf16> logits = to_device(p.logits, s);
  DeviceBuffer<int32_t> targets = to_device(p.targets, s);
  DeviceBuffer<float> losses = poisoned<float>(p.N, s);
  cross_entropy_forward_backward(s, losses.data(), logits.data(), targets.data(), p.N, p.V, p.Vp, dloss, with_grad);
  return {losses.to_host(s), logits.to_host(s)};
}

std::string shape_name(int N, int V, int Vp) {
  return "N=" + std::to_string(N) + " V=" + std::to_string(V) + " Vp=" + std::to_string(Vp);
}

struct Shape {
  int N, V, Vp;
};

// Vp padded to 128 (the 128-bit path), plus rows whose length is not a multiple of 8 (scalar).
std::vector<Shape> fused_shapes() {
  std::vector<Shape> shapes;
  for (int N : {1, 4, 37})
    for (int V : {5, 257}) shapes.push_back({N, V, round_up(V, 128)});
  for (int N : {1, 4}) shapes.push_back({N, 50257, round_up(50257, 128)});
  shapes.push_back({37, 5, 7});
  shapes.push_back({4, 257, 263});
  shapes.push_back({2, 50257, 50257});
  return shapes;
}

// ---- Fused kernel ----------------------------------------------------------------------------

TEST_F(CrossEntropy, FusedMatchesReference) {
  uint32_t seed = 1;
  for (const Shape& sh : fused_shapes())
    for (float offset : {0.0f, 1000.0f}) {
      const Problem p = make_problem(sh.N, sh.V, sh.Vp, offset, seed++);
      const float dloss = 0.7f / sh.N;
      const Reference r = reference(p, dloss);
      const std::string what = shape_name(sh.N, sh.V, sh.Vp) + " offset=" + std::to_string((int)offset);
      const FusedResult got = run_fused(p, dloss, true);
      const std::vector<float> dlogits = to_float(got.logits);
      check_against_reference(p, r, got.losses, &dlogits, what);
    }
}

TEST_F(CrossEntropy, WithoutGradLeavesLogitsUntouched) {
  uint32_t seed = 100;
  for (const Shape& sh : fused_shapes()) {
    const Problem p = make_problem(sh.N, sh.V, sh.Vp, 0.0f, seed++);
    const Reference r = reference(p, 1.0f);
    const FusedResult got = run_fused(p, 1.0f, false);
    check_against_reference(p, r, got.losses, nullptr, shape_name(sh.N, sh.V, sh.Vp) + " without grad");
    for (size_t i = 0; i < p.logits.size(); i++)
      ASSERT_TRUE(same_bits(got.logits[i], p.logits[i])) << shape_name(sh.N, sh.V, sh.Vp) << ": element " << i;
  }
}

TEST_F(CrossEntropy, AllRowsIgnored) {
  Problem p = make_problem(3, 257, 384, 0.0f, 7);
  std::fill(p.targets.begin(), p.targets.end(), -1);
  const FusedResult got = run_fused(p, 1.0f, true);
  for (float l : got.losses) EXPECT_EQ(l, 0.0f);
  for (size_t i = 0; i < got.logits.size(); i++) ASSERT_EQ(__bfloat162float(got.logits[i]), 0.0f) << "element " << i;
}

// A target outside the vocabulary gives a NaN loss rather than a plausible number.
TEST_F(CrossEntropy, TargetBeyondVocabularyGivesNaN) {
  for (const int Vp : {384, 263}) {
    Problem p = make_problem(4, 257, Vp, 0.0f, 8);
    p.targets[0] = 257;    // first padding column
    p.targets[3] = 10000;  // far beyond the row
    const FusedResult got = run_fused(p, 1.0f, false);
    EXPECT_TRUE(std::isnan(got.losses[0])) << "Vp=" << Vp;
    EXPECT_TRUE(std::isnan(got.losses[3])) << "Vp=" << Vp;
    EXPECT_TRUE(std::isfinite(got.losses[1]) && std::isfinite(got.losses[2])) << "Vp=" << Vp;
  }
}

TEST_F(CrossEntropy, FusedDeterministic) {
  for (const Shape& sh : {Shape{37, 257, 384}, Shape{4, 50257, 50304}, Shape{4, 257, 263}}) {
    const Problem p = make_problem(sh.N, sh.V, sh.Vp, 0.0f, 11);
    expect_same_under_orders([&] {
      FusedResult got = run_fused(p, 0.25f, true);
      std::vector<float> out = got.losses;
      for (bf16 x : got.logits) out.push_back(__bfloat162float(x));
      return out;
    });
  }
}

// ---- Split (tensor-parallel) path ---------------------------------------------------------------

struct Stats {
  std::vector<float> max, sumexp, target_logit;
};

// Statistics of one slice: logits [N, Vp_local].
Stats run_stats(const std::vector<bf16>& logits, const std::vector<int32_t>& targets, int N, int vocab_begin,
                int V_local_valid, int Vp_local) {
  Stream s;
  DeviceBuffer<bf16> d_logits = to_device(logits, s);
  DeviceBuffer<int32_t> d_targets = to_device(targets, s);
  DeviceBuffer<float> max = poisoned<float>(N, s), sumexp = poisoned<float>(N, s), target = poisoned<float>(N, s);
  cross_entropy_stats(s, max.data(), sumexp.data(), target.data(), d_logits.data(), d_targets.data(), N, vocab_begin,
                      V_local_valid, Vp_local);
  return {max.to_host(s), sumexp.to_host(s), target.to_host(s)};
}

FusedResult run_from_stats(const std::vector<bf16>& logits, const std::vector<int32_t>& targets, const Stats& global,
                           int N, int vocab_begin, int V_local_valid, int Vp_local, float dloss, bool with_grad) {
  Stream s;
  DeviceBuffer<bf16> d_logits = to_device(logits, s);
  DeviceBuffer<int32_t> d_targets = to_device(targets, s);
  DeviceBuffer<float> max = to_device(global.max, s), sumexp = to_device(global.sumexp, s),
                      target = to_device(global.target_logit, s);
  DeviceBuffer<float> losses = poisoned<float>(N, s);
  cross_entropy_from_stats(s, losses.data(), d_logits.data(), d_targets.data(), max.data(), sumexp.data(),
                           target.data(), N, vocab_begin, V_local_valid, Vp_local, dloss, with_grad);
  return {losses.to_host(s), d_logits.to_host(s)};
}

// One slice holding the whole vocabulary: stats then from_stats give the fused kernel's losses and
// gradients bit for bit.
TEST_F(CrossEntropy, OneSliceEqualsFused) {
  uint32_t seed = 200;
  for (const Shape& sh : fused_shapes())
    for (bool with_grad : {true, false}) {
      const Problem p = make_problem(sh.N, sh.V, sh.Vp, 1000.0f * with_grad, seed++);
      const float dloss = 0.5f / sh.N;
      const std::string what = shape_name(sh.N, sh.V, sh.Vp) + (with_grad ? "" : " without grad");
      const FusedResult fused = run_fused(p, dloss, with_grad);
      const Stats stats = run_stats(p.logits, p.targets, sh.N, 0, sh.V, sh.Vp);
      const FusedResult split = run_from_stats(p.logits, p.targets, stats, sh.N, 0, sh.V, sh.Vp, dloss, with_grad);
      ASSERT_EQ(bytes_of(split.losses), bytes_of(fused.losses)) << what;
      ASSERT_EQ(bytes_of(split.logits), bytes_of(fused.logits)) << what;
    }
}

// Each slice r holds global columns [r * Vp_local, (r + 1) * Vp_local) of the V real ones, its
// columns past V being padding (NaN and huge values). The host combines the slices' statistics
// as the all-reduce will, then every slice computes the losses and its part of the gradient.
void check_slices(int N, int V, int Vp_local, int slices, float offset, uint32_t seed) {
  const std::string what = "N=" + std::to_string(N) + " V=" + std::to_string(V) + " " + std::to_string(slices) +
                           " slices of " + std::to_string(Vp_local) + " offset=" + std::to_string((int)offset);
  ASSERT_GE(slices * Vp_local, V);
  const int Vp = slices * Vp_local;  // the whole padded vocabulary, for the reference
  const Problem p = make_problem(N, V, Vp, offset, seed);
  const float dloss = 1.3f / N;
  const Reference r = reference(p, dloss);

  struct Slice {
    int vocab_begin, valid;
    std::vector<bf16> logits;
    Stats stats;
  };
  std::vector<Slice> parts(slices);
  for (int k = 0; k < slices; k++) {
    Slice& sl = parts[k];
    sl.vocab_begin = k * Vp_local;
    sl.valid = std::clamp(V - sl.vocab_begin, 0, Vp_local);
    sl.logits.resize((size_t)N * Vp_local);
    for (int n = 0; n < N; n++)
      for (int c = 0; c < Vp_local; c++)
        sl.logits[(size_t)n * Vp_local + c] = p.logits[(size_t)n * Vp + sl.vocab_begin + c];
    sl.stats = run_stats(sl.logits, p.targets, N, sl.vocab_begin, sl.valid, Vp_local);
    // The slice's statistics against the host: max exact, sum-exp in double, target logit exact.
    for (int n = 0; n < N; n++) {
      const double* z = &p.logits_ref[(size_t)n * Vp + sl.vocab_begin];
      double max = -INFINITY, sumexp = 0;
      for (int c = 0; c < sl.valid; c++) max = std::max(max, z[c]);
      for (int c = 0; c < sl.valid; c++) sumexp += std::exp(z[c] - max);
      const int col = p.targets[n] - sl.vocab_begin;
      const double target = p.targets[n] >= 0 && col >= 0 && col < sl.valid ? z[col] : 0.0;
      EXPECT_EQ((double)sl.stats.max[n], max) << what << ": slice " << k << " row " << n;
      EXPECT_NEAR(sl.stats.sumexp[n], sumexp, 1e-5 * std::max(sumexp, 1.0)) << what << ": slice " << k << " row " << n;
      EXPECT_EQ((double)sl.stats.target_logit[n], target) << what << ": slice " << k << " row " << n;
    }
  }

  // The all-reduces, on the host in fp32: the max; then each slice's sums rescaled to it on the
  // device (rescale_sumexp, against the reference) and summed; and the target logits.
  Stats global{std::vector<float>(N, -INFINITY), std::vector<float>(N, 0.0f), std::vector<float>(N, 0.0f)};
  for (int n = 0; n < N; n++)
    for (const Slice& sl : parts) global.max[n] = std::max(global.max[n], sl.stats.max[n]);
  for (int k = 0; k < slices; k++) {
    const Slice& sl = parts[k];
    Stream s;
    DeviceBuffer<float> sumexp = to_device(sl.stats.sumexp, s), max = to_device(sl.stats.max, s),
                        global_max = to_device(global.max, s);
    rescale_sumexp(s, sumexp.data(), max.data(), global_max.data(), N);
    const std::vector<float> rescaled = sumexp.to_host(s);
    std::vector<float> want = sl.stats.sumexp;
    ref::rescale_sumexp(want.data(), sl.stats.max.data(), global.max.data(), N);
    for (int n = 0; n < N; n++) {
      ASSERT_FALSE(std::isnan(rescaled[n])) << what << ": slice " << k << " row " << n;
      EXPECT_NEAR(rescaled[n], want[n], 1e-6 * want[n]) << what << ": slice " << k << " row " << n;
      global.sumexp[n] += rescaled[n];
      global.target_logit[n] += sl.stats.target_logit[n];
    }
  }

  std::vector<float> first_losses;
  for (int k = 0; k < slices; k++) {
    const Slice& sl = parts[k];
    const FusedResult got =
        run_from_stats(sl.logits, p.targets, global, N, sl.vocab_begin, sl.valid, Vp_local, dloss, true);
    if (k == 0) first_losses = got.losses;
    EXPECT_EQ(bytes_of(got.losses), bytes_of(first_losses)) << what << ": slice " << k << " losses";
    EXPECT_LT(rel_error(got.losses, r.losses), 1e-5) << what << ": slice " << k << " losses";
    // This slice's gradient against the reference's columns of it; padding columns are 0.
    const std::vector<float> d = to_float(got.logits);
    std::vector<double> want(d.size());
    for (int n = 0; n < N; n++)
      for (int c = 0; c < Vp_local; c++)
        want[(size_t)n * Vp_local + c] = r.dlogits[(size_t)n * Vp + sl.vocab_begin + c];
    EXPECT_LT(rel_error(d, want, [&](size_t i) { return (int)(i % Vp_local) < sl.valid; }), 1e-2)
        << what << ": slice " << k << " gradients";
    for (int n = 0; n < N; n++)
      for (int c = 0; c < Vp_local; c++)
        if (c >= sl.valid || p.targets[n] < 0) {
          ASSERT_EQ(d[(size_t)n * Vp_local + c], 0.0f) << what << ": slice " << k << " row " << n << " column " << c;
        }
  }
}

TEST_F(CrossEntropy, TwoSlicesMatchWholeVocabulary) {
  check_slices(37, 257, 136, 2, 0.0f, 300);     // 136 + 121 valid columns, 128-bit path
  check_slices(4, 257, 131, 2, 1000.0f, 301);   // 131 + 126, scalar path
  check_slices(2, 50257, 25152, 2, 0.0f, 302);  // GPT-2's vocabulary over two ranks
  check_slices(5, 256, 128, 3, 1000.0f, 303);   // the third slice is padding only
}

TEST_F(CrossEntropy, SplitDeterministic) {
  const Problem p = make_problem(37, 257, 264, 0.0f, 400);
  expect_same_under_orders([&] {
    const Stats stats = run_stats(p.logits, p.targets, 37, 0, 257, 264);
    std::vector<float> out = stats.max;
    out.insert(out.end(), stats.sumexp.begin(), stats.sumexp.end());
    out.insert(out.end(), stats.target_logit.begin(), stats.target_logit.end());
    const FusedResult got = run_from_stats(p.logits, p.targets, stats, 37, 0, 257, 264, 0.1f, true);
    out.insert(out.end(), got.losses.begin(), got.losses.end());
    for (bf16 x : got.logits) out.push_back(__bfloat162float(x));
    return out;
  });
}

// ---- Launcher errors ----------------------------------------------------------------------------

TEST_F(CrossEntropy, FusedLauncherErrors) {
  Stream s;
  DeviceBuffer<float> losses(8);
  DeviceBuffer<bf16> logits(8 * 256);
  DeviceBuffer<int32_t> targets(8);
  targets.fill_bytes(0xff, s);  // -1: ignored rows, for the one call that runs
  float* l = losses.data();
  bf16* z = logits.data();
  const int32_t* t = targets.data();
  const std::string name = "cross_entropy_forward_backward: ";
  expect_invalid([&] { cross_entropy_forward_backward(s, nullptr, z, t, 8, 200, 256, 1, true); },
                 name + "losses is null");
  expect_invalid([&] { cross_entropy_forward_backward(s, l, nullptr, t, 8, 200, 256, 1, true); },
                 name + "logits_and_dlogits is null");
  expect_invalid([&] { cross_entropy_forward_backward(s, l, z, nullptr, 8, 200, 256, 1, true); },
                 name + "targets is null");
  expect_invalid([&] { cross_entropy_forward_backward(s, l, z, t, 0, 200, 256, 1, true); },
                 name + "N = 0 must be >= 1");
  expect_invalid([&] { cross_entropy_forward_backward(s, l, z, t, 8, 0, 256, 1, true); }, name + "V = 0 must be >= 1");
  expect_invalid([&] { cross_entropy_forward_backward(s, l, z, t, 8, 257, 256, 1, true); },
                 name + "V = 257 exceeds Vp = 256");
  expect_invalid([&] { cross_entropy_forward_backward(s, l, z + 1, t, 4, 200, 256, 1, true); },
                 name + "logits_and_dlogits must be 16-byte aligned");
  // Rows of odd length take the scalar path: any alignment of bf16 is fine.
  EXPECT_NO_THROW(cross_entropy_forward_backward(s, l, z + 1, t, 1, 5, 7, 1, false));
  s.synchronize();
}

TEST_F(CrossEntropy, SplitLauncherErrors) {
  Stream s;
  DeviceBuffer<float> a(8), b(8), c(8);
  DeviceBuffer<bf16> logits(8 * 128);
  DeviceBuffer<int32_t> targets(8);
  float *pa = a.data(), *pb = b.data(), *pc = c.data();
  bf16* z = logits.data();
  const int32_t* t = targets.data();
  const std::string st = "cross_entropy_stats: ";
  expect_invalid([&] { cross_entropy_stats(s, nullptr, pb, pc, z, t, 8, 0, 100, 128); }, st + "row_max is null");
  expect_invalid([&] { cross_entropy_stats(s, pa, nullptr, pc, z, t, 8, 0, 100, 128); }, st + "row_sumexp is null");
  expect_invalid([&] { cross_entropy_stats(s, pa, pb, nullptr, z, t, 8, 0, 100, 128); }, st + "target_logit is null");
  expect_invalid([&] { cross_entropy_stats(s, pa, pb, pc, nullptr, t, 8, 0, 100, 128); }, st + "logits is null");
  expect_invalid([&] { cross_entropy_stats(s, pa, pb, pc, z, nullptr, 8, 0, 100, 128); }, st + "targets is null");
  expect_invalid([&] { cross_entropy_stats(s, pa, pb, pc, z, t, -1, 0, 100, 128); }, st + "N = -1 must be >= 1");
  expect_invalid([&] { cross_entropy_stats(s, pa, pb, pc, z, t, 8, -5, 100, 128); },
                 st + "vocab_begin = -5 must be >= 0");
  expect_invalid([&] { cross_entropy_stats(s, pa, pb, pc, z, t, 8, 0, 0, 0); }, st + "Vp_local = 0 must be >= 1");
  expect_invalid([&] { cross_entropy_stats(s, pa, pb, pc, z, t, 8, 0, 129, 128); },
                 st + "V_local_valid = 129 must be in [0, Vp_local = 128]");
  expect_invalid([&] { cross_entropy_stats(s, pa, pb, pc, z, t, 8, 0, -1, 128); },
                 st + "V_local_valid = -1 must be in [0, Vp_local = 128]");
  expect_invalid([&] { cross_entropy_stats(s, pa, pb, pc, z + 4, t, 4, 0, 100, 128); },
                 st + "logits must be 16-byte aligned");

  const std::string rs = "rescale_sumexp: ";
  expect_invalid([&] { rescale_sumexp(s, nullptr, pb, pc, 8); }, rs + "row_sumexp is null");
  expect_invalid([&] { rescale_sumexp(s, pa, nullptr, pc, 8); }, rs + "row_max is null");
  expect_invalid([&] { rescale_sumexp(s, pa, pb, nullptr, 8); }, rs + "global_max is null");
  expect_invalid([&] { rescale_sumexp(s, pa, pb, pc, 0); }, rs + "N = 0 must be >= 1");

  const std::string fs = "cross_entropy_from_stats: ";
  float* l = pa;
  expect_invalid([&] { cross_entropy_from_stats(s, nullptr, z, t, pa, pb, pc, 8, 0, 100, 128, 1, true); },
                 fs + "losses is null");
  expect_invalid([&] { cross_entropy_from_stats(s, l, nullptr, t, pa, pb, pc, 8, 0, 100, 128, 1, true); },
                 fs + "logits_and_dlogits is null");
  expect_invalid([&] { cross_entropy_from_stats(s, l, z, nullptr, pa, pb, pc, 8, 0, 100, 128, 1, true); },
                 fs + "targets is null");
  expect_invalid([&] { cross_entropy_from_stats(s, l, z, t, nullptr, pb, pc, 8, 0, 100, 128, 1, true); },
                 fs + "global_max is null");
  expect_invalid([&] { cross_entropy_from_stats(s, l, z, t, pa, nullptr, pc, 8, 0, 100, 128, 1, true); },
                 fs + "global_sumexp is null");
  expect_invalid([&] { cross_entropy_from_stats(s, l, z, t, pa, pb, nullptr, 8, 0, 100, 128, 1, true); },
                 fs + "global_target_logit is null");
  expect_invalid([&] { cross_entropy_from_stats(s, l, z, t, pa, pb, pc, 0, 0, 100, 128, 1, true); },
                 fs + "N = 0 must be >= 1");
  expect_invalid([&] { cross_entropy_from_stats(s, l, z, t, pa, pb, pc, 8, -1, 100, 128, 1, true); },
                 fs + "vocab_begin = -1 must be >= 0");
  expect_invalid([&] { cross_entropy_from_stats(s, l, z, t, pa, pb, pc, 8, 0, 100, -128, 1, true); },
                 fs + "Vp_local = -128 must be >= 1");
  expect_invalid([&] { cross_entropy_from_stats(s, l, z, t, pa, pb, pc, 8, 0, 200, 128, 1, true); },
                 fs + "V_local_valid = 200 must be in [0, Vp_local = 128]");
  expect_invalid([&] { cross_entropy_from_stats(s, l, z + 2, t, pa, pb, pc, 4, 0, 100, 128, 1, true); },
                 fs + "logits_and_dlogits must be 16-byte aligned");
}

}  // namespace
}  // namespace kiln::KILN_NS
