#include "train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace kiln {

AdamW::AdamW(GPT& model, const OptimConfig& cfg) : AdamW(model, cfg, 0, model.layout().total()) {}

AdamW::AdamW(GPT& model, const OptimConfig& cfg, int64_t first, int64_t count)
    : model_(model), cfg_(cfg), first_(first), count_(count) {
  if (first < 0 || count < 0 || first + count > model.layout().total())
    throw std::invalid_argument("AdamW: elements [" + std::to_string(first) + ", " + std::to_string(first + count) +
                                ") outside the " + std::to_string(model.layout().total()) + " parameters");
  m_ = model.ops().allocate(count, DType::f32);
  v_ = model.ops().allocate(count, DType::f32);
}

// Tensor by tensor (weight decay on matrices only), each cut to the owned elements.
void AdamW::step(double lr, double grad_scale, const Tensor& shard_grads) {
  step_++;
  Ops& ops = model_.ops();
  const Tensor grads = shard_grads ? shard_grads : model_.grads().slice(first_, count_);
  model_.layout().for_each_overlap(first_, count_, [&](const ParamSpec& s, int64_t begin, int64_t end) {
    const ref::AdamWParams hp{lr, cfg_.beta1, cfg_.beta2, cfg_.eps, s.decay ? cfg_.weight_decay : 0.0, step_, grad_scale};
    ops.adamw_update(model_.params().slice(begin, end - begin), grads.slice(begin - first_, end - begin),
                     m_.view().slice(begin - first_, end - begin), v_.view().slice(begin - first_, end - begin), hp);
  });
}

double grad_norm(Ops& ops, const Tensor& grads) { return std::sqrt(ops.sum_squares(grads)); }

}  // namespace kiln
