#include "parallel/comm/comm.h"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>
#include <stdexcept>
#include <string>

#include "parallel/comm/bf16_bits.h"

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
  std::unique_ptr<Comm> split(int, int) override { return std::make_unique<SelfComm>(); }
  int64_t collectives() const override { return 0; }
  int64_t bytes() const override { return 0; }
  void all_reduce_sum(std::span<float>) override {}
  void all_reduce_max(std::span<float>) override {}
  void all_reduce_sum(std::span<double>) override {}
  void all_reduce_sum(std::span<int64_t>) override {}
  void all_reduce_sum_bf16(std::span<uint16_t>) override {}
  void all_reduce_sum_start(std::span<float>) override {}
  void wait_all() override {}
  void reduce_scatter_sum(std::span<const float> in, std::span<float> out) override {
    require_size(in.size(), out.size(), "reduce_scatter_sum");
    std::copy(in.begin(), in.end(), out.begin());
  }
  void all_gather(std::span<const float> in, std::span<float> out) override {
    require_size(out.size(), in.size(), "all_gather");
    std::copy(in.begin(), in.end(), out.begin());
  }
  void all_gather_bytes(std::span<const std::byte> in, std::span<std::byte> out) override {
    require_size(out.size(), in.size(), "all_gather_bytes");
    std::memmove(out.data(), in.data(), in.size());
  }
  void broadcast(std::span<std::byte>, int root) override {
    if (root != 0) throw std::invalid_argument("broadcast: root " + std::to_string(root) + " in a group of 1");
  }
  void barrier() override {}
  void set_context(const std::string&) override {}
};

// Counts above INT_MAX go in pieces: MPI's counts are int.
constexpr size_t kMaxCount = size_t(1) << 30;

// Aborts the job when a collective takes longer than the timeout: a thread that looks at the
// collective in flight every 100 ms. MPI_Abort from it is allowed under MPI_THREAD_MULTIPLE.
//
// Before aborting, it asks every other rank where it is, over a communicator of its own: each
// rank's watchdog thread answers for its rank even while the rank's main thread is stuck. So the
// report names the rank that stopped answering (a stopped or starved process), the ranks that have
// not reached this collective (stuck outside MPI), and those waiting in it, not only this rank.
class Watchdog {
 public:
  Watchdog(MPI_Comm comm, double timeout_s) : timeout_(timeout_s) {
    KILN_MPI_CHECK(MPI_Comm_dup(comm, &side_));
    KILN_MPI_CHECK(MPI_Comm_set_errhandler(side_, MPI_ERRORS_RETURN));
    KILN_MPI_CHECK(MPI_Comm_rank(side_, &rank_));
    KILN_MPI_CHECK(MPI_Comm_size(side_, &size_));
    // Reports name world ranks, which is what mpirun and the logs name.
    MPI_Group group = MPI_GROUP_NULL, world = MPI_GROUP_NULL;
    KILN_MPI_CHECK(MPI_Comm_group(side_, &group));
    KILN_MPI_CHECK(MPI_Comm_group(MPI_COMM_WORLD, &world));
    std::vector<int> ranks(size_);
    for (int r = 0; r < size_; r++) ranks[r] = r;
    world_rank_.resize(size_);
    KILN_MPI_CHECK(MPI_Group_translate_ranks(group, size_, ranks.data(), world, world_rank_.data()));
    MPI_Group_free(&group);
    MPI_Group_free(&world);
    KILN_MPI_CHECK(MPI_Irecv(&query_, 1, MPI_INT, MPI_ANY_SOURCE, kQueryTag, side_, &query_request_));
    thread_ = std::thread([this] { watch(); });
  }
  ~Watchdog() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
    MPI_Cancel(&query_request_);
    MPI_Wait(&query_request_, MPI_STATUS_IGNORE);
    MPI_Comm_free(&side_);
  }
  void begin(const char* op) {
    std::lock_guard lock(mutex_);
    op_ = op;
    entered_++;
    since_ = Clock::now();
  }
  void end() {
    std::lock_guard lock(mutex_);
    op_ = nullptr;
    since_ = Clock::now();
  }
  void set_context(const std::string& where) {
    std::lock_guard lock(mutex_);
    context_ = where;
  }

 private:
  using Clock = std::chrono::steady_clock;
  static constexpr int kQueryTag = 1, kAnswerTag = 2;
  static constexpr int kAsk = 0;  // a query's content: its tag says it all

  // Where a rank is, as its watchdog answers a query.
  struct Whereabouts {
    int64_t entered = 0;  // collectives begun on this communicator, the one in flight included
    int in_collective = 0;
    double seconds = 0;  // in the collective, or since the last one ended
    char op[48] = {};
    char context[96] = {};
  };

  Whereabouts whereabouts() const {  // under mutex_
    Whereabouts w;
    w.entered = entered_;
    w.in_collective = op_ != nullptr;
    w.seconds = std::chrono::duration<double>(Clock::now() - since_).count();
    std::snprintf(w.op, sizeof w.op, "%s", op_ ? op_ : "");
    std::snprintf(w.context, sizeof w.context, "%s", context_.empty() ? "start-up" : context_.c_str());
    return w;
  }

  void watch() {
    std::unique_lock lock(mutex_);
    while (!wake_.wait_for(lock, std::chrono::milliseconds(100), [&] { return stop_; })) {
      answer_queries();
      if (!op_ || std::chrono::duration<double>(Clock::now() - since_).count() < timeout_) continue;
      const Whereabouts mine = whereabouts();
      lock.unlock();
      std::string report = fmt_line(
          "rank %d: %s (%s) did not finish within %g s: another rank has died or hangs; "
          "aborting the job\n",
          world_rank_[rank_], mine.op, mine.context, timeout_);
      report += ask_the_others(mine);
      std::fputs(report.c_str(), stderr);
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 3);
      std::abort();  // MPI_Abort does not return
    }
  }

  // Answers every query that has arrived with this rank's whereabouts (the lock is held).
  void answer_queries() {
    for (;;) {
      int arrived = 0;
      MPI_Status status;
      if (MPI_Test(&query_request_, &arrived, &status) != MPI_SUCCESS || !arrived) return;
      const Whereabouts w = whereabouts();
      MPI_Send(&w, sizeof w, MPI_BYTE, status.MPI_SOURCE, kAnswerTag, side_);
      if (MPI_Irecv(&query_, 1, MPI_INT, MPI_ANY_SOURCE, kQueryTag, side_, &query_request_) != MPI_SUCCESS) return;
    }
  }

  // Asks every other rank where it is, waits a while for the answers, and says what they mean.
  std::string ask_the_others(const Whereabouts& mine) {
    const double patience = std::clamp(timeout_ / 10, 1.0, 5.0);
    std::vector<Whereabouts> answers(size_);
    std::vector<MPI_Request> asks, answered(size_, MPI_REQUEST_NULL);
    for (int r = 0; r < size_; r++) {
      if (r == rank_) continue;
      MPI_Irecv(&answers[r], sizeof(Whereabouts), MPI_BYTE, r, kAnswerTag, side_, &answered[r]);
      asks.emplace_back();
      MPI_Isend(&kAsk, 1, MPI_INT, r, kQueryTag, side_, &asks.back());
    }
    std::vector<bool> heard(size_, false);
    for (const auto deadline = Clock::now() + std::chrono::duration<double>(patience); Clock::now() < deadline;) {
      int waiting = 0;
      for (int r = 0; r < size_; r++) {
        if (r == rank_ || heard[r]) continue;
        int done = 0;
        if (MPI_Test(&answered[r], &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && done)
          heard[r] = true;
        else
          waiting++;
      }
      if (waiting == 0) break;
      {
        // Another rank that timed out too asks this one at the same moment.
        std::lock_guard lock(mutex_);
        answer_queries();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::string report, silent, absent;
    for (int r = 0; r < size_; r++) {
      if (r == rank_) continue;
      const int who = world_rank_[r];
      const Whereabouts& w = answers[r];
      if (!heard[r]) {
        report += fmt_line("rank %d: rank %d did not answer within %g s: its process is stopped, dead or starved\n",
                           world_rank_[rank_], who, patience);
        silent += (silent.empty() ? "" : ", ") + std::to_string(who);
      } else if (!w.in_collective && w.entered < mine.entered) {
        report += fmt_line(
            "rank %d: rank %d has not reached this collective (number %lld here): it has finished "
            "%lld, and has been outside MPI for %.1f s (%s)\n",
            world_rank_[rank_], who, (long long)mine.entered, (long long)w.entered, w.seconds, w.context);
        absent += (absent.empty() ? "" : ", ") + std::to_string(who);
      } else if (w.in_collective && w.entered == mine.entered) {
        report += fmt_line("rank %d: rank %d waits in %s (%s) too, for %.1f s\n", world_rank_[rank_], who, w.op,
                           w.context, w.seconds);
      } else {
        report += fmt_line(
            "rank %d: rank %d has begun %lld collectives and is %s%s (%s); this is number %lld here: "
            "the ranks disagree on the order of collectives\n",
            world_rank_[rank_], who, (long long)w.entered, w.in_collective ? "in " : "in none, ",
            w.in_collective ? w.op : "past this one", w.context, (long long)mine.entered);
        absent += (absent.empty() ? "" : ", ") + std::to_string(who);
      }
    }
    if (!silent.empty())
      report += fmt_line("rank %d: stopped answering: rank %s\n", world_rank_[rank_], silent.c_str());
    if (!absent.empty())
      report += fmt_line("rank %d: not in this collective: rank %s\n", world_rank_[rank_], absent.c_str());
    return report;
  }

  template <class... Args>
  static std::string fmt_line(const char* format, Args... args) {
    char line[512];
    std::snprintf(line, sizeof line, format, args...);
    return std::string("kiln: ") + line;
  }

  const double timeout_;
  MPI_Comm side_ = MPI_COMM_NULL;  // queries and answers only, never a collective
  int rank_ = 0, size_ = 1;
  std::vector<int> world_rank_;
  int query_ = 0;
  MPI_Request query_request_ = MPI_REQUEST_NULL;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  const char* op_ = nullptr;
  int64_t entered_ = 0;
  Clock::time_point since_ = Clock::now();
  std::string context_;
  std::thread thread_;  // started last, after the state it reads
};

class MpiComm final : public Comm {
 public:
  MpiComm(MPI_Comm parent, double timeout_s) : timeout_s_(timeout_s) {
    KILN_MPI_CHECK(MPI_Comm_dup(parent, &comm_));
    KILN_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));  // errors become exceptions
    KILN_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    KILN_MPI_CHECK(MPI_Comm_size(comm_, &size_));
    watchdog_ = std::make_unique<Watchdog>(comm_, timeout_s);
  }
  ~MpiComm() override {
    watchdog_.reset();
    MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::unique_ptr<Comm> split(int color, int key) override {
    MPI_Comm part = MPI_COMM_NULL;
    {
      const Watched w(*watchdog_, "split");
      KILN_MPI_CHECK(MPI_Comm_split(comm_, color, key, &part));
    }
    auto out = std::make_unique<MpiComm>(part, timeout_s_);  // duplicates it
    MPI_Comm_free(&part);
    return out;
  }
  int64_t collectives() const override { return collectives_; }
  int64_t bytes() const override { return bytes_; }
  void all_reduce_sum(std::span<float> data) override { all_reduce(data.data(), data.size(), MPI_FLOAT, MPI_SUM); }
  void all_reduce_max(std::span<float> data) override { all_reduce(data.data(), data.size(), MPI_FLOAT, MPI_MAX); }
  void all_reduce_sum(std::span<double> data) override { all_reduce(data.data(), data.size(), MPI_DOUBLE, MPI_SUM); }
  void all_reduce_sum(std::span<int64_t> data) override { all_reduce(data.data(), data.size(), MPI_INT64_T, MPI_SUM); }
  void all_reduce_sum_start(std::span<float> data) override {
    collectives_++;
    bytes_ += (int64_t)data.size_bytes();
    for (size_t at = 0; at < data.size(); at += kMaxCount) {
      pending_.emplace_back();
      KILN_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data.data() + at, (int)std::min(kMaxCount, data.size() - at),
                                    MPI_FLOAT, MPI_SUM, comm_, &pending_.back()));
    }
    // MPI moves non-blocking collectives forward inside its calls: a test here lets the earlier
    // buckets progress while the backward pass computes the next ones.
    int done = 0;
    KILN_MPI_CHECK(MPI_Testall((int)pending_.size(), pending_.data(), &done, MPI_STATUSES_IGNORE));
  }
  void wait_all() override {
    const Watched w(*watchdog_, "all_reduce_sum (bucketed)");
    KILN_MPI_CHECK(MPI_Waitall((int)pending_.size(), pending_.data(), MPI_STATUSES_IGNORE));
    pending_.clear();
  }
  void all_reduce_sum_bf16(std::span<uint16_t> data) override {
    // Widening is exact; the fp32 sum is the same on every rank, and so is its rounding.
    widened_.resize(data.size());
    for (size_t i = 0; i < data.size(); i++) widened_[i] = bf16_to_float(data[i]);
    all_reduce(widened_.data(), widened_.size(), MPI_FLOAT, MPI_SUM);
    for (size_t i = 0; i < data.size(); i++) data[i] = float_to_bf16(widened_[i]);
  }
  void reduce_scatter_sum(std::span<const float> in, std::span<float> out) override {
    require_size(in.size(), out.size() * size_, "reduce_scatter_sum");
    if (out.size() > kMaxCount) throw std::invalid_argument("reduce_scatter_sum: block above 2^30 values");
    const Watched w = collective("reduce_scatter_sum", in.size_bytes());
    KILN_MPI_CHECK(MPI_Reduce_scatter_block(in.data(), out.data(), (int)out.size(), MPI_FLOAT, MPI_SUM, comm_));
  }
  void all_gather(std::span<const float> in, std::span<float> out) override {
    require_size(out.size(), in.size() * size_, "all_gather");
    if (in.size() > kMaxCount) throw std::invalid_argument("all_gather: block above 2^30 values");
    const Watched w = collective("all_gather", in.size_bytes());
    KILN_MPI_CHECK(MPI_Allgather(in.data(), (int)in.size(), MPI_FLOAT, out.data(), (int)in.size(), MPI_FLOAT, comm_));
  }
  void all_gather_bytes(std::span<const std::byte> in, std::span<std::byte> out) override {
    require_size(out.size(), in.size() * size_, "all_gather_bytes");
    if (in.size() > kMaxCount) throw std::invalid_argument("all_gather_bytes: block above 2^30 bytes");
    const Watched w = collective("all_gather", in.size());
    const bool in_place = in.data() == out.data() + rank_ * in.size();  // MPI wants that said
    KILN_MPI_CHECK(MPI_Allgather(in_place ? MPI_IN_PLACE : in.data(), (int)in.size(), MPI_BYTE, out.data(),
                                 (int)in.size(), MPI_BYTE, comm_));
  }
  void broadcast(std::span<std::byte> data, int root) override {
    const Watched w = collective("broadcast", data.size());
    for (size_t at = 0; at < data.size(); at += kMaxCount)
      KILN_MPI_CHECK(MPI_Bcast(data.data() + at, (int)std::min(kMaxCount, data.size() - at), MPI_BYTE, root, comm_));
  }
  void barrier() override {
    const Watched w = collective("barrier", 0);
    KILN_MPI_CHECK(MPI_Barrier(comm_));
  }
  void set_context(const std::string& where) override { watchdog_->set_context(where); }

 private:
  // The operation in flight, for the watchdog, for the lifetime of the object.
  struct Watched {
    Watched(Watchdog& w, const char* op) : watchdog(w) { watchdog.begin(op); }
    ~Watched() { watchdog.end(); }
    Watchdog& watchdog;
  };
  // A blocking collective: counted, and watched while it runs.
  Watched collective(const char* op, size_t bytes) {
    collectives_++;
    bytes_ += (int64_t)bytes;
    return Watched(*watchdog_, op);
  }
  void all_reduce(void* data, size_t count, MPI_Datatype type, MPI_Op op) {
    int bytes = 0;
    KILN_MPI_CHECK(MPI_Type_size(type, &bytes));
    const Watched w = collective(op == MPI_MAX ? "all_reduce_max" : "all_reduce_sum", count * bytes);
    for (size_t at = 0; at < count; at += kMaxCount)
      KILN_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, static_cast<char*>(data) + at * bytes,
                                   (int)std::min(kMaxCount, count - at), type, op, comm_));
  }
  double timeout_s_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  int64_t collectives_ = 0, bytes_ = 0;
  std::vector<float> widened_;        // all_reduce_sum_bf16's fp32 copy
  std::vector<MPI_Request> pending_;  // started by all_reduce_sum_start; completed requests become null
  std::unique_ptr<Watchdog> watchdog_;
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

void MpiSession::abort_job(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::abort();  // MPI_Abort does not return; this keeps [[noreturn]] honest
}

std::unique_ptr<Comm> MpiSession::world(double timeout_s) const {
  if (!(timeout_s > 0)) throw std::invalid_argument("collective timeout must be > 0 s");
  return std::make_unique<MpiComm>(MPI_COMM_WORLD, timeout_s);
}

}  // namespace kiln
