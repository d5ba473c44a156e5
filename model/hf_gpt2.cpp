#include "model/hf_gpt2.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "model/params.h"
#include "model/safetensors.h"

namespace kiln {
namespace {

using nlohmann::json;

// HF's Conv1D weights ([in, out]); every other tensor has kiln's layout already.
bool is_conv1d_weight(const std::string& name) {
  for (const char* suffix : {"attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"})
    if (name.ends_with(suffix)) return true;
  return false;
}

// HF's name of a kiln tensor: the embeddings are modules there (wte.weight), the rest the same.
std::string hf_name(const ParamSpec& s) { return s.name == "wte" || s.name == "wpe" ? s.name + ".weight" : s.name; }

// out[c, r] = in[r, c] for in [rows, cols].
void transpose(const float* in, float* out, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) out[c * rows + r] = in[r * cols + c];
}

GPTConfig config_from_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": missing or unreadable (a Hugging Face GPT-2 directory has config.json)");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw std::runtime_error(path + ": not valid JSON: " + e.what());
  }
  auto integer = [&](const char* field, const char* fallback = nullptr) {
    const char* key = j.contains(field) || !fallback ? field : fallback;
    if (!j.contains(key) || !j[key].is_number_integer())
      throw std::runtime_error(path + ": " + field + ": expected an integer");
    return j[key].get<int>();
  };
  GPTConfig c;
  c.vocab_size = integer("vocab_size");
  c.max_seq_len = integer("n_positions", "n_ctx");
  c.n_layer = integer("n_layer");
  c.n_head = integer("n_head");
  c.n_embd = integer("n_embd");
  // What kiln's model is; anything else would load and silently compute another function.
  auto refuse_unless = [&](bool ok, const char* field, const char* expected) {
    if (!ok) throw std::runtime_error(path + ": " + field + " = " + j[field].dump() + ": kiln's GPT-2 has " + expected);
  };
  if (j.contains("model_type")) refuse_unless(j["model_type"] == "gpt2", "model_type", "\"gpt2\"");
  if (j.contains("activation_function"))
    refuse_unless(j["activation_function"] == "gelu_new" || j["activation_function"] == "gelu_pytorch_tanh",
                  "activation_function", "\"gelu_new\" (the tanh approximation)");
  if (j.contains("layer_norm_epsilon"))
    refuse_unless(j["layer_norm_epsilon"].is_number() && std::abs(j["layer_norm_epsilon"].get<double>() - 1e-5) < 1e-12,
                  "layer_norm_epsilon", "1e-05");
  if (j.contains("n_inner"))
    refuse_unless(j["n_inner"].is_null() || j["n_inner"] == 4 * c.n_embd, "n_inner", "null (4 x n_embd)");
  if (j.contains("tie_word_embeddings")) refuse_unless(j["tie_word_embeddings"] == true, "tie_word_embeddings", "true");
  if (j.contains("scale_attn_weights")) refuse_unless(j["scale_attn_weights"] == true, "scale_attn_weights", "true");
  if (j.contains("scale_attn_by_inverse_layer_idx"))
    refuse_unless(j["scale_attn_by_inverse_layer_idx"] == false, "scale_attn_by_inverse_layer_idx", "false");
  try {
    c.validate();
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
  return c;
}

}  // namespace

HfGpt2 read_hf_gpt2(const std::string& dir) {
  HfGpt2 out;
  out.config = config_from_json(dir + "/config.json");
  const std::string weights = dir + "/model.safetensors";
  if (!std::filesystem::exists(weights))
    for (const char* other : {"pytorch_model.bin", "model.safetensors.index.json", "tf_model.h5", "flax_model.msgpack"})
      if (std::filesystem::exists(dir + "/" + other))
        throw std::runtime_error(dir + ": holds " + other +
                                 " but no model.safetensors; kiln reads only a single "
                                 "safetensors file. Convert it with transformers: GPT2LMHeadModel.from_pretrained(DIR)"
                                 ".save_pretrained(OUT, safe_serialization=True, max_shard_size=\"100GB\")");
  const SafetensorsFile file = SafetensorsFile::read(weights);
  const ParamLayout layout(out.config);
  const std::string prefix = file.contains("transformer.wte.weight") ? "transformer." : "";
  out.weights.assign(layout.total(), 0.0f);
  for (const ParamSpec& s : layout.specs()) {
    const std::string name = prefix + hf_name(s);
    const SafetensorsEntry& e = file.entry(name);
    std::vector<int64_t> expected = s.shape;
    if (s.name == "wte") expected[0] = out.config.vocab_size;  // kiln pads the rows, HF does not
    if (is_conv1d_weight(s.name)) std::swap(expected[0], expected[1]);
    if (e.shape != expected)
      throw std::runtime_error(file.path() + ": tensor '" + name + "' has shape " + json(e.shape).dump() +
                               ", config.json makes it " + json(expected).dump());
    const std::vector<float> values = file.floats(name);
    float* dst = out.weights.data() + s.offset;
    if (is_conv1d_weight(s.name))
      transpose(values.data(), dst, expected[0], expected[1]);
    else
      std::copy(values.begin(), values.end(), dst);
  }
  if (file.contains(prefix + "lm_head.weight") || file.contains("lm_head.weight")) {
    const std::string head = file.contains("lm_head.weight") ? "lm_head.weight" : prefix + "lm_head.weight";
    const std::vector<float> lm_head = file.floats(head), wte = file.floats(prefix + "wte.weight");
    if (lm_head != wte)
      throw std::runtime_error(file.path() + ": tensor '" + head +
                               "' differs from wte.weight: kiln's GPT-2 ties the LM head to the embedding");
  }
  return out;
}

void write_hf_gpt2(const std::string& dir, const GPTConfig& config, std::span<const float> weights, int eos_token_id) {
  if (eos_token_id < 0 || eos_token_id >= config.vocab_size)
    throw std::invalid_argument("write_hf_gpt2: end-of-text id " + std::to_string(eos_token_id) +
                                " is outside the vocabulary of " + std::to_string(config.vocab_size));
  const ParamLayout layout(config);
  if ((int64_t)weights.size() != layout.total())
    throw std::invalid_argument("write_hf_gpt2: " + std::to_string(weights.size()) + " weights, the layout has " +
                                std::to_string(layout.total()));
  std::filesystem::create_directories(dir);
  std::vector<std::vector<float>> transposed;
  transposed.reserve(layout.specs().size());
  std::vector<SafetensorsTensor> tensors;
  for (const ParamSpec& s : layout.specs()) {
    std::vector<int64_t> shape = s.shape;
    std::span<const float> values = weights.subspan(s.offset, s.numel);
    if (s.name == "wte") {
      shape[0] = config.vocab_size;
      values = values.first((size_t)config.vocab_size * config.n_embd);
    }
    if (is_conv1d_weight(s.name)) {
      std::swap(shape[0], shape[1]);
      transposed.emplace_back(s.numel);
      transpose(values.data(), transposed.back().data(), s.shape[0], s.shape[1]);
      values = transposed.back();
    }
    tensors.push_back({hf_name(s), shape, values});
  }
  write_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
  const json cfg = {{"architectures", {"GPT2LMHeadModel"}},
                    {"model_type", "gpt2"},
                    {"vocab_size", config.vocab_size},
                    {"n_positions", config.max_seq_len},
                    {"n_ctx", config.max_seq_len},
                    {"n_embd", config.n_embd},
                    {"n_layer", config.n_layer},
                    {"n_head", config.n_head},
                    {"n_inner", nullptr},
                    {"activation_function", "gelu_new"},
                    {"layer_norm_epsilon", 1e-5},
                    {"tie_word_embeddings", true},
                    {"scale_attn_weights", true},
                    {"bos_token_id", eos_token_id},
                    {"eos_token_id", eos_token_id}};
  std::ofstream(dir + "/config.json") << cfg.dump(2) << "\n";
}

}  // namespace kiln
