// parallel/comm/comm.h over MPI, run under mpiexec with several ranks, and over TCP (--rendezvous FILE,
// processes started with RANK and WORLD_SIZE), and the one-process Comm: each collective's result
// on every rank against the sums computed here from every rank's inputs.
#include "parallel/comm/comm.h"

#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "parallel/comm/bf16_bits.h"
#include "parallel/context.h"
#include "parallel/comm/socket_comm.h"

namespace kiln {
namespace {

Comm* world = nullptr;

// Rank r's i-th input value: distinct per rank and exactly representable in float.
float value(int rank, size_t i) { return (float)(rank * 1000 + (int)i) * 0.5f; }

TEST(Comm, AllReduceSumsOverRanks) {
  const int n = world->size();
  std::vector<float> f(1001);
  std::vector<double> d(3);
  std::vector<int64_t> k(2);
  for (size_t i = 0; i < f.size(); i++) f[i] = value(world->rank(), i);
  for (size_t i = 0; i < d.size(); i++) d[i] = world->rank() + 0.25 * i;
  k = {world->rank() + 1, int64_t(1) << 40};
  world->all_reduce_sum(f);
  world->all_reduce_sum(d);
  world->all_reduce_sum(k);
  for (size_t i = 0; i < f.size(); i++) {
    float want = 0;
    for (int r = 0; r < n; r++) want += value(r, i);
    ASSERT_EQ(f[i], want) << "element " << i;
  }
  for (size_t i = 0; i < d.size(); i++) EXPECT_EQ(d[i], n * (n - 1) / 2.0 + n * 0.25 * i);
  EXPECT_EQ(k[0], (int64_t)n * (n + 1) / 2);
  EXPECT_EQ(k[1], (int64_t)n << 40);
}

TEST(Comm, ReduceScatterGivesEachRankItsBlockOfTheSum) {
  const int n = world->size(), block = 37;
  std::vector<float> in((size_t)n * block), out(block, -1.0f);
  for (size_t i = 0; i < in.size(); i++) in[i] = value(world->rank(), i);
  world->reduce_scatter_sum(in, out);
  for (int i = 0; i < block; i++) {
    float want = 0;
    for (int r = 0; r < n; r++) want += value(r, (size_t)world->rank() * block + i);
    ASSERT_EQ(out[i], want) << "element " << i;
  }
  EXPECT_THROW(world->reduce_scatter_sum(in, std::span<float>(out.data(), block - 1)), std::invalid_argument);
}

TEST(Comm, AllGatherConcatenatesInRankOrder) {
  const int n = world->size(), block = 5;
  std::vector<float> in(block), out((size_t)n * block, -1.0f);
  for (int i = 0; i < block; i++) in[i] = value(world->rank(), i);
  world->all_gather(in, out);
  for (int r = 0; r < n; r++)
    for (int i = 0; i < block; i++) ASSERT_EQ(out[(size_t)r * block + i], value(r, i)) << "rank " << r;
}

TEST(Comm, BroadcastCopiesTheRootsBytes) {
  for (int root = 0; root < world->size(); root++) {
    std::vector<std::byte> data(100, std::byte(world->rank()));
    world->broadcast(data, root);
    for (std::byte b : data) ASSERT_EQ(b, std::byte(root));
  }
  world->barrier();
}

TEST(Comm, AllReduceMaxAndStartedAllReduces) {
  const int n = world->size();
  std::vector<float> m = {(float)world->rank(), -(float)world->rank()}, a(300), b(7);
  world->all_reduce_max(m);
  EXPECT_EQ(m, (std::vector<float>{(float)(n - 1), 0.0f}));
  for (size_t i = 0; i < a.size(); i++) a[i] = value(world->rank(), i);
  for (size_t i = 0; i < b.size(); i++) b[i] = value(world->rank(), i + 9);
  world->all_reduce_sum_start(a);
  world->all_reduce_sum_start(b);
  world->wait_all();
  for (size_t i = 0; i < a.size(); i++) {
    float want = 0;
    for (int r = 0; r < n; r++) want += value(r, i);
    ASSERT_EQ(a[i], want) << "element " << i;
  }
  float want = 0;
  for (int r = 0; r < n; r++) want += value(r, 15);
  EXPECT_EQ(b[6], want);
}

// bf16 sums are made in fp32 and rounded once, to the same bits on every rank: here each rank
// adds 1 + 2^-7 (exact in bf16), and the sum rounds to the nearest bf16.
TEST(Comm, Bf16AllReduceRoundsTheFp32Sum) {
  const int n = world->size();
  std::vector<uint16_t> x = {float_to_bf16(1.0f + 0x1p-7f), float_to_bf16((float)world->rank()), float_to_bf16(-2.5f)};
  world->all_reduce_sum_bf16(x);
  const float sum = n * (1.0f + 0x1p-7f);
  EXPECT_EQ(x[0], float_to_bf16(sum));
  EXPECT_LE(std::abs(bf16_to_float(x[0]) - sum), sum * 0x1p-8f);
  EXPECT_EQ(bf16_to_float(x[1]), n * (n - 1) / 2.0f);
  EXPECT_EQ(bf16_to_float(x[2]), -2.5f * n);
}

TEST(Comm, AllGatherBytesConcatenatesInRankOrder) {
  const int n = world->size();
  std::vector<std::byte> in(3, std::byte(world->rank() + 1)), out(3 * n);
  world->all_gather_bytes(in, out);
  for (int r = 0; r < n; r++)
    for (int i = 0; i < 3; i++) ASSERT_EQ(out[3 * r + i], std::byte(r + 1)) << "rank " << r;
  EXPECT_THROW(world->all_gather_bytes(in, std::span<std::byte>(out).first(2)), std::invalid_argument);
}

// Groups of the ranks with the same color, ordered by key: here odd and even ranks, in reverse.
TEST(Comm, SplitMakesGroupsOrderedByKey) {
  const int n = world->size(), r = world->rank();
  const std::unique_ptr<Comm> group = world->split(r % 2, -r);
  int members = 0, above = 0;
  for (int q = r % 2; q < n; q += 2) members++, above += q > r;
  EXPECT_EQ(group->size(), members);
  EXPECT_EQ(group->rank(), above) << "the highest rank has the lowest key";
  std::vector<int64_t> sum = {r};
  group->all_reduce_sum(sum);
  int64_t want = 0;
  for (int q = r % 2; q < n; q += 2) want += q;
  EXPECT_EQ(sum[0], want);
  group->barrier();
}

TEST(Comm, SelfCommIsTheIdentity) {
  const std::unique_ptr<Comm> self = make_self_comm();
  std::vector<float> f = {1.5f, 2.5f}, out(2);
  self->all_reduce_sum(f);
  EXPECT_EQ(f, (std::vector<float>{1.5f, 2.5f}));
  self->all_gather(f, out);
  EXPECT_EQ(out, f);
  EXPECT_EQ(self->size(), 1);
  EXPECT_THROW(self->broadcast({}, 1), std::invalid_argument);
}

}  // namespace
}  // namespace kiln

// MPI is initialised once for all tests; every rank runs every test and reports its own failures.
// With --stall, rank 1 never joins a barrier (it sleeps outside MPI), rank 2 and above stop their
// process (SIGSTOP: nothing answers for them), and rank 0's watchdog (1 s) must abort the job,
// naming each.
// With --rendezvous FILE the ranks come from RANK and WORLD_SIZE and talk over TCP, without MPI.
int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc > 2 && std::string(argv[1]) == "--rendezvous") {
    const std::unique_ptr<kiln::Comm> comm = kiln::rendezvous_comm(kiln::detect_process(), argv[2], 60.0);
    // With --mismatch, rank 0 enters a barrier where the others all-reduce: rank 0 must say so.
    if (argc > 3 && std::string(argv[3]) == "--mismatch") {
      std::vector<float> x(3);
      try {
        comm->rank() == 0 ? comm->barrier() : comm->all_reduce_sum(x);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
      }
      return 0;
    }
    kiln::world = comm.get();
    if (comm->rank() != 0) ::testing::GTEST_FLAG(print_time) = false;
    return RUN_ALL_TESTS();
  }
  kiln::MpiSession mpi;
  if (argc > 1 && std::string(argv[1]) == "--stall") {
    const std::unique_ptr<kiln::Comm> comm = mpi.world(1.0);
    comm->set_context("step 7");
    if (comm->rank() >= 2) std::raise(SIGSTOP);
    if (comm->rank() == 0) comm->barrier();
    std::this_thread::sleep_for(std::chrono::seconds(60));  // only the watchdog ends this
    return 0;
  }
  const std::unique_ptr<kiln::Comm> comm = mpi.world(60.0);
  kiln::world = comm.get();
  if (comm->rank() != 0) ::testing::GTEST_FLAG(print_time) = false;
  return RUN_ALL_TESTS();
}
