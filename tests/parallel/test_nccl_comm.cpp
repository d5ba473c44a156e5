// A smoke test of the NCCL Comm on a GPU (label gpu: skipped without one), at world size 1,
// bootstrapped over the one-process Comm: every collective runs on device buffers of the CUDA
// backend, ordered after its stream by an event, with its bytes counted. At world size 1 the
// all-reduces, the broadcast and the barrier are identities, so a Comm that skipped them would
// pass; only the out-of-place reduce-scatter and all-gather (each into a buffer that does not yet
// hold the values) and the counters can fail here. The real check of the collectives is NCCL on
// the emulator over several ranks (issue 24). (Several ranks on GPUs need several GPUs: run this
// binary under mpirun there, with MPI as the bootstrap.)
#include <gtest/gtest.h>

#include <vector>

#include "parallel/device_info.h"
#include "model/cuda_ops.h"
#include "parallel/comm/bf16_bits.h"
#include "parallel/comm/nccl_comm.h"

namespace kiln {
namespace {

TEST(NcclComm, SmokeTestOfEveryCollectiveAtWorldSizeOne) {
  if (query_cuda().devices.empty()) GTEST_SKIP() << "no CUDA device";
  const std::unique_ptr<Ops> ops = cuda::make_cuda_ops({});
  const std::unique_ptr<Comm> self = make_self_comm();
  const std::unique_ptr<Comm> nccl = make_nccl_comm(*self, 60.0);
  ASSERT_EQ(nccl->size(), 1);
  ASSERT_EQ(nccl->rank(), 0);

  std::vector<float> host(1000);
  for (size_t i = 0; i < host.size(); i++) host[i] = 0.5f * (float)i - 7.0f;
  const Buffer a = ops->allocate((int64_t)host.size(), DType::f32), b = ops->allocate((int64_t)host.size(), DType::f32);
  ops->upload(a, host);
  ASSERT_TRUE(nccl->order_after(ops->stream_handle())) << "NCCL orders itself after the compute stream";
  std::span<float> da(a.view().f32(), host.size()), db(b.view().f32(), host.size());
  nccl->all_reduce_sum(da);
  nccl->all_reduce_max(da);
  nccl->all_reduce_sum_start(da);
  nccl->wait_all();
  ops->zero(b.view());
  nccl->reduce_scatter_sum(da, db);
  std::vector<float> out(host.size());
  ops->download(out, b);
  EXPECT_EQ(out, host) << "the reduce-scatter copies one rank's values into a zeroed buffer";

  const Buffer bf = ops->allocate(4, DType::bf16);
  const std::vector<float> small = {1.5f, -2.0f, 0.25f, 3.0f};
  ops->upload(bf, small);
  nccl->all_reduce_sum_bf16(std::span<uint16_t>(static_cast<uint16_t*>(bf.view().data), 4));
  std::vector<float> back(4);
  ops->download(back, bf);
  EXPECT_EQ(back, small);

  ops->zero(a.view());
  nccl->all_gather_bytes(std::as_bytes(std::span<float>(db)), std::as_writable_bytes(std::span<float>(da)));
  nccl->broadcast(std::as_writable_bytes(std::span<float>(da)), 0);
  nccl->barrier();
  ops->download(out, a);
  EXPECT_EQ(out, host) << "the all-gather copies its input into a zeroed buffer";
  EXPECT_EQ(nccl->collectives(), 8);  // wait_all completes the started one: not a collective of its own
  EXPECT_EQ(nccl->bytes(), (int64_t)(4 * host.size() * 6 + 2 * 4));
}

}  // namespace
}  // namespace kiln
