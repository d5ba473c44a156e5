// kernels/cuda/embedding.cu against kiln::ref's embedding: every shape of B x T x C over small and
// full (50257-row) vocabularies, tokens repeated many times, vocabulary shards with out-of-shard
// and out-of-range token ids, both paths (8-channel packs and the scalar fallback), the host-side
// grouping plan, bitwise determinism, and the launchers' argument checks.
#include "kernels/cuda/embedding.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
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

using embedding = DeviceTest;

// A device array of n elements starting `offset` elements into its buffer (offset 1 breaks the
// 16-byte alignment the 8-wide path needs), 0xff-poisoned, optionally filled from `host`.
template <class T>
struct Placed {
  DeviceBuffer<T> buffer;
  T* data = nullptr;
  size_t n = 0;
  Placed(size_t count, int offset, const Stream& s) : buffer(count + 8), data(buffer.data() + offset), n(count) {
    buffer.fill_bytes(0xff, s);
  }
  Placed(const std::vector<T>& host, int offset, const Stream& s) : Placed(host.size(), offset, s) {
    if (!host.empty())
      KILN_CHECK(KILN_RT cudaMemcpyAsync(data, host.data(), n * sizeof(T), cudaMemcpyHostToDevice, s.get()));
  }
  std::vector<T> to_host(const Stream& s) const {
    std::vector<T> out(n);
    KILN_CHECK(KILN_RT cudaMemcpyAsync(out.data(), data, n * sizeof(T), cudaMemcpyDeviceToHost, s.get()));
    s.synchronize();
    return out;
  }
};

// One problem: shapes, tokens, bf16 tables and output gradient (with the float copies the
// reference sees), and non-zero starting gradients (the backward accumulates).
struct Problem {
  int B, T, C, vocab_begin, vocab_rows;
  std::vector<int32_t> tokens;
  std::vector<bf16> wte, wpe, dout;
  std::vector<float> wte_f, wpe_f, dout_f, dwte0, dwpe0;
};

void random_bf16(size_t n, std::mt19937& rng, std::vector<bf16>& out, std::vector<float>& rounded) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  out.resize(n);
  rounded.resize(n);
  for (size_t i = 0; i < n; i++) {
    out[i] = __float2bfloat16(dist(rng));
    rounded[i] = __bfloat162float(out[i]);
  }
}

Problem make_problem(int B, int T, int C, int vocab_begin, int vocab_rows, std::vector<int32_t> tokens, uint32_t seed) {
  Problem p{B, T, C, vocab_begin, vocab_rows, std::move(tokens), {}, {}, {}, {}, {}, {}, {}, {}};
  EXPECT_EQ(p.tokens.size(), (size_t)B * T);
  std::mt19937 rng(seed);
  random_bf16((size_t)vocab_rows * C, rng, p.wte, p.wte_f);
  random_bf16((size_t)T * C, rng, p.wpe, p.wpe_f);
  random_bf16((size_t)B * T * C, rng, p.dout, p.dout_f);
  std::uniform_real_distribution<float> dist(-0.5f, 0.5f);
  p.dwte0.resize((size_t)vocab_rows * C);
  p.dwpe0.resize((size_t)T * C);
  for (float& v : p.dwte0) v = dist(rng);
  for (float& v : p.dwpe0) v = dist(rng);
  return p;
}

std::vector<int32_t> random_tokens(int n, int lo, int hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(lo, hi);
  std::vector<int32_t> t(n);
  for (int32_t& v : t) v = dist(rng);
  return t;
}

std::vector<bf16> run_forward(const Problem& p, int offset) {
  Stream s;
  Placed<int32_t> tokens(p.tokens, 0, s);
  Placed<bf16> wte(p.wte, offset, s), wpe(p.wpe, offset, s), out((size_t)p.B * p.T * p.C, offset, s);
  embedding_forward(s, out.data, tokens.data, wte.data, wpe.data, p.B, p.T, p.C, p.vocab_begin, p.vocab_rows);
  return out.to_host(s);
}

// dwte followed by dwpe after one backward pass from the problem's starting gradients.
std::vector<float> run_backward(const Problem& p, int offset) {
  const EmbeddingBackwardPlan plan =
      make_embedding_backward_plan(p.tokens.data(), p.B, p.T, p.vocab_begin, p.vocab_rows);
  Stream s;
  Placed<int32_t> tokens(p.tokens, 0, s), order(plan.order, 0, s), starts(plan.segment_starts, 0, s);
  Placed<bf16> dout(p.dout, offset, s);
  Placed<float> dwte(p.dwte0, offset, s), dwpe(p.dwpe0, offset, s);
  embedding_backward(s, dwte.data, dwpe.data, dout.data, tokens.data, p.B, p.T, p.C, p.vocab_begin, p.vocab_rows,
                     plan.segments() > 0 ? order.data : nullptr, starts.data, plan.segments());
  std::vector<float> out = dwte.to_host(s);
  const std::vector<float> wpe_grad = dwpe.to_host(s);
  out.insert(out.end(), wpe_grad.begin(), wpe_grad.end());
  return out;
}

std::vector<float> reference_forward(const Problem& p) {
  std::vector<float> out((size_t)p.B * p.T * p.C);
  ref::embedding_forward(out.data(), p.tokens.data(), p.wte_f.data(), p.wpe_f.data(), p.B, p.T, p.C, p.vocab_begin,
                         p.vocab_rows);
  return out;
}

std::vector<float> reference_backward(const Problem& p) {
  std::vector<float> dwte = p.dwte0, dwpe = p.dwpe0;
  ref::embedding_backward(dwte.data(), dwpe.data(), p.dout_f.data(), p.tokens.data(), p.B, p.T, p.C, p.vocab_begin,
                          p.vocab_rows);
  dwte.insert(dwte.end(), dwpe.begin(), dwpe.end());
  return dwte;
}

// Forward and backward of `p` against the reference: bf16 output within 1e-2, fp32 gradients
// within 1e-5 (they add the same bf16-exact values in the same order as the reference, so in
// practice they agree exactly). Returns the worst errors seen via `worst`.
void check_problem(const Problem& p, int offset, double worst[2]) {
  SCOPED_TRACE("B " + std::to_string(p.B) + ", T " + std::to_string(p.T) + ", C " + std::to_string(p.C) + ", vocab [" +
               std::to_string(p.vocab_begin) + ", +" + std::to_string(p.vocab_rows) + "), offset " +
               std::to_string(offset));
  const double fwd = relative_error(run_forward(p, offset), reference_forward(p));
  const double bwd = relative_error(run_backward(p, offset), reference_backward(p));
  EXPECT_LT(fwd, 1e-2);
  EXPECT_LT(bwd, 1e-5);
  worst[0] = std::max(worst[0], fwd);
  worst[1] = std::max(worst[1], bwd);
}

TEST_F(embedding, AllShapesMatchReference) {
  double worst[2] = {0, 0};
  uint32_t seed = 1;
  for (int B : {1, 3})
    for (int T : {1, 5, 64})
      for (int C : {3, 8, 768}) {
        // A 10-token vocabulary: with up to 192 positions, most tokens repeat many times.
        const Problem p = make_problem(B, T, C, 0, 10, random_tokens(B * T, 0, 9, seed), seed);
        check_problem(p, 0, worst);
        seed++;
      }
  std::printf("embedding (all shapes): worst relative error forward %.3g, backward %.3g\n", worst[0], worst[1]);
}

// Offset pointers force the scalar path where C would allow packs; the result must not change.
TEST_F(embedding, MisalignedPointersUseScalarPath) {
  double worst[2] = {0, 0};
  for (int C : {8, 768}) {
    const Problem p = make_problem(3, 5, C, 0, 10, random_tokens(15, 0, 9, 40 + C), 40 + C);
    check_problem(p, 1, worst);
    const std::vector<bf16> a = run_forward(p, 0), b = run_forward(p, 1);
    EXPECT_TRUE(bytes_of(a) == bytes_of(b)) << "C " << C << ": the scalar and 8-wide paths differ";
    EXPECT_TRUE(run_backward(p, 0) == run_backward(p, 1)) << "C " << C << ": the scalar and 8-wide paths differ";
  }
  std::printf("embedding (scalar path): worst relative error forward %.3g, backward %.3g\n", worst[0], worst[1]);
}

// Many positions sharing a token: one token everywhere (a single segment of B*T positions), and
// half the positions on one token with the rest spread.
TEST_F(embedding, RepeatedTokens) {
  double worst[2] = {0, 0};
  for (int C : {3, 768}) {
    check_problem(make_problem(3, 64, C, 0, 10, std::vector<int32_t>(192, 7), 50), 0, worst);
    std::vector<int32_t> tokens = random_tokens(192, 0, 9, 51);
    for (size_t i = 0; i < tokens.size(); i += 2) tokens[i] = 3;
    check_problem(make_problem(3, 64, C, 0, 10, tokens, 52), 0, worst);
  }
  std::printf("embedding (repeated tokens): worst relative error forward %.3g, backward %.3g\n", worst[0], worst[1]);
}

// A shard holding tokens [4, 10): the others (another shard's, negative, huge) add only wpe.
TEST_F(embedding, VocabularyShard) {
  double worst[2] = {0, 0};
  for (int C : {3, 8, 768}) {
    std::vector<int32_t> tokens = random_tokens(3 * 5, 0, 13, 60 + C);
    tokens[0] = -1, tokens[1] = 4, tokens[2] = 9, tokens[3] = 10, tokens[4] = 3, tokens[5] = INT_MAX,
    tokens[6] = INT_MIN + 4, tokens[7] = 50256;  // INT_MIN + 4: the reference subtracts 4 in int
    check_problem(make_problem(3, 5, C, 4, 6, tokens, 60 + C), 0, worst);
  }
  std::printf("embedding (vocab shard): worst relative error forward %.3g, backward %.3g\n", worst[0], worst[1]);
}

// GPT-2's full vocabulary: rows far apart in a large table, first and last row included.
TEST_F(embedding, FullGpt2Vocabulary) {
  double worst[2] = {0, 0};
  std::vector<int32_t> tokens = random_tokens(3 * 5, 0, 50256, 70);
  tokens[0] = 0, tokens[1] = 50256, tokens[2] = 50256, tokens[9] = 0, tokens[14] = 50256;
  for (int C : {3, 8}) check_problem(make_problem(3, 5, C, 0, 50257, tokens, 71 + C), 0, worst);
  std::printf("embedding (vocab 50257): worst relative error forward %.3g, backward %.3g\n", worst[0], worst[1]);
}

// Token ids no shard could hold (INT_MIN, INT_MAX, ...) give wpe exactly and leave dwte untouched;
// with no in-shard token the plan is empty and the backward takes null plan pointers.
TEST_F(embedding, OutOfRangeTokensContributeOnlyPositions) {
  for (int C : {3, 8}) {
    SCOPED_TRACE("C " + std::to_string(C));
    const std::vector<int32_t> tokens = {INT_MIN, INT_MAX, -1, 3, 10, 50257};
    const Problem p = make_problem(2, 3, C, 4, 6, tokens, 80 + C);
    const std::vector<bf16> out = run_forward(p, 0);
    for (int n = 0; n < 6; n++)
      EXPECT_EQ(std::memcmp(&out[(size_t)n * C], &p.wpe[(size_t)(n % 3) * C], C * sizeof(bf16)), 0) << "position " << n;
    const EmbeddingBackwardPlan plan = make_embedding_backward_plan(tokens.data(), 2, 3, 4, 6);
    EXPECT_EQ(plan.segments(), 0);
    EXPECT_TRUE(plan.order.empty());
    const std::vector<float> got = run_backward(p, 0);  // passes order = nullptr
    EXPECT_EQ(std::memcmp(got.data(), p.dwte0.data(), p.dwte0.size() * sizeof(float)), 0) << "dwte changed";
    std::vector<float> want = p.dwpe0;
    for (int b = 0; b < 2; b++)
      for (size_t i = 0; i < want.size(); i++) want[i] += p.dout_f[(size_t)b * want.size() + i];
    const std::vector<float> got_dwpe(got.begin() + (ptrdiff_t)p.dwte0.size(), got.end());
    EXPECT_LT(relative_error(got_dwpe, want), 1e-5);
  }
}

TEST_F(embedding, PlanGroupsPositionsByToken) {
  // Shard [3, 10): rows 0..6. Positions 6 and 7 are out of the shard.
  const std::vector<int32_t> tokens = {5, 3, 5, 9, 3, 5, 100, -1};
  const EmbeddingBackwardPlan plan = make_embedding_backward_plan(tokens.data(), 2, 4, 3, 7);
  EXPECT_EQ(plan.order, (std::vector<int32_t>{1, 4, 0, 2, 5, 3}));  // token 3, then 5, then 9
  EXPECT_EQ(plan.segment_starts, (std::vector<int32_t>{0, 2, 5, 6}));
  EXPECT_EQ(plan.segments(), 3);
}

TEST_F(embedding, DeterministicUnderAllOrders) {
  // 192 positions on 10 tokens, C = 768 (packs) and C = 3 (scalar).
  for (int C : {768, 3}) {
    SCOPED_TRACE("C " + std::to_string(C));
    const Problem p = make_problem(3, 64, C, 0, 10, random_tokens(192, 0, 9, 90), 91);
    expect_same_under_all_orders([&] { return run_backward(p, 0); });
    expect_same_under_all_orders([&] { return run_forward(p, 0); });
  }
}

TEST_F(embedding, ForwardLauncherErrors) {
  Stream s;
  DeviceBuffer<bf16> out(64), wte(64), wpe(64);
  DeviceBuffer<int32_t> tok(4);
  bf16* odd = reinterpret_cast<bf16*>(reinterpret_cast<char*>(out.data()) + 1);
  int32_t* odd_tok = reinterpret_cast<int32_t*>(reinterpret_cast<char*>(tok.data()) + 2);
  auto fwd = [&](bf16* o, const int32_t* t, const bf16* e, const bf16* p, int B, int T, int C, int vb, int vr) {
    return [=, &s] { embedding_forward(s, o, t, e, p, B, T, C, vb, vr); };
  };
  bf16 *o = out.data(), *e = wte.data(), *p = wpe.data();
  int32_t* t = tok.data();
  const std::string f = "embedding_forward: ";
  expect_invalid(fwd(nullptr, t, e, p, 1, 2, 4, 0, 8), f + "out is null");
  expect_invalid(fwd(o, nullptr, e, p, 1, 2, 4, 0, 8), f + "tokens is null");
  expect_invalid(fwd(o, t, nullptr, p, 1, 2, 4, 0, 8), f + "wte is null");
  expect_invalid(fwd(o, t, e, nullptr, 1, 2, 4, 0, 8), f + "wpe is null");
  expect_invalid(fwd(odd, t, e, p, 1, 2, 4, 0, 8), f + "out is not aligned to 2 bytes");
  expect_invalid(fwd(o, odd_tok, e, p, 1, 2, 4, 0, 8), f + "tokens is not aligned to 4 bytes");
  expect_invalid(fwd(o, t, odd, p, 1, 2, 4, 0, 8), f + "wte is not aligned to 2 bytes");
  expect_invalid(fwd(o, t, e, odd, 1, 2, 4, 0, 8), f + "wpe is not aligned to 2 bytes");
  expect_invalid(fwd(o, t, e, p, 0, 2, 4, 0, 8), f + "B must be positive, got 0");
  expect_invalid(fwd(o, t, e, p, 1, -2, 4, 0, 8), f + "T must be positive, got -2");
  expect_invalid(fwd(o, t, e, p, 1, 2, 0, 0, 8), f + "C must be positive, got 0");
  expect_invalid(fwd(o, t, e, p, 1, 2, 4, 0, 0), f + "vocab_rows must be positive, got 0");
  expect_invalid(fwd(o, t, e, p, 1, 2, 4, -1, 8), f + "vocab_begin must be >= 0, got -1");
  expect_invalid(fwd(o, t, e, p, 1, 2, 4, INT_MAX - 3, 8),
                 f + "vocab_begin + vocab_rows exceeds the int32 token range");
  s.synchronize();
}

TEST_F(embedding, PlanErrors) {
  const std::vector<int32_t> tokens(8, 1);
  const std::string f = "make_embedding_backward_plan: ";
  expect_invalid([&] { make_embedding_backward_plan(nullptr, 2, 4, 0, 8); }, f + "host_tokens is null");
  expect_invalid([&] { make_embedding_backward_plan(tokens.data(), 0, 4, 0, 8); }, f + "B must be positive, got 0");
  expect_invalid([&] { make_embedding_backward_plan(tokens.data(), 2, -4, 0, 8); }, f + "T must be positive, got -4");
  expect_invalid([&] { make_embedding_backward_plan(tokens.data(), 2, 4, 0, -8); },
                 f + "vocab_rows must be positive, got -8");
  expect_invalid([&] { make_embedding_backward_plan(tokens.data(), 2, 4, -3, 8); },
                 f + "vocab_begin must be >= 0, got -3");
  expect_invalid([&] { make_embedding_backward_plan(tokens.data(), 65536, 65536, 0, 8); },
                 f + "B*T exceeds INT_MAX positions");
}

TEST_F(embedding, BackwardLauncherErrors) {
  Stream s;
  DeviceBuffer<float> dwte(64), dwpe(64);
  DeviceBuffer<bf16> dout(64);
  DeviceBuffer<int32_t> tok(8), order(8), starts(8);
  float* odd_f = reinterpret_cast<float*>(reinterpret_cast<char*>(dwte.data()) + 2);
  bf16* odd_b = reinterpret_cast<bf16*>(reinterpret_cast<char*>(dout.data()) + 1);
  int32_t* odd_i = reinterpret_cast<int32_t*>(reinterpret_cast<char*>(order.data()) + 2);
  float *we = dwte.data(), *wp = dwpe.data();
  const bf16* d = dout.data();
  const int32_t *t = tok.data(), *o = order.data(), *st = starts.data();
  auto bwd = [&](float* a, float* b, const bf16* g, const int32_t* tk, int B, int T, int C, int vb, int vr,
                 const int32_t* ord, const int32_t* sst,
                 int segs) { return [=, &s] { embedding_backward(s, a, b, g, tk, B, T, C, vb, vr, ord, sst, segs); }; };
  const std::string f = "embedding_backward: ";
  expect_invalid(bwd(nullptr, wp, d, t, 2, 3, 4, 0, 8, o, st, 1), f + "dwte is null");
  expect_invalid(bwd(we, nullptr, d, t, 2, 3, 4, 0, 8, o, st, 1), f + "dwpe is null");
  expect_invalid(bwd(we, wp, nullptr, t, 2, 3, 4, 0, 8, o, st, 1), f + "dout is null");
  expect_invalid(bwd(we, wp, d, nullptr, 2, 3, 4, 0, 8, o, st, 1), f + "tokens is null");
  expect_invalid(bwd(odd_f, wp, d, t, 2, 3, 4, 0, 8, o, st, 1), f + "dwte is not aligned to 4 bytes");
  expect_invalid(bwd(we, odd_f, d, t, 2, 3, 4, 0, 8, o, st, 1), f + "dwpe is not aligned to 4 bytes");
  expect_invalid(bwd(we, wp, odd_b, t, 2, 3, 4, 0, 8, o, st, 1), f + "dout is not aligned to 2 bytes");
  expect_invalid(bwd(we, wp, d, odd_i, 2, 3, 4, 0, 8, o, st, 1), f + "tokens is not aligned to 4 bytes");
  expect_invalid(bwd(we, wp, d, t, 0, 3, 4, 0, 8, o, st, 1), f + "B must be positive, got 0");
  expect_invalid(bwd(we, wp, d, t, 2, 0, 4, 0, 8, o, st, 1), f + "T must be positive, got 0");
  expect_invalid(bwd(we, wp, d, t, 2, 3, -4, 0, 8, o, st, 1), f + "C must be positive, got -4");
  expect_invalid(bwd(we, wp, d, t, 2, 3, 4, 0, 0, o, st, 1), f + "vocab_rows must be positive, got 0");
  expect_invalid(bwd(we, wp, d, t, 2, 3, 4, -1, 8, o, st, 1), f + "vocab_begin must be >= 0, got -1");
  expect_invalid(bwd(we, wp, d, t, 2, 3, 4, INT_MAX, 8, o, st, 1), f + "vocab_begin + vocab_rows exceeds");
  expect_invalid(bwd(we, wp, d, t, 2, 3, 4, 0, 8, o, st, -1), f + "segments must be in [0, B*T = 6], got -1");
  expect_invalid(bwd(we, wp, d, t, 2, 3, 4, 0, 8, o, st, 7), f + "segments must be in [0, B*T = 6], got 7");
  expect_invalid(bwd(we, wp, d, t, 2, 3, 4, 0, 8, nullptr, st, 1), f + "order is null");
  expect_invalid(bwd(we, wp, d, t, 2, 3, 4, 0, 8, o, nullptr, 1), f + "segment_starts is null");
  expect_invalid(bwd(we, wp, d, t, 2, 3, 4, 0, 8, odd_i, st, 1), f + "order is not aligned to 4 bytes");
  expect_invalid(bwd(we, wp, d, t, 2, 3, 4, 0, 8, o, odd_i, 1), f + "segment_starts is not aligned to 4 bytes");
  expect_invalid(bwd(we, wp, d, t, 65536, 65536, 4, 0, 8, o, st, 1), f + "B*T exceeds INT_MAX positions");
  s.synchronize();
}

}  // namespace
}  // namespace kiln::KILN_NS
