// kiln ckpt inspect|verify: a checkpoint's contents, and whether it is sound.
#include <filesystem>
#include <iostream>

#include "tools/commands.h"
#include "train/checkpoint.h"

namespace kiln::cli {
namespace {

// A step directory, or a run directory whose `latest` names one.
std::string checkpoint_dir(const std::string& path) {
  if (std::filesystem::exists(path + "/manifest.json")) return path;
  const std::string latest = latest_checkpoint(path);
  if (latest.empty()) throw std::runtime_error(path + ": neither a checkpoint (no manifest.json) nor a run directory with a latest file");
  return latest;
}

}  // namespace

void add_ckpt_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("ckpt", "Inspect or verify a checkpoint");
  cmd->require_subcommand(1);
  auto path = std::make_shared<std::string>();
  CLI::App* inspect = cmd->add_subcommand("inspect", "Print step, model, layout and every tensor's pieces");
  inspect->add_option("dir", *path, "checkpoint directory, or a run directory (its latest)")->required();
  inspect->callback([path] { std::cout << describe_checkpoint(checkpoint_dir(*path)); });
  CLI::App* verify = cmd->add_subcommand("verify", "Check every file's size and checksum and every tensor's pieces; "
                                                   "exit 0 only for a sound checkpoint");
  verify->add_option("dir", *path, "checkpoint directory, or a run directory (its latest)")->required();
  verify->callback([path] {
    const std::string dir = checkpoint_dir(*path);
    verify_checkpoint(dir);
    std::cout << dir << ": ok\n";
  });
}

}  // namespace kiln::cli
