// Who this process is in a multi-process job: rank, world size and local rank, read from the
// launcher's environment (mpirun, srun, or plain RANK/WORLD_SIZE/LOCAL_RANK). A process started
// without a launcher is rank 0 of 1.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace kiln {

struct ProcessInfo {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string launcher = "none";  // "mpirun", "slurm", "env" or "none"
};

using EnvLookup = std::function<const char*(const char*)>;

// Throws std::runtime_error naming the variable when a launcher variable is malformed or
// inconsistent (rank outside [0, world_size)).
ProcessInfo detect_process(const EnvLookup& getenv_fn);
ProcessInfo detect_process();

// The MPI library kiln was built against (callable before MPI_Init).
std::string mpi_library_version();

// FNV-1a hash of this process's executable (/proc/self/exe): ranks of one job compare it, so that
// a node running a different build is refused before training starts.
uint64_t binary_hash();

}  // namespace kiln
