// The training loop: data, forward/backward with gradient accumulation, clipping, AdamW, the LR
// schedule, periodic evaluation, a progress line per step and metrics.jsonl.
#pragma once

#include <optional>
#include <ostream>
#include <vector>

#include "parallel/comm/comm.h"
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

// Data parallel over `comm` (one rank: make_self_comm()): each rank trains on its slice of every
// global batch of train.batch_size x comm.size() sequences, gradients are summed over the ranks
// after the backward pass, and the loss is the mean over all unmasked tokens of the global batch.
// Rank 0 logs and writes metrics.jsonl; every rank evaluates and returns the same records.
std::vector<StepRecord> train(const TrainConfig& cfg, std::ostream& log, Comm& comm);
// One process.
inline std::vector<StepRecord> train(const TrainConfig& cfg, std::ostream& log) {
  return train(cfg, log, *make_self_comm());
}

}  // namespace kiln
