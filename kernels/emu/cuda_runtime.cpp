#include "kernels/emu/cuda_runtime.h"

#include <driver_types.h>  // cudaEventDisableTiming

#include <cxxabi.h>
#include <dlfcn.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "kernels/emu/engine.h"

namespace kiln::emu {
namespace {

constexpr int kMaxThreadsPerBlock = 1024;
constexpr size_t kDefaultDynamicShared = 48 * 1024, kMaxDynamicShared = 227 * 1024;

// Errors: the last one (returned once by cudaGetLastError) and its full message.
std::mutex error_mutex;
cudaError_t last_error = cudaSuccess;
std::string last_message;

cudaError_t set_error(cudaError_t e, const std::string& message) {
  std::lock_guard lock(error_mutex);
  last_error = e;
  last_message = message;
  return e;
}

// Device memory: its size and the live allocations.
std::mutex memory_mutex;
size_t memory_total = 80ULL << 30, memory_used = 0;
std::map<void*, size_t> allocations;

// Every live stream, so that cudaFree can wait for them as the GPU's does.
std::mutex streams_mutex;
std::set<EmuStream*> streams;

}  // namespace

// A stream: a worker thread running queued operations in order, so that host code and other
// streams really do run concurrently with it, and a missing wait shows up.
struct EmuStream {
  EmuStream() : worker([this] { run(); }) {
    std::lock_guard lock(streams_mutex);
    streams.insert(this);
  }
  ~EmuStream() {
    {
      std::lock_guard lock(streams_mutex);
      streams.erase(this);
    }
    {
      std::lock_guard lock(mutex);
      quitting = true;
    }
    cv.notify_all();
    worker.join();
  }
  void enqueue(std::function<void()> op) {
    {
      std::lock_guard lock(mutex);
      ops.push_back(std::move(op));
    }
    cv.notify_all();
  }
  cudaError_t synchronize() {
    std::unique_lock lock(mutex);
    cv.wait(lock, [&] { return ops.empty() && !busy; });
    const cudaError_t e = error;
    return e;
  }
  void run() {
    std::mt19937_64 rng(settings().seed ^ (uint64_t)(uintptr_t)this);
    std::unique_lock lock(mutex);
    while (true) {
      cv.wait(lock, [&] { return quitting || !ops.empty(); });
      if (ops.empty()) return;
      std::function<void()> op = std::move(ops.front());
      ops.pop_front();
      busy = true;
      lock.unlock();
      if (settings().stream_delays)
        std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(0, 2000)(rng)));
      try {
        if (error == cudaSuccess) op();  // after an error the stream is dead, as on the GPU
      } catch (const std::exception& e) {
        error = set_error(cudaErrorLaunchFailure, e.what());
      }
      lock.lock();
      busy = false;
      cv.notify_all();
    }
  }

  std::mutex mutex;
  std::condition_variable cv;
  std::deque<std::function<void()>> ops;
  bool busy = false, quitting = false;
  cudaError_t error = cudaSuccess;
  std::thread worker;
};

struct EmuEvent {
  std::mutex mutex;
  std::condition_variable cv;
  uint64_t recorded = 0, completed = 0;  // generations
  bool timing = false;
  std::chrono::steady_clock::time_point completed_at;

  void wait_for(uint64_t generation) {
    std::unique_lock lock(mutex);
    cv.wait(lock, [&] { return completed >= generation; });
  }
};

namespace {

EmuStream& stream_or_default(cudaStream_t s) {
  static EmuStream default_stream;
  return s ? *s : default_stream;
}

// The kernel's demangled name, when the binary exports its symbols (ENABLE_EXPORTS), else its address.
std::string kernel_name(const void* func) {
  Dl_info info{};
  if (dladdr(func, &info) && info.dli_sname) {
    int status = 0;
    char* demangled = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
    std::string name = status == 0 ? demangled : info.dli_sname;
    std::free(demangled);
    return name.substr(0, name.find('('));
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", func);
  return buf;
}

std::mutex attribute_mutex;
std::map<const void*, size_t> max_dynamic_shared;  // per kernel, raised by cudaFuncSetAttribute

}  // namespace

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    case cudaErrorNotReady:
      return "device not ready";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
  }
  return "unknown error";
}

std::string last_error_message() {
  std::lock_guard lock(error_mutex);
  return last_message;
}

cudaError_t cudaGetLastError() {
  std::lock_guard lock(error_mutex);
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  if (device != 0) return set_error(cudaErrorInvalidValue, "emu: there is one emulated device, 0");
  *p = {};
  std::strcpy(p->name, "kiln SIMT emulator (H100 limits)");
  {
    std::lock_guard lock(memory_mutex);
    p->totalGlobalMem = memory_total;
  }
  p->sharedMemPerBlock = kDefaultDynamicShared;
  p->sharedMemPerBlockOptin = kMaxDynamicShared;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = kMaxThreadsPerBlock;
  p->maxThreadsDim[0] = 1024, p->maxThreadsDim[1] = 1024, p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647, p->maxGridSize[1] = 65535, p->maxGridSize[2] = 65535;
  p->major = 9, p->minor = 0, p->multiProcessorCount = 132;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : set_error(cudaErrorInvalidValue, "emu: no device " + std::to_string(device));
}

void set_device_memory(size_t bytes) {
  std::lock_guard lock(memory_mutex);
  memory_total = bytes;
}

cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  std::lock_guard lock(memory_mutex);
  *free = memory_total > memory_used ? memory_total - memory_used : 0;
  *total = memory_total;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  *ptr = nullptr;
  std::lock_guard lock(memory_mutex);
  if (bytes > memory_total - std::min(memory_used, memory_total))
    return set_error(cudaErrorMemoryAllocation, "emu: cudaMalloc of " + std::to_string(bytes) + " bytes with " +
                                                    std::to_string(memory_total - memory_used) + " of " +
                                                    std::to_string(memory_total) + " free");
  // Each allocation is its own heap block, so AddressSanitizer sees overruns between them.
  *ptr = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
  if (!*ptr) return set_error(cudaErrorMemoryAllocation, "emu: cudaMalloc of " + std::to_string(bytes) + " bytes");
  std::memset(*ptr, 0xff, bytes);  // fresh device memory is garbage, not zeros
  memory_used += bytes;
  allocations[*ptr] = bytes;
  return cudaSuccess;
}
// Like the GPU's, cudaFree waits for the device to be idle: queued work may still use the memory.
cudaError_t cudaFree(void* ptr) {
  if (!ptr) return cudaSuccess;
  {
    std::lock_guard lock(streams_mutex);
    for (EmuStream* s : streams) s->synchronize();
  }
  std::lock_guard lock(memory_mutex);
  const auto it = allocations.find(ptr);
  if (it == allocations.end())
    return set_error(cudaErrorInvalidValue, "emu: cudaFree of a pointer cudaMalloc did not return");
  memory_used -= it->second;
  allocations.erase(it);
  std::free(ptr);
  return cudaSuccess;
}
// Pinned host memory is host memory: it does not count against the device's.
cudaError_t cudaMallocHost(void** ptr, size_t bytes) {
  *ptr = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
  return *ptr ? cudaSuccess
              : set_error(cudaErrorMemoryAllocation, "emu: cudaMallocHost of " + std::to_string(bytes) + " bytes");
}
cudaError_t cudaFreeHost(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t s) {
  // Zero bytes is a no-op for any pointers, null included, as on a GPU (memcpy would be UB).
  if (bytes > 0) stream_or_default(s).enqueue([=] { std::memcpy(dst, src, bytes); });
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
  return cudaDeviceSynchronize();
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t s) {
  if (bytes > 0) stream_or_default(s).enqueue([=] { std::memset(dst, value, bytes); });
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = new EmuStream();
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete s;  // the destructor drains the queue
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) { return stream_or_default(s).synchronize(); }

// Synchronizes the default stream; kiln keeps track of its own streams and syncs those.
cudaError_t cudaDeviceSynchronize() { return stream_or_default(nullptr).synchronize(); }

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags) {
  *e = new EmuEvent();
  (*e)->timing = !(flags & cudaEventDisableTiming);
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  uint64_t generation;
  {
    std::lock_guard lock(e->mutex);
    generation = ++e->recorded;
  }
  stream_or_default(s).enqueue([e, generation] {
    std::lock_guard lock(e->mutex);
    e->completed = std::max(e->completed, generation);
    e->completed_at = std::chrono::steady_clock::now();
    e->cv.notify_all();
  });
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  uint64_t generation;
  {
    std::lock_guard lock(e->mutex);
    generation = e->recorded;
  }
  e->wait_for(generation);
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!start->timing || !end->timing)
    return set_error(cudaErrorInvalidResourceHandle,
                     "emu: cudaEventElapsedTime: an event was created with cudaEventDisableTiming");
  std::scoped_lock lock(start->mutex, end->mutex);
  if (start->completed == 0 || end->completed == 0 || start->completed < start->recorded ||
      end->completed < end->recorded)
    return set_error(cudaErrorNotReady, "emu: cudaEventElapsedTime: an event has not completed");
  *ms = std::chrono::duration<float, std::milli>(end->completed_at - start->completed_at).count();
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  uint64_t generation;
  {
    std::lock_guard lock(e->mutex);
    generation = e->recorded;  // waits for the work recorded so far, as on the GPU
  }
  stream_or_default(s).enqueue([e, generation] { e->wait_for(generation); });
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || (size_t)value > kMaxDynamicShared)
    return set_error(cudaErrorInvalidValue, "emu: cudaFuncSetAttribute: max dynamic shared memory " +
                                                std::to_string(value) + " outside 0.." +
                                                std::to_string(kMaxDynamicShared));
  std::lock_guard lock(attribute_mutex);
  max_dynamic_shared[func] = value;
  return cudaSuccess;
}

cudaError_t enqueue_on_stream(cudaStream_t stream, std::function<void()> work) {
  stream_or_default(stream).enqueue(std::move(work));
  return cudaSuccess;
}

cudaError_t launch_kernel(const void* func, dim3 grid, dim3 block, size_t dynamic_smem, cudaStream_t stream,
                          std::function<void()> body) {
  const std::string name = kernel_name(func);
  const uint64_t threads = (uint64_t)block.x * block.y * block.z;
  auto bad = [&](const std::string& why) {
    return set_error(cudaErrorInvalidConfiguration, "emu: launch of '" + name + "': " + why);
  };
  if (threads == 0 || threads > kMaxThreadsPerBlock || block.x > 1024 || block.y > 1024 || block.z > 64)
    return bad("block (" + std::to_string(block.x) + "," + std::to_string(block.y) + "," + std::to_string(block.z) +
               ") exceeds the H100's limits (1024 threads; 1024 x 1024 x 64)");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    return bad("grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," + std::to_string(grid.z) +
               ") is empty or exceeds 2^31-1 x 65535 x 65535");
  size_t limit = kDefaultDynamicShared;
  {
    std::lock_guard lock(attribute_mutex);
    if (auto it = max_dynamic_shared.find(func); it != max_dynamic_shared.end()) limit = it->second;
  }
  if (dynamic_smem > limit)
    return bad(std::to_string(dynamic_smem) + " bytes of dynamic shared memory, above the kernel's limit of " +
               std::to_string(limit) + " (raise it with cudaFuncSetAttribute, up to 227 KB)");
  GridLaunch launch{name, grid, block, dynamic_smem, std::move(body)};
  stream_or_default(stream).enqueue([launch = std::move(launch)] { run_grid(launch); });
  return cudaSuccess;
}

}  // namespace kiln::emu
