// Learning rate at a step (0-based): linear warm-up to lr, then cosine or warm-up-stable-decay
// (constant, then linear decay over the last decay_fraction of steps) down to lr * min_lr_ratio.
#pragma once

#include <cstdint>

#include "train/config.h"

namespace kiln {

double learning_rate(const OptimConfig& o, int64_t step, int64_t total_steps);

}  // namespace kiln
