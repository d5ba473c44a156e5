// GPT-2 config, parameter layout and initialisation.
#include <gtest/gtest.h>

#include <cmath>

#include "model/cpu_ops.h"
#include "model/gpt.h"

namespace kiln {
namespace {

TEST(GPTConfig, Gpt2SmallHasThePublishedParameterCount) {
  // Hugging Face's GPT2Model (vocabulary 50257, tied LM head) has 124,439,808 parameters.
  GPTConfig cfg = GPTConfig::preset("gpt2-124m");
  EXPECT_EQ(ParamLayout(cfg).trained(), 124439808);
  // Padding the vocabulary to 50304 rows adds 47 * 768 untrained parameters to the buffer.
  EXPECT_EQ(cfg.padded_vocab(), 50304);
  EXPECT_EQ(ParamLayout(cfg).total(), 124439808 + 47 * 768);
  cfg.vocab_multiple = 1;
  EXPECT_EQ(ParamLayout(cfg).total(), 124439808);
  std::printf("gpt2-124m: %lld parameters (%lld with vocabulary padding)\n",
              (long long)ParamLayout(GPTConfig::preset("gpt2-124m")).trained(),
              (long long)ParamLayout(GPTConfig::preset("gpt2-124m")).total());
}

TEST(GPTConfig, LargerPresetsMatchGpt2Sizes) {
  // Hugging Face parameter counts of gpt2-medium, gpt2-large and gpt2-xl.
  EXPECT_EQ(ParamLayout(GPTConfig::preset("gpt2-350m")).trained(), 354823168);
  EXPECT_EQ(ParamLayout(GPTConfig::preset("gpt2-774m")).trained(), 774030080);
  EXPECT_EQ(ParamLayout(GPTConfig::preset("gpt2-1558m")).trained(), 1557611200);
}

TEST(GPTConfig, UnknownPresetListsTheValidNames) {
  try {
    GPTConfig::preset("gpt2-small");
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'gpt2-small'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("gpt2-124m"), std::string::npos);
  }
}

TEST(GPTConfig, ValidateNamesTheBadField) {
  GPTConfig cfg = GPTConfig::preset("test");
  cfg.n_head = 5;
  EXPECT_THROW(
      {
        try {
          cfg.validate();
        } catch (const std::invalid_argument& e) {
          EXPECT_NE(std::string(e.what()).find("model.n_embd = 32 is not divisible by model.n_head = 5"),
                    std::string::npos);
          throw;
        }
      },
      std::invalid_argument);
  cfg = GPTConfig::preset("test");
  cfg.n_layer = 0;
  EXPECT_THROW(cfg.validate(), std::invalid_argument);
}

TEST(ParamLayout, TensorsTileTheFlatBufferInOrder) {
  const GPTConfig cfg = GPTConfig::preset("test");
  const ParamLayout layout(cfg);
  int64_t expected_offset = 0;
  for (const ParamSpec& s : layout.specs()) {
    EXPECT_EQ(s.offset, expected_offset) << s.name;
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    EXPECT_EQ(s.numel, n) << s.name;
    EXPECT_EQ(s.decay, s.shape.size() == 2) << s.name;
    expected_offset += s.numel;
  }
  EXPECT_EQ(expected_offset, layout.total());
  EXPECT_EQ(layout.specs().size(), 4u + 12u * cfg.n_layer);
  EXPECT_EQ(layout.find("h.1.mlp.c_fc.weight").shape, (std::vector<int64_t>{4 * 32, 32}));
  EXPECT_THROW(layout.find("h.9.ln_1.weight"), std::out_of_range);
}

TEST(ParamLayout, TensorParallelShardsSplitHeadsMlpAndVocabulary) {
  GPTConfig cfg = GPTConfig::preset("gpt2-124m");
  const ParamLayout full(cfg), half(cfg, {2, 1});
  EXPECT_EQ(half.find("h.0.attn.c_attn.weight").shape, (std::vector<int64_t>{3 * 384, 768}));
  EXPECT_EQ(half.find("h.0.attn.c_proj.weight").shape, (std::vector<int64_t>{768, 384}));
  EXPECT_EQ(half.find("h.0.mlp.c_fc.weight").shape, (std::vector<int64_t>{1536, 768}));
  EXPECT_EQ(half.find("wte").shape, (std::vector<int64_t>{50432 / 2, 768}));  // padded to 128 x 2
  EXPECT_EQ(half.find("ln_f.weight").shape, full.find("ln_f.weight").shape);  // replicated
  EXPECT_THROW(ParamLayout(cfg, {5, 0}), std::invalid_argument);              // 12 heads over 5 ranks
}

TEST(GPT, InitIsDeterministicAndFollowsGpt2) {
  const GPTConfig cfg = GPTConfig::preset("tiny");
  auto ops = make_cpu_ops();
  GPT a(cfg, *ops, 1, 8), b(cfg, *ops, 1, 8);
  a.init_weights(7);
  b.init_weights(7);
  std::vector<float> pa(a.params().numel), pb(b.params().numel);
  ops->download(pa, a.params());
  ops->download(pb, b.params());
  EXPECT_EQ(pa, pb);
  b.init_weights(8);
  ops->download(pb, b.params());
  EXPECT_NE(pa, pb);

  auto stddev = [&](const std::string& name) {
    const ParamSpec& s = a.layout().find(name);
    double sq = 0;
    for (int64_t i = 0; i < s.numel; i++) sq += (double)pa[s.offset + i] * pa[s.offset + i];
    return std::sqrt(sq / (double)s.numel);
  };
  EXPECT_NEAR(stddev("h.0.mlp.c_fc.weight"), 0.02, 0.002);
  EXPECT_NEAR(stddev("h.0.mlp.c_proj.weight"), 0.02 / std::sqrt(2.0 * cfg.n_layer), 0.002);
  EXPECT_EQ(pa[a.layout().find("h.2.ln_2.weight").offset], 1.0f);
  EXPECT_EQ(pa[a.layout().find("h.2.ln_2.bias").offset], 0.0f);
  const ParamSpec& wte = a.layout().find("wte");
  for (int64_t i = (int64_t)cfg.vocab_size * cfg.n_embd; i < wte.numel; i++) ASSERT_EQ(pa[wte.offset + i], 0.0f);
}

TEST(GPT, RejectsBatchesLargerThanAllocated) {
  const GPTConfig cfg = GPTConfig::preset("test");
  auto ops = make_cpu_ops();
  EXPECT_THROW(GPT(cfg, *ops, 2, cfg.max_seq_len + 1), std::invalid_argument);
  GPT model(cfg, *ops, 2, 16);
  const std::vector<int32_t> tokens(3 * 16, 1);
  EXPECT_THROW(model.forward(tokens, tokens, 3, 16), std::invalid_argument);
}

TEST(GPT, IgnoredTargetsDoNotCount) {
  const GPTConfig cfg = GPTConfig::preset("test");
  auto ops = make_cpu_ops();
  GPT model(cfg, *ops, 1, 4);
  model.init_weights(1);
  const std::vector<int32_t> tokens = {1, 2, 3, 4};
  const double full = model.forward(tokens, std::vector<int32_t>{5, 6, 7, 8}, 1, 4);
  const double first = model.forward(tokens, std::vector<int32_t>{5, -1, -1, -1}, 1, 4);
  const double only_first = model.forward(std::vector<int32_t>{1}, std::vector<int32_t>{5}, 1, 1);
  EXPECT_NE(full, first);
  EXPECT_NEAR(first, only_first, 1e-6);  // causal: position 0 sees only token 0
}

}  // namespace
}  // namespace kiln
