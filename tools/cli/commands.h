// Each `kiln` subcommand registers its options and its action on the app (docs/design.md §1).
#pragma once

#include <CLI/CLI.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "train/config.h"

namespace kiln::cli {

// The command's extra arguments as config overrides: --section.key=value, without the dashes. An
// argument that is neither an override nor an option of the command is refused, with the nearest
// option or config key as a suggestion.
inline std::vector<Override> config_overrides(CLI::App& cmd) {
  std::vector<Override> overrides;
  for (const std::string& arg : cmd.remaining()) {
    if (arg.starts_with("--") && arg.find('=') != std::string::npos && arg.find('.') < arg.find('=')) {
      overrides.emplace_back(arg.substr(2));
      continue;
    }
    std::string message = "unexpected argument '" + arg + "': overrides are written --section.key=value";
    if (arg.starts_with("-")) {
      const std::string name = arg.substr(0, arg.find('='));
      std::vector<std::string> flags;
      for (const CLI::Option* option : cmd.get_options())
        for (const std::string& long_name : option->get_lnames()) flags.push_back("--" + long_name);
      std::vector<std::string> keys;
      for (const std::string& key : config_keys()) keys.push_back("--" + key);
      if (const std::string flag = nearest_name(name, flags); !flag.empty())
        message = "unknown option '" + name + "' (did you mean " + flag + "?)";
      else if (const std::string key = nearest_name(name, keys); !key.empty())
        message = "unknown option '" + name + "' (did you mean " + key + "=VALUE?)";
    }
    throw std::runtime_error(message);
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
void add_eval_command(CLI::App& app);

}  // namespace kiln::cli
