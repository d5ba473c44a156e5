// Loss and perplexity of a model over a split, in the split's fixed order: the evaluation that
// training runs every train.eval_every steps, and `kiln eval` runs on a checkpoint alone.
#pragma once

#include <cstdint>
#include <string>

#include "data/loader.h"
#include "model/gpt.h"

namespace kiln {

// Targets whose loss-mask entry is 0 (prompt tokens in fine-tuning data) are ignored by the loss.
void apply_loss_mask(Batch& batch);

// Mean loss over `split`'s sequences in index order (the first `max_batches` batches of it, if
// that is not 0), weighting each batch by its rows.
double evaluate(GPT& model, DataLoader& split, int max_batches);

struct EvalOptions {
  std::string data;           // a prepared dataset directory, or a text file (tokenized here)
  std::string split = "val";  // val or train (a text file has only its whole text)
  int batch_size = 8;
  int seq_len = 0;      // 0: the model's context
  int max_batches = 0;  // 0: the whole split
};
struct EvalResult {
  double loss = 0, perplexity = 0;
  int64_t tokens = 0;  // predicted tokens
  double seconds = 0;
  std::string split;  // what was evaluated, for the report
};

// Evaluates a checkpoint on the CPU with nothing but the checkpoint: its model, and the tokenizer
// it records (for a text file; a dataset must have been made by that tokenizer). Throws naming
// the file or option at fault.
EvalResult evaluate_checkpoint(const std::string& checkpoint, const EvalOptions& options);

}  // namespace kiln
