// A plain text file as one token stream, split into train and validation parts, from which
// random windows of T+1 tokens are drawn. Stand-in until the HDF5 shard loader lands.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace kiln {

struct Batch {
  int B = 0, T = 0;
  std::vector<int32_t> inputs;   // [B, T]
  std::vector<int32_t> targets;  // [B, T], inputs shifted by one
};

class TextCorpus {
 public:
  // Tokenizes `path` with the byte tokenizer; the last `val_fraction` of it is the validation part.
  // Throws naming the file when it is missing, unreadable, or too short for sequences of `seq_len`.
  TextCorpus(const std::string& path, double val_fraction, int seq_len);

  size_t train_tokens() const { return val_begin_; }
  size_t val_tokens() const { return tokens_.size() - val_begin_; }
  // Draws B windows uniformly from the train (or validation) part.
  void sample(Batch& batch, bool validation, std::mt19937_64& rng) const;

 private:
  std::vector<int32_t> tokens_;
  size_t val_begin_ = 0;
  int seq_len_ = 0;
};

}  // namespace kiln
