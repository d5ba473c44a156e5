#include "train/evaluate.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <stdexcept>

#include "data/dataset.h"
#include "data/prepare.h"
#include "model/cpu_ops.h"
#include "train/checkpoint.h"

namespace kiln {
namespace fs = std::filesystem;

void apply_loss_mask(Batch& batch) {
  for (size_t i = 0; i < batch.loss_mask.size(); i++)
    if (!batch.loss_mask[i]) batch.targets[i] = -1;
}

double evaluate(GPT& model, DataLoader& split, int max_batches) {
  split.restore({});
  double sum = 0;
  int64_t rows = 0;
  int batches = 0;
  for (const Batch* b; (max_batches == 0 || batches < max_batches) && (b = split.next()); batches++) {
    Batch masked = *b;
    apply_loss_mask(masked);
    sum += model.forward(masked.inputs, masked.targets, masked.B, masked.T) * masked.B;
    rows += masked.B;
  }
  return rows ? sum / (double)rows : 0.0;
}

EvalResult evaluate_checkpoint(const std::string& checkpoint, const EvalOptions& o) {
  const std::string dir = resolve_checkpoint(checkpoint);
  CheckpointWeights ckpt = read_checkpoint_weights(dir);
  const int T = o.seq_len > 0 ? o.seq_len : ckpt.config.max_seq_len;
  if (T > ckpt.config.max_seq_len)
    throw std::runtime_error("--seq-len " + std::to_string(T) + ": longer than the model's context of " +
                             std::to_string(ckpt.config.max_seq_len));
  if (o.batch_size < 1) throw std::runtime_error("--batch-size: expected >= 1");
  if (o.split != "val" && o.split != "train")
    throw std::runtime_error("--split '" + o.split + "': expected val or train");

  // A text file is tokenized here, with the checkpoint's own tokenizer, into a dataset that lives
  // as long as the evaluation.
  std::string dataset_dir = o.data, scratch;
  std::string split_name = o.split;
  if (fs::is_regular_file(o.data)) {
    if (ckpt.tokenizer.name.empty())
      throw std::runtime_error(dir +
                               ": no tokenizer recorded (trained on random tokens, or imported), so the text in " +
                               o.data + " cannot be tokenized for it; evaluate on a prepared dataset instead");
    scratch = (fs::temp_directory_path() / ("kiln-eval-" + std::to_string(::getpid()))).string();
    PrepareOptions prepare;
    prepare.inputs = {o.data};
    prepare.tokenizer = ckpt.tokenizer.name;
    prepare.tokenizer_dir = ckpt.tokenizer.files_dir;  // "": the bundled files
    prepare.output = scratch;
    prepare.force = true;
    prepare_dataset(prepare);
    dataset_dir = scratch;
    split_name = "train";  // the whole file
  } else if (!fs::is_directory(o.data)) {
    throw std::runtime_error("--data " + o.data + ": neither a prepared dataset directory nor a text file");
  }
  struct RemoveScratch {
    std::string path;
    ~RemoveScratch() {
      std::error_code ignored;
      if (!path.empty()) fs::remove_all(path, ignored);
    }
  } remove_scratch{scratch};

  const Dataset data = Dataset::open(dataset_dir);
  if (!ckpt.tokenizer.name.empty() && data.meta.tokenizer != ckpt.tokenizer.fingerprint)
    throw std::runtime_error(dataset_dir + ": tokenized by " + data.meta.tokenizer + ", but the model was trained on " +
                             ckpt.tokenizer.fingerprint);
  if (data.meta.vocab_size > ckpt.config.vocab_size)
    throw std::runtime_error(dataset_dir + ": its vocabulary (" + std::to_string(data.meta.vocab_size) +
                             ") is larger than the model's (" + std::to_string(ckpt.config.vocab_size) + ")");
  const Split& split = split_name == "val" ? data.val : data.train;
  if (split.num_tokens == 0)
    throw std::runtime_error(
        dataset_dir + ": its " + split_name + " split is empty" +
        (split_name == "val" ? " (prepare with --val-fraction or --val-docs, or pass --split train)" : ""));
  DataLoader loader(split, LoaderOptions{o.batch_size, T, 0, 0, 1, false, 2});
  if (loader.num_sequences() == 0)
    throw std::runtime_error(dataset_dir + ": its " + split_name + " split (" + std::to_string(split.num_tokens) +
                             " tokens) is shorter than one sequence of " + std::to_string(T + 1) + " (try --seq-len)");

  const std::unique_ptr<Ops> ops = make_cpu_ops();
  GPT model(ckpt.config, *ops, o.batch_size, T);
  model.set_weights(ckpt.weights);
  const auto start = std::chrono::steady_clock::now();
  EvalResult r;
  r.loss = evaluate(model, loader, o.max_batches);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.perplexity = std::exp(r.loss);
  const int64_t sequences = o.max_batches > 0
                                ? std::min<int64_t>(loader.num_sequences(), (int64_t)o.max_batches * o.batch_size)
                                : loader.num_sequences();
  r.tokens = sequences * T;
  r.split = dataset_dir == scratch ? o.data : dataset_dir + " (" + split_name + ")";
  return r;
}

}  // namespace kiln
