// Each `kiln` subcommand registers its options and its action on the app (design.md §1).
#pragma once

#include <CLI/CLI.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace kiln::cli {

// The command's extra arguments as config overrides: --section.key=value, without the dashes.
inline std::vector<std::string> config_overrides(CLI::App& cmd) {
  std::vector<std::string> overrides;
  for (const std::string& arg : cmd.remaining()) {
    if (!arg.starts_with("--") || arg.find('=') == std::string::npos)
      throw std::runtime_error("unexpected argument '" + arg + "': overrides are written --section.key=value");
    overrides.push_back(arg.substr(2));
  }
  return overrides;
}

void add_info_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_prepare_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_plan_command(CLI::App& app);
void add_ckpt_command(CLI::App& app);
void add_generate_command(CLI::App& app);

}  // namespace kiln::cli
