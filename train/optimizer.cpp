#include "train/optimizer.h"

#include <cmath>

namespace kiln {

AdamW::AdamW(GPT& model, const OptimConfig& cfg) : model_(model), cfg_(cfg) {
  m_ = model.ops().allocate(model.layout().total(), DType::f32);
  v_ = model.ops().allocate(model.layout().total(), DType::f32);
}

void AdamW::step(double lr, double grad_scale) {
  step_++;
  Ops& ops = model_.ops();
  for (const ParamSpec& s : model_.layout().specs()) {
    const ref::AdamWParams hp{lr, cfg_.beta1, cfg_.beta2, cfg_.eps, s.decay ? cfg_.weight_decay : 0.0, step_, grad_scale};
    ops.adamw_update(model_.params().slice(s.offset, s.numel), model_.grads().slice(s.offset, s.numel),
                     m_.view().slice(s.offset, s.numel), v_.view().slice(s.offset, s.numel), hp);
  }
}

double grad_norm(Ops& ops, const Tensor& grads) { return std::sqrt(ops.sum_squares(grads)); }

}  // namespace kiln
