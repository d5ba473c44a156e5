// The training loop: data, forward/backward with gradient accumulation, clipping, AdamW, the LR
// schedule, periodic evaluation, a progress line per step and metrics.jsonl.
#pragma once

#include <optional>
#include <ostream>
#include <vector>

#include "train/config.h"

namespace kiln {

struct StepRecord {
  int64_t step;
  double loss, lr, grad_norm, ms, tokens_per_s;
  std::optional<double> val_loss;
};

// Model FLOPs per token of one training step (forward + backward): 6 N + 12 L T C, with N the
// parameter count (the tied LM head counted once, as it is used once per pass) and the second
// term the attention score and value products (Chinchilla/PaLM appendix accounting, no causal halving).
double flops_per_token(int64_t params, int n_layer, int seq_len, int n_embd);

std::vector<StepRecord> train(const TrainConfig& cfg, std::ostream& log);

}  // namespace kiln
