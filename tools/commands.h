// Each `kiln` subcommand registers its options and its action on the app (design.md §1).
#pragma once

#include <CLI/CLI.hpp>

namespace kiln::cli {

void add_info_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_prepare_command(CLI::App& app);
void add_bench_command(CLI::App& app);

}  // namespace kiln::cli
