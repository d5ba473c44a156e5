#include "train/data_parallel.h"

#include "train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace kiln {

DataParallel::DataParallel(GPT& model, Comm& comm, bool zero1)
    : model_(model), comm_(comm), zero1_(zero1 && comm.size() > 1), total_(model.layout().total()) {
  if (comm.size() > 1 && model.ops().name() != "cpu")
    throw std::runtime_error("data parallelism over MPI needs the cpu backend (run.device = " + model.ops().name() + ")");
  // The flat buffer padded to a multiple of the ranks, so that every shard has the same size.
  shard_ = zero1_ ? (total_ + comm.size() - 1) / comm.size() : total_;
  first_ = zero1_ ? std::min(total_, comm.rank() * shard_) : 0;
  count_ = zero1_ ? std::min(total_ - first_, shard_) : total_;
  if (zero1_) {
    padded_grads_.assign(shard_ * comm.size(), 0.0f);
    shard_grads_.assign(shard_, 0.0f);
    shard_params_.assign(shard_, 0.0f);
    gathered_.assign(shard_ * comm.size(), 0.0f);
  }
}

double DataParallel::reduce_gradients() {
  const Tensor& grads = model_.grads();
  std::span<float> full(grads.f32(), (size_t)total_);
  if (!zero1_) {
    comm_.all_reduce_sum(full);
    return grad_norm(model_.ops(), grads);
  }
  std::copy(full.begin(), full.end(), padded_grads_.begin());  // the padding stays 0
  comm_.reduce_scatter_sum(padded_grads_, shard_grads_);
  double squares = model_.ops().sum_squares(optimizer_grads());
  comm_.all_reduce_sum(std::span<double>(&squares, 1));
  return std::sqrt(squares);
}

Tensor DataParallel::optimizer_grads() {
  return zero1_ ? Tensor{shard_grads_.data(), DType::f32, count_} : Tensor{};
}

void DataParallel::gather_parameters() {
  if (!zero1_) return;
  const float* params = model_.params().f32();
  std::copy(params + first_, params + first_ + count_, shard_params_.begin());
  comm_.all_gather(shard_params_, gathered_);
  std::copy(gathered_.begin(), gathered_.begin() + total_, model_.params().f32());
}

}  // namespace kiln
