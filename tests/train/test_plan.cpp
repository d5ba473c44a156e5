// train/plan.h: the planner's memory per category follows from the layout (ZeRO-1 and TP shrink
// what they should), its step model has no communication on one GPU, and GPT-2 1.5B at T = 1024
// on one 80 GiB GPU fits a larger micro-batch with recomputation than without.
#include "train/plan.h"

#include <gtest/gtest.h>

#include <set>

#include <stdexcept>

#include "kernels/ref/ref.h"
#include "model/params.h"

namespace kiln {
namespace {

PlanInput gpt2(const char* preset, int micro_batch) {
  PlanInput in;
  in.model = GPTConfig::preset(preset);
  in.micro_batch = micro_batch;
  in.seq_len = 1024;
  return in;
}

// AdamW's range table: one entry per tensor overlapping the first `count` parameters.
int64_t table_bytes(const ParamLayout& layout, int64_t count) {
  int64_t tensors = 0;
  layout.for_each_overlap(0, count, [&](const ParamSpec&, int64_t, int64_t) { tensors++; });
  return tensors * (int64_t)sizeof(ref::AdamWRange);
}

TEST(Plan, StateBytesFollowTheLayoutAndTheSharding) {
  PlanInput in = gpt2("gpt2-124m", 4);
  const ParamLayout layout(in.model, {1, 0});
  const int64_t P = layout.total();
  MemoryPlan m = plan_memory(in);
  EXPECT_EQ(m.parameters, 2 * P);
  EXPECT_EQ(m.gradients, 4 * P);
  EXPECT_EQ(m.master, 4 * P);
  EXPECT_EQ(m.moments, 8 * P + table_bytes(layout, P));
  EXPECT_EQ(table_bytes(layout, P), 24 * (2 + 12 * 12 + 2));  // wte, wpe, 12 per block, ln_f
  in.gpus = 8;
  in.zero1 = true;  // DP 8
  m = plan_memory(in);
  EXPECT_EQ(m.gradients, 4 * P);
  EXPECT_EQ(m.master, 4 * ((P + 7) / 8));
  EXPECT_EQ(m.moments, 8 * ((P + 7) / 8) + table_bytes(layout, (P + 7) / 8));
  in.tp = 4;  // TP 4 x DP 2
  m = plan_memory(in);
  const int64_t P4 = ParamLayout(in.model, {4, 0}).total();
  EXPECT_LT(P4, P / 3);  // everything but layernorms, row-parallel biases and wpe is split
  EXPECT_EQ(m.parameters, 2 * P4);
  EXPECT_EQ(m.master, 4 * ((P4 + 1) / 2));
}

TEST(Plan, ActivationsGrowWithTheBatchAndShrinkWithRecomputation) {
  PlanInput in = gpt2("gpt2-124m", 4);
  const int64_t none = plan_memory(in).activations;
  in.micro_batch = 8;
  EXPECT_EQ(plan_memory(in).activations, 2 * none);
  in.micro_batch = 4;
  in.recompute = Recompute::mlp;
  const int64_t mlp = plan_memory(in).activations;
  in.recompute = Recompute::block;
  const int64_t block = plan_memory(in).activations;
  EXPECT_LT(mlp, none);
  EXPECT_LT(block, mlp / 4);
}

TEST(Plan, OneGpuHasNoCommunicationAndRunsAtTheKernelEfficiency) {
  const PlanInput in = gpt2("gpt2-124m", 16);
  const StepEstimate e = estimate_step(in);
  EXPECT_EQ(e.tp_comm_s, 0);
  EXPECT_EQ(e.dp_comm_s, 0);
  EXPECT_DOUBLE_EQ(e.step_s, e.compute_s);
  EXPECT_NEAR(e.mfu, in.gpu.kernel_efficiency, 1e-12);
  PlanInput many = in;
  many.gpus = 64;  // 8 nodes: the gradient reduction crosses the network
  const StepEstimate d = estimate_step(many);
  EXPECT_GT(d.dp_comm_s, 0);
  EXPECT_LE(d.mfu, in.gpu.kernel_efficiency);
  EXPECT_NEAR(d.tokens_per_s, 64 * e.tokens_per_s * e.step_s / d.step_s, 1e-6 * d.tokens_per_s);
}

// --search: every TP size dividing both the GPUs and the heads (12 heads: not 8), with ZeRO-1 only
// where there is data parallelism, each layout at its largest micro-batch, fastest first.
TEST(Plan, SearchRanksEveryLayoutThatFits) {
  PlanInput in = gpt2("gpt2-124m", 1);
  in.gpus = 8;
  const std::vector<LayoutChoice> choices = search_layouts(in);
  std::set<int> tps;
  for (size_t i = 0; i < choices.size(); i++) {
    const LayoutChoice& c = choices[i];
    tps.insert(c.tp);
    EXPECT_FALSE(c.zero1 && c.tp == 8);
    PlanInput at = in;
    at.tp = c.tp;
    at.zero1 = c.zero1;
    at.recompute = c.recompute;
    EXPECT_EQ(c.micro_batch, largest_micro_batch(at));
    at.micro_batch = c.micro_batch;
    EXPECT_LE((double)plan_memory(at).total(), in.gpu.memory_bytes);
    EXPECT_EQ(c.memory_bytes, plan_memory(at).total());
    if (i > 0) {
      EXPECT_GE(choices[i - 1].step.tokens_per_s, c.step.tokens_per_s);
    }
  }
  EXPECT_EQ(tps, (std::set<int>{1, 2, 4}));
  EXPECT_EQ(choices.size(), 3u * 2u * 3u);  // 3 TP sizes x ZeRO-1 off/on x 3 recompute settings
}

TEST(Plan, Gpt2XlFitsOneGpuWithALargerMicroBatchWhenRecomputing) {
  PlanInput in = gpt2("gpt2-1558m", 1);
  const int without = largest_micro_batch(in);
  in.recompute = Recompute::block;
  const int with = largest_micro_batch(in);
  EXPECT_GE(without, 1);
  EXPECT_GT(with, without);
  in.micro_batch = with;
  EXPECT_LE((double)plan_memory(in).total(), in.gpu.memory_bytes);
  in.recompute = Recompute::none;
  EXPECT_GT((double)plan_memory(in).total(), in.gpu.memory_bytes) << "micro-batch " << with << " without recompute";
  // Exact, not a power of two: one more sequence than the largest does not fit.
  in.recompute = Recompute::block;
  in.micro_batch = with + 1;
  EXPECT_GT((double)plan_memory(in).total(), in.gpu.memory_bytes);
}

TEST(Plan, LayoutsThatDoNotDivideAreRejected) {
  PlanInput in = gpt2("gpt2-124m", 1);
  in.gpus = 6;
  in.tp = 4;
  EXPECT_THROW(plan_memory(in), std::invalid_argument);
  in.gpus = 5;
  in.tp = 5;  // 12 heads over 5 ranks
  EXPECT_THROW(plan_memory(in), std::invalid_argument);
  EXPECT_THROW(parse_recompute("some"), std::invalid_argument);
}

}  // namespace
}  // namespace kiln
