// kiln bench kernels' options are checked before any device is touched (here through the
// emulated build, which shares the code): an unknown model, a token count that is not a positive
// multiple of T = 1024, and no timed runs are each refused by name.
#include "kernels/bench/bench.h"

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace kiln {
namespace {

using namespace kiln::test;

TEST(BenchOptions, BadOptionsAreRefusedByName) {
  KernelBenchOptions o;
  o.models = {"9b"};
  EXPECT_EQ(error_of([&] { emu::run_kernel_benchmarks(o); }),
            "kiln bench kernels: unknown model '9b' (expected one of 124m, 350m, 1558m)");
  o = {};
  o.tokens = {1000};
  EXPECT_EQ(error_of([&] { emu::run_kernel_benchmarks(o); }),
            "kiln bench kernels: 1000 tokens: must be a positive multiple of T = 1024");
  o = {};
  o.reps = 0;
  EXPECT_EQ(error_of([&] { emu::run_kernel_benchmarks(o); }), "kiln bench kernels: needs warmup >= 0 and reps >= 1");
}

}  // namespace
}  // namespace kiln
