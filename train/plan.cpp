#include "train/plan.h"

#include <algorithm>
#include <stdexcept>

#include "model/cuda_ops.h"
#include "model/params.h"
#include "train/trainer.h"

namespace kiln {
namespace {

constexpr int64_t kBf16 = 2, kFp32 = 4, kI32 = 4;

int dp_size(const PlanInput& in) {
  if (in.gpus < 1 || in.tp < 1 || in.gpus % in.tp != 0)
    throw std::invalid_argument(std::to_string(in.gpus) + " GPUs do not split into tensor-parallel groups of " +
                                std::to_string(in.tp));
  if (in.micro_batch < 1 || in.seq_len < 1 || in.seq_len > in.model.max_seq_len)
    throw std::invalid_argument("micro-batch " + std::to_string(in.micro_batch) + " x " + std::to_string(in.seq_len) +
                                ": expected >= 1 sequence of 1.." + std::to_string(in.model.max_seq_len) + " tokens");
  return in.gpus / in.tp;
}

// All-reduce of `bytes` over `ranks` by a ring: each rank sends and receives 2 (k - 1) / k of it.
double all_reduce_s(double bytes, int ranks, double gb_per_s) {
  return ranks <= 1 ? 0.0 : 2.0 * (ranks - 1) / ranks * bytes / (gb_per_s * 1e9);
}

}  // namespace

MemoryPlan plan_memory(const PlanInput& in) {
  const int dp = dp_size(in);
  const bool cpu = in.backend == PlanBackend::cpu;
  const int64_t w = cpu ? kFp32 : kBf16;  // parameters and activations
  const LocalShape s(in.model, {in.tp, 0});
  const ParamLayout layout(in.model, {in.tp, 0});
  const int64_t P = layout.total();                                  // this rank's parameters
  const int64_t share = in.zero1 && dp > 1 ? (P + dp - 1) / dp : P;  // rank 0's optimizer shard
  const int64_t N = (int64_t)in.micro_batch * in.seq_len, C = in.model.n_embd, A = s.attn_width, H = s.mlp_width;
  const int64_t L = in.model.n_layer, Vp = s.vocab_rows;
  int64_t tensors_in_shard = 0;
  layout.for_each_overlap(0, share, [&](const ParamSpec&, int64_t, int64_t) { tensors_in_shard++; });

  // ZeRO-1 pads the flat parameter and gradient buffers to dp shards of `share`.
  const int64_t padded = in.zero1 && dp > 1 ? share * dp : P;
  MemoryPlan m;
  m.parameters = w * padded;
  m.gradients = kFp32 * padded;
  m.master = cpu ? 0 : kFp32 * share;
  m.moments = 2 * kFp32 * share + tensors_in_shard * (int64_t)sizeof(ref::AdamWRange);
  // What a block saves per token (model/gpt.h's BlockActivations): ln_1 and ln_2 outputs, the
  // attention projection, residual2 and residual3, the MLP output (C each), qkv (3A), attention
  // output (A), fc and gelu(fc) (H); mean and rstd of both layernorms and the lse of each local
  // head in fp32.
  const int64_t block = w * (6 * C + 4 * A + 2 * H) + kFp32 * (4 + s.heads);
  // Recompute shares one set of the rebuilt buffers across blocks: gelu(fc) (mlp), or all but
  // each block's output, the next block's input (block).
  const int64_t blocks = in.recompute == Recompute::none  ? L * block
                         : in.recompute == Recompute::mlp ? L * (block - w * H) + w * H
                                                          : L * w * C + (block - w * C);
  // + tokens and targets, the embedding output, ln_f and its statistics.
  m.activations = N * (blocks + kI32 * 2 + w * 2 * C + kFp32 * 2);
  m.logits = N * (w * Vp + kFp32 + (in.tp > 1 ? 4 * kFp32 : 0));  // + the split cross-entropy's statistics
  // Backward scratch (d_residual, d_ln: C; d_qkv: 3A; d_att: A; d_fc: H), TP's zero wpe, and the
  // backend's: on the CPU one [N, H] buffer, on CUDA its scratch and the cuBLASLt workspace.
  m.workspace = N * w * (2 * C + 4 * A + H) + (in.tp > 1 ? w * in.model.max_seq_len * C : 0);
  const OpsShape shape{
      N, in.micro_batch, in.seq_len, (int)C, s.heads, s.head_size, (int)std::max({3 * A, H, C, Vp}), (int)H};
  // (the emulator's and the GPU's backend are the same source: the same sizes)
  m.workspace += cpu ? kFp32 * N * H : emu::cuda_ops_workspace_bytes(shape, {in.deterministic});
  // ZeRO-1's reduced gradient shard (train/data_parallel.cpp).
  if (in.zero1 && dp > 1) m.workspace += kFp32 * share;
  m.reserved = cpu ? 0 : (int64_t)in.gpu.reserved_bytes;
  return m;
}

StepEstimate estimate_step(const PlanInput& in) {
  const int dp = dp_size(in);
  const GpuSpec& g = in.gpu;
  const int64_t P_model = ParamLayout(in.model, {1, 0}).trained(), P = ParamLayout(in.model, {in.tp, 0}).total();
  const double tokens = (double)in.micro_batch * in.seq_len;  // per data-parallel rank
  const double flops = flops_per_token(P_model, in.model.n_layer, in.seq_len, in.model.n_embd) * tokens;
  const double peak = g.peak_tflops * 1e12;
  // Block recompute repeats the forward (a third of the FLOPs); mlp recompute only the GELU.
  const double recompute = in.recompute == Recompute::block ? 4.0 / 3.0 : 1.0;

  StepEstimate e;
  e.compute_s = flops * recompute / in.tp / (peak * g.kernel_efficiency);
  // Tensor parallel: per layer two all-reduces of N x C bf16 forward (after attention and MLP
  // projections) and two backward (at their column-parallel inputs), within a node over NVLink.
  const double activation_bytes = tokens * in.model.n_embd * kBf16;
  e.tp_comm_s = 4.0 * in.model.n_layer * all_reduce_s(activation_bytes, in.tp, g.nvlink_gb_per_s);
  // Data parallel: the fp32 gradients of this rank's parameters; across nodes when the job spans
  // more than one. ZeRO-1 reduce-scatters them (half an all-reduce) and all-gathers bf16 parameters.
  const double dp_bw = in.gpus > g.gpus_per_node ? g.network_gb_per_s : g.nvlink_gb_per_s;
  const double gradients = all_reduce_s(kFp32 * (double)P, dp, dp_bw);
  const double gather = in.zero1 ? all_reduce_s(kBf16 * (double)P, dp, dp_bw) / 2 : 0.0;
  e.dp_comm_s = in.zero1 ? gradients / 2 + gather : gradients;
  // Buckets overlap the reduction with the backward pass (two thirds of the compute); ZeRO-1's
  // all-gather comes after the optimizer step and is exposed.
  const double hidden_by = e.compute_s * 2.0 / 3.0;
  e.exposed_dp_s = std::max(0.0, e.dp_comm_s - gather - hidden_by) + gather;
  e.step_s = e.compute_s + e.tp_comm_s + e.exposed_dp_s;
  e.tokens_per_s = tokens * dp / e.step_s;
  e.mfu = flops * dp / (e.step_s * in.gpus * peak);
  return e;
}

int largest_micro_batch(PlanInput in) {
  // Memory grows with the micro-batch: a bisection finds the exact largest that fits.
  auto fits = [&](int b) {
    in.micro_batch = b;
    return (double)plan_memory(in).total() <= in.gpu.memory_bytes;
  };
  int lo = 0, hi = 1 << 20;  // fits(lo) (0 meaning none does), !fits(hi)
  if (fits(hi)) return hi;
  while (hi - lo > 1) {
    const int mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo;
}

std::vector<LayoutChoice> search_layouts(const PlanInput& in) {
  std::vector<LayoutChoice> out;
  for (int tp = 1; tp <= in.gpus; tp++) {
    if (in.gpus % tp != 0 || in.model.n_head % tp != 0) continue;
    for (bool zero1 : {false, true}) {
      if (zero1 && in.gpus / tp == 1) continue;  // nothing to shard over
      for (Recompute r : {Recompute::none, Recompute::mlp, Recompute::block}) {
        PlanInput alt = in;
        alt.tp = tp;
        alt.zero1 = zero1;
        alt.recompute = r;
        alt.micro_batch = largest_micro_batch(alt);
        if (alt.micro_batch == 0) continue;
        out.push_back({tp, zero1, r, alt.micro_batch, plan_memory(alt).total(), estimate_step(alt)});
      }
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const LayoutChoice& a, const LayoutChoice& b) {
    return a.step.tokens_per_s > b.step.tokens_per_s;
  });
  return out;
}

}  // namespace kiln
