// kiln: one binary, git-style subcommands (design.md §1).
#include <CLI/CLI.hpp>
#include <H5public.h>
#include <fmt/format.h>
#include <omp.h>

#include <iostream>

#include "kernels/device_info.h"
#include "parallel/context.h"
#include "train/config.h"
#include "train/trainer.h"

namespace {

int run_info() {
  const kiln::CudaInfo cuda = kiln::query_cuda();
  unsigned h5_major = 0, h5_minor = 0, h5_release = 0;
  H5get_libversion(&h5_major, &h5_minor, &h5_release);
  const kiln::ProcessInfo proc = kiln::detect_process();
  fmt::print("kiln {}\n", KILN_VERSION);
  fmt::print("build: {} , C++ {}, CUDA backend {}\n", KILN_BUILD_TYPE, __cplusplus, cuda.compiled ? "on" : "off");
  fmt::print("devices:\n  cpu: {} OpenMP threads\n", omp_get_max_threads());
  if (cuda.devices.empty()) fmt::print("  cuda: {}\n", cuda.status);
  for (const kiln::CudaDevice& d : cuda.devices)
    fmt::print("  cuda:{}: {} (sm_{}{}, {:.1f} GiB, {} SMs)\n", d.index, d.name, d.compute_major, d.compute_minor,
               d.memory_bytes / double(1 << 30), d.multiprocessors);
  fmt::print("libraries:\n  HDF5 {}.{}.{}\n  MPI {}\n", h5_major, h5_minor, h5_release, kiln::mpi_library_version());
  if (cuda.compiled)
    fmt::print("  CUDA runtime {}, driver {}, cuBLASLt {}, NCCL {}\n", cuda.runtime_version,
               cuda.driver_version ? std::to_string(cuda.driver_version) : "none", cuda.cublaslt_version,
               cuda.nccl_version);
  fmt::print("process: rank {} of {} (local rank {}, launcher {})\n", proc.rank, proc.world_size, proc.local_rank,
             proc.launcher);
  return 0;
}

int run_train(const std::string& config_path, const std::vector<std::string>& extras) {
  std::vector<std::string> overrides;
  for (const std::string& arg : extras) {
    if (!arg.starts_with("--") || arg.find('=') == std::string::npos)
      throw std::runtime_error("unexpected argument '" + arg + "': overrides are written --section.key=value");
    overrides.push_back(arg.substr(2));
  }
  const kiln::TrainConfig cfg = kiln::load_train_config(config_path, overrides);
  if (kiln::detect_process().world_size > 1)
    throw std::runtime_error("multi-process training is not implemented yet: run one process");
  kiln::train(cfg, std::cout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kiln: pretrain and fine-tune GPT-style transformers"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(KILN_VERSION));

  CLI::App* info = app.add_subcommand("info", "Devices (real and emulated), build options, library versions");

  CLI::App* train = app.add_subcommand("train", "Train a GPT from a config file plus --section.key=value overrides");
  std::string config_path;
  train->add_option("-c,--config", config_path, "TOML config file (see configs/)")->check(CLI::ExistingFile);
  train->allow_extras();
  train->footer(
      "Overrides: any config key as --section.key=value, e.g. --train.steps=200 --optim.lr=3e-4 "
      "--model.preset=gpt2-124m --run.dir=runs/x");

  CLI11_PARSE(app, argc, argv);
  try {
    if (info->parsed()) return run_info();
    if (train->parsed()) return run_train(config_path, train->remaining());
  } catch (const std::exception& e) {
    std::cerr << "kiln: error: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
