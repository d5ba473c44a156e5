// Text generation: tokens drawn one at a time from the logits of a KV-cache decoder, with
// temperature, top-k and top-p (nucleus) sampling. Deterministic in the seed.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "model/decoder.h"
#include "model/gpt.h"

namespace kiln {

struct SamplingOptions {
  double temperature = 1.0;  // 0: always the most likely token
  int top_k = 0;             // keep the k most likely tokens (0: all)
  double top_p = 1.0;        // keep the most likely tokens whose probabilities reach p (1: all)
  void validate() const;     // throws std::invalid_argument naming the option
};

// A token from softmax(logits / temperature) restricted by top-k and top-p. Ties keep the lower id.
int32_t sample_token(std::span<const float> logits, const SamplingOptions& options, std::mt19937_64& rng);

// `count` tokens after `prompt` (the prompt is run at once, then one token per step), stopping
// early after `stop_token` when it is >= 0. Throws when the context would pass max_seq_len.
std::vector<int32_t> generate(Decoder& decoder, std::span<const int32_t> prompt, int count, uint64_t seed,
                              const SamplingOptions& options, int32_t stop_token = -1);

// A sample during training: the model's master weights in a decoder, up to `count` tokens or the
// end of its context. The model must not be tensor-parallel (each rank holds a slice).
std::vector<int32_t> sample_tokens(const GPT& model, std::span<const int32_t> prompt, int count, uint64_t seed);

}  // namespace kiln
