#include "parallel/comm.h"

#include <mpi.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace kiln {
namespace {

// Throws naming the call and MPI's own description of the error.
void check(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  throw std::runtime_error(std::string(call) + ": " + std::string(text, len));
}
#define KILN_MPI_CHECK(call) check((call), #call)

void require_size(size_t got, size_t want, const char* what) {
  if (got != want)
    throw std::invalid_argument(std::string(what) + ": buffer of " + std::to_string(got) + " values, expected " +
                                std::to_string(want));
}

class SelfComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce_sum(std::span<float>) override {}
  void all_reduce_sum(std::span<double>) override {}
  void all_reduce_sum(std::span<int64_t>) override {}
  void reduce_scatter_sum(std::span<const float> in, std::span<float> out) override {
    require_size(in.size(), out.size(), "reduce_scatter_sum");
    std::copy(in.begin(), in.end(), out.begin());
  }
  void all_gather(std::span<const float> in, std::span<float> out) override {
    require_size(out.size(), in.size(), "all_gather");
    std::copy(in.begin(), in.end(), out.begin());
  }
  void broadcast(std::span<std::byte>, int root) override {
    if (root != 0) throw std::invalid_argument("broadcast: root " + std::to_string(root) + " in a group of 1");
  }
  void barrier() override {}
};

// Counts above INT_MAX go in pieces: MPI's counts are int.
constexpr size_t kMaxCount = size_t(1) << 30;

class MpiComm final : public Comm {
 public:
  explicit MpiComm(MPI_Comm parent) {
    KILN_MPI_CHECK(MPI_Comm_dup(parent, &comm_));
    KILN_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));  // errors become exceptions
    KILN_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    KILN_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  }
  ~MpiComm() override { MPI_Comm_free(&comm_); }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void all_reduce_sum(std::span<float> data) override { all_reduce(data.data(), data.size(), MPI_FLOAT); }
  void all_reduce_sum(std::span<double> data) override { all_reduce(data.data(), data.size(), MPI_DOUBLE); }
  void all_reduce_sum(std::span<int64_t> data) override { all_reduce(data.data(), data.size(), MPI_INT64_T); }
  void reduce_scatter_sum(std::span<const float> in, std::span<float> out) override {
    require_size(in.size(), out.size() * size_, "reduce_scatter_sum");
    if (out.size() > kMaxCount) throw std::invalid_argument("reduce_scatter_sum: block above 2^30 values");
    KILN_MPI_CHECK(MPI_Reduce_scatter_block(in.data(), out.data(), (int)out.size(), MPI_FLOAT, MPI_SUM, comm_));
  }
  void all_gather(std::span<const float> in, std::span<float> out) override {
    require_size(out.size(), in.size() * size_, "all_gather");
    if (in.size() > kMaxCount) throw std::invalid_argument("all_gather: block above 2^30 values");
    KILN_MPI_CHECK(MPI_Allgather(in.data(), (int)in.size(), MPI_FLOAT, out.data(), (int)in.size(), MPI_FLOAT, comm_));
  }
  void broadcast(std::span<std::byte> data, int root) override {
    for (size_t at = 0; at < data.size(); at += kMaxCount)
      KILN_MPI_CHECK(MPI_Bcast(data.data() + at, (int)std::min(kMaxCount, data.size() - at), MPI_BYTE, root, comm_));
  }
  void barrier() override { KILN_MPI_CHECK(MPI_Barrier(comm_)); }

 private:
  void all_reduce(void* data, size_t count, MPI_Datatype type) {
    int bytes = 0;
    KILN_MPI_CHECK(MPI_Type_size(type, &bytes));
    for (size_t at = 0; at < count; at += kMaxCount)
      KILN_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, static_cast<char*>(data) + at * bytes, (int)std::min(kMaxCount, count - at),
                                   type, MPI_SUM, comm_));
  }
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
};

}  // namespace

std::unique_ptr<Comm> make_self_comm() { return std::make_unique<SelfComm>(); }

MpiSession::MpiSession() {
  int provided = MPI_THREAD_SINGLE;
  KILN_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided));
  if (provided < MPI_THREAD_MULTIPLE) {
    MPI_Finalize();
    throw std::runtime_error("MPI grants thread level " + std::to_string(provided) +
                             ", below MPI_THREAD_MULTIPLE, which kiln needs (loader and checkpoint threads)");
  }
}

MpiSession::~MpiSession() { MPI_Finalize(); }

std::unique_ptr<Comm> MpiSession::world() const { return std::make_unique<MpiComm>(MPI_COMM_WORLD); }

}  // namespace kiln
