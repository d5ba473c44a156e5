#include "model/config.h"

#include <stdexcept>

namespace kiln {
namespace {

struct Preset {
  const char* name;
  GPTConfig config;
};

// GPT-2 sizes from Radford et al. 2019 (Table 2) as released (vocabulary 50257, context 1024).
const Preset kPresets[] = {
    {"gpt2-124m", {50257, 1024, 12, 12, 768}},
    {"gpt2-350m", {50257, 1024, 24, 16, 1024}},
    {"gpt2-774m", {50257, 1024, 36, 20, 1280}},
    {"gpt2-1558m", {50257, 1024, 48, 25, 1600}},
    {"tiny", {257, 256, 4, 4, 256}},
    {"test", {257, 64, 2, 2, 32}},
};

}  // namespace

int GPTConfig::padded_vocab(int tp_size) const {
  const int m = vocab_multiple * tp_size;
  return (vocab_size + m - 1) / m * m;
}

void GPTConfig::validate() const {
  auto positive = [](int v, const char* field) {
    if (v <= 0)
      throw std::invalid_argument(std::string("model.") + field + " = " + std::to_string(v) +
                                  ": expected a positive integer");
  };
  positive(vocab_size, "vocab_size");
  positive(max_seq_len, "max_seq_len");
  positive(n_layer, "n_layer");
  positive(n_head, "n_head");
  positive(n_embd, "n_embd");
  positive(vocab_multiple, "vocab_multiple");
  if (n_embd % n_head != 0)
    throw std::invalid_argument("model.n_embd = " + std::to_string(n_embd) +
                                " is not divisible by model.n_head = " + std::to_string(n_head));
}

GPTConfig GPTConfig::preset(std::string_view name) {
  for (const Preset& p : kPresets)
    if (name == p.name) return p.config;
  std::string names;
  for (const Preset& p : kPresets) names += std::string(names.empty() ? "" : ", ") + p.name;
  throw std::invalid_argument("unknown model preset '" + std::string(name) + "' (expected one of: " + names + ")");
}

std::vector<std::string> GPTConfig::preset_names() {
  std::vector<std::string> names;
  for (const Preset& p : kPresets) names.emplace_back(p.name);
  return names;
}

LocalShape::LocalShape(const GPTConfig& cfg, TensorParallel tp) {
  if (tp.size < 1 || tp.rank < 0 || tp.rank >= tp.size)
    throw std::invalid_argument("tensor parallel rank " + std::to_string(tp.rank) + " of " + std::to_string(tp.size));
  if (cfg.n_head % tp.size != 0)
    throw std::invalid_argument("model.n_head = " + std::to_string(cfg.n_head) +
                                " is not divisible by the tensor-parallel size " + std::to_string(tp.size));
  heads = cfg.n_head / tp.size;
  head_size = cfg.head_size();
  attn_width = heads * head_size;
  mlp_width = 4 * cfg.n_embd / tp.size;
  vocab_rows = cfg.padded_vocab(tp.size) / tp.size;
  vocab_begin = tp.rank * vocab_rows;
}

Recompute parse_recompute(const std::string& name) {
  if (name == "none") return Recompute::none;
  if (name == "mlp") return Recompute::mlp;
  if (name == "block") return Recompute::block;
  throw std::invalid_argument("recompute '" + name + "': expected none, mlp or block");
}

const char* recompute_name(Recompute r) {
  return r == Recompute::none ? "none" : r == Recompute::mlp ? "mlp" : "block";
}

}  // namespace kiln
