#include "data/loader.h"

#include <algorithm>
#include <bit>
#include <stdexcept>

namespace kiln {
namespace {

uint64_t mix64(uint64_t x) {  // splitmix64's finaliser: a fast, well-distributed 64-bit hash
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

int64_t permute(int64_t index, int64_t n, uint64_t seed, int64_t epoch) {
  if (n <= 1) return 0;
  const int bits = std::max(2, (int)std::bit_width((uint64_t)(n - 1)));
  const int left_bits = bits / 2, right_bits = bits - left_bits;
  const uint64_t left_mask = (1ULL << left_bits) - 1, right_mask = (1ULL << right_bits) - 1;
  const uint64_t key = mix64(seed ^ mix64((uint64_t)epoch + 0x9e3779b97f4a7c15ULL));
  uint64_t x = (uint64_t)index;
  do {  // cycle-walk: apply the bijection on [0, 2^bits) until the value falls inside [0, n)
    uint64_t left = x >> right_bits, right = x & right_mask;
    for (int round = 0; round < 4; round++) {
      // Unbalanced Feistel: the halves swap widths each round, so alternate the masks.
      const uint64_t f = mix64(right ^ key ^ (uint64_t)round * 0x632be59bd9b4e019ULL);
      const uint64_t new_right = (left ^ f) & (round % 2 == 0 ? left_mask : right_mask);
      left = right;
      right = new_right;
    }
    // Each round swaps the halves' widths; after an even number they are as at the start.
    x = (left << right_bits) | right;
  } while (x >= (uint64_t)n);
  return (int64_t)x;
}

DataLoader::DataLoader(const Split& split, const LoaderOptions& options) : split_(split), opt_(options) {
  if (opt_.batch_size < 1 || opt_.seq_len < 1 || opt_.dp_size < 1 || opt_.dp_rank < 0 || opt_.dp_rank >= opt_.dp_size)
    throw std::invalid_argument("DataLoader: bad batch size, sequence length or data-parallel rank");
  const int64_t T = opt_.seq_len;
  int64_t largest = 0;
  for (int s = 0; s < (int)split.shards.size(); s++) {
    const int64_t n = split.shards[s]->num_tokens();
    largest = std::max(largest, n);
    for (int64_t start = 0; start + T + 1 <= n; start += T) starts_.emplace_back(s, start);
  }
  const std::string where = "dataset split '" + split.name + "'";
  if (largest == 0) throw std::runtime_error(where + " is empty");
  if (starts_.empty())
    throw std::runtime_error(where + ": sequences of " + std::to_string(T) + "+1 tokens are longer than any shard " +
                             "provides (largest shard: " + std::to_string(largest) + " tokens)");
  if (opt_.shuffle && batches_per_epoch() == 0)
    throw std::runtime_error(where + " has " + std::to_string(starts_.size()) + " sequences of " + std::to_string(T) +
                             "+1 tokens: fewer than one global batch of " +
                             std::to_string((int64_t)opt_.batch_size * opt_.dp_size));
  consumed_.seed = opt_.seed;
  worker_ = std::thread(&DataLoader::produce, this, consumed_);
}

DataLoader::~DataLoader() { stop(); }

int64_t DataLoader::batches_per_epoch() const {
  const int64_t global = (int64_t)opt_.batch_size * opt_.dp_size;
  return opt_.shuffle ? num_sequences() / global : (num_sequences() + global - 1) / global;
}

void DataLoader::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void DataLoader::restore(const LoaderState& state) {
  if (opt_.shuffle && (state.seed != opt_.seed || state.epoch < 0 || state.position < 0 ||
                       state.position % ((int64_t)opt_.batch_size * opt_.dp_size) != 0))
    throw std::runtime_error("loader state (seed " + std::to_string(state.seed) + ", position " +
                             std::to_string(state.position) + ") does not fit this loader (seed " +
                             std::to_string(opt_.seed) + ", global batch " +
                             std::to_string((int64_t)opt_.batch_size * opt_.dp_size) + ")");
  stop();
  queue_.clear();
  stopping_ = false;
  error_ = nullptr;
  consumed_ = opt_.shuffle ? state : LoaderState{opt_.seed, 0, 0};
  worker_ = std::thread(&DataLoader::produce, this, consumed_);
}

const Batch* DataLoader::next() {
  std::unique_lock lock(mutex_);
  cv_.wait(lock, [&] { return !queue_.empty() || error_; });
  if (error_) std::rethrow_exception(error_);
  Slot slot = std::move(queue_.front());
  queue_.pop_front();
  lock.unlock();
  cv_.notify_all();
  if (slot.end) {
    std::lock_guard relock(mutex_);
    queue_.push_front(std::move(slot));  // stay at the end until restore()
    return nullptr;
  }
  current_ = std::move(slot.batch);
  consumed_ = slot.after;
  return &current_;
}

// Producer: walks the stream from `from`, one global batch at a time, keeping `prefetch` ready.
void DataLoader::produce(LoaderState at) {
  try {
    const int64_t global = (int64_t)opt_.batch_size * opt_.dp_size;
    while (true) {
      Slot slot;
      if (opt_.shuffle && at.position / global >= batches_per_epoch()) at = {at.seed, at.epoch + 1, 0};
      if (!opt_.shuffle && at.position >= num_sequences()) {
        slot.end = true;
      } else {
        const int64_t first = at.position + (int64_t)opt_.dp_rank * opt_.batch_size;
        const int rows = (int)std::clamp<int64_t>(num_sequences() - first, 0, opt_.batch_size);
        fill(slot.batch, first, rows, at);
        at.position += global;
        slot.after = at;
      }
      std::unique_lock lock(mutex_);
      cv_.wait(lock, [&] { return stopping_ || (int)queue_.size() < opt_.prefetch; });
      if (stopping_) return;
      const bool end = slot.end;
      queue_.push_back(std::move(slot));
      lock.unlock();
      cv_.notify_all();
      if (end) return;
    }
  } catch (...) {
    std::lock_guard lock(mutex_);
    error_ = std::current_exception();
    cv_.notify_all();
  }
}

void DataLoader::fill(Batch& batch, int64_t first_global, int rows, const LoaderState& at) const {
  const int T = opt_.seq_len;
  batch.B = rows;
  batch.T = T;
  batch.inputs.resize((size_t)rows * T);
  batch.targets.resize((size_t)rows * T);
  batch.loss_mask.resize(split_.shards.front()->has_loss_mask() ? (size_t)rows * T : 0);
  std::vector<int32_t> tokens(T + 1);
  std::vector<uint8_t> mask(batch.loss_mask.empty() ? 0 : T + 1);
  for (int b = 0; b < rows; b++) {
    const int64_t index = first_global + b;
    const int64_t sequence = opt_.shuffle ? permute(index, num_sequences(), at.seed, at.epoch) : index;
    read_sequence(sequence, tokens.data(), mask.empty() ? nullptr : mask.data());
    std::copy(tokens.begin(), tokens.end() - 1, batch.inputs.begin() + (size_t)b * T);
    std::copy(tokens.begin() + 1, tokens.end(), batch.targets.begin() + (size_t)b * T);
    if (!mask.empty()) std::copy(mask.begin() + 1, mask.end(), batch.loss_mask.begin() + (size_t)b * T);
  }
}

void DataLoader::read_sequence(int64_t sequence, int32_t* tokens, uint8_t* mask) const {
  const auto [shard, start] = starts_[sequence];
  const ShardReader& reader = *split_.shards[shard];
  reader.read_tokens(start, std::span<int32_t>(tokens, opt_.seq_len + 1));
  if (mask) reader.read_loss_mask(start, std::span<uint8_t>(mask, opt_.seq_len + 1));
}

}  // namespace kiln
