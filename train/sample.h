// Text samples during training: the model continues a prompt, one token at a time.
#pragma once

#include <cstdint>
#include <vector>

#include "model/gpt.h"

namespace kiln {

// `count` tokens after `prompt`, each drawn from softmax(logits / temperature) of the last
// position, with one forward pass over the context (the last max_seq tokens) per token: no KV
// cache, which is fine for a short sample every few hundred steps. Deterministic in the seed.
// The model must not be tensor-parallel (its logits would be one rank's slice).
std::vector<int32_t> sample_tokens(GPT& model, const std::vector<int32_t>& prompt, int count, uint64_t seed,
                                   int max_seq, double temperature = 1.0);

}  // namespace kiln
