// kiln's device runtime layer: the only code that calls the CUDA runtime. RAII buffers, streams
// and events, checked calls, and `launch`, the one way kiln starts a kernel. Header-only and
// compiled once per backend namespace (see cuda_lang.h), so the same code drives the GPU and the
// emulator.
#pragma once

#include <atomic>
#include <memory>
#include <source_location>
#include <span>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "kernels/device/cuda_lang.h"

namespace kiln::KILN_NS {

// Throws naming the call, file and line, and (on the emulator) the kernel, block and thread.
[[noreturn]] inline void fail_call(cudaError_t error, const char* call, const char* file, int line) {
  std::string message =
      std::string(file) + ":" + std::to_string(line) + ": " + call + ": " + KILN_RT cudaGetErrorString(error);
#ifdef KILN_EMU
  if (const std::string detail = KILN_RT last_error_message(); !detail.empty()) message += "\n  " + detail;
#endif
  throw std::runtime_error(message);
}

#define KILN_CHECK(call)                                                    \
  do {                                                                      \
    if (const cudaError_t kiln_error_ = (call); kiln_error_ != cudaSuccess) \
      ::kiln::KILN_NS::fail_call(kiln_error_, #call, __FILE__, __LINE__);   \
  } while (0)

class Stream {
 public:
  Stream() { KILN_CHECK(KILN_RT cudaStreamCreate(&stream_)); }
  ~Stream() { KILN_RT cudaStreamDestroy(stream_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }
  void synchronize() const { KILN_CHECK(KILN_RT cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t stream_ = nullptr;
};

class Event {
 public:
  // Timing events (for benchmarks and algorithm selection) cost a little more to record.
  explicit Event(bool timing = false) {
    KILN_CHECK(KILN_RT cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault : cudaEventDisableTiming));
  }
  ~Event() { KILN_RT cudaEventDestroy(event_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(const Stream& s) { KILN_CHECK(KILN_RT cudaEventRecord(event_, s.get())); }
  // `s` waits (on the device) for the work recorded so far.
  void make_wait(const Stream& s) const { KILN_CHECK(KILN_RT cudaStreamWaitEvent(s.get(), event_, 0)); }
  void synchronize() const { KILN_CHECK(KILN_RT cudaEventSynchronize(event_)); }
  // Milliseconds from `start` to this event; both timing events, both complete.
  float elapsed_ms_since(const Event& start) const {
    float ms = 0;
    KILN_CHECK(KILN_RT cudaEventElapsedTime(&ms, start.event_, event_));
    return ms;
  }

 private:
  cudaEvent_t event_ = nullptr;
};

// Device allocations made through this layer since the process started (a training step must
// make none: tests read this before and after).
inline std::atomic<int64_t>& device_allocations() {
  static std::atomic<int64_t> count{0};
  return count;
}

struct DeviceMemory {
  size_t free_bytes, total_bytes;
};
inline DeviceMemory device_memory() {
  DeviceMemory m{};
  KILN_CHECK(KILN_RT cudaMemGetInfo(&m.free_bytes, &m.total_bytes));
  return m;
}

// `bytes` of device memory, counted in device_allocations(). Running out throws std::runtime_error
// naming the request and what was free.
inline void* device_malloc(size_t bytes) {
  void* p = nullptr;
  if (KILN_RT cudaMalloc(&p, std::max<size_t>(bytes, 1)) != cudaSuccess) {
    (void)KILN_RT cudaGetLastError();
    const DeviceMemory m = device_memory();
    throw std::runtime_error("out of device memory: allocating " + std::to_string(bytes) + " bytes with " +
                             std::to_string(m.free_bytes) + " of " + std::to_string(m.total_bytes) + " free");
  }
  device_allocations()++;
  return p;
}

// Device memory for n elements of T.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : data_(static_cast<T*>(device_malloc(n * sizeof(T)))), size_(n) {}
  T* data() const { return data_.get(); }
  size_t size() const { return size_; }
  void upload(std::span<const T> host, const Stream& s) {
    check_size(host.size());
    KILN_CHECK(KILN_RT cudaMemcpyAsync(data(), host.data(), host.size_bytes(), cudaMemcpyHostToDevice, s.get()));
  }
  void download(std::span<T> host, const Stream& s) const {
    check_size(host.size());
    KILN_CHECK(KILN_RT cudaMemcpyAsync(host.data(), data(), host.size_bytes(), cudaMemcpyDeviceToHost, s.get()));
  }
  void fill_bytes(int value, const Stream& s) {
    KILN_CHECK(KILN_RT cudaMemsetAsync(data(), value, size_ * sizeof(T), s.get()));
  }
  // Convenience for tests and set-up: a synchronous copy to a new host vector.
  std::vector<T> to_host(const Stream& s) const {
    std::vector<T> out(size_);
    download(out, s);
    s.synchronize();
    return out;
  }

 private:
  void check_size(size_t n) const {
    if (n != size_)
      throw std::invalid_argument("copy of " + std::to_string(n) + " elements into a buffer of " +
                                  std::to_string(size_));
  }
  struct Free {
    void operator()(T* p) const { KILN_RT cudaFree(p); }
  };
  std::unique_ptr<T, Free> data_;
  size_t size_ = 0;
};

// Page-locked host memory for n elements of T: the staging side of asynchronous copies.
template <class T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t n) : size_(n) {
    void* p = nullptr;
    KILN_CHECK(KILN_RT cudaMallocHost(&p, std::max<size_t>(n, 1) * sizeof(T)));
    data_.reset(static_cast<T*>(p));
  }
  T* data() const { return data_.get(); }
  size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(T* p) const { KILN_RT cudaFreeHost(p); }
  };
  std::unique_ptr<T, Free> data_;
  size_t size_ = 0;
};

// Starts `kernel` on `stream`. Each argument is converted to the type of the kernel's parameter
// first: on the GPU, an int passed where the kernel takes size_t would otherwise be read as
// garbage, and the emulator must agree with the GPU.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, const Stream& stream,
            Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "launch: argument count differs from the kernel's parameters");
#ifdef KILN_EMU
  auto packed = std::make_shared<std::tuple<std::decay_t<Params>...>>(static_cast<std::decay_t<Params>>(args)...);
  KILN_CHECK(KILN_RT launch_kernel(reinterpret_cast<const void*>(kernel), grid, block, shared_bytes, stream.get(),
                                   [kernel, packed] { std::apply(kernel, *packed); }));
#else
  kernel<<<grid, block, shared_bytes, stream.get()>>>(static_cast<std::decay_t<Params>>(args)...);
  KILN_CHECK(KILN_RT cudaGetLastError());
#endif
}

// Raises a kernel's dynamic shared memory limit above the default 48 KB (up to 227 KB on H100).
template <class... Params>
void set_max_dynamic_shared(void (*kernel)(Params...), size_t bytes) {
  KILN_CHECK(KILN_RT cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

}  // namespace kiln::KILN_NS
