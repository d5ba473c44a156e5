// kiln eval: loss and perplexity of a checkpoint over a prepared dataset or a text file.
#include <fmt/format.h>

#include "tools/cli/commands.h"
#include "train/evaluate.h"

namespace kiln::cli {

void add_eval_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("eval", "Loss and perplexity of a checkpoint over a dataset or a text file");
  auto checkpoint = std::make_shared<std::string>();
  auto o = std::make_shared<EvalOptions>();
  cmd->add_option("checkpoint", *checkpoint, "A checkpoint directory, or a run directory (its latest)")->required();
  cmd->add_option("--data", o->data,
                  "A prepared dataset directory, or a text file tokenized with the checkpoint's tokenizer")
      ->required();
  cmd->add_option("--split", o->split, "Which split of a dataset: val or train")->capture_default_str();
  cmd->add_option("--batch-size", o->batch_size, "Sequences per batch")->capture_default_str();
  cmd->add_option("--seq-len", o->seq_len, "Tokens per sequence (default: the model's context)");
  cmd->add_option("--max-batches", o->max_batches, "Evaluate only the first N batches (0: all)")->capture_default_str();
  cmd->callback([checkpoint, o] {
    const EvalResult r = evaluate_checkpoint(*checkpoint, *o);
    fmt::print("{}: loss {:.4f}, perplexity {:.2f} over {} tokens of {} in {:.2f} s ({:.0f} tokens/s, CPU)\n",
               *checkpoint, r.loss, r.perplexity, r.tokens, r.split, r.seconds, r.tokens / r.seconds);
  });
}

}  // namespace kiln::cli
