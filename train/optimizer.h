// AdamW over the model's flat fp32 master weights in one update (a range table says where weight
// decay applies: matrices only), writing the parameters in the compute dtype; plus global-norm
// gradient clipping.
#pragma once

#include "model/gpt.h"
#include "train/config.h"

namespace kiln {

// Owns the moments of elements [first, first + count) of the flat parameter buffer: all of it, or
// under ZeRO-1 this data-parallel rank's shard.
class AdamW {
 public:
  AdamW(GPT& model, const OptimConfig& cfg);
  AdamW(GPT& model, const OptimConfig& cfg, int64_t first, int64_t count);
  // One update at `lr` with the gradients multiplied by grad_scale (the clipping factor); the step
  // counter (for bias correction) advances by one. The gradients are the model's, or `shard_grads`
  // (count values, for elements first..) when given.
  void step(double lr, double grad_scale = 1.0, const Tensor& shard_grads = {});
  int64_t steps_taken() const { return step_; }
  void set_steps_taken(int64_t steps) { step_ = steps; }  // a resumed run's bias correction
  // The moments of elements [first(), first() + count()) of the flat buffer.
  const Tensor& m() const { return m_; }
  const Tensor& v() const { return v_; }
  int64_t first() const { return first_; }
  int64_t count() const { return count_; }
  int64_t state_floats() const { return 2 * count_; }  // m and v
  int64_t state_bytes() const { return 2 * count_ * (int64_t)sizeof(float) + table_.view().numel; }

 private:
  GPT& model_;
  OptimConfig cfg_;
  int64_t first_, count_;
  Buffer m_, v_, table_;
  int64_t step_ = 0;
};

// Global L2 norm of the gradients (clip with AdamW::step's grad_scale = ref::clip_factor(norm, max)).
double grad_norm(Ops& ops, const Tensor& grads);

}  // namespace kiln
