// Hugging Face GPT-2 import and export: bit-exact round trips through kiln's checkpoints, HF's
// Conv1D layout, and a clear error for every malformed file. (Logits against transformers' own
// GPT-2: tests/hf/check_transformers.py.)
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "model/cpu_ops.h"
#include "model/gpt.h"
#include "model/hf_gpt2.h"
#include "model/safetensors.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"

namespace kiln {
namespace {

using namespace kiln::test;
namespace fs = std::filesystem;
using nlohmann::json;

// The test model's GPT-2 initialisation, with every layernorm parameter made random too.
std::vector<float> random_weights(const GPTConfig& cfg) {
  const auto ops = make_cpu_ops();
  GPT model(cfg, *ops, 1, 1);
  model.init_weights(11);
  std::vector<float> w = model.download_weights();
  std::mt19937 rng(5);
  std::normal_distribution<float> noise(0.0f, 0.1f);
  for (const ParamSpec& s : model.layout().specs())
    if (s.name.find("ln_") != std::string::npos)
      for (int64_t i = 0; i < s.numel; i++) w[s.offset + i] += noise(rng);
  return w;
}

// A safetensors file from a header's text and data bytes, as given.
void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << data;
}

class HfGpt2Test : public ::testing::Test {
 protected:
  void SetUp() override {
    weights_ = random_weights(cfg_);
    write_hf_gpt2(hf_, cfg_, weights_, cfg_.vocab_size - 1);
  }
  // Rewrites hf_'s model.safetensors with `edit` applied to its tensors (name -> values).
  void rewrite(
      const std::function<void(std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>>&)>& edit) {
    const SafetensorsFile f = SafetensorsFile::read(hf_ + "/model.safetensors");
    std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>> tensors;
    for (const auto& [name, e] : f.entries()) tensors[name] = {e.shape, f.floats(name)};
    edit(tensors);
    std::vector<SafetensorsTensor> out;
    for (const auto& [name, t] : tensors) out.push_back({name, t.first, t.second});
    write_safetensors(hf_ + "/model.safetensors", out, {{"format", "pt"}});
  }
  void edit_config(const std::function<void(json&)>& edit) {
    json c = json::parse(read_file(hf_ + "/config.json"));
    edit(c);
    std::ofstream(hf_ + "/config.json") << c.dump();
  }
  TempDir dir_;
  const GPTConfig cfg_ = GPTConfig::preset("test");
  const std::string hf_ = dir_.path("hf");
  std::vector<float> weights_;
};

TEST_F(HfGpt2Test, ImportAndExportRoundTripBitExactly) {
  const HfGpt2 back = read_hf_gpt2(hf_);
  EXPECT_EQ(back.config.n_layer, cfg_.n_layer);
  EXPECT_EQ(back.config.n_head, cfg_.n_head);
  EXPECT_EQ(back.config.n_embd, cfg_.n_embd);
  EXPECT_EQ(back.config.vocab_size, cfg_.vocab_size);
  EXPECT_EQ(back.config.max_seq_len, cfg_.max_seq_len);
  ASSERT_EQ(back.weights.size(), weights_.size());
  EXPECT_EQ(std::memcmp(back.weights.data(), weights_.data(), weights_.size() * 4), 0);

  // Through a kiln checkpoint (import-hf, then export-hf): the same file, byte for byte.
  const std::string step0 = save_weights_checkpoint(dir_.path("run"), back.config, back.weights);
  EXPECT_EQ(resolve_checkpoint(dir_.path("run")), step0);
  verify_checkpoint(step0);
  const CheckpointWeights ckpt = read_checkpoint_weights(step0);
  EXPECT_EQ(std::memcmp(ckpt.weights.data(), weights_.data(), weights_.size() * 4), 0);
  write_hf_gpt2(dir_.path("hf2"), ckpt.config, ckpt.weights, ckpt.config.vocab_size - 1);
  EXPECT_EQ(read_file(dir_.path("hf2") + "/model.safetensors"), read_file(hf_ + "/model.safetensors"));
  EXPECT_EQ(read_file(dir_.path("hf2") + "/config.json"), read_file(hf_ + "/config.json"));
}

TEST_F(HfGpt2Test, ExportHasHuggingFacesNamesShapesAndConv1dLayout) {
  const SafetensorsFile f = SafetensorsFile::read(hf_ + "/model.safetensors");
  const int64_t C = cfg_.n_embd;
  EXPECT_EQ(f.entry("wte.weight").shape, (std::vector<int64_t>{cfg_.vocab_size, C})) << "padding rows stripped";
  EXPECT_EQ(f.entry("wpe.weight").shape, (std::vector<int64_t>{cfg_.max_seq_len, C}));
  EXPECT_EQ(f.entry("h.1.attn.c_attn.weight").shape, (std::vector<int64_t>{C, 3 * C}));
  EXPECT_EQ(f.entry("h.1.mlp.c_fc.weight").shape, (std::vector<int64_t>{C, 4 * C}));
  EXPECT_EQ(f.entry("h.1.mlp.c_proj.weight").shape, (std::vector<int64_t>{4 * C, C}));
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.entries().size(), 4u + 12u * cfg_.n_layer);
  // HF's Conv1D weight[in][out] is kiln's weight[out][in].
  const ParamSpec& fc = ParamLayout(cfg_).find("h.1.mlp.c_fc.weight");
  const std::vector<float> hf_fc = f.floats("h.1.mlp.c_fc.weight");
  for (int64_t in : {0L, 5L, C - 1})
    for (int64_t out : {0L, 17L, 4 * C - 1}) EXPECT_EQ(hf_fc[in * 4 * C + out], weights_[fc.offset + out * C + in]);
}

TEST_F(HfGpt2Test, AcceptsTheTransformerPrefixATiedHeadAndTheMaskBuffers) {
  rewrite([&](auto& tensors) {
    std::remove_reference_t<decltype(tensors)> prefixed;
    for (auto& [name, t] : tensors) prefixed["transformer." + name] = t;
    prefixed["lm_head.weight"] = tensors.at("wte.weight");
    const int64_t T = cfg_.max_seq_len;
    prefixed["transformer.h.0.attn.bias"] = {{1, 1, T, T}, std::vector<float>(T * T, 1.0f)};
    prefixed["transformer.h.0.attn.masked_bias"] = {{}, {-1e4f}};
    tensors = prefixed;
  });
  const HfGpt2 back = read_hf_gpt2(hf_);
  EXPECT_EQ(std::memcmp(back.weights.data(), weights_.data(), weights_.size() * 4), 0);
}

TEST_F(HfGpt2Test, ReadsBf16AndF16Exactly) {
  // 1.5, -2^-20 (an fp16 subnormal is 2^-24 * m), 65504 (fp16's largest), and bf16 of pi (3.140625).
  const std::string f16 = std::string("\x00\x3e", 2) + std::string("\x10\x00", 2) + std::string("\xff\x7b", 2);
  const std::string bf16("\x49\x40", 2);
  write_raw(
      dir_.path("mixed.safetensors"),
      R"({"a":{"dtype":"F16","shape":[3],"data_offsets":[0,6]},"b":{"dtype":"BF16","shape":[1],"data_offsets":[6,8]}})",
      f16 + bf16);
  const SafetensorsFile f = SafetensorsFile::read(dir_.path("mixed.safetensors"));
  EXPECT_EQ(f.floats("a"), (std::vector<float>{1.5f, 0x1p-20f, 65504.0f}));
  EXPECT_EQ(f.floats("b"), (std::vector<float>{3.140625f}));
}

TEST_F(HfGpt2Test, MalformedFilesAreRefusedNamingFileAndField) {
  const std::string p = dir_.path("bad.safetensors");
  std::ofstream(p) << "abc";
  EXPECT_TRUE(
      mentions(error_of([&] { SafetensorsFile::read(p); }), {p, "3 bytes, too short for a safetensors header"}));
  write_raw(p, "{}", "");
  std::fstream(p, std::ios::in | std::ios::out | std::ios::binary).write("\xff\xff\xff\x00", 4);
  EXPECT_TRUE(mentions(error_of([&] { SafetensorsFile::read(p); }),
                       {p, "header length 16777215 does not fit the file's 10 bytes"}));
  write_raw(p, "{\"a\": ", "");
  EXPECT_TRUE(mentions(error_of([&] { SafetensorsFile::read(p); }), {p, "header is not valid JSON"}));
  write_raw(p, R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}})", "xx");
  EXPECT_TRUE(mentions(error_of([&] { SafetensorsFile::read(p); }), {p, "tensor 'a': unknown dtype 'Q4'"}));
  write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "xxxx");
  EXPECT_TRUE(
      mentions(error_of([&] { SafetensorsFile::read(p); }), {p, "tensor 'a': 4 bytes for a F32 tensor of 2 elements"}));
  write_raw(p, R"({"a":{"dtype":"F32","shape":[2]}})", "");
  EXPECT_TRUE(mentions(error_of([&] { SafetensorsFile::read(p); }), {p, "tensor 'a'", "data_offsets"}));

  // A truncated export: the last tensor's bytes are missing.
  const std::string model = hf_ + "/model.safetensors";
  fs::resize_file(model, fs::file_size(model) - 4);
  EXPECT_TRUE(mentions(error_of([&] { read_hf_gpt2(hf_); }), {model, "outside the data section", "(truncated?)"}));
}

TEST_F(HfGpt2Test, AMissingOrMisshapenTensorIsNamed) {
  rewrite([](auto& t) { t.erase("h.1.ln_2.bias"); });
  EXPECT_TRUE(
      mentions(error_of([&] { read_hf_gpt2(hf_); }), {hf_ + "/model.safetensors", "no tensor 'h.1.ln_2.bias'"}));
  write_hf_gpt2(hf_, cfg_, weights_, cfg_.vocab_size - 1);
  edit_config([](json& c) { c["n_positions"] = 32; });
  EXPECT_TRUE(mentions(error_of([&] { read_hf_gpt2(hf_); }),
                       {"tensor 'wpe.weight' has shape [64,32], config.json makes it [32,32]"}));
  write_hf_gpt2(hf_, cfg_, weights_, cfg_.vocab_size - 1);
  rewrite([](auto& t) { t["lm_head.weight"] = t.at("wte.weight"), t["lm_head.weight"].second[3] += 1; });
  EXPECT_TRUE(mentions(error_of([&] { read_hf_gpt2(hf_); }), {"'lm_head.weight' differs from wte.weight"}));
}

TEST_F(HfGpt2Test, AConfigKilnDoesNotComputeIsRefusedByField) {
  const std::string path = hf_ + "/config.json";
  const std::vector<std::pair<std::function<void(json&)>, std::string>> cases = {
      {[](json& c) { c["activation_function"] = "relu"; },
       "activation_function = \"relu\": kiln's GPT-2 has \"gelu_new\""},
      {[](json& c) { c["layer_norm_epsilon"] = 1e-6; }, "layer_norm_epsilon = 1e-06: kiln's GPT-2 has 1e-05"},
      {[](json& c) { c["n_inner"] = 100; }, "n_inner = 100"},
      {[](json& c) { c["tie_word_embeddings"] = false; }, "tie_word_embeddings = false"},
      {[](json& c) { c["model_type"] = "llama"; }, "model_type = \"llama\""},
      {[](json& c) { c.erase("n_head"); }, "n_head: expected an integer"},
      {[](json& c) { c["n_head"] = 5; }, "n_head"},
  };
  for (const auto& [edit, message] : cases) {
    write_hf_gpt2(hf_, cfg_, weights_, cfg_.vocab_size - 1);
    edit_config(edit);
    EXPECT_TRUE(mentions(error_of([&] { read_hf_gpt2(hf_); }), {path, message}));
  }
  fs::remove(path);
  EXPECT_TRUE(mentions(error_of([&] { read_hf_gpt2(hf_); }), {path, "missing or unreadable"}));
}

TEST_F(HfGpt2Test, AFailedWriteLeavesTheEarlierFile) {
  const std::string model = hf_ + "/model.safetensors", before = read_file(model);
  fs::create_directories(model + ".tmp");  // the temporary file cannot be created
  EXPECT_TRUE(mentions(
      error_of([&] { write_hf_gpt2(hf_, cfg_, std::vector<float>(weights_.size(), 0.0f), cfg_.vocab_size - 1); }),
      {model + ".tmp", "write failed"}));
  EXPECT_EQ(read_file(model), before);
}

}  // namespace
}  // namespace kiln
