#include "train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

namespace kiln {

AdamW::AdamW(GPT& model, const OptimConfig& cfg) : AdamW(model, cfg, 0, model.layout().total()) {}

AdamW::AdamW(GPT& model, const OptimConfig& cfg, int64_t first, int64_t count)
    : model_(model), cfg_(cfg), first_(first), count_(count) {
  if (first < 0 || count < 0 || first + count > model.layout().total())
    throw std::invalid_argument("AdamW: elements [" + std::to_string(first) + ", " + std::to_string(first + count) +
                                ") outside the " + std::to_string(model.layout().total()) + " parameters");
  const int64_t master_end = model.master_first() + model.master().numel;
  if (first < model.master_first() || first + count > master_end)
    throw std::invalid_argument("AdamW: elements [" + std::to_string(first) + ", " + std::to_string(first + count) +
                                ") are not all in the model's master weights [" + std::to_string(model.master_first()) +
                                ", " + std::to_string(master_end) + ")");
  m_ = model.ops().allocate(count, DType::f32);
  v_ = model.ops().allocate(count, DType::f32);
  // One range per tensor overlapping the shard, relative to its first element.
  std::vector<ref::AdamWRange> ranges;
  model.layout().for_each_overlap(first, count, [&](const ParamSpec& s, int64_t begin, int64_t end) {
    ranges.push_back({begin - first, end - begin, s.decay});
  });
  table_ = model.ops().make_adamw_table(ranges);
}

void AdamW::step(double lr, double grad_scale, const Tensor& shard_grads) {
  step_++;
  const Tensor grads = shard_grads ? shard_grads : model_.grads().slice(first_, count_);
  const ref::AdamWParams hp{lr, cfg_.beta1, cfg_.beta2, cfg_.eps, cfg_.weight_decay, step_, grad_scale};
  model_.ops().adamw_update(model_.master().slice(first_ - model_.master_first(), count_),
                            model_.params().slice(first_, count_), grads, m_, v_, table_, hp);
}

double grad_norm(Ops& ops, const Tensor& grads) { return std::sqrt(ops.sum_squares(grads)); }

}  // namespace kiln
