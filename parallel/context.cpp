#include "parallel/context.h"

#include <mpi.h>

#include <charconv>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string_view>
#include <vector>

#include "kernels/fnv1a.h"

namespace kiln {
namespace {

int parse_int(const char* name, const char* value) {
  const std::string_view s(value);
  int out = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (ec != std::errc() || end != s.data() + s.size() || out < 0)
    throw std::runtime_error(std::string("environment variable ") + name + "='" + value +
                             "': expected a non-negative integer");
  return out;
}

struct LauncherVars {
  const char *launcher, *rank, *world_size, *local_rank;
};

// Checked in order: an mpirun inside a Slurm allocation sets both, and MPI's view wins.
constexpr LauncherVars kLaunchers[] = {
    {"mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
    {"mpirun", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"},
    {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
    {"env", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
};

}  // namespace

ProcessInfo detect_process(const EnvLookup& getenv_fn) {
  for (const LauncherVars& vars : kLaunchers) {
    const char* rank = getenv_fn(vars.rank);
    const char* size = getenv_fn(vars.world_size);
    if (!rank || !size) continue;
    ProcessInfo info;
    info.launcher = vars.launcher;
    info.rank = parse_int(vars.rank, rank);
    info.world_size = parse_int(vars.world_size, size);
    const char* local = getenv_fn(vars.local_rank);
    info.local_rank = local ? parse_int(vars.local_rank, local) : 0;
    if (info.world_size < 1 || info.rank >= info.world_size)
      throw std::runtime_error(std::string(vars.rank) + "=" + rank + " is not below " + vars.world_size + "=" + size);
    return info;
  }
  return ProcessInfo{};
}

ProcessInfo detect_process() {
  return detect_process([](const char* name) { return std::getenv(name); });
}

uint64_t binary_hash() {
  std::ifstream in("/proc/self/exe", std::ios::binary);
  if (!in) throw std::runtime_error("/proc/self/exe: cannot open this process's executable to hash it");
  uint64_t hash = kFnv1aStart;
  std::vector<char> chunk(1 << 20);
  while (in.read(chunk.data(), (std::streamsize)chunk.size()) || in.gcount() > 0)
    hash = fnv1a(chunk.data(), (size_t)in.gcount(), hash);
  return hash;
}

std::string mpi_library_version() {
  char buf[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  if (MPI_Get_library_version(buf, &len) != MPI_SUCCESS) return "unknown";
  std::string v(buf, len);
  if (const auto nl = v.find_first_of("\r\n,"); nl != std::string::npos) v.resize(nl);
  return v;
}

}  // namespace kiln
