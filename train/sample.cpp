#include "train/sample.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <stdexcept>

namespace kiln {

std::vector<int32_t> sample_tokens(GPT& model, const std::vector<int32_t>& prompt, int count, uint64_t seed,
                                   int max_seq, double temperature) {
  if (prompt.empty()) throw std::invalid_argument("sample_tokens: the prompt has no tokens");
  const int V = model.config().vocab_size, Vp = model.config().padded_vocab();
  std::mt19937_64 rng(seed);
  std::vector<int32_t> tokens = prompt;
  std::vector<float> logits;
  std::vector<double> weights(V);
  for (int i = 0; i < count; i++) {
    const int T = (int)std::min<size_t>(tokens.size(), (size_t)max_seq);
    const std::vector<int32_t> context(tokens.end() - T, tokens.end()), no_targets(T, -1);
    model.forward(context, no_targets, 1, T);
    logits.resize((size_t)T * Vp);
    model.download_logits(logits);
    const float* last = logits.data() + (size_t)(T - 1) * Vp;
    const float max = *std::max_element(last, last + V);
    for (int v = 0; v < V; v++) weights[v] = std::exp((last[v] - max) / temperature);
    tokens.push_back((int32_t)std::discrete_distribution<int>(weights.begin(), weights.end())(rng));
  }
  return {tokens.begin() + (ptrdiff_t)prompt.size(), tokens.end()};
}

}  // namespace kiln
