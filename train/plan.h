// The capacity planner behind `kiln plan`: memory per GPU by category and a predicted step time
// and MFU for a GPT on N GPUs as TP x DP, from a stated model of compute and communication
// (docs/scaling.md). It counts the buffers GPT, AdamW and the backend allocate (model/gpt.cpp,
// train/optimizer.cpp, model/cuda_ops.cu), to the byte on one process: on CUDA bf16 parameters and
// activations with fp32 gradients, master weights and AdamW moments; on the CPU all fp32.
#pragma once

#include <cstdint>
#include <vector>
#include <string>

#include "model/config.h"

namespace kiln {

// What the estimate assumes of the hardware; H100 SXM defaults.
struct GpuSpec {
  double memory_bytes = 80.0 * (1ull << 30);
  double peak_tflops = 989;        // dense bf16 tensor-core peak
  double kernel_efficiency = 0.5;  // of that peak, reached by the model's GEMMs and attention
  double nvlink_gb_per_s = 450;    // per direction, within a node (NVLink 4: 900 GB/s both ways)
  double network_gb_per_s = 50;    // per GPU across nodes (one 400 Gb/s InfiniBand NIC a GPU)
  int gpus_per_node = 8;
  double reserved_bytes = 1.5 * (1ull << 30);  // CUDA context, cuBLASLt and allocator slack
};

enum class PlanBackend { cuda, cpu };

struct PlanInput {
  GPTConfig model;
  PlanBackend backend = PlanBackend::cuda;
  bool deterministic = false;  // the deterministic attention backward needs less scratch
  int micro_batch = 1;         // sequences per GPU per micro-batch
  int seq_len = 1024;
  int gpus = 1, tp = 1;  // data-parallel size = gpus / tp
  bool zero1 = false;
  Recompute recompute = Recompute::none;
  GpuSpec gpu;
};

// Bytes per GPU.
// Bytes per GPU (rank 0's, under ZeRO-1), in the categories of model/gpt.h's ModelMemory.
struct MemoryPlan {
  int64_t parameters = 0;   // bf16 working copy (fp32 on the CPU)
  int64_t gradients = 0;    // fp32
  int64_t master = 0;       // fp32 master weights (1/DP of them under ZeRO-1); none on the CPU
  int64_t moments = 0;      // AdamW m and v, fp32 (1/DP under ZeRO-1), and its range table
  int64_t activations = 0;  // saved for the backward, at this micro-batch and recompute setting
  int64_t logits = 0;       // logits (the gradient overwrites them), losses
  int64_t workspace = 0;    // backward scratch, attention and matmul scratch, cuBLASLt workspace
  int64_t reserved = 0;     // CUDA context and allocator slack (not kiln's allocations)
  int64_t total() const {
    return parameters + gradients + master + moments + activations + logits + workspace + reserved;
  }
};

struct StepEstimate {
  double compute_s = 0;     // per GPU at kernel_efficiency of the peak
  double tp_comm_s = 0;     // the row-parallel all-reduces, not overlapped
  double dp_comm_s = 0;     // the gradient reduction (and ZeRO-1's all-gather)
  double exposed_dp_s = 0;  // the part the backward pass does not hide
  double step_s = 0;
  double tokens_per_s = 0;  // the whole job's
  double mfu = 0;           // model FLOPs / (step time x GPUs x peak)
};

// Throws std::invalid_argument for a layout that does not divide (gpus by tp, heads by tp).
MemoryPlan plan_memory(const PlanInput& in);
StepEstimate estimate_step(const PlanInput& in);
// The largest micro-batch that fits in the GPU's memory (exactly, up to 2^20); 0 if none does.
int largest_micro_batch(PlanInput in);

// One layout of in.gpus GPUs, at the largest micro-batch that fits it, and what it is predicted to do.
struct LayoutChoice {
  int tp = 1;
  bool zero1 = false;
  Recompute recompute = Recompute::none;
  int micro_batch = 0;
  int64_t memory_bytes = 0;
  StepEstimate step;
};
// Every TP size that divides the GPUs (and the heads), with and without ZeRO-1, at each recompute
// setting, each at its largest micro-batch; the layouts that fit, fastest (tokens/s) first.
std::vector<LayoutChoice> search_layouts(const PlanInput& in);

}  // namespace kiln
