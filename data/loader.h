// Batches of sequences from a dataset split (docs/design.md §6).
//
// A split is cut into sequences of T+1 tokens: sequence i of a shard is tokens [i*T, i*T + T + 1),
// so consecutive sequences share one token and every token but the first is a target once.
// Training order: epoch e visits every sequence once, in a pseudo-random permutation that is a
// pure function of (seed, e, index); global batch k of an epoch is permuted indices
// [k*G, (k+1)*G) with G = batch_size * dp_size, and data-parallel rank r takes the slice
// [k*G + r*batch_size, k*G + (r+1)*batch_size). An epoch ends at its last whole global batch.
// Validation order: every sequence in index order, the last global batch possibly partial.
// A background thread prefetches batches.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "data/dataset.h"

namespace kiln {

struct Batch {
  int B = 0, T = 0;                // B may be below batch_size in the last validation batch
  std::vector<int32_t> inputs;     // [B, T]
  std::vector<int32_t> targets;    // [B, T]: inputs shifted by one
  std::vector<uint8_t> loss_mask;  // [B, T] mask of each target token, empty if the dataset has none
};

// Where the training stream stands: a resumed loader yields exactly the batches that follow.
// `position` counts global sequences consumed in `epoch`, so it stays valid for another DP size
// with the same global batch.
struct LoaderState {
  uint64_t seed = 0;
  int64_t epoch = 0;
  int64_t position = 0;
  bool operator==(const LoaderState&) const = default;
};

struct LoaderOptions {
  int batch_size = 1;  // per rank
  int seq_len = 1;
  uint64_t seed = 0;
  int dp_rank = 0, dp_size = 1;
  bool shuffle = true;  // false: one pass in index order (validation)
  int prefetch = 4;     // batches queued ahead
};

// Bijection on [0, n) keyed by (seed, epoch): a Feistel network on the next power of two,
// cycle-walking values that land outside [0, n). O(1) memory however large the dataset.
int64_t permute(int64_t index, int64_t n, uint64_t seed, int64_t epoch);

class DataLoader {
 public:
  DataLoader(const Split& split, const LoaderOptions& options);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // The next batch, or nullptr at the end of a validation pass. Valid until the next call.
  const Batch* next();
  LoaderState state() const { return consumed_; }
  // Continue from `state` (a training loader), or rewind to the start (validation: any state).
  void restore(const LoaderState& state);

  int64_t num_sequences() const { return (int64_t)starts_.size(); }
  int64_t batches_per_epoch() const;

 private:
  struct Slot {
    Batch batch;
    LoaderState after;
    bool end = false;
  };
  void produce(LoaderState from);
  void stop();
  void fill(Batch& batch, int64_t first_global, int rows, const LoaderState& at) const;
  void read_sequence(int64_t sequence, int32_t* tokens, uint8_t* mask) const;

  const Split& split_;
  LoaderOptions opt_;
  std::vector<std::pair<int, int64_t>> starts_;  // sequence -> (shard, first token)
  LoaderState consumed_;
  Batch current_;

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Slot> queue_;
  bool stopping_ = false;
  std::exception_ptr error_;
  std::thread worker_;
};

}  // namespace kiln
