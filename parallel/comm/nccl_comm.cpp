#include "parallel/comm/nccl_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>

namespace kiln {
namespace {

#define KILN_NCCL_CHECK(call)                                                               \
  do {                                                                                      \
    if (const ncclResult_t kiln_nccl_ = (call); kiln_nccl_ != ncclSuccess)                  \
      throw std::runtime_error(std::string(#call) + ": " + ncclGetErrorString(kiln_nccl_)); \
  } while (0)
#define KILN_CUDA_CHECK(call)                                                               \
  do {                                                                                      \
    if (const cudaError_t kiln_cuda_ = (call); kiln_cuda_ != cudaSuccess)                   \
      throw std::runtime_error(std::string(#call) + ": " + cudaGetErrorString(kiln_cuda_)); \
  } while (0)

class NcclComm final : public Comm {
 public:
  NcclComm(ncclComm_t comm, double timeout_s, std::string context = {})
      : comm_(comm), timeout_s_(timeout_s), context_(std::move(context)) {
    KILN_NCCL_CHECK(ncclCommUserRank(comm_, &rank_));
    KILN_NCCL_CHECK(ncclCommCount(comm_, &size_));
    KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    KILN_CUDA_CHECK(cudaMalloc(&token_, sizeof(float)));
    KILN_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
  }
  ~NcclComm() override {
    cudaStreamSynchronize(stream_);
    cudaEventDestroy(ready_);
    cudaFree(token_);
    cudaStreamDestroy(stream_);
    ncclCommDestroy(comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::unique_ptr<Comm> split(int color, int key) override {
    ncclComm_t part = nullptr;
    KILN_NCCL_CHECK(ncclCommSplit(comm_, color, key, &part, nullptr));
    return std::make_unique<NcclComm>(part, timeout_s_, context_);
  }
  int64_t collectives() const override { return collectives_; }
  int64_t bytes() const override { return bytes_; }
  bool order_after(void* stream) override {
    KILN_CUDA_CHECK(cudaEventRecord(ready_, static_cast<cudaStream_t>(stream)));
    KILN_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
    return true;
  }
  void all_reduce_sum(std::span<float> d) override {
    blocking([&] { all_reduce(d.data(), d.size(), ncclFloat, ncclSum); }, "all_reduce_sum", d.size_bytes());
  }
  void all_reduce_max(std::span<float> d) override {
    blocking([&] { all_reduce(d.data(), d.size(), ncclFloat, ncclMax); }, "all_reduce_max", d.size_bytes());
  }
  void all_reduce_sum(std::span<double> d) override {
    blocking([&] { all_reduce(d.data(), d.size(), ncclDouble, ncclSum); }, "all_reduce_sum", d.size_bytes());
  }
  void all_reduce_sum(std::span<int64_t> d) override {
    blocking([&] { all_reduce(d.data(), d.size(), ncclInt64, ncclSum); }, "all_reduce_sum", d.size_bytes());
  }
  void all_reduce_sum_bf16(std::span<uint16_t> d) override {
    blocking([&] { all_reduce(d.data(), d.size(), ncclBfloat16, ncclSum); }, "all_reduce_sum", d.size_bytes());
  }
  void all_reduce_sum_start(std::span<float> d) override {
    collectives_++;
    bytes_ += (int64_t)d.size_bytes();
    all_reduce(d.data(), d.size(), ncclFloat, ncclSum);
  }
  void wait_all() override { wait("all_reduce_sum (bucketed)"); }
  void reduce_scatter_sum(std::span<const float> in, std::span<float> out) override {
    if (in.size() != out.size() * size_) throw std::invalid_argument("reduce_scatter_sum: in is not size() x out");
    blocking(
        [&] {
          KILN_NCCL_CHECK(ncclReduceScatter(in.data(), out.data(), out.size(), ncclFloat, ncclSum, comm_, stream_));
        },
        "reduce_scatter_sum", in.size_bytes());
  }
  void all_gather(std::span<const float> in, std::span<float> out) override {
    if (out.size() != in.size() * size_) throw std::invalid_argument("all_gather: out is not size() x in");
    blocking([&] { KILN_NCCL_CHECK(ncclAllGather(in.data(), out.data(), in.size(), ncclFloat, comm_, stream_)); },
             "all_gather", in.size_bytes());
  }
  void all_gather_bytes(std::span<const std::byte> in, std::span<std::byte> out) override {
    if (out.size() != in.size() * size_) throw std::invalid_argument("all_gather_bytes: out is not size() x in");
    blocking([&] { KILN_NCCL_CHECK(ncclAllGather(in.data(), out.data(), in.size(), ncclUint8, comm_, stream_)); },
             "all_gather", in.size());
  }
  void broadcast(std::span<std::byte> data, int root) override {
    blocking(
        [&] { KILN_NCCL_CHECK(ncclBroadcast(data.data(), data.data(), data.size(), ncclUint8, root, comm_, stream_)); },
        "broadcast", data.size());
  }
  void barrier() override {
    blocking([&] { KILN_NCCL_CHECK(ncclAllReduce(token_, token_, 1, ncclFloat, ncclSum, comm_, stream_)); }, "barrier",
             0);
  }
  void set_context(const std::string& where) override { context_ = where; }

 private:
  void all_reduce(void* data, size_t count, ncclDataType_t type, ncclRedOp_t op) {
    KILN_NCCL_CHECK(ncclAllReduce(data, data, count, type, op, comm_, stream_));
  }
  template <class Enqueue>
  void blocking(Enqueue&& enqueue, const char* op, size_t bytes) {
    collectives_++;
    bytes_ += (int64_t)bytes;
    enqueue();
    wait(op);
  }
  // Polls the stream: NCCL has no timeout of its own, and a dead peer would hang it forever.
  void wait(const char* op) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
    while (true) {
      const cudaError_t state = cudaStreamQuery(stream_);
      if (state == cudaSuccess) return;
      if (state != cudaErrorNotReady) KILN_CUDA_CHECK(state);
      ncclResult_t async = ncclSuccess;
      KILN_NCCL_CHECK(ncclCommGetAsyncError(comm_, &async));
      if (async != ncclSuccess) throw std::runtime_error(std::string("nccl ") + op + ": " + ncclGetErrorString(async));
      if (std::chrono::steady_clock::now() > deadline) {
        std::fprintf(stderr, "kiln: rank %d: nccl %s unfinished after %.0f s (%s); aborting the job\n", rank_, op,
                     timeout_s_, context_.c_str());
        ncclCommAbort(comm_);
        std::abort();  // the launcher (mpirun, srun) then ends the other ranks
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  ncclComm_t comm_;
  cudaStream_t stream_ = nullptr;
  double timeout_s_;
  std::string context_;
  int rank_ = 0, size_ = 1;
  int64_t collectives_ = 0, bytes_ = 0;
  float* token_ = nullptr;       // one device float, all-reduced by barrier()
  cudaEvent_t ready_ = nullptr;  // order_after's: recorded on the compute stream, waited for on ours
};

}  // namespace

std::unique_ptr<Comm> make_nccl_comm(Comm& bootstrap, double timeout_s) {
  ncclUniqueId id{};
  if (bootstrap.rank() == 0) KILN_NCCL_CHECK(ncclGetUniqueId(&id));
  bootstrap.broadcast(std::as_writable_bytes(std::span(&id, 1)), 0);
  ncclComm_t comm = nullptr;
  KILN_NCCL_CHECK(ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank()));
  return std::make_unique<NcclComm>(comm, timeout_s);
}

}  // namespace kiln
