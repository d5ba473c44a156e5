#include "parallel/comm/socket_comm.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "parallel/comm/bf16_bits.h"

namespace kiln {
namespace {

using Clock = std::chrono::steady_clock;

std::string os_error(const std::string& what) { return what + ": " + std::strerror(errno); }

// A file descriptor, closed with its owner.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_ = -1;
};

// What precedes every message: the collective it belongs to and its length, so that ranks that
// issue different collectives are caught instead of mixing their bytes.
enum class Op : uint32_t { hello, ack, sum, max, reduce_scatter, gather, broadcast, barrier };
const char* op_name(Op op) {
  constexpr const char* names[] = {"hello",          "ack",        "all_reduce", "all_reduce_max",
                                   "reduce_scatter", "all_gather", "broadcast",  "barrier"};
  return names[(int)op];
}
constexpr uint32_t kMagic = 0x4e4c494b;  // "KILN"
struct Header {
  uint32_t magic = kMagic;
  Op op = Op::hello;
  uint64_t bytes = 0;
};

// Who this process is, in the rendezvous file and the hello each rank sends rank 0.
struct Hello {
  int32_t rank = 0, size = 0;
  uint64_t nonce = 0;
};

std::string this_host() {
  if (const char* host = std::getenv("KILN_RENDEZVOUS_HOST")) return host;
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) throw std::runtime_error(os_error("gethostname"));
  return name;
}

// A listening socket on a free port of every interface.
std::pair<Fd, int> listen_any(int backlog) {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) throw std::runtime_error(os_error("socket"));
  const int on = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = 0;
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
    throw std::runtime_error(os_error("bind"));
  if (::listen(fd.get(), backlog) != 0) throw std::runtime_error(os_error("listen"));
  socklen_t len = sizeof(addr);
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    throw std::runtime_error(os_error("getsockname"));
  return {std::move(fd), ntohs(addr.sin_port)};
}

// A connection to host:port, or an empty Fd when nobody listens there (yet).
Fd connect_to(const std::string& host, int port) {
  addrinfo hints{}, *found = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0 || !found) return Fd();
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const bool ok = fd.get() >= 0 && ::connect(fd.get(), found->ai_addr, found->ai_addrlen) == 0;
  ::freeaddrinfo(found);
  if (!ok) return Fd();
  const int on = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
  return fd;
}

// Waits for fd to become readable or writable until the deadline; false when it passed.
bool wait_for(int fd, short events, Clock::time_point deadline) {
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, (int)std::min<int64_t>(left, 1000));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) throw std::runtime_error(os_error("poll"));
  }
}

class SocketComm final : public Comm {
 public:
  // peers[r]: the connection to rank r (rank 0 holds one per other rank, the others only [0]).
  SocketComm(int rank, int size, std::vector<Fd> peers, double timeout_s)
      : rank_(rank), size_(size), peers_(std::move(peers)), timeout_s_(timeout_s) {}

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int64_t collectives() const override { return collectives_; }
  int64_t bytes() const override { return bytes_; }
  void set_context(const std::string& where) override { context_ = where; }

  std::unique_ptr<Comm> split(int color, int key) override;

  void all_reduce_sum(std::span<float> d) override {
    reduce(d, Op::sum, [](float a, float b) { return a + b; });
  }
  void all_reduce_max(std::span<float> d) override {
    reduce(d, Op::max, [](float a, float b) { return std::max(a, b); });
  }
  void all_reduce_sum(std::span<double> d) override {
    reduce(d, Op::sum, [](double a, double b) { return a + b; });
  }
  void all_reduce_sum(std::span<int64_t> d) override {
    reduce(d, Op::sum, [](int64_t a, int64_t b) { return a + b; });
  }
  void all_reduce_sum_bf16(std::span<uint16_t> data) override {
    widened_.resize(data.size());
    for (size_t i = 0; i < data.size(); i++) widened_[i] = bf16_to_float(data[i]);
    all_reduce_sum(std::span<float>(widened_));
    for (size_t i = 0; i < data.size(); i++) data[i] = float_to_bf16(widened_[i]);
  }
  // Done at once: the star has nothing to overlap with the caller's work.
  void all_reduce_sum_start(std::span<float> data) override { all_reduce_sum(data); }
  void wait_all() override {}

  void reduce_scatter_sum(std::span<const float> in, std::span<float> out) override {
    if (in.size() != out.size() * size_) throw std::invalid_argument("reduce_scatter_sum: in is not size() x out");
    begin(Op::reduce_scatter, in.size_bytes());
    if (rank_ != 0) {
      send(0, Op::reduce_scatter, in.data(), in.size_bytes());
      return recv(0, Op::reduce_scatter, out.data(), out.size_bytes());
    }
    std::vector<float> sum(in.begin(), in.end()), other(in.size());
    for (int r = 1; r < size_; r++) {
      recv(r, Op::reduce_scatter, other.data(), other.size() * sizeof(float));
      for (size_t i = 0; i < sum.size(); i++) sum[i] += other[i];
    }
    for (int r = 1; r < size_; r++) send(r, Op::reduce_scatter, sum.data() + r * out.size(), out.size_bytes());
    std::copy_n(sum.begin(), out.size(), out.begin());
  }
  void all_gather(std::span<const float> in, std::span<float> out) override {
    all_gather_bytes(std::as_bytes(in), std::as_writable_bytes(out));
  }
  void all_gather_bytes(std::span<const std::byte> in, std::span<std::byte> out) override {
    if (out.size() != in.size() * size_) throw std::invalid_argument("all_gather: out is not size() x in");
    begin(Op::gather, in.size());
    if (rank_ != 0) {
      send(0, Op::gather, in.data(), in.size());
      return recv(0, Op::gather, out.data(), out.size());
    }
    std::copy(in.begin(), in.end(), out.begin());  // in place, rank 0's block is already there
    for (int r = 1; r < size_; r++) recv(r, Op::gather, out.data() + r * in.size(), in.size());
    for (int r = 1; r < size_; r++) send(r, Op::gather, out.data(), out.size());
  }
  void broadcast(std::span<std::byte> data, int root) override {
    if (root < 0 || root >= size_)
      throw std::invalid_argument("broadcast: root " + std::to_string(root) + " of " + std::to_string(size_));
    begin(Op::broadcast, data.size());
    if (root != 0 && rank_ == root) send(0, Op::broadcast, data.data(), data.size());
    if (root != 0 && rank_ == 0) recv(root, Op::broadcast, data.data(), data.size());
    if (rank_ != 0) return recv(0, Op::broadcast, data.data(), data.size());
    for (int r = 1; r < size_; r++) send(r, Op::broadcast, data.data(), data.size());
  }
  void barrier() override {
    int64_t token = 0;
    reduce(std::span<int64_t>(&token, 1), Op::barrier, [](int64_t a, int64_t b) { return a + b; });
  }

 private:
  // The start of a collective: counted with this rank's bytes, and its deadline set.
  void begin(Op op, size_t bytes) {
    collectives_++;
    bytes_ += (int64_t)bytes;
    op_ = op;
    deadline_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s_));
  }
  // Rank 0 combines every rank's values in rank order and sends the result back.
  template <class T, class Combine>
  void reduce(std::span<T> data, Op op, Combine combine) {
    begin(op, op == Op::barrier ? 0 : data.size_bytes());
    if (size_ == 1) return;
    if (rank_ != 0) {
      send(0, op, data.data(), data.size_bytes());
      return recv(0, op, data.data(), data.size_bytes());
    }
    std::vector<T> other(data.size());
    for (int r = 1; r < size_; r++) {
      recv(r, op, other.data(), data.size_bytes());
      for (size_t i = 0; i < data.size(); i++) data[i] = combine(data[i], other[i]);
    }
    for (int r = 1; r < size_; r++) send(r, op, data.data(), data.size_bytes());
  }
  [[noreturn]] void timed_out(const char* doing, int peer) const {
    std::fprintf(stderr,
                 "kiln: rank %d: %s (%s) did not finish within %g s, %s rank %d: another rank has died or hangs; "
                 "ending this process\n",
                 rank_, op_name(op_), context_.empty() ? "start-up" : context_.c_str(), timeout_s_, doing, peer);
    std::fflush(stderr);
    std::_Exit(3);  // the other ranks see the connection close
  }
  std::string where(int peer) const {
    return "rank " + std::to_string(rank_) + ": " + op_name(op_) + " (" + (context_.empty() ? "start-up" : context_) +
           ") with rank " + std::to_string(peer);
  }
  void write_all(int peer, const void* data, size_t bytes) {
    const int fd = peers_[peer].get();
    for (const char* p = static_cast<const char*>(data); bytes > 0;) {
      if (!wait_for(fd, POLLOUT, deadline_)) timed_out("sending to", peer);
      const ssize_t n = ::send(fd, p, bytes, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw std::runtime_error(where(peer) + ": the connection broke (" + std::strerror(errno) + ")");
      p += n, bytes -= (size_t)n;
    }
  }
  void read_all(int peer, void* data, size_t bytes) {
    const int fd = peers_[peer].get();
    for (char* p = static_cast<char*>(data); bytes > 0;) {
      if (!wait_for(fd, POLLIN, deadline_)) timed_out("waiting for", peer);
      const ssize_t n = ::recv(fd, p, bytes, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n == 0) throw std::runtime_error(where(peer) + ": that rank closed the connection (it ended)");
      if (n < 0) throw std::runtime_error(where(peer) + ": " + std::strerror(errno));
      p += n, bytes -= (size_t)n;
    }
  }
  void send(int peer, Op op, const void* data, size_t bytes) {
    const Header h{kMagic, op, bytes};
    write_all(peer, &h, sizeof(h));
    write_all(peer, data, bytes);
  }
  void recv(int peer, Op op, void* data, size_t bytes) {
    Header h;
    read_all(peer, &h, sizeof(h));
    if (h.magic != kMagic || h.op != op || h.bytes != bytes)
      throw std::runtime_error(
          where(peer) + ": it sent " +
          (h.magic == kMagic && (uint32_t)h.op <= (uint32_t)Op::barrier ? op_name(h.op) : "garbage") + " of " +
          std::to_string(h.bytes) + " bytes where " + std::to_string(bytes) +
          " were expected: the ranks issue different collectives");
    read_all(peer, data, bytes);
  }

  int rank_, size_;
  std::vector<Fd> peers_;
  double timeout_s_;
  std::string context_;
  Op op_ = Op::hello;
  Clock::time_point deadline_;
  int64_t collectives_ = 0, bytes_ = 0;
  std::vector<float> widened_;
};

// Rank 0's side of a meeting: accepts size - 1 connections on `listener`, each introduced by a
// Hello with `nonce`; returns them ordered by rank.
std::vector<Fd> accept_ranks(const Fd& listener, int size, uint64_t nonce, Clock::time_point deadline,
                             const std::string& what) {
  std::vector<Fd> peers(size);
  for (int joined = 1; joined < size;) {
    if (!wait_for(listener.get(), POLLIN, deadline))
      throw std::runtime_error(what + ": " + std::to_string(joined) + " of " + std::to_string(size) +
                               " ranks joined before the timeout");
    Fd fd(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (fd.get() < 0) continue;
    Hello hello;
    if (!wait_for(fd.get(), POLLIN, deadline) ||
        ::recv(fd.get(), &hello, sizeof(hello), MSG_WAITALL) != sizeof(hello) || hello.nonce != nonce)
      continue;  // not one of ours (a stale file's reader, a port scan)
    if (hello.size != size)
      throw std::runtime_error(what + ": rank " + std::to_string(hello.rank) + " has WORLD_SIZE=" +
                               std::to_string(hello.size) + ", rank 0 has " + std::to_string(size));
    if (hello.rank < 1 || hello.rank >= size || peers[hello.rank].get() >= 0)
      throw std::runtime_error(what + ": two processes claim rank " + std::to_string(hello.rank));
    const int on = 1;
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    peers[hello.rank] = std::move(fd);
    joined++;
  }
  return peers;
}

// A rank's side: sends its Hello to host:port; empty when nobody (of ours) listens there.
Fd join(const std::string& host, int port, const Hello& hello) {
  Fd fd = connect_to(host, port);
  if (fd.get() < 0) return fd;
  if (::send(fd.get(), &hello, sizeof(hello), MSG_NOSIGNAL) != sizeof(hello)) return Fd();
  return fd;
}

uint64_t random_nonce() {
  std::random_device device;
  return ((uint64_t)device() << 32) ^ device() ^ (uint64_t)::getpid();
}

Clock::time_point deadline_after(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

}  // namespace

std::unique_ptr<Comm> SocketComm::split(int color, int key) {
  // Every rank's (color, key), then each group's members in (key, rank) order.
  const int32_t mine[2] = {color, key};
  std::vector<int32_t> table(2 * size_);
  all_gather_bytes(std::as_bytes(std::span(mine)), std::as_writable_bytes(std::span(table)));
  std::vector<int> members;
  for (int r = 0; r < size_; r++)
    if (table[2 * r] == color) members.push_back(r);
  std::stable_sort(members.begin(), members.end(), [&](int a, int b) { return table[2 * a + 1] < table[2 * b + 1]; });
  const int new_rank = (int)(std::find(members.begin(), members.end(), rank_) - members.begin());
  const int new_size = (int)members.size();
  // The group's first member listens; its address reaches the others through this Comm.
  Fd listener;
  struct Address {
    char host[240] = {};
    int32_t port = 0;
    uint64_t nonce = 0;
  } address;
  if (new_rank == 0 && new_size > 1) {
    int port = 0;
    std::tie(listener, port) = listen_any(new_size);
    std::snprintf(address.host, sizeof(address.host), "%s", this_host().c_str());
    address.port = port;
    address.nonce = random_nonce();
  }
  std::vector<Address> addresses(size_);
  all_gather_bytes(std::as_bytes(std::span(&address, 1)), std::as_writable_bytes(std::span(addresses)));
  const Address& leader = addresses[members[0]];
  const auto deadline = deadline_after(timeout_s_);
  std::vector<Fd> peers(new_size);
  if (new_size > 1 && new_rank == 0) {
    peers = accept_ranks(listener, new_size, leader.nonce, deadline, "split");
  } else if (new_size > 1) {
    peers[0] = join(leader.host, leader.port, Hello{new_rank, new_size, leader.nonce});
    if (peers[0].get() < 0)
      throw std::runtime_error("split: rank " + std::to_string(rank_) + " cannot reach its group's first rank at " +
                               leader.host + ":" + std::to_string(leader.port));
  }
  return std::make_unique<SocketComm>(new_rank, new_size, std::move(peers), timeout_s_);
}

std::unique_ptr<Comm> rendezvous_comm(const ProcessInfo& process, const std::string& file, double timeout_s) {
  if (!(timeout_s > 0)) throw std::invalid_argument("collective timeout must be > 0 s");
  const int rank = process.rank, size = process.world_size;
  const auto deadline = deadline_after(timeout_s);
  const std::string what = "rendezvous through " + file;
  std::vector<Fd> peers(size);
  if (rank == 0) {
    auto [listener, port] = listen_any(size);
    const uint64_t nonce = random_nonce();
    const std::string tmp = file + ".tmp." + std::to_string(::getpid());
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << this_host() << " " << port << " " << size << " " << nonce << "\n";
      out.flush();
      if (!out)
        throw std::runtime_error(tmp + ": cannot write the rendezvous file (is its directory there and shared?)");
    }
    std::filesystem::rename(tmp, file);  // replaces a stale one whole: readers see old or new
    peers = accept_ranks(listener, size, nonce, deadline, what);
    std::filesystem::remove(file);  // every rank is in: the next job must not find it
    for (int r = 1; r < size; r++) {
      const Header ack{kMagic, Op::ack, 0};
      if (::send(peers[r].get(), &ack, sizeof(ack), MSG_NOSIGNAL) != sizeof(ack))
        throw std::runtime_error(what + ": rank " + std::to_string(r) + " left before the start");
    }
  } else {
    // Rank 0's address from the file; retried until it answers (the file may be a previous
    // job's until rank 0 replaces it).
    while (true) {
      std::string host;
      int port = 0, file_size = 0;
      uint64_t nonce = 0;
      std::ifstream in(file);
      if (in >> host >> port >> file_size >> nonce) {
        if (file_size != size)
          throw std::runtime_error(what + ": rank 0 has WORLD_SIZE=" + std::to_string(file_size) + ", rank " +
                                   std::to_string(rank) + " has " + std::to_string(size));
        Fd fd = join(host, port, Hello{rank, size, nonce});
        Header ack;
        if (fd.get() >= 0 && wait_for(fd.get(), POLLIN, deadline) &&
            ::recv(fd.get(), &ack, sizeof(ack), MSG_WAITALL) == sizeof(ack) && ack.op == Op::ack) {
          peers[0] = std::move(fd);
          break;
        }
      }
      if (Clock::now() > deadline)
        throw std::runtime_error(what + ": rank " + std::to_string(rank) + " found no rank 0 within " +
                                 std::to_string((int)timeout_s) + " s");
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  return std::make_unique<SocketComm>(rank, size, std::move(peers), timeout_s);
}

}  // namespace kiln
