// GPT-2 in Hugging Face's layout (model.safetensors plus config.json), to and from kiln's flat
// parameter layout. The names are the same; HF's Conv1D stores the four projection matrices
// [in, out], kiln (nn.Linear) [out, in], so those are transposed; HF's vocabulary is not padded.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "model/config.h"

namespace kiln {

struct HfGpt2 {
  GPTConfig config;
  std::vector<float> weights;  // kiln's unsharded layout (ParamLayout(config)), padding rows zero
};

// dir/config.json and dir/model.safetensors. Accepts names with or without the "transformer."
// prefix, ignores the attention-mask buffers (attn.bias, attn.masked_bias), and takes a tied
// lm_head.weight if it equals wte. Refuses a config kiln's model is not (another activation,
// layernorm epsilon, untied head, inner width), naming the field, and a missing or misshapen
// tensor, naming it.
HfGpt2 read_hf_gpt2(const std::string& dir);

// Writes dir/model.safetensors (F32, the padding rows stripped) and dir/config.json, loadable by
// transformers' GPT2LMHeadModel.from_pretrained(dir).
void write_hf_gpt2(const std::string& dir, const GPTConfig& config, std::span<const float> weights, int eos_token_id);

}  // namespace kiln
