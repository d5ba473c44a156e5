// kiln info: devices (real and emulated), build options, library versions, process context.
#include <H5public.h>
#include <fmt/format.h>
#include <omp.h>

#include <stdexcept>

#include "data/tokenizer.h"
#include "kernels/device/selfcheck.h"
#include "parallel/device_info.h"
#include "kernels/emu/cuda_runtime.h"
#include "parallel/context.h"
#include "tools/cli/commands.h"

namespace kiln::cli {

void add_info_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("info", "Devices (real and emulated), build options, library versions");
  cmd->callback([] {
    const CudaInfo cuda = query_cuda();
    unsigned h5_major = 0, h5_minor = 0, h5_release = 0;
    H5get_libversion(&h5_major, &h5_minor, &h5_release);
    const ProcessInfo proc = detect_process();
    fmt::print("kiln {}\n", KILN_VERSION);
    fmt::print("build: {}, C++ {}, CUDA backend {}\n", KILN_BUILD_TYPE, __cplusplus, cuda.compiled ? "on" : "off");
    fmt::print("devices:\n  cpu: {} OpenMP threads\n", omp_get_max_threads());
    if (cuda.devices.empty()) fmt::print("  cuda: {}\n", cuda.status);
#ifdef KILN_HAVE_CUDA
    for (const CudaDevice& d : cuda.devices)
      fmt::print("  cuda:{}: {} (sm_{}{}, {:.1f} GiB, {} SMs), self-check: {}\n", d.index, d.name, d.compute_major,
                 d.compute_minor, d.memory_bytes / double(1 << 30), d.multiprocessors, cuda::device_self_check());
#endif
    emu::cudaDeviceProp emulated{};
    emu::cudaGetDeviceProperties(&emulated, 0);
    fmt::print("  emu:0: {} (sm_{}{} semantics, runs on the CPU; --device emu), self-check: {}\n", emulated.name,
               emulated.major, emulated.minor, emu::device_self_check());
    fmt::print("libraries:\n  HDF5 {}.{}.{}\n  MPI {}\n", h5_major, h5_minor, h5_release, mpi_library_version());
    if (cuda.compiled)
      fmt::print("  CUDA runtime {}, driver {}, cuBLASLt {}, NCCL {}\n", cuda.runtime_version,
                 cuda.driver_version ? std::to_string(cuda.driver_version) : "none", cuda.cublaslt_version,
                 cuda.nccl_version);
    std::string vocab;
    try {
      vocab = bundled_vocab_dir("gpt2");
    } catch (const std::runtime_error& e) {
      vocab = e.what();
    }
    fmt::print("vocabularies: gpt2 {}\n", vocab);
    fmt::print("process: rank {} of {} (local rank {}, launcher {})\n", proc.rank, proc.world_size, proc.local_rank,
               proc.launcher);
  });
}

}  // namespace kiln::cli
