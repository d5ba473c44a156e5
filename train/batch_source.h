// Where training batches come from: a prepared dataset (with its validation split), or uniform
// random tokens over the model's vocabulary (data.path = "random", for benchmarks).
#pragma once

#include <memory>
#include <optional>
#include <random>
#include <string>

#include "data/dataset.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "model/config.h"
#include "train/checkpoint.h"
#include "train/config.h"

namespace kiln {

// With several data-parallel ranks, each gets rows [rank B, (rank + 1) B) of every global batch.
class BatchSource {
 public:
  // Opens the dataset (checking its checksums with data.verify). The model's vocabulary is the
  // dataset's unless `vocab_fixed` (set in the config, or a fine-tuned checkpoint's), when the
  // two must agree.
  BatchSource(const TrainConfig& cfg, GPTConfig& model_cfg, bool vocab_fixed, int dp_rank, int dp_size);

  // The next training batch, loss mask applied. Reuses its buffers: no allocation per step.
  const Batch& next();
  DataLoader* validation() const { return val_.get(); }
  // The data's part of a checkpoint: where the stream is, and what decodes its tokens; and back.
  void save_position(TrainingState& state) const;
  void restore_position(const TrainingState& state);
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }  // none for random tokens
  // One line for the run's banner: the data, its size, and how long verifying it took.
  std::string describe(const std::string& path) const;

 private:
  std::optional<Dataset> data_;
  std::string verified_;  // how long verifying the checksums took, with --verify-data
  std::unique_ptr<DataLoader> train_, val_;
  std::unique_ptr<Tokenizer> tokenizer_;
  TokenizerRecord tokenizer_record_;  // none for random tokens
  std::mt19937_64 rng_;
  int dp_rank_, dp_size_;
  int vocab_ = 0;
  Batch batch_;
};

}  // namespace kiln
