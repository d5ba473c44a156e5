// Gradient checks for kiln's CPU reference ops (kernels/ref/ref.h).
//
// Every backward is compared with central finite differences in double precision of the scalar
// L = sum(out * g) for a random upstream gradient g, w.r.t. every differentiable input. Forwards
// are compared with naive re-statements written here; the float instantiations are compared with
// the double ones on larger shapes that are not multiples of any block size.
#include "kernels/ref/ref.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <numbers>
#include <random>
#include <string>
#include <vector>

namespace {

namespace ref = kiln::ref;
using Vec = std::vector<double>;

constexpr double kStep = 1e-6;       // finite-difference step
constexpr double kFdTol = 1e-6;      // finite differences vs analytic, double
constexpr double kExactTol = 1e-12;  // double op vs naive double re-statement
constexpr double kFloatTol = 1e-5;   // float op vs double op

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

Vec randn(size_t n, std::mt19937& rng, double mean = 0.0, double stddev = 1.0) {
  std::normal_distribution<double> dist(mean, stddev);
  Vec v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

std::vector<int32_t> rand_tokens(size_t n, int lo, int hi, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> dist(lo, hi - 1);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = dist(rng);
  return t;
}

// Values exactly representable in float, so float and double runs see identical inputs.
Vec round_to_float(Vec v) {
  for (double& x : v) x = static_cast<double>(static_cast<float>(x));
  return v;
}
std::vector<float> to_float(const Vec& v) { return {v.begin(), v.end()}; }
Vec to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

double max_abs(const Vec& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// max|got - want| / max(max|want|, 1e-8).
double rel_err(const Vec& got, const Vec& want) {
  EXPECT_EQ(got.size(), want.size());
  double d = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) d = std::max(d, std::abs(got[i] - want[i]));
  if (std::isnan(max_abs(got))) return std::numeric_limits<double>::infinity();
  return d / std::max(max_abs(want), 1e-8);
}

// Compares and prints the error so the worst cases can be read off the test log.
void expect_close(const std::string& what, const Vec& got, const Vec& want, double tol) {
  const double err = rel_err(got, want);
  std::printf("    %-50s rel err %.3g\n", what.c_str(), err);
  EXPECT_LT(err, tol) << what;
}

// Central differences of the scalar f() w.r.t. x[i], for i in idx (every element if idx is empty).
// x is perturbed in place and restored.
Vec numeric_grad(Vec& x, const std::function<double()>& f, const std::vector<size_t>& idx = {}) {
  std::vector<size_t> all;
  if (idx.empty()) {
    all.resize(x.size());
    for (size_t i = 0; i < x.size(); ++i) all[i] = i;
  }
  const std::vector<size_t>& at = idx.empty() ? all : idx;
  Vec g(at.size());
  for (size_t k = 0; k < at.size(); ++k) {
    const double x0 = x[at[k]];
    x[at[k]] = x0 + kStep;
    const double lp = f();
    x[at[k]] = x0 - kStep;
    const double lm = f();
    x[at[k]] = x0;
    g[k] = (lp - lm) / (2 * kStep);
  }
  return g;
}

// Analytic gradient vs finite differences; also guards against a vacuous all-zero comparison.
void expect_grad(const std::string& what, const Vec& analytic, const Vec& numeric, double tol = kFdTol) {
  EXPECT_GT(max_abs(numeric), 1e-3) << what << ": finite-difference gradient is ~0, test is vacuous";
  expect_close(what, analytic, numeric, tol);
}

Vec gather(const Vec& v, const std::vector<size_t>& idx) {
  Vec out(idx.size());
  for (size_t k = 0; k < idx.size(); ++k) out[k] = v[idx[k]];
  return out;
}

// ---------------------------------------------------------------------------------------------
// Naive re-statements
// ---------------------------------------------------------------------------------------------

// out[N,OC] = x @ w^T + b
Vec naive_matmul(const Vec& x, const Vec& w, const Vec* b, int N, int C, int OC) {
  Vec out(size_t(N) * OC);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      double s = b ? (*b)[o] : 0.0;
      for (int c = 0; c < C; ++c) s += x[size_t(n) * C + c] * w[size_t(o) * C + c];
      out[size_t(n) * OC + o] = s;
    }
  return out;
}

// Causal attention with an explicit T x T mask; lse[B,NH,T] = log(sum(exp(scaled scores))).
void naive_attention(Vec& out, Vec& lse, const Vec& qkv, int B, int Tn, int NH, int HS) {
  const int C = NH * HS;
  const double scale = 1.0 / std::sqrt(double(HS));
  out.assign(size_t(B) * Tn * C, 0.0);
  lse.assign(size_t(B) * NH * Tn, 0.0);
  auto row = [&](int b, int t, int which, int h) { return &qkv[(size_t(b) * Tn + t) * 3 * C + which * C + h * HS]; };
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int t = 0; t < Tn; ++t) {
        Vec s(Tn);
        for (int u = 0; u < Tn; ++u) {
          double d = 0;
          for (int i = 0; i < HS; ++i) d += row(b, t, 0, h)[i] * row(b, u, 1, h)[i];
          s[u] = u > t ? -std::numeric_limits<double>::infinity() : d * scale;
        }
        double sum = 0;
        for (int u = 0; u < Tn; ++u) sum += std::exp(s[u]);
        lse[(size_t(b) * NH + h) * Tn + t] = std::log(sum);
        for (int u = 0; u < Tn; ++u)
          for (int i = 0; i < HS; ++i)
            out[(size_t(b) * Tn + t) * C + h * HS + i] += std::exp(s[u]) / sum * row(b, u, 2, h)[i];
      }
}

double naive_gelu(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * x * x * x)));
}

// torch.optim.AdamW, one step, scalar by scalar.
void naive_adamw(Vec& p, const Vec& g, Vec& m, Vec& v, const ref::AdamWParams& hp) {
  const double bc1 = 1.0 - std::pow(hp.beta1, double(hp.step));
  const double bc2 = 1.0 - std::pow(hp.beta2, double(hp.step));
  for (size_t i = 0; i < p.size(); ++i) {
    p[i] *= 1.0 - hp.lr * hp.weight_decay;
    m[i] = hp.beta1 * m[i] + (1.0 - hp.beta1) * g[i];
    v[i] = hp.beta2 * v[i] + (1.0 - hp.beta2) * g[i] * g[i];
    const double denom = std::sqrt(v[i]) / std::sqrt(bc2) + hp.eps;
    p[i] -= hp.lr / bc1 * m[i] / denom;
  }
}

// ---------------------------------------------------------------------------------------------
// Op wrappers on std::vector (double unless templated)
// ---------------------------------------------------------------------------------------------

Vec embedding(const std::vector<int32_t>& tokens, const double* wte, const Vec& wpe, int B, int Tn, int C,
              int vocab_begin, int vocab_rows) {
  Vec out(size_t(B) * Tn * C);
  ref::embedding_forward(out.data(), tokens.data(), wte, wpe.data(), B, Tn, C, vocab_begin, vocab_rows);
  return out;
}

struct LayernormOut {
  Vec out, mean, rstd;
};
LayernormOut layernorm(const Vec& x, const Vec& w, const Vec& b, int N, int C) {
  LayernormOut r{Vec(size_t(N) * C), Vec(N), Vec(N)};
  ref::layernorm_forward(r.out.data(), r.mean.data(), r.rstd.data(), x.data(), w.data(), b.data(), N, C);
  return r;
}

template <class T>
std::vector<T> matmul(const std::vector<T>& x, const std::vector<T>& w, const std::vector<T>* b, int N, int C, int OC) {
  std::vector<T> out(size_t(N) * OC);
  ref::matmul_forward(out.data(), x.data(), w.data(), b ? b->data() : nullptr, N, C, OC);
  return out;
}

template <class T>
struct AttentionOut {
  std::vector<T> out, lse;
};
template <class T>
AttentionOut<T> attention(const std::vector<T>& qkv, int B, int Tn, int NH, int HS) {
  AttentionOut<T> r{std::vector<T>(size_t(B) * Tn * NH * HS), std::vector<T>(size_t(B) * NH * Tn)};
  ref::attention_forward(r.out.data(), r.lse.data(), qkv.data(), B, Tn, NH, HS);
  return r;
}
template <class T>
std::vector<T> attention_grad(const std::vector<T>& dout, const std::vector<T>& qkv, const AttentionOut<T>& fwd, int B,
                              int Tn, int NH, int HS) {
  std::vector<T> dqkv(qkv.size(), T(0));
  ref::attention_backward(dqkv.data(), dout.data(), qkv.data(), fwd.out.data(), fwd.lse.data(), B, Tn, NH, HS);
  return dqkv;
}

// ---------------------------------------------------------------------------------------------
// Embedding
// ---------------------------------------------------------------------------------------------

TEST(RefOps, EmbeddingForwardAndGradients) {
  std::mt19937 rng(101);
  const int B = 2, Tn = 3, C = 4, V = 7;
  std::vector<int32_t> tokens = rand_tokens(size_t(B) * Tn, 0, V, rng);
  tokens[4] = tokens[1];  // a repeated token: its dwte row sums two contributions
  Vec wte = randn(size_t(V) * C, rng), wpe = randn(size_t(Tn) * C, rng), g = randn(size_t(B) * Tn * C, rng);

  const Vec out = embedding(tokens, wte.data(), wpe, B, Tn, C, 0, V);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < Tn; ++t)
      for (int c = 0; c < C; ++c)
        EXPECT_EQ(out[(size_t(b) * Tn + t) * C + c], wte[size_t(tokens[b * Tn + t]) * C + c] + wpe[size_t(t) * C + c]);

  Vec dwte(wte.size(), 0.0), dwpe(wpe.size(), 0.0);
  ref::embedding_backward(dwte.data(), dwpe.data(), g.data(), tokens.data(), B, Tn, C, 0, V);
  auto loss = [&] { return dot(embedding(tokens, wte.data(), wpe, B, Tn, C, 0, V), g); };
  expect_grad("embedding dwte", dwte, numeric_grad(wte, loss));
  expect_grad("embedding dwpe", dwpe, numeric_grad(wpe, loss));
}

TEST(RefOps, EmbeddingVocabShard) {
  std::mt19937 rng(102);
  const int B = 2, Tn = 5, C = 3, vocab_begin = 4, vocab_rows = 6, V = 14;
  // Tokens 0..13: rows -4..9 relative to the shard. Guard rows on both sides (NaN for the forward,
  // zero for the backward) catch any access outside the shard.
  const int guard = 4;
  std::vector<int32_t> tokens = {0, 4, 9, 10, 13, 3, 5, 5, 12, 7};
  ASSERT_EQ(tokens.size(), size_t(B) * Tn);
  Vec wte_buf(size_t(guard + vocab_rows + guard) * C, std::numeric_limits<double>::quiet_NaN());
  const Vec shard = randn(size_t(vocab_rows) * C, rng);
  std::copy(shard.begin(), shard.end(), wte_buf.begin() + guard * C);
  double* wte = wte_buf.data() + guard * C;
  Vec wpe = randn(size_t(Tn) * C, rng), g = randn(size_t(B) * Tn * C, rng);

  auto in_shard = [&](int32_t tok) { return tok >= vocab_begin && tok < vocab_begin + vocab_rows; };
  const Vec out = embedding(tokens, wte, wpe, B, Tn, C, vocab_begin, vocab_rows);
  int outside = 0;
  for (int bt = 0; bt < B * Tn; ++bt) {
    const int t = bt % Tn;
    outside += !in_shard(tokens[bt]);
    for (int c = 0; c < C; ++c) {
      const double want =
          wpe[size_t(t) * C + c] + (in_shard(tokens[bt]) ? wte[size_t(tokens[bt] - vocab_begin) * C + c] : 0.0);
      EXPECT_EQ(out[size_t(bt) * C + c], want) << "position " << bt << " token " << tokens[bt];
    }
  }
  ASSERT_GE(outside, 4);
  ASSERT_LT(outside, V);

  Vec dwte_buf(wte_buf.size(), 0.0), dwpe(wpe.size(), 0.0);
  double* dwte = dwte_buf.data() + guard * C;
  ref::embedding_backward(dwte, dwpe.data(), g.data(), tokens.data(), B, Tn, C, vocab_begin, vocab_rows);
  for (int i = 0; i < guard * C; ++i) {
    EXPECT_EQ(dwte_buf[i], 0.0) << "dwte written below the shard";
    EXPECT_EQ(dwte_buf[dwte_buf.size() - 1 - i], 0.0) << "dwte written above the shard";
  }
  // dwte rows are exactly the sums of dout over in-shard positions; out-of-shard tokens add nothing.
  Vec want_dwte(size_t(vocab_rows) * C, 0.0);
  for (int bt = 0; bt < B * Tn; ++bt)
    if (in_shard(tokens[bt]))
      for (int c = 0; c < C; ++c) want_dwte[size_t(tokens[bt] - vocab_begin) * C + c] += g[size_t(bt) * C + c];
  expect_close("embedding shard dwte vs direct sum", Vec(dwte, dwte + vocab_rows * C), want_dwte, kExactTol);

  Vec wte_shard(wte, wte + vocab_rows * C);
  auto loss = [&] { return dot(embedding(tokens, wte_shard.data(), wpe, B, Tn, C, vocab_begin, vocab_rows), g); };
  expect_grad("embedding shard dwte", Vec(dwte, dwte + vocab_rows * C), numeric_grad(wte_shard, loss));
  expect_grad("embedding shard dwpe", dwpe, numeric_grad(wpe, loss));
}

// ---------------------------------------------------------------------------------------------
// LayerNorm
// ---------------------------------------------------------------------------------------------

TEST(RefOps, LayernormForwardAndGradients) {
  std::mt19937 rng(201);
  const int N = 4, C = 7;
  Vec x = randn(size_t(N) * C, rng, 0.5, 1.5), w = randn(C, rng, 1.0, 0.3), b = randn(C, rng, 0.0, 0.3);
  Vec g = randn(size_t(N) * C, rng);

  const LayernormOut fwd = layernorm(x, w, b, N, C);
  Vec want_out(size_t(N) * C), want_mean(N), want_rstd(N);
  for (int n = 0; n < N; ++n) {
    double mean = 0, var = 0;
    for (int c = 0; c < C; ++c) mean += x[size_t(n) * C + c] / C;
    for (int c = 0; c < C; ++c) var += (x[size_t(n) * C + c] - mean) * (x[size_t(n) * C + c] - mean) / C;
    want_mean[n] = mean;
    want_rstd[n] = 1.0 / std::sqrt(var + 1e-5);
    for (int c = 0; c < C; ++c)
      want_out[size_t(n) * C + c] = (x[size_t(n) * C + c] - mean) * want_rstd[n] * w[c] + b[c];
  }
  expect_close("layernorm out vs naive", fwd.out, want_out, kExactTol);
  expect_close("layernorm mean vs naive", fwd.mean, want_mean, kExactTol);
  expect_close("layernorm rstd vs naive", fwd.rstd, want_rstd, kExactTol);

  Vec dx(x.size(), 0.0), dw(C, 0.0), db(C, 0.0);
  ref::layernorm_backward(dx.data(), dw.data(), db.data(), g.data(), x.data(), w.data(), fwd.mean.data(),
                          fwd.rstd.data(), N, C);
  auto loss = [&] { return dot(layernorm(x, w, b, N, C).out, g); };
  expect_grad("layernorm dx", dx, numeric_grad(x, loss));
  expect_grad("layernorm dweight", dw, numeric_grad(w, loss));
  expect_grad("layernorm dbias", db, numeric_grad(b, loss));
}

// ---------------------------------------------------------------------------------------------
// Matmul
// ---------------------------------------------------------------------------------------------

void check_matmul_gradients(int N, int C, int OC, bool with_bias, unsigned seed) {
  const std::string tag = "matmul " + std::to_string(N) + "x" + std::to_string(C) + "x" + std::to_string(OC) +
                          (with_bias ? " bias" : " nobias");
  SCOPED_TRACE(tag);
  std::mt19937 rng(seed);
  Vec x = randn(size_t(N) * C, rng), w = randn(size_t(OC) * C, rng), b = randn(OC, rng), g = randn(size_t(N) * OC, rng);
  const Vec* bp = with_bias ? &b : nullptr;

  expect_close(tag + " out vs naive", matmul(x, w, bp, N, C, OC), naive_matmul(x, w, bp, N, C, OC), kExactTol);

  Vec dx(x.size(), 0.0), dw(w.size(), 0.0), db(OC, 0.0);
  ref::matmul_backward(dx.data(), dw.data(), with_bias ? db.data() : nullptr, g.data(), x.data(), w.data(), N, C, OC);
  auto loss = [&] { return dot(matmul(x, w, bp, N, C, OC), g); };
  expect_grad(tag + " dx", dx, numeric_grad(x, loss));
  expect_grad(tag + " dweight", dw, numeric_grad(w, loss));
  if (with_bias) expect_grad(tag + " dbias", db, numeric_grad(b, loss));
}

TEST(RefOps, MatmulGradients) {
  check_matmul_gradients(3, 4, 5, true, 301);
  check_matmul_gradients(3, 4, 5, false, 302);
  check_matmul_gradients(1, 1, 1, true, 303);
  check_matmul_gradients(5, 3, 2, false, 304);
  check_matmul_gradients(6, 17, 3, true, 305);
}

// The double op against naive formulas and the float op against the double op, on shapes that are
// not multiples of any block size (a blocking bug shared by both instantiations is caught by the
// first comparison, a float-only path bug by the second).
TEST(RefOps, MatmulBlockedShapesAndFloatConsistency) {
  const int shapes[][3] = {{37, 50, 70},  {1, 3, 17},  {17, 65, 1},  {65, 130, 17},
                           {130, 17, 65}, {3, 1, 130}, {64, 64, 64}, {129, 131, 3}};
  std::mt19937 rng(310);
  for (const auto& s : shapes) {
    const int N = s[0], C = s[1], OC = s[2];
    const std::string tag = "matmul " + std::to_string(N) + "x" + std::to_string(C) + "x" + std::to_string(OC);
    SCOPED_TRACE(tag);
    const Vec x = round_to_float(randn(size_t(N) * C, rng)), w = round_to_float(randn(size_t(OC) * C, rng));
    const Vec b = round_to_float(randn(OC, rng)), g = round_to_float(randn(size_t(N) * OC, rng));

    // forward
    const Vec out = matmul(x, w, &b, N, C, OC);
    expect_close(tag + " out double vs naive", out, naive_matmul(x, w, &b, N, C, OC), kExactTol);
    const std::vector<float> xf = to_float(x), wf = to_float(w), bf = to_float(b), gf = to_float(g);
    expect_close(tag + " out float vs double", to_double(matmul(xf, wf, &bf, N, C, OC)), out, kFloatTol);
    expect_close(tag + " out nobias vs naive", matmul(x, w, static_cast<const Vec*>(nullptr), N, C, OC),
                 naive_matmul(x, w, nullptr, N, C, OC), kExactTol);

    // backward: dx = g @ w, dw = g^T @ x, db = column sums of g
    Vec dx(x.size(), 0.0), dw(w.size(), 0.0), db(OC, 0.0);
    ref::matmul_backward(dx.data(), dw.data(), db.data(), g.data(), x.data(), w.data(), N, C, OC);
    Vec want_dx(x.size(), 0.0), want_dw(w.size(), 0.0), want_db(OC, 0.0);
    for (int n = 0; n < N; ++n)
      for (int o = 0; o < OC; ++o) {
        const double go = g[size_t(n) * OC + o];
        want_db[o] += go;
        for (int c = 0; c < C; ++c) {
          want_dx[size_t(n) * C + c] += go * w[size_t(o) * C + c];
          want_dw[size_t(o) * C + c] += go * x[size_t(n) * C + c];
        }
      }
    expect_close(tag + " dx double vs naive", dx, want_dx, kExactTol);
    expect_close(tag + " dweight double vs naive", dw, want_dw, kExactTol);
    expect_close(tag + " dbias double vs naive", db, want_db, kExactTol);

    std::vector<float> dxf(x.size(), 0.f), dwf(w.size(), 0.f), dbf(OC, 0.f);
    ref::matmul_backward(dxf.data(), dwf.data(), dbf.data(), gf.data(), xf.data(), wf.data(), N, C, OC);
    expect_close(tag + " dx float vs double", to_double(dxf), dx, kFloatTol);
    expect_close(tag + " dweight float vs double", to_double(dwf), dw, kFloatTol);
    expect_close(tag + " dbias float vs double", to_double(dbf), db, kFloatTol);
  }
}

// ---------------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------------

// Forward vs the naive masked softmax; backward vs finite differences w.r.t. all of qkv (or a
// random subset of `fd_samples` elements when nonzero).
void check_attention(int B, int Tn, int NH, int HS, unsigned seed, size_t fd_samples = 0) {
  const std::string tag = "attention B" + std::to_string(B) + " T" + std::to_string(Tn) + " NH" + std::to_string(NH) +
                          " HS" + std::to_string(HS);
  SCOPED_TRACE(tag);
  std::mt19937 rng(seed);
  const size_t C = size_t(NH) * HS;
  Vec qkv = randn(size_t(B) * Tn * 3 * C, rng), g = randn(size_t(B) * Tn * C, rng);

  const AttentionOut<double> fwd = attention(qkv, B, Tn, NH, HS);
  Vec want_out, want_lse;
  naive_attention(want_out, want_lse, qkv, B, Tn, NH, HS);
  expect_close(tag + " out vs naive", fwd.out, want_out, kExactTol);
  expect_close(tag + " lse vs log(sum(exp(scores)))", fwd.lse, want_lse, kExactTol);

  const Vec dqkv = attention_grad(g, qkv, fwd, B, Tn, NH, HS);
  auto loss = [&] { return dot(attention(qkv, B, Tn, NH, HS).out, g); };
  std::vector<size_t> idx;
  if (fd_samples) {
    std::uniform_int_distribution<size_t> pick(0, qkv.size() - 1);
    for (size_t k = 0; k < fd_samples; ++k) idx.push_back(pick(rng));
  }
  expect_grad(tag + " dqkv", fd_samples ? gather(dqkv, idx) : dqkv, numeric_grad(qkv, loss, idx));
}

TEST(RefOps, AttentionGradients) {
  check_attention(2, 5, 2, 3, 401);
  check_attention(1, 1, 2, 3, 402);  // T=1: out == v, q and k get zero gradient
  check_attention(1, 7, 1, 4, 403);
  check_attention(2, 3, 3, 1, 404);
}

TEST(RefOps, AttentionT1IsValue) {
  std::mt19937 rng(405);
  const int B = 2, NH = 2, HS = 3, C = NH * HS;
  const Vec qkv = randn(size_t(B) * 3 * C, rng), g = randn(size_t(B) * C, rng);
  const AttentionOut<double> fwd = attention(qkv, B, 1, NH, HS);
  const Vec dqkv = attention_grad(g, qkv, fwd, B, 1, NH, HS);
  for (int b = 0; b < B; ++b)
    for (int c = 0; c < C; ++c) {
      EXPECT_NEAR(fwd.out[size_t(b) * C + c], qkv[size_t(b) * 3 * C + 2 * C + c], 1e-14);
      EXPECT_NEAR(dqkv[size_t(b) * 3 * C + 0 * C + c], 0.0, 1e-13);                   // dq (zero up to rounding)
      EXPECT_NEAR(dqkv[size_t(b) * 3 * C + 1 * C + c], 0.0, 1e-13);                   // dk
      EXPECT_NEAR(dqkv[size_t(b) * 3 * C + 2 * C + c], g[size_t(b) * C + c], 1e-14);  // dv
    }
}

// Larger odd shapes: double vs naive and sampled finite differences, then float vs double.
TEST(RefOps, AttentionLargerShapesAndFloatConsistency) {
  const int shapes[][4] = {{2, 33, 3, 16}, {1, 65, 2, 8}, {1, 130, 1, 17}};
  std::mt19937 rng(410);
  for (const auto& s : shapes) {
    const int B = s[0], Tn = s[1], NH = s[2], HS = s[3];
    check_attention(B, Tn, NH, HS, rng(), 300);

    const std::string tag = "attention B" + std::to_string(B) + " T" + std::to_string(Tn) + " NH" + std::to_string(NH) +
                            " HS" + std::to_string(HS);
    SCOPED_TRACE(tag);
    const size_t C = size_t(NH) * HS;
    const Vec qkv = round_to_float(randn(size_t(B) * Tn * 3 * C, rng));
    const Vec g = round_to_float(randn(size_t(B) * Tn * C, rng));
    const AttentionOut<double> fd = attention(qkv, B, Tn, NH, HS);
    const AttentionOut<float> ff = attention(to_float(qkv), B, Tn, NH, HS);
    expect_close(tag + " out float vs double", to_double(ff.out), fd.out, kFloatTol);
    expect_close(tag + " lse float vs double", to_double(ff.lse), fd.lse, kFloatTol);
    const Vec dqkv = attention_grad(g, qkv, fd, B, Tn, NH, HS);
    const std::vector<float> dqkvf = attention_grad(to_float(g), to_float(qkv), ff, B, Tn, NH, HS);
    expect_close(tag + " dqkv float vs double", to_double(dqkvf), dqkv, kFloatTol);
  }
}

// ---------------------------------------------------------------------------------------------
// GELU, residual
// ---------------------------------------------------------------------------------------------

TEST(RefOps, GeluForwardAndGradient) {
  std::mt19937 rng(501);
  Vec x = {-5.0, -3.0, -1.7, -0.6, -1e-3, 0.0, 0.25, 0.9, 1.6, 2.8, 4.5};
  for (double r : randn(8, rng, 0.0, 2.0)) x.push_back(r);
  const int64_t n = int64_t(x.size());
  const Vec g = randn(x.size(), rng);
  auto forward = [&] {
    Vec out(x.size());
    ref::gelu_forward(out.data(), x.data(), n);
    return out;
  };
  Vec want(x.size());
  for (size_t i = 0; i < x.size(); ++i) want[i] = naive_gelu(x[i]);
  expect_close("gelu out vs formula", forward(), want, kExactTol);

  Vec dx(x.size(), 0.0);
  ref::gelu_backward(dx.data(), x.data(), g.data(), n);
  expect_grad("gelu dx", dx, numeric_grad(x, [&] { return dot(forward(), g); }));
}

TEST(RefOps, ResidualForwardAndGradients) {
  std::mt19937 rng(601);
  const int64_t n = 11;
  Vec a = randn(n, rng), b = randn(n, rng), g = randn(n, rng);
  auto forward = [&] {
    Vec out(n);
    ref::residual_forward(out.data(), a.data(), b.data(), n);
    return out;
  };
  const Vec out = forward();
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(out[i], a[i] + b[i]);
  Vec da(n, 0.0), db(n, 0.0);
  ref::residual_backward(da.data(), db.data(), g.data(), n);
  auto loss = [&] { return dot(forward(), g); };
  expect_grad("residual da", da, numeric_grad(a, loss));
  expect_grad("residual db", db, numeric_grad(b, loss));
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy
// ---------------------------------------------------------------------------------------------

struct CrossEntropyCase {
  int N = 4, V = 5, Vp = 8;
  std::vector<int32_t> targets = {2, -1, 0, 4};  // row 1 is ignored
  double dloss = 0.37;
  Vec logits;
  explicit CrossEntropyCase(std::mt19937& rng) : logits(randn(size_t(N) * Vp, rng, 0.0, 2.0)) {
    // Padding columns hold large values: any use of them in the softmax would dominate the loss.
    for (int n = 0; n < N; ++n)
      for (int v = V; v < Vp; ++v) logits[size_t(n) * Vp + v] = 50.0 + v;
  }
  Vec losses(const Vec& l, Vec* dlogits = nullptr) const {
    Vec out(N, -7.0);
    ref::cross_entropy_forward_backward(out.data(), dlogits ? dlogits->data() : nullptr, l.data(), targets.data(), N, V,
                                        Vp, dloss);
    return out;
  }
};

TEST(RefOps, CrossEntropyLossAndGradient) {
  std::mt19937 rng(701);
  CrossEntropyCase ce(rng);
  const int N = ce.N, V = ce.V, Vp = ce.Vp;

  Vec dlogits(ce.logits.size(), 123.0);  // garbage: every entry must be written
  const Vec losses = ce.losses(ce.logits, &dlogits);
  Vec want(N, 0.0);
  for (int n = 0; n < N; ++n) {
    if (ce.targets[n] < 0) continue;
    double sum = 0;
    for (int v = 0; v < V; ++v) sum += std::exp(ce.logits[size_t(n) * Vp + v]);
    want[n] = std::log(sum) - ce.logits[size_t(n) * Vp + ce.targets[n]];
  }
  expect_close("cross-entropy losses vs naive", losses, want, kExactTol);
  EXPECT_EQ(losses[1], 0.0) << "ignored row must have zero loss";
  EXPECT_EQ(ce.losses(ce.logits), losses) << "losses must not depend on dlogits being requested";

  for (int n = 0; n < N; ++n)
    for (int v = 0; v < Vp; ++v) {
      if (v >= V) {
        EXPECT_EQ(dlogits[size_t(n) * Vp + v], 0.0) << "padding column " << v << " row " << n;
      }
      if (ce.targets[n] < 0) {
        EXPECT_EQ(dlogits[size_t(n) * Vp + v], 0.0) << "ignored row, column " << v;
      }
    }

  // Finite differences over every logit, padding included (which must come out 0).
  Vec logits = ce.logits;
  auto loss = [&] {
    const Vec l = ce.losses(logits);
    double s = 0;
    for (double x : l) s += x;
    return s * ce.dloss;
  };
  expect_grad("cross-entropy dlogits (dloss=0.37)", dlogits, numeric_grad(logits, loss));
}

// The tensor-parallel split over 1, 2 and 4 vocabulary slices (of 4, 2 and 1 columns of the
// padded 8; the last slices hold only padding or part of it), combined as the model does, gives
// the fused op's losses and the gradient's columns.
TEST(RefOps, CrossEntropySplitOverSlicesMatchesTheFusedOp) {
  std::mt19937 rng(703);
  CrossEntropyCase ce(rng);
  Vec want_grad(ce.logits.size(), 0.0);
  const Vec want = ce.losses(ce.logits, &want_grad);
  for (int slices : {1, 2, 4}) {
    const int width = ce.Vp / slices, N = ce.N;
    std::vector<Vec> parts(slices), maxes(slices, Vec(N)), sums(slices, Vec(N)), targets(slices, Vec(N));
    Vec global_max(N, -std::numeric_limits<double>::infinity()), global_sum(N, 0.0), global_target(N, 0.0);
    for (int r = 0; r < slices; r++) {
      parts[r].resize(size_t(N) * width);
      for (int n = 0; n < N; n++)
        std::copy_n(ce.logits.begin() + size_t(n) * ce.Vp + r * width, width, parts[r].begin() + size_t(n) * width);
      const int valid = std::clamp(ce.V - r * width, 0, width);
      ref::cross_entropy_stats(maxes[r].data(), sums[r].data(), targets[r].data(), parts[r].data(), ce.targets.data(),
                               N, r * width, valid, width);
      for (int n = 0; n < N; n++) global_max[n] = std::max(global_max[n], maxes[r][n]);
    }
    for (int r = 0; r < slices; r++)
      for (int n = 0; n < N; n++) {
        if (sums[r][n] > 0) global_sum[n] += sums[r][n] * std::exp(maxes[r][n] - global_max[n]);
        global_target[n] += targets[r][n];
      }
    for (int r = 0; r < slices; r++) {
      Vec losses(N, -7.0), grad(parts[r].size(), -7.0);
      ref::cross_entropy_from_stats(losses.data(), grad.data(), parts[r].data(), ce.targets.data(), global_max.data(),
                                    global_sum.data(), global_target.data(), N, r * width,
                                    std::clamp(ce.V - r * width, 0, width), width, ce.dloss);
      expect_close("split losses, " + std::to_string(slices) + " slices", losses, want, 1e-12);
      for (int n = 0; n < N; n++)
        for (int v = 0; v < width; v++)
          ASSERT_NEAR(grad[size_t(n) * width + v], want_grad[size_t(n) * ce.Vp + r * width + v], 1e-12)
              << slices << " slices, row " << n << ", column " << r * width + v;
    }
  }
}

TEST(RefOps, CrossEntropyInPlaceAndShiftInvariant) {
  std::mt19937 rng(702);
  CrossEntropyCase ce(rng);
  Vec dlogits(ce.logits.size(), 0.0);
  const Vec losses = ce.losses(ce.logits, &dlogits);

  // dlogits aliasing logits gives the same losses and gradient.
  Vec buf = ce.logits;
  Vec losses_inplace(ce.N);
  ref::cross_entropy_forward_backward(losses_inplace.data(), buf.data(), buf.data(), ce.targets.data(), ce.N, ce.V,
                                      ce.Vp, ce.dloss);
  expect_close("cross-entropy in-place losses", losses_inplace, losses, 1e-14);
  expect_close("cross-entropy in-place dlogits", buf, dlogits, 1e-14);

  // Softmax is shift invariant: logits + 1000 overflow a naive exp, the op must stay finite.
  Vec shifted = ce.logits;
  for (double& x : shifted) x += 1000.0;
  Vec dshift(shifted.size(), 0.0);
  expect_close("cross-entropy losses with logits+1000", ce.losses(shifted, &dshift), losses, 1e-9);
  expect_close("cross-entropy dlogits with logits+1000", dshift, dlogits, 1e-9);
}

// ---------------------------------------------------------------------------------------------
// Backward accumulation
// ---------------------------------------------------------------------------------------------

// Runs `backward` (which accumulates into `grads`) twice from zero: the result must be twice one
// call. Compared to within a few ulps rather than bitwise, since an op may legitimately add its
// partial sums into the gradient one by one ((g + a1) + a2 is not always bitwise 2 * (a1 + a2));
// an op that overwrites instead of accumulating is off by 50%.
void check_accumulates(const std::string& what, const std::vector<Vec*>& grads, const std::function<void()>& backward) {
  for (Vec* gr : grads) std::fill(gr->begin(), gr->end(), 0.0);
  backward();
  std::vector<Vec> once;
  for (Vec* gr : grads) once.push_back(*gr);
  backward();
  for (size_t i = 0; i < grads.size(); ++i) {
    Vec twice = once[i];
    for (double& x : twice) x *= 2.0;
    EXPECT_GT(max_abs(once[i]), 0.0) << what << " gradient " << i << " is zero";
    expect_close(what + " gradient " + std::to_string(i) + " twice == 2x", *grads[i], twice, 1e-13);
  }
}

TEST(RefOps, BackwardAccumulates) {
  std::mt19937 rng(801);
  {
    const int B = 2, Tn = 3, C = 4, V = 5;
    const std::vector<int32_t> tokens = rand_tokens(size_t(B) * Tn, 0, V, rng);
    const Vec g = randn(size_t(B) * Tn * C, rng);
    Vec dwte(size_t(V) * C), dwpe(size_t(Tn) * C);
    check_accumulates("embedding", {&dwte, &dwpe}, [&] {
      ref::embedding_backward(dwte.data(), dwpe.data(), g.data(), tokens.data(), B, Tn, C, 0, V);
    });
  }
  {
    const int N = 5, C = 6;
    const Vec x = randn(size_t(N) * C, rng), w = randn(C, rng), b = randn(C, rng), g = randn(size_t(N) * C, rng);
    const LayernormOut fwd = layernorm(x, w, b, N, C);
    Vec dx(x.size()), dw(C), db(C);
    check_accumulates("layernorm", {&dx, &dw, &db}, [&] {
      ref::layernorm_backward(dx.data(), dw.data(), db.data(), g.data(), x.data(), w.data(), fwd.mean.data(),
                              fwd.rstd.data(), N, C);
    });
  }
  {
    const int N = 17, C = 65, OC = 3;
    const Vec x = randn(size_t(N) * C, rng), w = randn(size_t(OC) * C, rng), g = randn(size_t(N) * OC, rng);
    Vec dx(x.size()), dw(w.size()), db(OC);
    check_accumulates("matmul", {&dx, &dw, &db}, [&] {
      ref::matmul_backward(dx.data(), dw.data(), db.data(), g.data(), x.data(), w.data(), N, C, OC);
    });
  }
  {
    const int B = 2, Tn = 5, NH = 2, HS = 3;
    const Vec qkv = randn(size_t(B) * Tn * 3 * NH * HS, rng), g = randn(size_t(B) * Tn * NH * HS, rng);
    const AttentionOut<double> fwd = attention(qkv, B, Tn, NH, HS);
    Vec dqkv(qkv.size());
    check_accumulates("attention", {&dqkv}, [&] {
      ref::attention_backward(dqkv.data(), g.data(), qkv.data(), fwd.out.data(), fwd.lse.data(), B, Tn, NH, HS);
    });
  }
  {
    const int64_t n = 9;
    const Vec x = randn(n, rng), g = randn(n, rng);
    Vec dx(n), da(n), db(n);
    check_accumulates("gelu", {&dx}, [&] { ref::gelu_backward(dx.data(), x.data(), g.data(), n); });
    check_accumulates("residual", {&da, &db}, [&] { ref::residual_backward(da.data(), db.data(), g.data(), n); });
  }
}

// ---------------------------------------------------------------------------------------------
// AdamW
// ---------------------------------------------------------------------------------------------

void check_adamw(double weight_decay, int steps, unsigned seed) {
  const std::string tag = "adamw wd=" + std::to_string(weight_decay) + " steps=" + std::to_string(steps);
  SCOPED_TRACE(tag);
  std::mt19937 rng(seed);
  const int64_t n = 13;
  Vec p = randn(n, rng), m(n, 0.0), v(n, 0.0);
  Vec p_ref = p, m_ref = m, v_ref = v;
  std::vector<float> pf = to_float(p), mf(n, 0.f), vf(n, 0.f);
  const Vec p0 = p;
  for (int t = 1; t <= steps; ++t) {
    const Vec g = round_to_float(randn(n, rng, 0.0, 0.5));
    const ref::AdamWParams hp{1e-2, 0.9, 0.95, 1e-8, weight_decay, t};
    ref::adamw_update(p.data(), g.data(), m.data(), v.data(), n, hp);
    naive_adamw(p_ref, g, m_ref, v_ref, hp);
    const std::vector<float> gf = to_float(g);
    ref::adamw_update(pf.data(), gf.data(), mf.data(), vf.data(), n, hp);
  }
  expect_close(tag + " params", p, p_ref, kExactTol);
  expect_close(tag + " m", m, m_ref, kExactTol);
  expect_close(tag + " v", v, v_ref, kExactTol);
  // The update itself (not just the parameters, which barely move) must match.
  Vec delta(n), delta_ref(n);
  for (int64_t i = 0; i < n; ++i) {
    delta[i] = p[i] - p0[i];
    delta_ref[i] = p_ref[i] - p0[i];
  }
  expect_close(tag + " update", delta, delta_ref, 1e-9);
  expect_close(tag + " float params vs double", to_double(pf), p_ref, kFloatTol);
}

TEST(RefOps, AdamWMatchesTorch) {
  check_adamw(0.1, 1, 901);
  check_adamw(0.1, 3, 902);
  check_adamw(0.0, 1, 903);
  check_adamw(0.0, 3, 904);
}

// With bias correction, a constant gradient from zero state moves every parameter by exactly
// lr * sign(g) at every step t (m_hat = g, v_hat = g^2); without it (or with the wrong t) it doesn't.
TEST(RefOps, AdamWBiasCorrectionUsesStep) {
  const int64_t n = 4;
  const Vec g = {0.5, -2.0, 1e-3, -0.03};
  Vec p = {1.0, -1.0, 0.25, 0.0}, m(n, 0.0), v(n, 0.0);
  const double lr = 1e-2;
  for (int t = 1; t <= 3; ++t) {
    const Vec before = p;
    ref::adamw_update(p.data(), g.data(), m.data(), v.data(), n, {lr, 0.9, 0.999, 1e-12, 0.0, t});
    for (int64_t i = 0; i < n; ++i)
      EXPECT_NEAR(p[i] - before[i], -lr * (g[i] > 0 ? 1 : -1), 1e-10) << "step " << t << " element " << i;
  }
  // Same state, different step count: different bias correction, different update.
  Vec pa = p, ma = m, va = v, pb = p, mb = m, vb = v;
  Vec pa_ref = p, ma_ref = m, va_ref = v, pb_ref = p, mb_ref = m, vb_ref = v;
  const ref::AdamWParams h4{lr, 0.9, 0.999, 1e-8, 0.0, 4}, h50{lr, 0.9, 0.999, 1e-8, 0.0, 50};
  const Vec g2 = {-0.1, 0.3, 0.7, 0.02};
  ref::adamw_update(pa.data(), g2.data(), ma.data(), va.data(), n, h4);
  ref::adamw_update(pb.data(), g2.data(), mb.data(), vb.data(), n, h50);
  naive_adamw(pa_ref, g2, ma_ref, va_ref, h4);
  naive_adamw(pb_ref, g2, mb_ref, vb_ref, h50);
  expect_close("adamw step=4 from warm state", pa, pa_ref, kExactTol);
  expect_close("adamw step=50 from warm state", pb, pb_ref, kExactTol);
  EXPECT_GT(rel_err(pa, pb), 1e-6) << "step count has no effect on the update";
}

// ---------------------------------------------------------------------------------------------
// Gradient-norm helpers
// ---------------------------------------------------------------------------------------------

// n values k/1024 with k in [lowest, 1023]: every square is exact in float and every partial sum
// exact in double, so the sum of squares is known exactly (returned beside the values).
std::pair<std::vector<float>, double> exact_squares(int64_t n, int lowest, std::mt19937& rng) {
  std::uniform_int_distribution<int> dist(lowest, 1023);
  std::vector<float> x(n);
  int64_t exact = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int k = dist(rng);
    x[i] = float(k) / 1024.f;
    exact += int64_t(k) * k;
  }
  return {x, double(exact) / double(1 << 20)};
}

TEST(RefOps, SumSquaresAccumulatesInDouble) {
  // x = k/1024 with k < 1024: every square is exact in float and every partial sum is exact in
  // double, so any double accumulation order gives the exact value and a float one cannot.
  const int64_t n = int64_t(1) << 22;
  std::mt19937 rng(1001);
  const auto [x, exact] = exact_squares(n, 0, rng);
  EXPECT_EQ(ref::sum_squares(x.data(), n), exact);

  const Vec d = randn(37, rng);
  EXPECT_NEAR(ref::sum_squares(d.data(), int64_t(d.size())), dot(d, d), 1e-13 * dot(d, d));
  EXPECT_EQ(ref::sum_squares(d.data(), 0), 0.0);
}

TEST(RefOps, SumSquaresCountsEveryElementOnceAtRaggedSizes) {
  // Sizes that 64 chunks do not divide (short and empty last chunks, chunks summed in lockstep):
  // with exact squares the sum is exact, so an element dropped or counted twice changes it. Catches
  // a lockstep loop that skips the lanes' tails, or runs past a short chunk's end.
  for (const int64_t n :
       {int64_t(1), int64_t(5), int64_t(63), int64_t(65), int64_t(100), int64_t(4099), (int64_t(1) << 22) - 3}) {
    std::mt19937 rng(1002 + (unsigned)n);
    const auto [x, exact] = exact_squares(n, 1, rng);
    EXPECT_EQ(ref::sum_squares(x.data(), n), exact) << "n = " << n;
  }
}

TEST(RefOps, ClipFactor) {
  EXPECT_NEAR(ref::clip_factor(10.0, 1.0), 0.1, 1e-7);
  EXPECT_LT(ref::clip_factor(10.0, 1.0), 0.1);  // the 1e-6 guard makes it strictly below
  EXPECT_EQ(ref::clip_factor(0.5, 1.0), 1.0);
  EXPECT_EQ(ref::clip_factor(1.0, 1.0), 1.0);
  EXPECT_EQ(ref::clip_factor(123.0, 0.0), 1.0);  // max_norm 0 disables clipping
  EXPECT_EQ(ref::clip_factor(0.0, 1.0), 1.0);

  // Scaling a gradient by clip_factor of its sum_squares norm brings the norm to max_norm.
  std::mt19937 rng(1003);
  Vec g = randn(50, rng, 0.0, 3.0);
  const double norm = std::sqrt(ref::sum_squares(g.data(), int64_t(g.size())));
  ASSERT_GT(norm, 2.0);
  const double factor = ref::clip_factor(norm, 2.0);
  for (double& v : g) v *= factor;
  EXPECT_NEAR(std::sqrt(ref::sum_squares(g.data(), int64_t(g.size()))), 2.0, 1e-5);
}

}  // namespace
