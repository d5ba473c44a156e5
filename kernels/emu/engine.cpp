#include "kernels/emu/engine.h"

#include <boost/context/fiber.hpp>
#include <boost/context/protected_fixedsize_stack.hpp>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define KILN_EMU_ASAN 1
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <numeric>
#include <pthread.h>
#include <random>
#include <thread>

namespace kiln::emu {
namespace ctx = boost::context;

Settings& settings() {
  static Settings s;
  return s;
}

namespace {

constexpr int kWarp = 32;
constexpr size_t kMaxDynamicShared = 227 * 1024;  // H100 per-block limit (opt-in)
#ifdef KILN_EMU_ASAN
constexpr size_t kFiberStack = 1024 * 1024;  // ASan's redzones make frames larger
#else
constexpr size_t kFiberStack = 256 * 1024;
#endif

enum class State { runnable, at_barrier, at_collective, exited };

const char* state_name(State s) {
  switch (s) {
    case State::runnable:
      return "running";
    case State::at_barrier:
      return "waiting at __syncthreads";
    case State::at_collective:
      return "waiting in a warp collective";
    case State::exited:
      return "exited";
  }
  return "?";
}

// One thread of the block being run: its fiber, its coordinates and what it waits on.
struct Lane {
  ctx::fiber fiber;          // resumed by the scheduler
  ctx::fiber caller;         // the scheduler, resumed by the lane to yield
  ctx::stack_context stack;  // the fiber's stack, for AddressSanitizer's switch annotations
  ThreadContext coords;
  State state = State::exited;
  std::source_location site;  // last barrier
  const char* op = nullptr;   // pending collective
  unsigned mask = 0;
  AsyncCopyGroups copies;
  alignas(16) std::byte in[kCollectiveBytes];
  alignas(16) std::byte out[kCollectiveBytes];
};

struct KernelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Thrown at a suspended thread's yield point to unwind it on its own stack when its block failed.
struct Abandoned {};

std::string coords(const uint3& v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}
std::string where(const std::source_location& s) { return std::string(s.file_name()) + ":" + std::to_string(s.line()); }

// An OS thread that runs blocks. Its fibers are created once, each looping over
// "run the kernel for my lane, then yield as exited", and reused by every block it runs.
class BlockRunner {
 public:
  ~BlockRunner() {
    quitting_ = true;
    for (Lane& lane : lanes_)
      if (lane.fiber) resume(lane);
  }

  void run_block(const GridLaunch& g, uint3 block_idx, uint64_t block_linear);
  // Called by a thread arriving at __syncthreads; throws on a divergent barrier.
  void arrive_at_barrier(Lane& lane, const std::source_location& site);
  bool abandoning() const { return abandoning_; }

  Lane* current = nullptr;        // lane whose fiber is running on this OS thread
  std::vector<std::byte> shared;  // dynamic shared memory
  size_t shared_bytes = 0;

 private:
  void run_block_lanes(const GridLaunch& g, uint3 block_idx, uint64_t block_linear);
  void ensure_lanes(size_t n);
  void resume(Lane& lane);
  [[noreturn]] void fail(const std::string& what) const;
  std::string describe_lanes() const;
  void release_barrier_if_complete();
  void abandon_block();

  std::vector<Lane> lanes_;
  size_t live_lanes_ = 0;  // lanes of the current block
  const GridLaunch* grid_ = nullptr;
  uint3 block_idx_{};
  bool quitting_ = false, abandoning_ = false;
  std::exception_ptr kernel_exception_;
  size_t at_barrier_ = 0, exited_ = 0;  // counts over the current block's lanes
  std::source_location barrier_site_;
};

thread_local BlockRunner* this_runner = nullptr;

// AddressSanitizer must be told about every stack switch (Debian's Boost.Context is not built
// with ASan); without it, it reports false stack overflows. No-ops in normal builds.
struct SwitchAnnotation {
  void* fake_stack = nullptr;
  void begin([[maybe_unused]] const void* bottom, [[maybe_unused]] size_t size) {
#ifdef KILN_EMU_ASAN
    __sanitizer_start_switch_fiber(&fake_stack, bottom, size);
#endif
  }
  void end() {
#ifdef KILN_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
  }
};

// The OS thread's own stack, which the scheduler runs on (for switches back to it).
struct ThreadStack {
  const void* bottom = nullptr;
  size_t size = 0;
};
thread_local ThreadStack scheduler_stack;

// Allocates fiber stacks (with a guard page) and records where each is.
struct RecordingStack {
  Lane* lane;
  ctx::protected_fixedsize_stack inner{kFiberStack};
  ctx::stack_context allocate() {
    lane->stack = inner.allocate();
    return lane->stack;
  }
  void deallocate(ctx::stack_context& sc) { inner.deallocate(sc); }
};

// Switches from a lane's fiber back to the scheduler.
void yield_to_scheduler(Lane& l) {
  SwitchAnnotation a;
  a.begin(scheduler_stack.bottom, scheduler_stack.size);
  l.caller = std::move(l.caller).resume();
  a.end();
}

BlockRunner& runner() { return *this_runner; }
Lane& lane() { return *runner().current; }

void BlockRunner::ensure_lanes(size_t n) {
  if (!lanes_.empty()) return;
  // Suspended fibers refer to their Lane by address, so the pool is sized once, for the
  // largest block (1024 threads), and never moves.
  lanes_ = std::vector<Lane>(n);
  for (Lane& lane : lanes_) {
    Lane* me = &lane;
    me->fiber = ctx::fiber(std::allocator_arg, RecordingStack{me}, [this, me](ctx::fiber&& caller) {
      me->caller = std::move(caller);
      SwitchAnnotation().end();  // arrived on this fiber's stack
      while (!quitting_) {
        if (!abandoning_) {
          try {
            grid_->body();
          } catch (const Abandoned&) {
          } catch (...) {
            if (!kernel_exception_) kernel_exception_ = std::current_exception();
          }
        }
        me->state = State::exited;
        exited_++;
        yield_to_scheduler(*me);
      }
      SwitchAnnotation().begin(scheduler_stack.bottom, scheduler_stack.size);
      return std::move(me->caller);
    });
  }
}

void BlockRunner::resume(Lane& l) {
  current = &l;
  SwitchAnnotation a;
  a.begin(static_cast<char*>(l.stack.sp) - l.stack.size, l.stack.size);
  l.fiber = std::move(l.fiber).resume();
  a.end();
  current = nullptr;
}

std::string BlockRunner::describe_lanes() const {
  // Group lanes by what they wait on, so a 1024-thread block prints a few lines.
  std::map<std::string, std::vector<size_t>> groups;
  for (size_t i = 0; i < live_lanes_; i++) {
    const Lane& l = lanes_[i];
    std::string what = state_name(l.state);
    if (l.state == State::at_barrier) what += " at " + where(l.site);
    if (l.state == State::at_collective)
      what += std::string(" ") + l.op + " mask 0x" + [&] {
        char b[16];
        std::snprintf(b, sizeof b, "%08x", l.mask);
        return std::string(b);
      }();
    groups[what].push_back(i);
  }
  std::string out;
  for (const auto& [what, ids] : groups) {
    out += "\n    " + std::to_string(ids.size()) + " thread(s), first " +
           coords(lanes_[ids.front()].coords.thread_idx) + ": " + what;
  }
  return out;
}

void BlockRunner::fail(const std::string& what) const {
  throw KernelError("emu: kernel '" + grid_->kernel + "' block " + coords(block_idx_) + ": " + what);
}

bool same_site(const std::source_location& a, const std::source_location& b) {
  return a.line() == b.line() && (a.file_name() == b.file_name() || std::strcmp(a.file_name(), b.file_name()) == 0);
}

void BlockRunner::arrive_at_barrier(Lane& l, const std::source_location& site) {
  l.state = State::at_barrier;
  l.site = site;
  if (at_barrier_ > 0 && !same_site(site, barrier_site_))
    throw std::runtime_error("threads wait at different __syncthreads (divergent barrier):" + describe_lanes());
  if (at_barrier_++ == 0) barrier_site_ = site;
}

// Exited threads count as arrived, as on the GPU.
void BlockRunner::release_barrier_if_complete() {
  if (at_barrier_ == 0 || at_barrier_ + exited_ != live_lanes_) return;
  for (size_t i = 0; i < live_lanes_; i++)
    if (lanes_[i].state == State::at_barrier) lanes_[i].state = State::runnable;
  at_barrier_ = 0;
}

// Unwinds every thread of a failed block that is suspended mid-kernel, each on its own stack,
// so that the next block runs on clean fibers.
void BlockRunner::abandon_block() {
  abandoning_ = true;
  for (size_t i = 0; i < live_lanes_; i++)
    if (lanes_[i].state != State::exited) resume(lanes_[i]);
  abandoning_ = false;
}

void BlockRunner::run_block(const GridLaunch& g, uint3 block_idx, uint64_t block_linear) {
  try {
    run_block_lanes(g, block_idx, block_linear);
  } catch (...) {
    abandon_block();
    throw;
  }
}

void BlockRunner::run_block_lanes(const GridLaunch& g, uint3 block_idx, uint64_t block_linear) {
  grid_ = &g;
  block_idx_ = block_idx;
  const size_t n = (size_t)g.block.x * g.block.y * g.block.z;
  ensure_lanes(1024);
  live_lanes_ = n;
  kernel_exception_ = nullptr;
  at_barrier_ = exited_ = 0;
  shared_bytes = g.dynamic_smem;
  if (shared.empty()) shared.resize(kMaxDynamicShared);
#ifdef KILN_EMU_ASAN
  // Only the launch's shared_bytes are addressable: an overrun into the rest is reported.
  ASAN_UNPOISON_MEMORY_REGION(shared.data(), shared.size());
  ASAN_POISON_MEMORY_REGION(shared.data() + shared_bytes, shared.size() - shared_bytes);
#endif
  if (shared_bytes) std::memset(shared.data(), 0xff, shared_bytes);  // uninitialised reads show up as NaN
  for (size_t i = 0; i < n; i++) {
    Lane& l = lanes_[i];
    l.coords = {{(unsigned)(i % g.block.x), (unsigned)(i / g.block.x % g.block.y),
                 (unsigned)(i / ((size_t)g.block.x * g.block.y))},
                block_idx,
                g.block,
                g.grid};
    l.state = State::runnable;
    l.copies = {};
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  const Settings& s = settings();
  if (s.order == Order::reverse) std::reverse(order.begin(), order.end());
  std::mt19937_64 rng(s.seed ^ (block_linear * 0x9e3779b97f4a7c15ULL));
  while (true) {
    if (s.order == Order::random) std::shuffle(order.begin(), order.end(), rng);
    bool progressed = false;
    for (size_t i : order) {
      if (lanes_[i].state != State::runnable) continue;
      resume(lanes_[i]);
      progressed = true;
      if (kernel_exception_) {
        try {
          std::rethrow_exception(kernel_exception_);
        } catch (const std::exception& e) {
          fail(std::string("thread ") + coords(lanes_[i].coords.thread_idx) + ": " + e.what());
        }
      }
      release_barrier_if_complete();
    }
    if (exited_ == n) break;
    if (!progressed) fail("no thread can proceed (deadlock):" + describe_lanes());
  }
  for (size_t i = 0; i < n; i++) {
    const AsyncCopyGroups& c = lanes_[i].copies;
    const bool pending = !c.open.empty() || std::any_of(c.committed.begin(), c.committed.end(),
                                                        [](const auto& group) { return !group.empty(); });
    if (pending)
      fail("thread " + coords(lanes_[i].coords.thread_idx) + " exited with cp.async copies never waited for");
  }
}

// The persistent pool of OS threads that run blocks.
class Pool {
 public:
  static Pool& get() {
    static Pool pool;
    return pool;
  }
  void run(const GridLaunch& g);

 private:
  Pool() = default;
  ~Pool() {
    {
      std::lock_guard lock(mutex_);
      quitting_ = true;
    }
    start_.notify_all();
    for (std::thread& t : threads_) t.join();
  }
  void worker();

  std::mutex grid_mutex_;  // one grid at a time
  std::mutex mutex_;
  std::condition_variable start_, done_;
  std::vector<std::thread> threads_;
  const GridLaunch* grid_ = nullptr;
  std::vector<uint64_t> block_order_;
  std::atomic<size_t> next_block_{0};
  uint64_t generation_ = 0;
  size_t busy_ = 0;
  bool quitting_ = false;
  std::string error_;
};

void Pool::worker() {
  pthread_attr_t attr;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    void* addr = nullptr;
    size_t size = 0;
    pthread_attr_getstack(&attr, &addr, &size);
    scheduler_stack = {addr, size};
    pthread_attr_destroy(&attr);
  }
  BlockRunner runner_here;
  this_runner = &runner_here;
  uint64_t seen = 0;
  std::unique_lock lock(mutex_);
  while (true) {
    start_.wait(lock, [&] { return quitting_ || generation_ != seen; });
    if (quitting_) return;
    seen = generation_;
    const GridLaunch& g = *grid_;
    lock.unlock();
    for (size_t i; (i = next_block_.fetch_add(1)) < block_order_.size();) {
      const uint64_t b = block_order_[i];
      const uint3 idx{(unsigned)(b % g.grid.x), (unsigned)(b / g.grid.x % g.grid.y),
                      (unsigned)(b / ((uint64_t)g.grid.x * g.grid.y))};
      try {
        runner_here.run_block(g, idx, b);
      } catch (const std::exception& e) {
        std::lock_guard error_lock(mutex_);
        if (error_.empty()) error_ = e.what();
        next_block_ = block_order_.size();  // stop dealing out blocks
      }
    }
    lock.lock();
    if (--busy_ == 0) done_.notify_all();
  }
}

void Pool::run(const GridLaunch& g) {
  std::lock_guard one_grid(grid_mutex_);
  std::unique_lock lock(mutex_);
  if (threads_.empty()) {
    const int n = settings().workers > 0 ? settings().workers : (int)std::max(1u, std::thread::hardware_concurrency());
    for (int i = 0; i < n; i++) threads_.emplace_back(&Pool::worker, this);
  }
  const uint64_t blocks = (uint64_t)g.grid.x * g.grid.y * g.grid.z;
  block_order_.resize(blocks);
  std::iota(block_order_.begin(), block_order_.end(), 0);
  if (settings().order == Order::reverse) std::reverse(block_order_.begin(), block_order_.end());
  if (settings().order == Order::random)
    std::shuffle(block_order_.begin(), block_order_.end(), std::mt19937_64(settings().seed));
  grid_ = &g;
  next_block_ = 0;
  error_.clear();
  busy_ = threads_.size();
  generation_++;
  start_.notify_all();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(settings().watchdog_s);
  if (!done_.wait_until(lock, deadline, [&] { return busy_ == 0; })) {
    std::fprintf(stderr, "emu: watchdog: kernel '%s' ran longer than %.0f s (a thread spinning forever?); stopping\n",
                 g.kernel.c_str(), settings().watchdog_s);
    std::abort();
  }
  if (!error_.empty()) throw std::runtime_error(error_);
}

}  // namespace

const ThreadContext& current_thread() { return lane().coords; }

void run_grid(const GridLaunch& g) { Pool::get().run(g); }

void syncthreads(std::source_location site) {
  BlockRunner& r = runner();
  Lane& l = *r.current;
  r.arrive_at_barrier(l, site);
  yield_to_scheduler(l);
  if (r.abandoning()) throw Abandoned{};
}

void warp_collective(const char* op, unsigned mask, const void* in, size_t in_bytes, void* out, size_t out_bytes,
                     CollectiveFn combine) {
  BlockRunner& r = runner();
  Lane& me = *r.current;
  const ThreadContext& c = me.coords;
  const size_t linear =
      c.thread_idx.x + (size_t)c.block_dim.x * (c.thread_idx.y + (size_t)c.block_dim.y * c.thread_idx.z);
  const unsigned lane_id = linear % kWarp;
  Lane* warp = &me - lane_id;
  const size_t block_threads = (size_t)c.block_dim.x * c.block_dim.y * c.block_dim.z;
  const size_t warp_lanes = std::min<size_t>(kWarp, block_threads - (linear - lane_id));
  auto fail = [&](const std::string& what) {
    throw std::runtime_error(std::string(op) + " in thread " + coords(c.thread_idx) + ": " + what);
  };
  if (!(mask & (1u << lane_id))) fail("the mask does not include the calling lane");
  for (unsigned i = 0; i < kWarp; i++) {
    if (!(mask & (1u << i))) continue;
    if (i >= warp_lanes) fail("the mask names lane " + std::to_string(i) + ", which does not exist in this block");
    if (warp[i].state == State::exited) fail("the mask names lane " + std::to_string(i) + ", which has exited");
    if (warp[i].state == State::at_collective && (warp[i].mask != mask || std::strcmp(warp[i].op, op) != 0))
      fail("lane " + std::to_string(i) + " waits in " + warp[i].op + " with a different mask or collective");
  }
  if (in_bytes > 0) std::memcpy(me.in, in, in_bytes);  // __syncwarp carries no data (in is null)
  me.op = op;
  me.mask = mask;
  bool complete = true;
  for (unsigned i = 0; i < kWarp; i++)
    if ((mask & (1u << i)) && i != lane_id && warp[i].state != State::at_collective) complete = false;
  if (complete) {
    std::byte ins[kWarp][kCollectiveBytes], outs[kWarp][kCollectiveBytes];
    for (unsigned i = 0; i < kWarp; i++)
      if (mask & (1u << i)) std::memcpy(ins[i], warp[i].in, kCollectiveBytes);
    combine(ins, outs, mask);
    for (unsigned i = 0; i < kWarp; i++) {
      if (!(mask & (1u << i))) continue;
      std::memcpy(warp[i].out, outs[i], kCollectiveBytes);
      if (i != lane_id) warp[i].state = State::runnable;
    }
  } else {
    me.state = State::at_collective;
    yield_to_scheduler(me);
    if (r.abandoning()) throw Abandoned{};
  }
  if (out_bytes > 0) std::memcpy(out, me.out, out_bytes);
}

void* dynamic_shared_memory() { return runner().shared.data(); }
size_t dynamic_shared_bytes() { return runner().shared_bytes; }
AsyncCopyGroups& async_copies() { return lane().copies; }

}  // namespace kiln::emu
