// Rank, world size and local rank from each launcher's environment.
#include <gtest/gtest.h>

#include <map>

#include "parallel/context.h"

namespace kiln {
namespace {

ProcessInfo detect(const std::map<std::string, std::string>& env) {
  return detect_process([&](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

TEST(ProcessContext, NoLauncherIsRankZeroOfOne) {
  const ProcessInfo p = detect({});
  EXPECT_EQ(p.rank, 0);
  EXPECT_EQ(p.world_size, 1);
  EXPECT_EQ(p.launcher, "none");
}

TEST(ProcessContext, ReadsEachLauncher) {
  ProcessInfo p = detect({{"OMPI_COMM_WORLD_RANK", "3"},
                          {"OMPI_COMM_WORLD_SIZE", "8"},
                          {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                          {"SLURM_PROCID", "5"},
                          {"SLURM_NTASKS", "8"}});
  EXPECT_EQ(p.launcher, "mpirun");  // mpirun inside a Slurm allocation: MPI's numbering wins
  EXPECT_EQ(p.rank, 3);
  EXPECT_EQ(p.local_rank, 1);
  p = detect({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "1"}});
  EXPECT_EQ(p.launcher, "slurm");
  EXPECT_EQ(p.rank, 5);
  EXPECT_EQ(p.world_size, 8);
  p = detect({{"RANK", "1"}, {"WORLD_SIZE", "2"}});
  EXPECT_EQ(p.launcher, "env");
  EXPECT_EQ(p.local_rank, 0);
}

TEST(ProcessContext, MalformedVariablesAreNamed) {
  EXPECT_THROW(
      {
        try {
          detect({{"RANK", "one"}, {"WORLD_SIZE", "2"}});
        } catch (const std::runtime_error& e) {
          EXPECT_STREQ(e.what(), "environment variable RANK='one': expected a non-negative integer");
          throw;
        }
      },
      std::runtime_error);
  EXPECT_THROW(detect({{"SLURM_PROCID", "4"}, {"SLURM_NTASKS", "4"}}), std::runtime_error);
}

}  // namespace
}  // namespace kiln
