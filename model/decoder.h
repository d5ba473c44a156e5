// Autoregressive inference with a KV cache, on the CPU in fp32: each new token runs the blocks
// on its own row only, attending to the keys and values every earlier position left in the cache,
// instead of a full forward pass over the context per token.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "model/config.h"
#include "model/params.h"

namespace kiln {

class Decoder {
 public:
  // weights in the unsharded layout ParamLayout(config), e.g. a checkpoint's master weights.
  Decoder(const GPTConfig& config, std::vector<float> weights);

  const GPTConfig& config() const { return cfg_; }
  int length() const { return length_; }  // positions in the cache
  void reset() { length_ = 0; }
  // Runs `tokens` at positions length() .. length() + n - 1 (a prompt at once, or one sampled
  // token) and returns the logits [vocab_size] after the last of them. Throws when the context
  // would pass the model's max_seq_len, or on a token outside the vocabulary.
  std::span<const float> append(std::span<const int32_t> tokens);

 private:
  const float* weight(const std::string& name) const { return weights_.data() + layout_.find(name).offset; }
  // rows [n, C] of the attention output for queries at positions length_ .. length_ + n - 1.
  void attend(int layer, int n);

  GPTConfig cfg_;
  ParamLayout layout_;
  std::vector<float> weights_;
  std::vector<float> k_cache_, v_cache_;  // [n_layer, max_seq_len, C]: every head's keys, values
  // Scratch for n rows: residual stream, layernorm output and statistics, qkv, attention, MLP.
  std::vector<float> x_, ln_, mean_, rstd_, qkv_, att_, proj_, fc_, fc_gelu_, logits_;
  int length_ = 0;
};

}  // namespace kiln
