// The SIMT emulator's execution engine: runs a kernel's grid on the CPU. Blocks go to a pool of
// OS threads, one block at a time per OS thread; a block's threads are cooperative fibers that
// switch only at barriers and warp collectives, in a chosen order, so that a missing barrier
// changes the result (docs/design.md §2, docs/emulator.md).
#pragma once

#include <vector_types.h>  // dim3, uint3 (from the CUDA toolkit; host-only types)

#include <cstddef>
#include <deque>
#include <vector>
#include <cstdint>
#include <functional>
#include <source_location>
#include <string>

namespace kiln::emu {

// Order in which a block's runnable threads run between two barriers, and blocks are dealt out.
enum class Order { forward, reverse, random };

struct Settings {
  Order order = Order::forward;
  uint64_t seed = 0;           // for Order::random and the stream delay mode
  int workers = 0;             // OS threads running blocks; 0 = hardware threads
  double watchdog_s = 120;     // a launch running longer is reported and the process stops
  bool stream_delays = false;  // random delays before each stream operation
};
// The emulated device's configuration: set by tests and `--device emu` before launching.
Settings& settings();

// What threadIdx, blockIdx, blockDim and gridDim read in the current fiber.
struct ThreadContext {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
};
const ThreadContext& current_thread();

struct GridLaunch {
  std::string kernel;  // for messages
  dim3 grid, block;
  size_t dynamic_smem = 0;
  std::function<void()> body;  // runs the kernel for the current thread
};
// Runs every block; throws std::runtime_error naming kernel, block and thread on a detected error
// (divergent barrier, warp mask mismatch, deadlock, an exception inside the kernel).
void run_grid(const GridLaunch& launch);

// Block barrier (__syncthreads). The call site identifies the barrier.
void syncthreads(std::source_location site = std::source_location::current());

// A warp collective: every lane in `mask` contributes `in` (up to kCollectiveBytes); when all have
// arrived, `combine` runs once with all lanes' inputs and writes each lane's output. `op` names the
// collective for messages and must match across lanes.
constexpr size_t kCollectiveBytes = 64;
using CollectiveFn = void (*)(const std::byte (*in)[kCollectiveBytes], std::byte (*out)[kCollectiveBytes],
                              unsigned mask);
void warp_collective(const char* op, unsigned mask, const void* in, size_t in_bytes, void* out, size_t out_bytes,
                     CollectiveFn combine);

// The block's dynamic shared memory (poisoned with 0xff bytes at block start).
void* dynamic_shared_memory();
size_t dynamic_shared_bytes();

// The current thread's cp.async copies: issued (the destination poisoned), grouped by commit,
// performed by wait_group. A read before the wait sees poison.
struct AsyncCopy {
  void* dst;
  const void* src;
  int bytes, src_bytes;  // bytes beyond src_bytes are zero-filled
};
struct AsyncCopyGroups {
  std::vector<AsyncCopy> open;
  std::deque<std::vector<AsyncCopy>> committed;
};
AsyncCopyGroups& async_copies();

}  // namespace kiln::emu
