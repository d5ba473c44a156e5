// kiln prepare: text / JSONL -> tokenized HDF5 shards, or --inspect an existing dataset.
#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "data/dataset.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "tools/cli/commands.h"
#include "train/preemption.h"

namespace kiln::cli {
namespace {

// A progress bar on stderr, redrawn at most ten times a second; plain lines when not a terminal.
class ProgressBar {
 public:
  void operator()(int64_t done, int64_t total) {
    const auto now = std::chrono::steady_clock::now();
    if (done < total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const double seconds = std::chrono::duration<double>(now - start_).count();
    const double frac = total > 0 ? (double)done / (double)total : 1.0;
    constexpr int kWidth = 30;
    const int filled = (int)(frac * kWidth);
    fmt::print(stderr, "{}[{}{}] {:5.1f}% {:.1f}/{:.1f} MB {:.1f} MB/s{}", tty_ ? "\r" : "", std::string(filled, '='),
               std::string(kWidth - filled, ' '), 100 * frac, done / 1e6, total / 1e6,
               seconds > 0 ? done / 1e6 / seconds : 0.0, tty_ ? "" : "\n");
    if (tty_ && done >= total) fmt::print(stderr, "\n");
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now(), last_{};
  bool tty_ = isatty(STDERR_FILENO);
};

void inspect(const std::string& dir, int samples, bool verify) {
  const auto start = std::chrono::steady_clock::now();
  const Dataset ds = Dataset::open(dir, verify ? DataCheck::checksums : DataCheck::sizes);
  if (verify) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double megabytes = (ds.train.bytes + ds.val.bytes) / 1e6;
    fmt::print("verified {} shards: checksums and document offsets, {:.1f} MB in {:.2f} s ({:.0f} MB/s)\n",
               ds.train.shards.size() + ds.val.shards.size(), megabytes, seconds, megabytes / seconds);
  }
  fmt::print("dataset {}\n  tokenizer {} ({}), vocab {}, end-of-text {}, loss mask: {}\n", dir, ds.tokenizer_name,
             ds.meta.tokenizer, ds.meta.vocab_size, ds.meta.eot_token, ds.has_loss_mask ? "yes" : "no");
  for (const Split* split : {&ds.train, &ds.val}) {
    fmt::print("  {}: {} documents, {} tokens, {} shards\n", split->name, split->num_documents, split->num_tokens,
               split->shards.size());
    for (const auto& shard : split->shards)
      fmt::print("    {}: {} documents, {} tokens\n", shard->path(), shard->num_documents(), shard->num_tokens());
  }
  const std::unique_ptr<Tokenizer> tok = tokenizer_matching(ds.tokenizer_name, ds.meta.tokenizer, dir, dir);
  const ShardReader& first = *ds.train.shards.front();
  const std::vector<int64_t> offsets = first.doc_offsets();
  for (int i = 0; i < samples && i < (int)offsets.size(); i++) {
    const int64_t begin = offsets[i];
    const int64_t end = std::min({i + 1 < (int)offsets.size() ? offsets[i + 1] : first.num_tokens(), begin + 64});
    std::vector<int32_t> tokens(end - begin);
    first.read_tokens(begin, tokens);
    fmt::print("  sample {} ({} tokens shown): {:?}\n", i, tokens.size(), tok->decode(tokens));
  }
}

}  // namespace

void add_prepare_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("prepare", "Tokenize text or JSONL into HDF5 token shards (or --inspect one)");
  auto o = std::make_shared<PrepareOptions>();
  auto inspect_dir = std::make_shared<std::string>();
  auto samples = std::make_shared<int>(3);
  auto verify = std::make_shared<bool>(false);
  auto threads = std::make_shared<int>(0);
  cmd->add_option("inputs", o->inputs, "Input files: text (one document each, or --separator) or .jsonl");
  cmd->add_option("-o,--output", o->output, "Output dataset directory");
  cmd->add_option("--format", o->format, "text, jsonl or auto (by .jsonl extension)")->capture_default_str();
  cmd->add_option("--separator", o->separator, "Split text files into documents at this string (\\n escapes allowed)");
  cmd->add_option("--tokenizer", o->tokenizer, "bytes or gpt2")->capture_default_str();
  cmd->add_option(
      "--tokenizer-dir", o->tokenizer_dir,
      "gpt2: a directory with encoder.json and vocab.bpe (copied into the output); default: the vocabulary kiln ships");
  cmd->add_option("--val-fraction", o->val_fraction, "Fraction of documents held out for validation")
      ->capture_default_str();
  cmd->add_option("--val-docs", o->val_documents, "Exactly this many validation documents (instead of a fraction)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--shard-tokens", o->shard_tokens, "Tokens per shard (split at document boundaries)")
      ->capture_default_str();
  cmd->add_option("--gzip", o->gzip_level, "gzip level 1-9 for the shards (0: uncompressed)")->capture_default_str();
  cmd->add_option("--threads", *threads, "Tokenizer threads (0: all cores)")->check(CLI::Range(0, 1024));
  cmd->add_flag("--force", o->force, "Replace an existing output directory");
  cmd->add_option("--inspect", *inspect_dir, "Print a summary and decoded samples of a prepared dataset");
  cmd->add_option("--samples", *samples, "Samples shown by --inspect")->capture_default_str();
  cmd->add_flag("--verify", *verify, "With --inspect: read every shard and check its checksum and document offsets");
  cmd->footer(
      "JSONL lines hold {\"text\": ...} for pretraining, or {\"prompt\": ..., \"response\": ...} for fine-tuning "
      "(loss on response tokens only).");
  cmd->callback([o, inspect_dir, samples, threads, verify] {
    if (!inspect_dir->empty()) return inspect(*inspect_dir, *samples, *verify);
    if (*verify) throw CLI::ValidationError("--verify", "checks a prepared dataset: use it with --inspect DIR");
    if (*threads > 0) omp_set_num_threads(*threads);
    PrepareOptions opts = *o;
    for (size_t at; (at = opts.separator.find("\\n")) != std::string::npos;) opts.separator.replace(at, 2, "\n");
    ProgressBar bar;
    // SIGTERM or Ctrl-C ends the run between blocks, through prepare_dataset's clean-up: no
    // OUTPUT.tmp-PID is left behind, and an existing OUTPUT stays as it was.
    const PreemptionSignals signals;
    const PrepareSummary s = prepare_dataset(opts, [&](int64_t done, int64_t total) {
      if (signals.received() != 0)
        throw std::runtime_error("interrupted by a signal: nothing written to " + opts.output);
      bar(done, total);
    });
    const int64_t tokens = s.train_tokens + s.val_tokens;
    fmt::print(
        "prepared {}: {} documents ({} validation, {} empty skipped), {} tokens ({} train / {} val) in {} + {} "
        "shards\n",
        opts.output, s.documents, s.val_documents, s.empty_documents, tokens, s.train_tokens, s.val_tokens,
        s.train_shards, s.val_shards);
    fmt::print("{:.1f} MB of text -> {:.1f} MB of shards in {:.2f} s: {:.2f} M tokens/s, {:.1f} MB/s\n",
               s.input_bytes / 1e6, s.output_bytes / 1e6, s.seconds, tokens / s.seconds / 1e6,
               s.input_bytes / 1e6 / s.seconds);
  });
}

}  // namespace kiln::cli
