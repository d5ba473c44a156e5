#include "train/batch_source.h"

#include <fmt/format.h>

#include <chrono>
#include <sstream>
#include <stdexcept>

#include "data/gpt2_tokenizer.h"
#include "train/evaluate.h"

namespace kiln {

BatchSource::BatchSource(const TrainConfig& cfg, GPTConfig& model_cfg, bool vocab_fixed, int dp_rank, int dp_size)
    : rng_(cfg.train.seed), dp_rank_(dp_rank), dp_size_(dp_size) {
  batch_.B = cfg.train.batch_size;
  batch_.T = cfg.train.seq_len;
  if (cfg.data.path == "random") {
    vocab_ = model_cfg.vocab_size;
    return;
  }
  const auto opened = std::chrono::steady_clock::now();
  data_.emplace(Dataset::open(cfg.data.path, cfg.data.verify ? DataCheck::checksums : DataCheck::sizes));
  if (cfg.data.verify)
    verified_ =
        fmt::format(", checksums verified: {:.1f} MB in {:.2f} s", (data_->train.bytes + data_->val.bytes) / 1e6,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - opened).count());
  const bool own_files = !Gpt2Tokenizer::files_in(data_->dir).first.empty();
  tokenizer_record_ = {data_->tokenizer_name, data_->meta.tokenizer, own_files ? data_->dir : ""};
  // Only samples need the tokenizer: training reads token ids.
  if (cfg.train.sample_every > 0) {
    tokenizer_ = tokenizer_matching(data_->tokenizer_name, data_->meta.tokenizer, data_->dir, data_->dir);
    // Checked now, not at the first sample, where a failure would end the run unsaved.
    const size_t prompt = tokenizer_->encode(cfg.train.sample_prompt).size();
    if (prompt >= (size_t)model_cfg.max_seq_len)
      throw std::runtime_error(
          fmt::format("train.sample_prompt: {} tokens, but the model's context holds {} "
                      "(model.max_seq_len) and the sample needs room to grow",
                      prompt, model_cfg.max_seq_len));
  }
  if (!vocab_fixed) model_cfg.vocab_size = (int)data_->meta.vocab_size;
  if (model_cfg.vocab_size != data_->meta.vocab_size)
    throw std::runtime_error((cfg.checkpoint.init_from.empty() ? cfg.source : "init-from " + cfg.checkpoint.init_from) +
                             ": model.vocab_size = " + std::to_string(model_cfg.vocab_size) +
                             " differs from the vocabulary of " + cfg.data.path + " (" +
                             std::to_string(data_->meta.vocab_size) + ", tokenizer " + data_->meta.tokenizer + ")");
  train_ = std::make_unique<DataLoader>(data_->train,
                                        LoaderOptions{batch_.B, batch_.T, cfg.train.seed, dp_rank, dp_size, true, 4});
  // Every rank evaluates the whole validation split: the same time on all, so none waits for
  // rank 0 in a collective (and trips the watchdog), and the same val_loss everywhere.
  if ((cfg.train.eval_every > 0 || cfg.train.eval_only) && data_->val.num_tokens > 0)
    val_ = std::make_unique<DataLoader>(data_->val, LoaderOptions{batch_.B, batch_.T, cfg.train.seed, 0, 1, false, 4});
}

const Batch& BatchSource::next() {
  if (train_) {
    const Batch& b = *train_->next();
    batch_.inputs.assign(b.inputs.begin(), b.inputs.end());
    batch_.targets.assign(b.targets.begin(), b.targets.end());
    batch_.loss_mask.assign(b.loss_mask.begin(), b.loss_mask.end());
    apply_loss_mask(batch_);
    return batch_;
  }
  // Every rank draws the whole global batch, inputs then targets, and keeps its rows.
  std::uniform_int_distribution<int32_t> token(0, vocab_ - 1);
  const size_t rows = (size_t)batch_.B * batch_.T, first = (size_t)dp_rank_ * rows;
  batch_.inputs.resize(rows);
  batch_.targets.resize(rows);
  for (std::vector<int32_t>* part : {&batch_.inputs, &batch_.targets})
    for (size_t i = 0; i < rows * dp_size_; i++) {
      const int32_t t = token(rng_);
      if (i >= first && i < first + rows) (*part)[i - first] = t;
    }
  return batch_;
}

void BatchSource::save_position(TrainingState& state) const {
  if (train_) state.loader = train_->state();
  std::ostringstream rng;
  rng << rng_;
  state.random_tokens = rng.str();
  state.tokenizer = tokenizer_record_;
}

void BatchSource::restore_position(const TrainingState& state) {
  if (train_ && state.loader) train_->restore(*state.loader);
  if (!state.random_tokens.empty()) std::istringstream(state.random_tokens) >> rng_;
}

std::string BatchSource::describe(const std::string& path) const {
  if (!data_) return fmt::format("random tokens over {} ids (no validation)", vocab_);
  return fmt::format("{} ({}, {} train / {} val tokens, {} batches/epoch{})", path, data_->meta.tokenizer,
                     data_->train.num_tokens, data_->val.num_tokens, train_->batches_per_epoch(), verified_);
}

}  // namespace kiln
