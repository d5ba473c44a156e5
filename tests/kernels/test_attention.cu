// kernels/cuda/attention.cu against kiln::ref's causal attention (in double, on the same bf16-rounded
// inputs): forward output and log-sum-exp, dq, dk and dv, for both the CUDA-core reference
// kernels and the tensor-core ones, at awkward T; causal tile skipping counted in mma
// instructions (emulator); determinism under thread orders; argument checks.
#include "kernels/cuda/attention.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "kernels/device/mma.h"
#include "kernels/ref/ref.h"
#include "tests/device_test.h"

namespace kiln::KILN_NS {
namespace {

using attention = DeviceTest;

std::vector<bf16> random_bf16(size_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<bf16> v(n);
  for (auto& x : v) x = __float2bfloat16(dist(rng));
  return v;
}

std::string name(const AttentionShape& s, AttentionKernel kernel) {
  return "B " + std::to_string(s.B) + ", T " + std::to_string(s.T) + ", H " + std::to_string(s.H) + ", D " +
         std::to_string(s.D) + (s.causal ? ", causal" : ", full") +
         (kernel == AttentionKernel::reference ? ", reference kernel" : ", tensor-core kernel");
}

// Inputs scaled so that softmax rows are neither flat nor one-hot (scores of a few units).
struct Inputs {
  AttentionShape s;
  std::vector<bf16> qkv, dout;
  Inputs(AttentionShape shape, uint32_t seed)
      : s(shape),
        qkv(random_bf16((size_t)s.B * s.T * 3 * s.H * s.D, 1.0f, seed)),
        dout(random_bf16((size_t)s.B * s.T * s.H * s.D, 1.0f, seed + 1)) {}
  size_t rows() const { return (size_t)s.B * s.H * s.T; }
  size_t out_size() const { return (size_t)s.B * s.T * s.H * s.D; }
};

struct Forward {
  std::vector<bf16> out;
  std::vector<float> lse;
};
struct Result {
  Forward forward;
  std::vector<bf16> dqkv;
};

// Runs forward (and backward, if asked) with outputs poisoned first.
Result run(const Inputs& in, AttentionKernel kernel, bool with_backward,
           AttentionMode mode = AttentionMode::deterministic) {
  Stream s;
  auto qkv = to_device(in.qkv, s), dout = to_device(in.dout, s);
  auto out = poisoned<bf16>(in.out_size(), s);
  auto lse = poisoned<float>(in.rows(), s);
  attention_forward(s, out.data(), lse.data(), qkv.data(), in.s, kernel);
  Result r{{out.to_host(s), lse.to_host(s)}, {}};
  if (with_backward) {
    auto dqkv = poisoned<bf16>(in.qkv.size(), s);
    auto scratch = poisoned<float>(attention_backward_scratch_floats(in.s, kernel, mode), s);
    attention_backward(s, dqkv.data(), scratch.data(), dout.data(), qkv.data(), out.data(), lse.data(), in.s, kernel,
                       mode);
    r.dqkv = dqkv.to_host(s);
  }
  return r;
}

// The elements of one part (0 q, 1 k, 2 v) of a [B, T, 3, H, D] tensor.
std::vector<size_t> part_indices(const AttentionShape& s, int part) {
  std::vector<size_t> idx;
  for (int bt = 0; bt < s.B * s.T; bt++)
    for (int hd = 0; hd < s.H * s.D; hd++) idx.push_back(((size_t)bt * 3 + part) * s.H * s.D + hd);
  return idx;
}

// Causal only: ref::attention_* is the causal attention GPT-2 uses.
void expect_matches_reference(const AttentionShape& shape, AttentionKernel kernel, bool with_backward, uint32_t seed,
                              AttentionMode mode = AttentionMode::deterministic) {
  SCOPED_TRACE(name(shape, kernel) + (mode == AttentionMode::fast ? ", fast mode" : ", deterministic mode"));
  const Inputs in(shape, seed);
  std::vector<double> out(in.out_size()), lse(in.rows());
  ref::attention_forward(out.data(), lse.data(), to_double(in.qkv).data(), shape.B, shape.T, shape.H, shape.D);
  const Result got = run(in, kernel, with_backward, mode);
  EXPECT_LT(rel_error(to_floats(got.forward.out), out), 1e-2);
  EXPECT_LT(rel_error(got.forward.lse, lse), 1e-5);
  if (!with_backward) return;
  std::vector<double> dqkv(in.qkv.size(), 0.0), out_bf16 = to_double(got.forward.out);
  // The backward's Delta = dout . out uses the bf16 out the kernels saw.
  ref::attention_backward(dqkv.data(), to_double(in.dout).data(), to_double(in.qkv).data(), out_bf16.data(), lse.data(),
                          shape.B, shape.T, shape.H, shape.D);
  const std::vector<float> got_d = to_floats(got.dqkv);
  const char* parts[] = {"dq", "dk", "dv"};
  for (int part = 0; part < 3; part++) {
    std::vector<float> g;
    std::vector<double> w;
    for (size_t i : part_indices(shape, part)) g.push_back(got_d[i]), w.push_back(dqkv[i]);
    EXPECT_LT(rel_error(g, w), 1e-2) << parts[part];
  }
}

TEST_F(attention, ReferenceKernelsMatchCpuReference) {
  for (int T : {1, 7, 64}) expect_matches_reference({2, T, 2, 64}, AttentionKernel::reference, true, T);
  expect_matches_reference({1, 257, 2, 64}, AttentionKernel::reference, true, 257);  // one warp per row: slow here
  for (int T : {1, 7, 130}) expect_matches_reference({1, T, 2, 128}, AttentionKernel::reference, true, T + 1);
}

TEST_F(attention, TensorCoreForwardMatchesCpuReference) {
  for (int T : {1, 7, 64, 257}) expect_matches_reference({2, T, 3, 64}, AttentionKernel::tensor_core, false, 10 + T);
  expect_matches_reference({1, 1024, 1, 64}, AttentionKernel::tensor_core, false, 11);
  for (int T : {1, 7, 64, 257}) expect_matches_reference({1, T, 2, 128}, AttentionKernel::tensor_core, false, 12 + T);
}

TEST_F(attention, TensorCoreBackwardMatchesCpuReference) {
  for (AttentionMode mode : {AttentionMode::deterministic, AttentionMode::fast}) {
    for (int T : {1, 7, 64, 257})
      expect_matches_reference({2, T, 2, 64}, AttentionKernel::tensor_core, true, 20 + T, mode);
    expect_matches_reference({1, 1024, 1, 64}, AttentionKernel::tensor_core, true, 21, mode);
    for (int T : {1, 7, 100, 257})
      expect_matches_reference({1, T, 2, 128}, AttentionKernel::tensor_core, true, 22 + T, mode);
  }
}

#ifndef KILN_EMU
// Longer sequences than the emulator can afford, on a real GPU only.
TEST_F(attention, LongSequencesMatchCpuReference) {
  for (AttentionMode mode : {AttentionMode::deterministic, AttentionMode::fast}) {
    expect_matches_reference({1, 4096, 2, 64}, AttentionKernel::tensor_core, true, 60, mode);
    expect_matches_reference({1, 2048, 2, 128}, AttentionKernel::tensor_core, true, 61, mode);
  }
}
#endif

// Full (non-causal) attention has no CPU reference: the tensor-core kernels are checked against
// the CUDA-core ones, which differ from their causal form only in the loop bound.
TEST_F(attention, FullAttentionTensorCoreMatchesReferenceKernels) {
  for (int D : {64, 128}) {
    const AttentionShape shape{1, 100, 2, D, false};
    SCOPED_TRACE(name(shape, AttentionKernel::tensor_core));
    const Inputs in(shape, 30 + D);
    const Result want = run(in, AttentionKernel::reference, true);
    for (AttentionMode mode : {AttentionMode::deterministic, AttentionMode::fast}) {
      const Result got = run(in, AttentionKernel::tensor_core, true, mode);
      EXPECT_LT(relative_error(got.forward.out, to_floats(want.forward.out)), 1e-2);
      EXPECT_LT(relative_error(got.forward.lse, want.forward.lse), 1e-5);
      EXPECT_LT(relative_error(got.dqkv, to_floats(want.dqkv)), 2e-2);  // two bf16 results compared
    }
  }
}

// The deterministic mode (and the forward) give the same bits under every thread order; the fast
// mode's dq atomics are added in an order that varies, so it is only compared within tolerance.
TEST_F(attention, TensorCoreKernelsAreDeterministic) {
  for (int D : {64, 128}) {
    const Inputs in({1, 130, 2, D}, 40 + D);
    expect_same_under_orders([&] {
      const Result r = run(in, AttentionKernel::tensor_core, true);
      std::vector<float> all = to_floats(r.forward.out);
      all.insert(all.end(), r.forward.lse.begin(), r.forward.lse.end());
      const std::vector<float> d = to_floats(r.dqkv);
      all.insert(all.end(), d.begin(), d.end());
      return all;
    });
  }
}

TEST_F(attention, FastModeAgreesWithDeterministicModeUnderEveryOrder) {
  const Inputs in({2, 130, 2, 64}, 45);
  const std::vector<float> want = to_floats(run(in, AttentionKernel::tensor_core, true).dqkv);
  expect_same_under_orders(
      [&] {
        const std::vector<bf16> got = run(in, AttentionKernel::tensor_core, true, AttentionMode::fast).dqkv;
        EXPECT_LT(relative_error(got, want), 1e-2);
        return std::vector<float>{};  // order-dependent: nothing to compare bitwise
      },
      false);
}

#ifdef KILN_EMU
// n = T / 64 tiles per head: full attention visits n^2 (query, key) tile pairs, causal n (n + 1) / 2.
// Each pair is 4 warps x (D/16 k-steps x 8 n-tiles for the scores + 4 k-steps x D/8 n-tiles for
// P V) mma instructions in the forward pass; the backward's two passes visit the same pairs.
// The backward's fast mode does 5 GEMMs per tile pair (S^T, dV, dP^T, dK, dQ), the deterministic
// one 7 (its dq pass recomputes S and dP).
TEST_F(attention, CausalLaunchesSkipTilesAboveTheDiagonal) {
  const int T = 256, n = T / 64, D = 64, B = 1, H = 2;
  uint64_t forward[2], backward[2][2];  // [causal], [causal][fast]
  for (bool causal : {false, true}) {
    const Inputs in({B, T, H, D, causal}, 50);
    Stream s;
    auto qkv = to_device(in.qkv, s), dout = to_device(in.dout, s), out = poisoned<bf16>(in.out_size(), s),
         dqkv = poisoned<bf16>(in.qkv.size(), s);
    auto lse = poisoned<float>(in.rows(), s), scratch = poisoned<float>(attention_backward_scratch_floats(in.s), s);
    s.synchronize();
    uint64_t before = mma_emu::mma_count().load();
    attention_forward(s, out.data(), lse.data(), qkv.data(), in.s);
    s.synchronize();
    forward[causal] = mma_emu::mma_count().load() - before;
    for (AttentionMode mode : {AttentionMode::deterministic, AttentionMode::fast}) {
      before = mma_emu::mma_count().load();
      attention_backward(s, dqkv.data(), scratch.data(), dout.data(), qkv.data(), out.data(), lse.data(), in.s,
                         AttentionKernel::tensor_core, mode);
      s.synchronize();
      backward[causal][mode == AttentionMode::fast] = mma_emu::mma_count().load() - before;
    }
  }
  const uint64_t gemm = 4 * D / 16 * 8;  // one 64 x 64 x D GEMM of a tile pair: 4 warps of 16 rows
  EXPECT_EQ(forward[false], (uint64_t)B * H * n * n * 2 * gemm);
  EXPECT_EQ(forward[true], (uint64_t)B * H * n * (n + 1) / 2 * 2 * gemm);
  EXPECT_EQ(backward[true][true], (uint64_t)B * H * n * (n + 1) / 2 * 5 * gemm);
  EXPECT_EQ(backward[true][false], (uint64_t)B * H * n * (n + 1) / 2 * 7 * gemm);
  EXPECT_DOUBLE_EQ((double)forward[true] / forward[false], (n + 1) / (2.0 * n));
  for (int fast : {0, 1}) EXPECT_DOUBLE_EQ((double)backward[true][fast] / backward[false][fast], (n + 1) / (2.0 * n));
}
#endif

TEST_F(attention, BadShapesAndPointersAreRejected) {
  Stream s;
  DeviceBuffer<bf16> qkv(3 * 64 * 128 * 2), out(64 * 128 * 2), dout(64 * 128 * 2), dqkv(3 * 64 * 128 * 2);
  DeviceBuffer<float> lse(256), scratch(256);
  expect_invalid(
      [&] {
        attention_forward(s, out.data(), lse.data(), qkv.data(), {1, 8, 1, 96});
      },
      "attention_forward: head dim D must be 64 or 128, got 96");
  expect_invalid(
      [&] {
        attention_forward(s, out.data(), lse.data(), qkv.data(), {1, 0, 1, 64});
      },
      "attention_forward: T must be positive, got 0");
  expect_invalid(
      [&] {
        attention_forward(s, out.data(), lse.data(), qkv.data() + 1, {1, 8, 1, 64});
      },
      "attention_forward: qkv must be 16-byte aligned");
  expect_invalid(
      [&] {
        attention_forward(s, out.data(), nullptr, qkv.data(), {1, 8, 1, 64});
      },
      "attention_forward: lse is null");
  expect_invalid(
      [&] {
        attention_backward(s, dqkv.data(), scratch.data(), nullptr, qkv.data(), out.data(), lse.data(), {1, 8, 1, 64});
      },
      "attention_backward: dout is null");
  expect_invalid(
      [&] {
        attention_backward_scratch_floats({1, 8, 0, 64});
      },
      "attention_backward_scratch_floats: H must be positive, got 0");
}

}  // namespace
}  // namespace kiln::KILN_NS
