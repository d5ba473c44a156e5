#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace kiln {

double learning_rate(const OptimConfig& o, int64_t step, int64_t total_steps) {
  if (step < o.warmup_steps) return o.lr * (double)(step + 1) / (double)o.warmup_steps;
  const double min_lr = o.lr * o.min_lr_ratio;
  if (o.schedule == LrSchedule::constant) return o.lr;
  if (o.schedule == LrSchedule::wsd) {
    const int64_t decay_steps = std::max<int64_t>(1, (int64_t)std::llround(o.decay_fraction * total_steps));
    const int64_t decay_start = total_steps - decay_steps;
    if (step < decay_start) return o.lr;
    const double progress = std::min(1.0, (double)(step - decay_start + 1) / (double)decay_steps);
    return o.lr + (min_lr - o.lr) * progress;
  }
  // cosine from lr at the end of warm-up to min_lr at the last step
  const int64_t span = std::max<int64_t>(1, total_steps - 1 - o.warmup_steps);
  const double progress = std::min(1.0, (double)(step - o.warmup_steps) / (double)span);
  return min_lr + 0.5 * (o.lr - min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
}

}  // namespace kiln
