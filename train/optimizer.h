// AdamW over the model's flat parameter buffer, tensor by tensor so that weight decay applies to
// matrices only; plus global-norm gradient clipping.
#pragma once

#include "model/gpt.h"
#include "train/config.h"

namespace kiln {

class AdamW {
 public:
  AdamW(GPT& model, const OptimConfig& cfg);
  // One update at `lr`; the step counter (for bias correction) advances by one.
  void step(double lr);
  int64_t steps_taken() const { return step_; }

 private:
  GPT& model_;
  OptimConfig cfg_;
  Buffer m_, v_;
  int64_t step_ = 0;
};

// Global L2 norm of the gradients; when max_norm > 0 and the norm exceeds it, the gradients are
// scaled down to norm max_norm. Returns the norm before clipping.
double clip_grad_norm(Ops& ops, const Tensor& grads, double max_norm);

}  // namespace kiln
