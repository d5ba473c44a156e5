// Kernel bugs the emulator must catch: each test runs a broken kernel (or launch) and expects the
// emulator to report it, naming the kernel, block and thread where it can. Emulator only: on a GPU
// these bugs hang, race or corrupt memory instead of failing cleanly, so this file has no GPU build
// (EMU_ONLY in tests/CMakeLists.txt).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/device/runtime.h"
#include "tests/device_test.h"

namespace kiln::KILN_NS {

// Kernels with external linkage, so that the emulator finds their names for its messages.
namespace failures {

constexpr unsigned kFull = 0xffffffffu;

// Each thread reads its neighbour's shared slot; without the barrier it may read it unwritten.
__global__ void rotate_through_shared(int* out, bool with_barrier) {
  int* s = dynamic_shared<int>();
  s[threadIdx.x] = (int)threadIdx.x * 10;
  if (with_barrier) __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

// Block `bad_block` splits its threads between two different barriers.
__global__ void divergent_barrier(unsigned bad_block) {
  if (blockIdx.x == bad_block && threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
}

// Thread 5 calls a shuffle whose mask leaves out its own lane.
__global__ void mask_without_caller(int* out) {
  if (threadIdx.x == 5) out[5] = __shfl_sync(kFull & ~(1u << 5), 5, 0);
}

// Lanes 1..31 exit; lane 0 then shuffles with lane 1. The barrier (which exited threads count as
// having reached) makes the exits happen first under every order.
__global__ void mask_with_exited_lanes(int* out) {
  if (threadIdx.x != 0) return;
  __syncthreads();
  out[0] = __shfl_sync(0x3u, 0, 0);
}

// Half the warp waits in a full-warp shuffle, the other half at a barrier: neither can finish.
__global__ void shuffle_against_barrier() {
  if (threadIdx.x < 16) {
    __shfl_sync(kFull, 0, 0);
  } else {
    __syncthreads();
  }
}

__global__ void write_index(int* buf, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) buf[i] = i;
}

__global__ void copy_ints(const int* in, int* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i];
}

}  // namespace failures

namespace {

using namespace failures;

// Restores the emulator's settings after each test.
class EmuFailures : public ::testing::Test {
 protected:
  void SetUp() override { saved_ = settings(); }
  void TearDown() override { settings() = saved_; }

 private:
  Settings saved_;
};

// Launches `kernel` on a fresh stream and waits for it; returns the message of the error this
// reports (at launch or at the sync), or "" (and fails the test) when there is none.
template <class... Params, class... Args>
std::string error_of(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, Args&&... args) {
  try {
    Stream s;
    launch(kernel, grid, block, shared_bytes, s, std::forward<Args>(args)...);
    s.synchronize();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "the emulator reported no error";
  return "";
}

#define EXPECT_MENTIONS(message, text) \
  EXPECT_NE((message).find(text), std::string::npos) << "expected \"" << (text) << "\" in:\n" << (message)

TEST_F(EmuFailures, MissingBarrierChangesTheResultWithTheOrder) {
  const int n = 64;
  auto run = [&](Order order, bool with_barrier) {
    settings().order = order;
    Stream s;
    DeviceBuffer<int> out(n);
    launch(rotate_through_shared, 1, n, n * sizeof(int), s, out.data(), with_barrier);
    return out.to_host(s);
  };
  EXPECT_NE(run(Order::forward, false), run(Order::reverse, false)) << "the missing barrier went unnoticed";
  const std::vector<int> forward = run(Order::forward, true);
  EXPECT_EQ(forward, run(Order::reverse, true));
  for (int i = 0; i < n; i++) EXPECT_EQ(forward[i], (i + 1) % n * 10);
}

TEST_F(EmuFailures, DivergentBarrier) {
  const std::string message = error_of(divergent_barrier, 3, 32, 0, 2);
  EXPECT_MENTIONS(message, "divergent barrier");
  EXPECT_MENTIONS(message, "divergent_barrier");  // the kernel
  EXPECT_MENTIONS(message, "block (2,0,0)");
  EXPECT_MENTIONS(message, "16 thread(s), first (0,0,0): waiting at __syncthreads");
  EXPECT_MENTIONS(message, "first (16,0,0): waiting at __syncthreads");
}

TEST_F(EmuFailures, WarpMaskWithoutTheCallingLane) {
  DeviceBuffer<int> out(32);
  const std::string message = error_of(mask_without_caller, 1, 32, 0, out.data());
  EXPECT_MENTIONS(message, "mask_without_caller");
  EXPECT_MENTIONS(message, "block (0,0,0)");
  EXPECT_MENTIONS(message, "thread (5,0,0)");
  EXPECT_MENTIONS(message, "__shfl_sync");
  EXPECT_MENTIONS(message, "the mask does not include the calling lane");
}

TEST_F(EmuFailures, WarpMaskNamingAnExitedLane) {
  for (Order order : {Order::forward, Order::reverse, Order::random}) {
    settings().order = order;
    DeviceBuffer<int> out(1);
    const std::string message = error_of(mask_with_exited_lanes, 1, 32, 0, out.data());
    EXPECT_MENTIONS(message, "mask_with_exited_lanes");
    EXPECT_MENTIONS(message, "thread (0,0,0)");
    EXPECT_MENTIONS(message, "the mask names lane 1, which has exited");
  }
}

TEST_F(EmuFailures, ShuffleAgainstBarrierDeadlockIsReported) {
  const std::string message = error_of(shuffle_against_barrier, 1, 32, 0);
  EXPECT_MENTIONS(message, "shuffle_against_barrier");
  EXPECT_MENTIONS(message, "deadlock");
  EXPECT_MENTIONS(message, "16 thread(s), first (0,0,0): waiting in a warp collective __shfl_sync mask 0xffffffff");
  EXPECT_MENTIONS(message, "16 thread(s), first (16,0,0): waiting at __syncthreads");
}

TEST_F(EmuFailures, MissingStreamWaitReadsUnwrittenData) {
  settings().stream_delays = true;
  const int n = 1024;
  int stale_runs = 0, reps = 0;
  while (stale_runs == 0 && reps < 40) {
    reps++;
    Stream a, b;
    DeviceBuffer<int> buf(n), out(n);  // fresh memory is 0xff bytes
    launch(write_index, n / 256, 256, 0, a, buf.data(), n);
    launch(copy_ints, n / 256, 256, 0, b, buf.data(), out.data(), n);  // no wait on stream a
    const std::vector<int> got = out.to_host(b);
    a.synchronize();
    for (int i = 0; i < n; i++)
      if (got[i] != i) {
        EXPECT_EQ(got[i], -1) << "element " << i << " is neither written nor fresh";
        stale_runs++;
        break;
      }
  }
  EXPECT_GT(stale_runs, 0) << "the consumer never overtook the producer in " << reps << " repetitions";
}

TEST_F(EmuFailures, LaunchConfigurationErrors) {
  DeviceBuffer<int> out(2048);
  const std::string too_big = error_of(write_index, 1, 2048, 0, out.data(), 2048);
  EXPECT_MENTIONS(too_big, "write_index");
  EXPECT_MENTIONS(too_big, "block (2048,1,1)");
  EXPECT_MENTIONS(too_big, "H100");
  EXPECT_MENTIONS(too_big, "invalid configuration");
  const std::string empty_grid = error_of(write_index, dim3(0, 1, 1), 32, 0, out.data(), 2048);
  EXPECT_MENTIONS(empty_grid, "grid (0,1,1)");
  EXPECT_MENTIONS(empty_grid, "empty");
}

// After a kernel fails, the emulator must run the next launches normally: every block of a grid
// large enough to reach each of the emulator's worker threads. (The failed block's threads that
// wait at a barrier or in a collective must not be resumed in the old kernel by a later block.)
TEST_F(EmuFailures, NextLaunchAfterAnErrorIsUnaffected) {
  const int n = 64 * 256;
  auto check_clean_run = [&](const char* after) {
    Stream s;
    DeviceBuffer<int> in(n), out(n);
    launch(write_index, n / 256, 256, 0, s, in.data(), n);
    launch(copy_ints, n / 256, 256, 0, s, in.data(), out.data(), n);
    const std::vector<int> got = out.to_host(s);
    int wrong = 0;
    for (int i = 0; i < n; i++) wrong += got[i] != i;
    EXPECT_EQ(wrong, 0) << "elements wrong after " << after;
  };
  for (int rep = 0; rep < 4; rep++) {
    error_of(shuffle_against_barrier, 1, 32, 0);
    check_clean_run("a deadlock");
    error_of(divergent_barrier, 3, 32, 0, 0);
    check_clean_run("a divergent barrier");
  }
}

}  // namespace

}  // namespace kiln::KILN_NS
