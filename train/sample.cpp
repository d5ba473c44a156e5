#include "train/sample.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

namespace kiln {

void SamplingOptions::validate() const {
  if (!(temperature >= 0) || !std::isfinite(temperature))
    throw std::invalid_argument("temperature: expected a number >= 0, got " + std::to_string(temperature));
  if (top_k < 0) throw std::invalid_argument("top-k: expected >= 0 (0: no limit), got " + std::to_string(top_k));
  if (!(top_p > 0 && top_p <= 1))
    throw std::invalid_argument("top-p: expected a number in (0, 1], got " + std::to_string(top_p));
}

int32_t sample_token(std::span<const float> logits, const SamplingOptions& options, std::mt19937_64& rng) {
  const int V = (int)logits.size();
  // Token ids, most likely first (a stable order: ties keep the lower id first).
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  if (options.temperature == 0) return order[0];
  const int keep_k = options.top_k > 0 ? std::min(options.top_k, V) : V;
  std::vector<double> weight(keep_k);
  double total = 0;
  for (int i = 0; i < keep_k; i++)
    total += (weight[i] = std::exp((logits[order[i]] - logits[order[0]]) / options.temperature));
  // Nucleus: the shortest prefix whose probability reaches top_p.
  int keep = keep_k;
  if (options.top_p < 1) {
    double mass = 0;
    for (int i = 0; i < keep_k; i++) {
      mass += weight[i] / total;
      if (mass >= options.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0;
  for (int i = 0; i < keep; i++) kept += weight[i];
  const double u = (double)(rng() >> 11) * 0x1p-53 * kept;  // uniform in [0, kept)
  double cumulative = 0;
  for (int i = 0; i < keep; i++) {
    cumulative += weight[i];
    if (cumulative > u) return order[i];
  }
  return order[keep - 1];
}

std::vector<int32_t> generate(Decoder& decoder, std::span<const int32_t> prompt, int count, uint64_t seed,
                              const SamplingOptions& options, int32_t stop_token) {
  if (prompt.empty()) throw std::invalid_argument("generate: the prompt has no tokens");
  options.validate();
  std::mt19937_64 rng(seed);
  std::vector<int32_t> out;
  std::span<const float> logits = decoder.append(prompt);
  for (int i = 0; i < count; i++) {
    out.push_back(sample_token(logits, options, rng));
    if (out.back() == stop_token || i + 1 == count) break;
    logits = decoder.append(std::span<const int32_t>(&out.back(), 1));
  }
  return out;
}

std::vector<int32_t> sample_tokens(const GPT& model, std::span<const int32_t> prompt, int count, uint64_t seed) {
  if (model.tensor_parallel().size != 1) throw std::logic_error("sample_tokens: a tensor-parallel model");
  Decoder decoder(model.config(), model.download_weights());
  const int room = model.config().max_seq_len - (int)prompt.size();
  return generate(decoder, prompt, std::min(count, room), seed, SamplingOptions{});
}

}  // namespace kiln
