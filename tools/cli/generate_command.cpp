// kiln generate: text from a checkpoint (or an imported Hugging Face GPT-2) with a KV cache.
#include <fmt/format.h>

#include <chrono>
#include <iostream>

#include "data/tokenizer.h"
#include "model/decoder.h"
#include "tools/cli/commands.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/sample.h"

namespace kiln::cli {
namespace {

struct GenerateOptions {
  std::string checkpoint, prompt = "\n", tokenizer, tokenizer_dir;
  int max_tokens = 128;
  uint64_t seed = 1337;
  bool stop_at_eot = true;
  SamplingOptions sampling;
};

// --tokenizer, else the one the checkpoint records (the training data's).
std::unique_ptr<Tokenizer> tokenizer_for(const GenerateOptions& o, const std::string& dir,
                                         const TokenizerRecord& recorded) {
  if (!o.tokenizer.empty()) return make_tokenizer(o.tokenizer, o.tokenizer_dir);
  if (recorded.name.empty())
    throw std::runtime_error(o.checkpoint +
                             ": no tokenizer recorded (trained on random tokens, or imported): pass "
                             "--tokenizer bytes or --tokenizer gpt2");
  return tokenizer_matching(recorded.name, recorded.fingerprint, recorded.files_dir, dir + "/manifest.json");
}

void run(const GenerateOptions& o) {
  o.sampling.validate();
  const std::string dir = resolve_checkpoint(o.checkpoint);
  CheckpointWeights ckpt = read_checkpoint_weights(dir);
  const std::unique_ptr<Tokenizer> tokenizer = tokenizer_for(o, dir, ckpt.tokenizer);
  if (tokenizer->vocab_size() > ckpt.config.vocab_size)
    throw std::runtime_error(fmt::format("{}: the model's vocabulary has {} tokens, the {} tokenizer {}", dir,
                                         ckpt.config.vocab_size, tokenizer->name(), tokenizer->vocab_size()));
  const std::vector<int32_t> prompt = tokenizer->encode(o.prompt);
  if (prompt.empty()) throw std::runtime_error("--prompt: empty (it needs at least one token)");
  if ((int64_t)prompt.size() + o.max_tokens > ckpt.config.max_seq_len)
    throw std::runtime_error(
        fmt::format("--max-tokens {}: with the prompt's {} tokens that passes the model's "
                    "context of {}",
                    o.max_tokens, prompt.size(), ckpt.config.max_seq_len));
  Decoder decoder(ckpt.config, std::move(ckpt.weights));
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> tokens =
      generate(decoder, prompt, o.max_tokens, o.seed, o.sampling, o.stop_at_eot ? tokenizer->eot_token() : -1);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << o.prompt << tokenizer->decode(tokens) << std::endl;
  std::cerr << fmt::format(
      "kiln generate: {} prompt + {} new tokens in {:.2f} s: {:.1f} tokens/s (CPU, fp32, KV cache)\n", prompt.size(),
      tokens.size(), seconds, tokens.size() / seconds);
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  CLI::App* cmd = app.add_subcommand("generate", "Sample text from a checkpoint with a KV cache");
  cmd->add_option("checkpoint", o->checkpoint, "checkpoint directory, or a run directory (its latest)")->required();
  cmd->add_option("-p,--prompt", o->prompt, "text to continue")->capture_default_str();
  cmd->add_option("-n,--max-tokens", o->max_tokens, "tokens to generate")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--temperature", o->sampling.temperature, "softmax temperature; 0 picks the most likely token")
      ->capture_default_str();
  cmd->add_option("--top-k", o->sampling.top_k, "sample from the k most likely tokens (0: all)")->capture_default_str();
  cmd->add_option("--top-p", o->sampling.top_p, "sample from the most likely tokens holding this probability")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "sampling seed: the same seed gives the same text")->capture_default_str();
  cmd->add_option("--tokenizer", o->tokenizer, "bytes or gpt2; default: the training dataset's");
  cmd->add_option("--tokenizer-dir", o->tokenizer_dir,
                  "gpt2: encoder.json and vocab.bpe, or a Hugging Face directory's vocab.json and merges.txt; default: "
                  "the vocabulary kiln ships");
  cmd->add_flag_callback(
      "--no-stop", [o] { o->stop_at_eot = false; }, "keep going past the end-of-text token");
  cmd->callback([o] { run(*o); });
}

}  // namespace kiln::cli
