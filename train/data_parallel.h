// Data parallelism over a Comm for the CPU backend's host buffers (design.md §5). After each
// backward pass the ranks' gradients are summed: all-reduced into every rank's full gradient, or
// under ZeRO-1 reduce-scattered into this rank's shard of the flat buffer. The optimizer then
// updates only that shard (so it keeps 1/DP of the moments), and the updated parameters are
// all-gathered. Either way every rank ends the step with the same parameters.
#pragma once

#include <vector>

#include "model/gpt.h"
#include "parallel/comm.h"

namespace kiln {

class DataParallel {
 public:
  DataParallel(GPT& model, Comm& comm, bool zero1);

  // The elements of the flat buffer whose optimizer state this rank keeps.
  int64_t shard_first() const { return first_; }
  int64_t shard_count() const { return count_; }

  // Sums the gradients over the ranks; returns their global L2 norm, each element counted once.
  double reduce_gradients();
  // The gradients the optimizer steps with: the model's (empty Tensor) or this rank's shard.
  Tensor optimizer_grads();
  // After the optimizer step: ZeRO-1 gives every rank every shard's parameters.
  void gather_parameters();

 private:
  GPT& model_;
  Comm& comm_;
  bool zero1_;
  int64_t total_, shard_, first_, count_;  // shard_: the padded shard size, count_ <= shard_ real elements
  std::vector<float> padded_grads_, shard_grads_, shard_params_, gathered_;  // ZeRO-1 staging, allocated once
};

}  // namespace kiln
