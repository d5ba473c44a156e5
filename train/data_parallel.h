// Data parallelism over a Comm that can reach the gradients (docs/design.md §5): MPI for the CPU
// backend's and the emulated device's (host memory), NCCL for a GPU's. After each
// backward pass the ranks' gradients are summed: all-reduced into every rank's full gradient, or
// under ZeRO-1 reduce-scattered into this rank's shard of the flat buffer. The optimizer then
// updates only that shard (so it keeps 1/DP of the moments), and the updated parameters are
// all-gathered. Either way every rank ends the step with the same parameters.
#pragma once

#include <utility>
#include <vector>

#include "model/gpt.h"
#include "parallel/comm/comm.h"

namespace kiln {

class DataParallel {
 public:
  // bucket_bytes > 0 (and no ZeRO-1): gradients are all-reduced in buckets of at least that many
  // bytes during the backward pass, as GPT::forward_backward reports them final (grads_ready()).
  // comm is the data-parallel group (over NCCL on a GPU); tp the model's tensor-parallel group (its ranks hold
  // different slices of the sharded tensors and the same replicated ones).
  DataParallel(GPT& model, Comm& comm, Comm& tp, bool zero1, double bucket_bytes);

  // The elements of the flat buffer whose optimizer state this rank keeps.
  int64_t shard_first() const { return first_; }
  int64_t shard_count() const { return count_; }

  // For the last micro-batch's GPT::forward_backward: starts a bucket's all-reduce whenever the
  // gradients made final since the previous one reach bucket_bytes. Empty when not bucketing.
  GPT::GradsReady grads_ready();
  // Sums the gradients over the ranks (finishing the buckets started); returns their global L2
  // norm, each element counted once.
  double reduce_gradients();
  int64_t buckets_last_step() const { return buckets_last_step_; }
  // The gradients the optimizer steps with: the model's (empty Tensor) or this rank's shard.
  Tensor optimizer_grads();
  // After the optimizer step: ZeRO-1 gives every rank every shard's parameters.
  void gather_parameters();
  // Bytes of ZeRO-1's reduced gradient shard (0 without ZeRO-1).
  int64_t staging_bytes() const { return shard_grads_.view().numel * (int64_t)sizeof(float); }

 private:
  void start_pending();  // starts the all-reduce of the bucket being filled, if it holds anything

  // Sum of squares of this rank's gradients [first, first + count) (`grads` holds them), counting
  // the replicated tensors on tensor-parallel rank 0 only.
  double tp_sum_squares(const Tensor& grads, int64_t first, int64_t count);

  GPT& model_;
  Comm& comm_;
  Comm& tp_;
  bool zero1_;
  double bucket_bytes_;
  int64_t total_, first_, count_;
  // The bucket being filled: [pending_first_, pending_end_), and what was started this step.
  int64_t pending_first_ = 0, pending_end_ = 0, started_ = 0, buckets_ = 0, buckets_last_step_ = 0;
  Buffer shard_grads_;  // ZeRO-1: this rank's reduced gradients (the model's buffers are padded to whole shards)
};

}  // namespace kiln
