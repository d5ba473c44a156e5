// kiln plan: memory per GPU and a predicted step time for a config on N GPUs as TP x DP.
#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "tools/cli/commands.h"
#include "train/config.h"
#include "train/plan.h"

namespace kiln::cli {
namespace {

struct PlanOptions {
  std::string config, recompute = "none", json;
  int gpus = 1, tp = 1, micro_batch = 0;
  bool zero1 = false, search = false;
  double gpu_memory_gib = 80, peak_tflops = 989;
};

std::string gib(int64_t bytes) { return fmt::format("{:.2f} GiB", bytes / double(1ull << 30)); }

void run_plan(const PlanOptions& o, const std::vector<Override>& overrides) {
  std::vector<Override> all = {"data.path=random"};  // the model is all the planner reads
  all.insert(all.end(), overrides.begin(), overrides.end());
  const TrainConfig cfg = load_train_config(o.config, all);
  PlanInput in;
  in.model = cfg.model;
  in.seq_len = cfg.seq_len_set ? cfg.train.seq_len : cfg.model.max_seq_len;  // the model's context by default
  in.micro_batch = o.micro_batch > 0 ? o.micro_batch : cfg.train.batch_size;
  in.gpus = o.gpus;
  in.tp = o.tp;
  in.zero1 = o.zero1;
  in.recompute = parse_recompute(o.recompute);
  in.gpu.memory_bytes = o.gpu_memory_gib * double(1ull << 30);
  in.gpu.peak_tflops = o.peak_tflops;
  const MemoryPlan m = plan_memory(in);
  const StepEstimate e = estimate_step(in);
  const bool fits = (double)m.total() <= in.gpu.memory_bytes;

  fmt::print(
      "kiln plan: {} ({} layers, width {}, {} heads), T = {}, {} GPU(s) as TP {} x DP {}, ZeRO-1 {}, "
      "recompute {}\n",
      cfg.preset, in.model.n_layer, in.model.n_embd, in.model.n_head, in.seq_len, in.gpus, in.tp, in.gpus / in.tp,
      in.zero1 ? "on" : "off", recompute_name(in.recompute));
  fmt::print("memory per GPU at micro-batch {}:\n", in.micro_batch);
  const std::pair<const char*, int64_t> rows[] = {
      {"parameters (bf16)", m.parameters},    {"gradients (fp32)", m.gradients},
      {"master weights (fp32)", m.master},    {"AdamW moments (fp32)", m.moments},
      {"activations", m.activations},         {"logits", m.logits},
      {"workspace and scratch", m.workspace}, {"CUDA context and slack", m.reserved}};
  for (const auto& [name, bytes] : rows) fmt::print("  {:<24} {:>12}\n", name, gib(bytes));
  fmt::print("  {:<24} {:>12} of {}: {}\n", "total", gib(m.total()), gib((int64_t)in.gpu.memory_bytes),
             fits ? "fits" : "does NOT fit");
  fmt::print("largest micro-batch that fits:");
  nlohmann::json largest;
  for (Recompute r : {Recompute::none, Recompute::mlp, Recompute::block}) {
    PlanInput alt = in;
    alt.recompute = r;
    const int b = largest_micro_batch(alt);
    largest[recompute_name(r)] = b;
    fmt::print(" {} (recompute {})", b, recompute_name(r));
  }
  fmt::print(
      "\nstep at micro-batch {}: compute {:.3f} s, TP all-reduces {:.3f} s, DP reduction {:.3f} s "
      "({:.3f} s exposed) -> {:.3f} s, {:.0f} tokens/s, MFU {:.1f}%\n",
      in.micro_batch, e.compute_s, e.tp_comm_s, e.dp_comm_s, e.exposed_dp_s, e.step_s, e.tokens_per_s, 100 * e.mfu);
  fmt::print(
      "assumes {:.0f} TFLOP/s bf16 peak at {:.0f}% kernel efficiency, NVLink {:.0f} GB/s, network {:.0f} GB/s "
      "per GPU, {} GPUs a node (docs/scaling.md)\n",
      in.gpu.peak_tflops, 100 * in.gpu.kernel_efficiency, in.gpu.nvlink_gb_per_s, in.gpu.network_gb_per_s,
      in.gpu.gpus_per_node);
  if (o.search) {
    const std::vector<LayoutChoice> choices = search_layouts(in);
    fmt::print("\nlayouts of {} GPU(s), each at its largest micro-batch, fastest first{}:\n", in.gpus,
               choices.empty() ? " (none fits)" : "");
    fmt::print("  {:>3} {:>4} {:>6} {:>10} {:>12} {:>12} {:>12} {:>6}\n", "TP", "DP", "ZeRO-1", "recompute",
               "micro-batch", "memory", "tokens/s", "MFU");
    for (const LayoutChoice& c : choices)
      fmt::print("  {:>3} {:>4} {:>6} {:>10} {:>12} {:>12} {:>12.0f} {:>5.1f}%\n", c.tp, in.gpus / c.tp,
                 c.zero1 ? "on" : "off", recompute_name(c.recompute), c.micro_batch, gib(c.memory_bytes),
                 c.step.tokens_per_s, 100 * c.step.mfu);
  }
  if (!o.json.empty()) {
    nlohmann::json j = {{"model", cfg.preset},
                        {"gpus", in.gpus},
                        {"tp", in.tp},
                        {"zero1", in.zero1},
                        {"recompute", recompute_name(in.recompute)},
                        {"micro_batch", in.micro_batch},
                        {"seq_len", in.seq_len},
                        {"memory_bytes",
                         {{"parameters", m.parameters},
                          {"gradients", m.gradients},
                          {"master", m.master},
                          {"moments", m.moments},
                          {"activations", m.activations},
                          {"logits", m.logits},
                          {"workspace", m.workspace},
                          {"reserved", m.reserved},
                          {"total", m.total()}}},
                        {"fits", fits},
                        {"largest_micro_batch", largest},
                        {"step_s", e.step_s},
                        {"tokens_per_s", e.tokens_per_s},
                        {"mfu", e.mfu}};
    std::ofstream(o.json) << j.dump(2) << '\n';
  }
}

}  // namespace

void add_plan_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("plan", "Memory per GPU and predicted step time / MFU for a config on N GPUs");
  auto o = std::make_shared<PlanOptions>();
  cmd->add_option("-c,--config", o->config, "TOML config file (its [model] and [train] sizes)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--gpus", o->gpus, "GPUs in the job")->capture_default_str();
  cmd->add_option("--tp", o->tp, "Tensor-parallel size (DP = gpus / tp)")->capture_default_str();
  cmd->add_flag("--zero", o->zero1, "ZeRO-1: shard the optimizer state over the data-parallel ranks");
  cmd->add_flag("--search", o->search,
                "Also rank every TP x DP layout of --gpus (ZeRO-1 on/off, each recompute) at its largest micro-batch");
  cmd->add_option("--recompute", o->recompute, "none, mlp or block")->capture_default_str();
  cmd->add_option("--micro-batch", o->micro_batch, "Sequences per GPU (default: train.batch_size)");
  cmd->add_option("--gpu-memory", o->gpu_memory_gib, "GPU memory in GiB")->capture_default_str();
  cmd->add_option("--peak-tflops", o->peak_tflops, "bf16 dense peak of one GPU")->capture_default_str();
  cmd->add_option("--json", o->json, "Write the plan to this JSON file");
  cmd->allow_extras();
  cmd->footer("Model sizes can be overridden as --section.key=value, e.g. --model.n_layer=32 --train.seq_len=2048");
  cmd->callback([cmd, o] { run_plan(*o, config_overrides(*cmd)); });
}

}  // namespace kiln::cli
