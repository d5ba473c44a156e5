// AdamW over the model's flat parameter buffer, tensor by tensor so that weight decay applies to
// matrices only; plus global-norm gradient clipping.
#pragma once

#include "model/gpt.h"
#include "train/config.h"

namespace kiln {

class AdamW {
 public:
  AdamW(GPT& model, const OptimConfig& cfg);
  // One update at `lr` with the gradients multiplied by grad_scale (the clipping factor); the step
  // counter (for bias correction) advances by one.
  void step(double lr, double grad_scale = 1.0);
  int64_t steps_taken() const { return step_; }

 private:
  GPT& model_;
  OptimConfig cfg_;
  Buffer m_, v_;
  int64_t step_ = 0;
};

// Global L2 norm of the gradients (clip with AdamW::step's grad_scale = ref::clip_factor(norm, max)).
double grad_norm(Ops& ops, const Tensor& grads);

}  // namespace kiln
