// Generation: the KV-cache decoder against the training model's full forward pass, and the
// sampler's temperature, top-k and top-p against the distributions they define.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "model/cpu_ops.h"
#include "model/decoder.h"
#include "model/gpt.h"
#include "tests/test_util.h"
#include "train/sample.h"

namespace kiln {
namespace {

using namespace kiln::test;

std::vector<float> weights_of(const GPT& model) { return model.download_weights(); }

// The decoder's logits after each position equal the full forward pass's at that position,
// whether the tokens come as one prompt or one at a time.
TEST(Decoder, KvCacheLogitsMatchTheFullForwardPass) {
  const GPTConfig cfg = GPTConfig::preset("test");
  const auto ops = make_cpu_ops();
  const int T = 24;
  GPT model(cfg, *ops, 1, T);
  model.init_weights(7);
  std::vector<int32_t> tokens(T), no_targets(T, -1);
  for (int t = 0; t < T; t++) tokens[t] = (t * 37 + 11) % cfg.vocab_size;
  model.forward(tokens, no_targets, 1, T);
  std::vector<float> full((size_t)T * cfg.padded_vocab());
  model.download_logits(full);

  Decoder decoder(cfg, weights_of(model));
  const int prompt = 9;
  double worst = 0, scale = 0;
  for (int t = prompt - 1; t < T; t++) {
    const std::span<const float> logits = t == prompt - 1 ? decoder.append(std::span(tokens).first(prompt))
                                                          : decoder.append(std::span(tokens).subspan(t, 1));
    ASSERT_EQ(decoder.length(), t + 1);
    ASSERT_EQ((int)logits.size(), cfg.vocab_size);
    for (int v = 0; v < cfg.vocab_size; v++) {
      const float want = full[(size_t)t * cfg.padded_vocab() + v];
      ASSERT_FALSE(std::isnan(logits[v]));
      worst = std::max(worst, (double)std::abs(logits[v] - want));
      scale = std::max(scale, (double)std::abs(want));
    }
  }
  EXPECT_LT(worst / scale, 1e-5) << "largest difference " << worst << " against logits up to " << scale;
}

TEST(Decoder, RefusesAContextPastMaxSeqLenAndTokensOutsideTheVocabulary) {
  GPTConfig cfg = GPTConfig::preset("test");
  cfg.max_seq_len = 8;
  Decoder decoder(cfg, std::vector<float>(ParamLayout(cfg).total(), 0.01f));
  EXPECT_EQ(error_of([&] {
              decoder.append(std::vector<int32_t>{1, 300});
            }),
            "token 300 is outside the vocabulary of 257");
  decoder.append(std::vector<int32_t>(8, 1));
  EXPECT_EQ(error_of([&] { decoder.append(std::vector<int32_t>{1}); }),
            "the context of 9 tokens passes the model's max_seq_len 8");
  decoder.reset();
  EXPECT_NO_THROW(decoder.append(std::vector<int32_t>{1}));
}

// Frequencies of sample_token over many draws.
std::map<int32_t, double> frequencies(const std::vector<float>& logits, const SamplingOptions& o, int draws = 20000) {
  std::mt19937_64 rng(3);
  std::map<int32_t, double> f;
  for (int i = 0; i < draws; i++) f[sample_token(logits, o, rng)] += 1.0 / draws;
  return f;
}

// Logits with probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1, in a scrambled order.
const std::vector<float> kLogits = {(float)std::log(0.15), (float)std::log(0.5), (float)std::log(0.05),
                                    (float)std::log(0.3)};

TEST(Sampling, TemperatureOneDrawsFromTheSoftmax) {
  const auto f = frequencies(kLogits, {});
  EXPECT_NEAR(f.at(1), 0.5, 0.015);
  EXPECT_NEAR(f.at(3), 0.3, 0.015);
  EXPECT_NEAR(f.at(0), 0.15, 0.015);
  EXPECT_NEAR(f.at(2), 0.05, 0.01);
}

TEST(Sampling, TemperatureZeroAndTopOneAreGreedy) {
  for (const SamplingOptions& greedy : {SamplingOptions{0.0, 0, 1.0}, SamplingOptions{5.0, 1, 1.0}}) {
    const auto f = frequencies(kLogits, greedy, 100);
    EXPECT_EQ(f.size(), 1u);
    EXPECT_NEAR(f.at(1), 1.0, 1e-9);
  }
}

TEST(Sampling, TopKAndTopPRenormaliseOverWhatTheyKeep) {
  const auto k2 = frequencies(kLogits, {1.0, 2, 1.0});  // 0.5 and 0.3 kept: 5/8 and 3/8
  ASSERT_EQ(k2.size(), 2u);
  EXPECT_NEAR(k2.at(1), 0.625, 0.015);
  EXPECT_NEAR(k2.at(3), 0.375, 0.015);
  const auto p = frequencies(kLogits, {1.0, 0, 0.9});  // 0.5 + 0.3 + 0.15 reach 0.9
  ASSERT_EQ(p.size(), 3u);
  EXPECT_NEAR(p.at(0), 0.15 / 0.95, 0.015);
  const auto p_small = frequencies(kLogits, {1.0, 0, 0.5});  // the first token alone reaches 0.5
  EXPECT_EQ(p_small.size(), 1u);
}

TEST(Sampling, HighTemperatureFlattens) {
  const auto f = frequencies(kLogits, {100.0, 0, 1.0});
  for (int v = 0; v < 4; v++) EXPECT_NEAR(f.at(v), 0.25, 0.02);
}

TEST(Sampling, BadOptionsAreRefusedByName) {
  EXPECT_EQ(error_of([] {
              SamplingOptions{-1.0, 0, 1.0}.validate();
            }),
            "temperature: expected a number >= 0, got -1.000000");
  EXPECT_EQ(error_of([] { SamplingOptions{1.0, -2, 1.0}.validate(); }), "top-k: expected >= 0 (0: no limit), got -2");
  EXPECT_EQ(error_of([] {
              SamplingOptions{1.0, 0, 0.0}.validate();
            }),
            "top-p: expected a number in (0, 1], got 0.000000");
  EXPECT_EQ(error_of([] {
              SamplingOptions{1.0, 0, 1.5}.validate();
            }),
            "top-p: expected a number in (0, 1], got 1.500000");
}

TEST(Generate, IsDeterministicInTheSeedAndStopsAtTheStopToken) {
  const GPTConfig cfg = GPTConfig::preset("test");
  const auto ops = make_cpu_ops();
  GPT model(cfg, *ops, 1, 8);
  model.init_weights(1);
  const std::vector<int32_t> prompt = {1, 2, 3};
  auto run = [&](uint64_t seed, int32_t stop = -1) {
    Decoder decoder(cfg, weights_of(model));
    return generate(decoder, prompt, 40, seed, SamplingOptions{}, stop);
  };
  const std::vector<int32_t> a = run(5), b = run(5), c = run(6);
  EXPECT_EQ(a.size(), 40u);
  EXPECT_EQ(a, b) << "the same seed gives the same tokens";
  EXPECT_NE(a, c) << "another seed gives others";
  // Stopping at the 10th token's id ends there (or earlier, where the id came before).
  const std::vector<int32_t> stopped = run(5, a[9]);
  EXPECT_LE(stopped.size(), 10u);
  EXPECT_EQ(stopped.back(), a[9]);
  EXPECT_EQ(std::vector<int32_t>(a.begin(), a.begin() + (ptrdiff_t)stopped.size()), stopped);
  // The training-time sampler is the same generator on the model's own weights.
  EXPECT_EQ(sample_tokens(model, prompt, 40, 5), a);
  Decoder decoder(cfg, weights_of(model));
  EXPECT_EQ(error_of([&] { generate(decoder, {}, 4, 1, SamplingOptions{}); }), "generate: the prompt has no tokens");
}

}  // namespace
}  // namespace kiln
