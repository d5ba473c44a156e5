// kiln train: a config file plus --section.key=value overrides.
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <tuple>

#include "parallel/comm/comm.h"
#include "parallel/context.h"
#include "parallel/comm/socket_comm.h"
#include "tools/cli/commands.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/trainer.h"

namespace kiln::cli {

void add_train_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("train", "Train a GPT from a config file plus --section.key=value overrides");
  auto config_path = std::make_shared<std::string>();
  cmd->add_option("-c,--config", *config_path, "TOML config file (see configs/)")->check(CLI::ExistingFile);
  // Short forms of the most used keys; they win over the config file.
  auto shortcuts = std::make_shared<std::vector<Override>>();
  for (const auto& [flag, key, help] : std::initializer_list<std::tuple<const char*, const char*, const char*>>{
           {"--device", "run.device", "auto (cuda if a GPU is present, else cpu), cpu, cuda or emu (run.device)"},
           {"--gpu-memory", "run.gpu_memory",
            "device memory to plan for, e.g. 80GB; the emulator's size (run.gpu_memory)"},
           {"--gpu", "run.gpu", "with --dry-run: the GPU model to plan for, e.g. H100, with --gpu-memory (run.gpu)"},
           {"--recompute", "train.recompute",
            "activations rebuilt in the backward: none, mlp or block (train.recompute)"},
           {"--batch-size", "train.batch_size", "sequences per micro-batch (train.batch_size)"},
           {"--seq-len", "train.seq_len", "tokens per sequence (train.seq_len)"},
           {"--max-steps", "train.steps", "optimizer steps (train.steps)"},
           {"--run-dir", "run.dir", "run directory for metrics (run.dir)"},
           {"--threads", "run.threads", "CPU threads, 0 = all cores (run.threads)"},
           {"--data", "data.path", "prepared dataset directory, or 'random' (data.path)"},
           {"--tp", "parallel.tp", "tensor-parallel size, consecutive ranks (parallel.tp)"},
           {"--seed", "train.seed", "seed of the initial weights and the data order (train.seed)"},
           {"--save-every", "checkpoint.every", "steps between checkpoints in the run directory (checkpoint.every)"},
           {"--resume", "checkpoint.resume",
            "resume from this checkpoint; default: the run directory's latest (checkpoint.resume)"},
           {"--init-from", "checkpoint.init_from",
            "fine-tune: a checkpoint's parameters only (checkpoint.init_from)"}}) {
    cmd->add_option_function<std::string>(
        flag,
        [shortcuts, key = std::string(key), flag = std::string(flag)](const std::string& v) {
          shortcuts->emplace_back(key + "=" + v, flag + " " + v);
        },
        help);
  }
  for (const auto& [flag, key, help] : std::initializer_list<std::tuple<const char*, const char*, const char*>>{
           {"--deterministic", "run.deterministic",
            "bitwise-identical runs for a seed on one device (run.deterministic)"},
           {"--dry-run", "run.dry_run", "print the memory plan and whether it fits, allocate nothing (run.dry_run)"},
           {"--verify-data", "data.verify",
            "check every shard's checksum at start-up: reads the whole dataset (data.verify)"},
           {"--eval-only", "train.eval_only",
            "evaluate the resumed model on the validation split, train nothing (train.eval_only)"},
           {"--force", "run.force",
            "start afresh in a run directory holding another run's metrics or checkpoints (run.force)"}}) {
    cmd->add_flag_function(
        flag,
        [shortcuts, key = std::string(key), flag = std::string(flag)](int64_t) {
          shortcuts->emplace_back(key + "=true", flag);
        },
        help);
  }
  cmd->allow_extras();
  cmd->footer(
      "Overrides: any config key as --section.key=value, e.g. --train.steps=200 --optim.lr=3e-4 "
      "--model.preset=gpt2-124m --run.dir=runs/x");
  cmd->callback([cmd, config_path, shortcuts] {
    // tools/scripts/kill9-soak.sh stops a run at an exact moment of a load or a save, to kill it there.
    if (const char* point = std::getenv("KILN_FAULT_STOP_AT"))
      inject_checkpoint_faults({.fail_write = 0, .stop_at = point});
    std::vector<Override> overrides = config_overrides(*cmd);
    overrides.insert(overrides.end(), shortcuts->begin(), shortcuts->end());
    const TrainConfig cfg = load_train_config(*config_path, overrides);
    const ProcessInfo process = detect_process();
    if (process.world_size == 1) {
      train(cfg, std::cout);
      return;
    }
    // Launched by hand (RANK/WORLD_SIZE): the ranks meet through a file and talk over TCP.
    if (process.launcher == "env") {
      const std::string file = cfg.parallel.rendezvous.empty() ? cfg.run_dir + "/rendezvous" : cfg.parallel.rendezvous;
      if (std::filesystem::path(file).has_parent_path())
        std::filesystem::create_directories(std::filesystem::path(file).parent_path());
      const std::unique_ptr<Comm> world = rendezvous_comm(process, file, cfg.parallel.timeout_s);
      try {
        train(cfg, std::cout, *world);
      } catch (const std::exception& e) {
        std::cerr << ("kiln: error: rank " + std::to_string(process.rank) + ": " + e.what() + "\n");
        std::_Exit(1);  // the other ranks see the connection close and stop too
      }
      return;
    }
    const MpiSession mpi;
    const std::unique_ptr<Comm> world = mpi.world(cfg.parallel.timeout_s);
    if (world->size() != process.world_size || world->rank() != process.rank)
      throw std::runtime_error("MPI sees rank " + std::to_string(world->rank()) + " of " +
                               std::to_string(world->size()) + ", the " + process.launcher + " environment rank " +
                               std::to_string(process.rank) + " of " + std::to_string(process.world_size));
    try {
      train(cfg, std::cout, *world);
    } catch (const std::exception& e) {
      // One write: the ranks share a terminal, and pieces of their lines would interleave.
      std::cerr << ("kiln: error: rank " + std::to_string(process.rank) + ": " + e.what() + "; aborting the job\n");
      MpiSession::abort_job(1);
    }
  });
}

}  // namespace kiln::cli
