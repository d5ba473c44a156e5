#include "train/data_parallel.h"

#include "train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <tuple>

namespace kiln {
namespace {

std::span<float> floats(const Tensor& t) { return {t.f32(), (size_t)t.numel}; }
std::span<std::byte> bytes(const Tensor& t) {
  return {static_cast<std::byte*>(t.data), (size_t)t.numel * dtype_size(t.dtype)};
}

}  // namespace

DataParallel::DataParallel(GPT& model, Comm& comm, Comm& tp, bool zero1, double bucket_bytes)
    : model_(model),
      comm_(comm),
      tp_(tp),
      zero1_(zero1 && comm.size() > 1),
      bucket_bytes_(zero1_ || comm.size() == 1 ? 0 : bucket_bytes),
      total_(model.layout().total()) {
  const FlatShard& shard = model.shard();
  if (zero1_ && (model.padded_grads().numel != shard.size * comm.size() || shard.first != comm.rank() * shard.size))
    throw std::logic_error("DataParallel: ZeRO-1 over " + std::to_string(comm.size()) +
                           " ranks needs a model sharded the same way (GPT's ZeroSharding)");
  first_ = zero1_ ? shard.first : 0;
  count_ = zero1_ ? shard.count : total_;
  // This rank's reduced gradient shard, in the backend's memory where the collectives write.
  if (zero1_) shard_grads_ = model.ops().allocate(shard.size, DType::f32);
}

GPT::GradsReady DataParallel::grads_ready() {
  if (bucket_bytes_ <= 0) return {};
  pending_first_ = pending_end_ = total_;
  started_ = buckets_ = 0;
  return [this](int64_t offset, int64_t count) {
    if (offset + count != pending_first_)
      throw std::logic_error("DataParallel: gradients [" + std::to_string(offset) + ", " +
                             std::to_string(offset + count) + ") are not adjacent to the bucket being filled at " +
                             std::to_string(pending_first_));
    pending_first_ = offset;
    if ((double)(pending_end_ - pending_first_) * sizeof(float) >= bucket_bytes_) start_pending();
  };
}

void DataParallel::start_pending() {
  if (pending_end_ == pending_first_) return;
  make_ready_for(model_.ops(), comm_);  // after the backward has written the bucket, without a host wait on NCCL
  comm_.all_reduce_sum_start(
      std::span<float>(model_.grads().f32() + pending_first_, (size_t)(pending_end_ - pending_first_)));
  started_ += pending_end_ - pending_first_;
  buckets_++;
  pending_end_ = pending_first_;
}

double DataParallel::tp_sum_squares(const Tensor& grads, int64_t first, int64_t count) {
  double squares = 0;
  model_.layout().for_each_overlap(first, count, [&](const ParamSpec& s, int64_t begin, int64_t end) {
    if (tp_.rank() == 0 || !s.replicated) squares += model_.ops().sum_squares(grads.slice(begin - first, end - begin));
  });
  return squares;
}

double DataParallel::reduce_gradients() {
  const Tensor& grads = model_.grads();
  std::span<float> full(grads.f32(), (size_t)total_);
  make_ready_for(model_.ops(), comm_);
  if (bucket_bytes_ > 0) {
    start_pending();
    comm_.wait_all();
    if (started_ != total_)
      throw std::logic_error("DataParallel: the backward pass reported " + std::to_string(started_) + " of " +
                             std::to_string(total_) + " gradients final");
    buckets_last_step_ = buckets_;
  } else if (!zero1_) {
    comm_.all_reduce_sum(full);
  } else {  // the padding past total_ is never written: it stays 0
    comm_.reduce_scatter_sum(floats(model_.padded_grads()), floats(shard_grads_));
  }
  // The global norm counts every parameter once: ZeRO shards over the data-parallel ranks, and
  // replicated tensors on one tensor-parallel rank.
  if (!zero1_ && tp_.size() == 1) return grad_norm(model_.ops(), grads);
  double squares = zero1_ ? tp_sum_squares(optimizer_grads(), first_, count_) : tp_sum_squares(grads, 0, total_);
  if (zero1_) comm_.all_reduce_sum(std::span<double>(&squares, 1));
  tp_.all_reduce_sum(std::span<double>(&squares, 1));
  return std::sqrt(squares);
}

Tensor DataParallel::optimizer_grads() { return zero1_ ? shard_grads_.view().slice(0, count_) : Tensor{}; }

void DataParallel::gather_parameters() {
  if (!zero1_) return;
  make_ready_for(model_.ops(), comm_);  // the optimizer has written this rank's shard
  const std::span<std::byte> all = bytes(model_.padded_params());
  comm_.all_gather_bytes(all.subspan(comm_.rank() * all.size() / comm_.size(), all.size() / comm_.size()), all);
}

}  // namespace kiln
