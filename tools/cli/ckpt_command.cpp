// kiln ckpt inspect|verify|compare|import-hf|export-hf: a checkpoint's contents, whether it is sound,
// how far two are apart, and conversion from and to Hugging Face's GPT-2 (model.safetensors plus
// config.json).
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <tuple>

#include "data/gpt2_tokenizer.h"
#include "data/tokenizer.h"
#include "model/hf_gpt2.h"
#include "tools/cli/commands.h"
#include "train/checkpoint.h"

namespace kiln::cli {

void add_ckpt_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("ckpt", "Inspect, verify, import or export a checkpoint");
  cmd->require_subcommand(1);
  auto path = std::make_shared<std::string>();
  CLI::App* inspect = cmd->add_subcommand("inspect", "Print step, model, layout and every tensor's pieces");
  inspect->add_option("dir", *path, "checkpoint directory, or a run directory (its latest)")->required();
  inspect->callback([path] { std::cout << describe_checkpoint(resolve_checkpoint(*path)); });
  CLI::App* verify = cmd->add_subcommand("verify",
                                         "Check every file's size and checksum and every tensor's pieces; "
                                         "exit 0 only for a sound checkpoint");
  verify->add_option("dir", *path, "checkpoint directory, or a run directory (its latest)")->required();
  verify->callback([path] {
    const std::string dir = resolve_checkpoint(*path);
    verify_checkpoint(dir);
    std::cout << dir << ": ok\n";
  });

  auto from = std::make_shared<std::string>(), to = std::make_shared<std::string>();
  auto reference = std::make_shared<std::string>();
  auto tolerance = std::make_shared<double>(0.0);
  CLI::App* compare = cmd->add_subcommand("compare",
                                          "Compare two checkpoints' weights and moments, whatever their "
                                          "layouts; exit 0 only when every difference is within the tolerance");
  compare->add_option("a", *from, "checkpoint directory, or a run directory (its latest)")->required();
  compare->add_option("b", *to, "checkpoint directory, or a run directory (its latest)")->required();
  compare->add_option("--tolerance", *tolerance, "largest absolute difference allowed (0: bitwise equal)")
      ->capture_default_str();
  compare->add_option("--relative-to", *reference,
                      "an earlier checkpoint of a's run: the tolerance then bounds each tensor's ||a - b|| / "
                      "||a - this checkpoint|| (L2 norms), b's distance from a against a's updates since then");
  compare->callback([from, to, reference, tolerance] {
    if (!(*tolerance >= 0) || std::isinf(*tolerance))  // NaN would pass every comparison
      throw std::runtime_error("--tolerance " + std::to_string(*tolerance) + ": expected a finite number >= 0");
    const std::string a = resolve_checkpoint(*from), b = resolve_checkpoint(*to);
    const std::string r = reference->empty() ? "" : resolve_checkpoint(*reference);
    double worst = 0;
    int over = 0;
    for (const TensorDifference& d : compare_checkpoints(a, b, r)) {
      const double difference = r.empty() ? d.max_abs : d.relative();
      worst = std::max(worst, difference);
      if (difference > *tolerance && ++over <= 20)
        std::cout << fmt::format("  {} {}: {:.3e}\n", d.tensor, d.kind, difference);
    }
    std::cout << fmt::format("{} vs {}: largest difference {:.3e}{}, {} tensor(s) past the tolerance {}\n", a, b, worst,
                             r.empty() ? "" : " relative to the updates since " + r, over, *tolerance);
    if (over > 0) throw std::runtime_error("the checkpoints differ");
  });

  CLI::App* import = cmd->add_subcommand("import-hf",
                                         "Make step 0 of a run directory from a Hugging Face GPT-2 "
                                         "(its config.json and model.safetensors)");
  import->add_option("hf_dir", *from, "directory holding config.json and model.safetensors")->required();
  import->add_option("run_dir", *to, "run directory to create the checkpoint in (its latest then names it)")
      ->required();
  import->callback([from, to] {
    HfGpt2 hf = read_hf_gpt2(*from);
  const GPTConfig cfg = hf.config;
  const std::string dir = save_weights_checkpoint(*to, cfg, std::move(hf.weights));
  std::cout << fmt::format("{}: GPT-2 with {} layers, {} heads, width {}, vocabulary {}, context {}\n", dir,
                           cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size, cfg.max_seq_len);
});
CLI::App* exporter = cmd->add_subcommand("export-hf",
                                         "Write a checkpoint's weights as a Hugging Face GPT-2 "
                                         "(config.json and model.safetensors, F32)");
exporter->add_option("dir", *from, "checkpoint directory, or a run directory (its latest)")->required();
exporter->add_option("hf_dir", *to, "output directory")->required();
exporter->callback([from, to] {
  const std::string dir = resolve_checkpoint(*from);
  const CheckpointWeights ckpt = read_checkpoint_weights(dir);
  // The end-of-text id of the tokenizer the model was trained with (the vocabulary's last id for
  // a model without one), and for GPT-2's tokenizer its files under Hugging Face's names, so
  // that transformers loads the directory as a whole model.
  std::unique_ptr<Tokenizer> tokenizer;
  if (!ckpt.tokenizer.name.empty())
    tokenizer = tokenizer_matching(ckpt.tokenizer.name, ckpt.tokenizer.fingerprint, ckpt.tokenizer.files_dir,
                                   dir + "/manifest.json");
  write_hf_gpt2(*to, ckpt.config, ckpt.weights, tokenizer ? tokenizer->eot_token() : ckpt.config.vocab_size - 1);
  std::string written = "config.json and model.safetensors";
  if (tokenizer && tokenizer->name() == "gpt2") {
    auto [encoder, merges] = Gpt2Tokenizer::files_in(ckpt.tokenizer.files_dir);
    if (encoder.empty()) std::tie(encoder, merges) = Gpt2Tokenizer::files_in(bundled_vocab_dir("gpt2"));
    std::filesystem::copy_file(encoder, *to + "/vocab.json", std::filesystem::copy_options::overwrite_existing);
    std::filesystem::copy_file(merges, *to + "/merges.txt", std::filesystem::copy_options::overwrite_existing);
    written += ", vocab.json and merges.txt";
  } else if (tokenizer) {
    written += " (no tokenizer files: transformers has no equivalent of kiln's " + tokenizer->name() + " tokenizer)";
  }
  std::cout << *to << ": " << written << "\n";
});
}  // namespace kiln::cli

}  // namespace kiln::cli
