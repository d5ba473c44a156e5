// The CUDA backend trains the model as the CPU backend does: gradients against the CPU's for the
// same weights and batch, losses over 20 steps, determinism, no device allocation in a step, and
// a clear error when the model does not fit. Built twice: on the emulator (label emu, CI) and on
// a GPU (label gpu, skipped without one).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "data/prepare.h"
#include "parallel/device_info.h"
#include "model/cpu_ops.h"
#include "model/cuda_ops.h"
#include "model/gpt.h"
#include "parallel/comm/bf16_bits.h"
#include "parallel/comm/comm.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/optimizer.h"
#include "train/plan.h"
#include "train/trainer.h"

namespace kiln {
namespace {

#ifdef KILN_TEST_GPU
namespace backend = kiln::cuda;
constexpr const char* kDevice = "cuda";
#define KILN_NEED_DEVICE() \
  if (query_cuda().devices.empty()) GTEST_SKIP() << "no CUDA device"
#else
namespace backend = kiln::emu;
constexpr const char* kDevice = "emu";
#define KILN_NEED_DEVICE() (void)0
#endif

// Two blocks of two 64-wide heads (the attention kernels take head sizes 64 and 128).
GPTConfig small_model() {
  GPTConfig cfg = GPTConfig::preset("tiny");
  cfg.n_layer = 2;
  cfg.n_head = 2;
  cfg.n_embd = 128;
  cfg.max_seq_len = 64;
  return cfg;
}
const std::vector<std::string> kSmallModel = {"model.preset=tiny", "model.n_layer=2", "model.n_head=2",
                                              "model.n_embd=128", "model.max_seq_len=64"};

std::vector<float> download(Ops& ops, const Tensor& t) {
  std::vector<float> out(t.numel);
  ops.download(out, t);
  return out;
}

TEST(GpuTraining, LossAndEveryGradientMatchTheCpuBackend) {
  KILN_NEED_DEVICE();
  const GPTConfig cfg = small_model();
  const int B = 2, T = 64;
  const auto device_ops = backend::make_cuda_ops({});
  const auto cpu_ops = make_cpu_ops(CpuPath::reference);
  GPT device(cfg, *device_ops, B, T), cpu(cfg, *cpu_ops, B, T);
  device.init_weights(7);
  // The CPU model gets the device's bf16-rounded weights, so only the arithmetic differs.
  cpu.set_weights(download(*device_ops, device.params()));

  std::mt19937 rng(11);
  std::uniform_int_distribution<int32_t> token(0, cfg.vocab_size - 1);
  std::vector<int32_t> tokens(B * T), targets(B * T);
  for (int i = 0; i < B * T; i++) {
    tokens[i] = token(rng);
    targets[i] = i % 7 == 3 ? -1 : token(rng);  // some positions masked out
  }
  const double device_loss = device.forward_backward(tokens, targets, B, T);
  const double cpu_loss = cpu.forward_backward(tokens, targets, B, T);
  EXPECT_NEAR(device_loss, cpu_loss, 1e-2 * std::abs(cpu_loss));

  const std::vector<float> dg = download(*device_ops, device.grads()), cg = download(*cpu_ops, cpu.grads());
  double worst_rel = 0, worst_cos = 1;
  std::string worst_rel_name, worst_cos_name;
  for (const ParamSpec& s : device.layout().specs()) {
    double diff = 0, dd = 0, cc = 0, dc = 0;
    for (int64_t i = s.offset; i < s.offset + s.numel; i++) {
      ASSERT_TRUE(std::isfinite(dg[i])) << s.name << "[" << i - s.offset << "]";
      diff += ((double)dg[i] - cg[i]) * ((double)dg[i] - cg[i]);
      dd += (double)dg[i] * dg[i];
      cc += (double)cg[i] * cg[i];
      dc += (double)dg[i] * cg[i];
    }
    ASSERT_GT(cc, 0) << s.name << ": the CPU gradient is zero, nothing is compared";
    const double rel = std::sqrt(diff / cc), cos = dc / std::sqrt(dd * cc);
    EXPECT_LE(rel, 2e-2) << s.name;
    EXPECT_GE(cos, 0.999) << s.name;
    if (rel > worst_rel) worst_rel = rel, worst_rel_name = s.name;
    if (cos < worst_cos) worst_cos = cos, worst_cos_name = s.name;
  }
  std::cout << "loss " << device_loss << " (" << kDevice << ") vs " << cpu_loss << " (cpu); worst relative L2 "
            << worst_rel << " (" << worst_rel_name << "), worst cosine " << worst_cos << " (" << worst_cos_name
            << ")\n";
  RecordProperty("worst_relative_l2", std::to_string(worst_rel));
  RecordProperty("worst_cosine", std::to_string(worst_cos));
}

struct TrainRun {
  std::vector<StepRecord> records;
  std::string log;
};

// `steps` steps of the small model at batch 2 x 64 on `data` (random tokens unless a dataset).
TrainRun train_small(const std::string& device, int steps, std::vector<std::string> extra = {},
                     const std::string& data = "random", const std::string& run_dir = "") {
  test::TempDir dir;
  std::vector<std::string> overrides = kSmallModel;
  for (const std::string& o : std::vector<std::string>{"data.path=" + data, "train.batch_size=2", "train.seq_len=64",
                                                       "train.steps=" + std::to_string(steps), "train.eval_every=0",
                                                       "optim.lr=3e-3", "optim.warmup_steps=2", "run.device=" + device,
                                                       "run.dir=" + (run_dir.empty() ? dir.str() : run_dir)})
    overrides.push_back(o);
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  std::ostringstream log;
  std::vector<StepRecord> records = train(load_train_config("", {overrides.begin(), overrides.end()}), log);
  return {records, log.str()};
}

// kiln's README as bytes, prepared in dir: text the model learns from the first steps on.
std::string readme_dataset(const test::TempDir& dir) {
  PrepareOptions prepare;
  prepare.inputs = {std::string(KILN_SOURCE_DIR) + "/README.md"};
  prepare.output = dir.path("readme");
  prepare_dataset(prepare);
  return prepare.output;
}

TEST(GpuTraining, TwentyStepsStayWithinOnePercentOfTheCpuRun) {
  KILN_NEED_DEVICE();
  test::TempDir dir;
  const std::string data = readme_dataset(dir);
  const TrainRun device = train_small(kDevice, 20, {"train.sample_every=20", "train.sample_tokens=8"}, data);
  const TrainRun cpu = train_small("cpu", 20, {}, data);
  ASSERT_EQ(device.records.size(), 20u);
  double worst = 0;
  for (size_t i = 0; i < device.records.size(); i++) {
    const double d = device.records[i].loss, c = cpu.records[i].loss;
    EXPECT_LE(std::abs(d - c) / c, 0.01) << "step " << i + 1 << ": " << d << " vs " << c;
    worst = std::max(worst, std::abs(d - c) / c);
  }
  EXPECT_LT(device.records.back().loss, device.records.front().loss - 1.0) << "the loss did not fall";
  EXPECT_TRUE(test::mentions(device.log, {"sample at step 20: \"The"})) << device.log;
  std::cout << "losses " << device.records.front().loss << " -> " << device.records.back().loss << " (" << kDevice
            << "), " << cpu.records.front().loss << " -> " << cpu.records.back().loss
            << " (cpu); worst relative difference " << worst << "\n";
}

TEST(GpuTraining, DeterministicRunsAreBitwiseIdentical) {
  KILN_NEED_DEVICE();
  const std::vector<StepRecord> a = train_small(kDevice, 4, {"run.deterministic=true"}).records;
  const std::vector<StepRecord> b = train_small(kDevice, 4, {"run.deterministic=true"}).records;
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); i++) {
    EXPECT_EQ(a[i].loss, b[i].loss) << "step " << i + 1;
    EXPECT_EQ(a[i].grad_norm, b[i].grad_norm) << "step " << i + 1;
  }
}

TEST(GpuTraining, StepsAllocateNoDeviceMemory) {
  KILN_NEED_DEVICE();
  const GPTConfig cfg = small_model();
  const int B = 2, T = 64;
  for (Recompute recompute : {Recompute::none, Recompute::block}) {
    const auto ops = backend::make_cuda_ops({});
    GPT model(cfg, *ops, B, T, {}, nullptr, recompute);
    model.init_weights(1);
    AdamW optimizer(model, OptimConfig{});
    std::vector<int32_t> tokens(B * T, 5), targets(B * T, 6);
    const int64_t before = backend::device_allocation_count();
    for (int step = 0; step < 3; step++) {
      model.zero_grads();
      model.forward_backward(tokens, targets, B, T);
      optimizer.step(1e-3, ref::clip_factor(grad_norm(*ops, model.grads()), 1.0));
      model.forward(tokens, targets, B, T);  // evaluation
    }
    EXPECT_EQ(backend::device_allocation_count(), before) << "recompute " << recompute_name(recompute);
    EXPECT_GT(before, 0) << "the counter sees the set-up's allocations";
  }
}

TEST(GpuTraining, RecomputeGivesTheSameGradients) {
  KILN_NEED_DEVICE();
  const GPTConfig cfg = small_model();
  const int B = 1, T = 64;
  std::vector<int32_t> tokens(B * T), targets(B * T);
  for (int i = 0; i < B * T; i++) tokens[i] = (i * 37) % cfg.vocab_size, targets[i] = (i * 11 + 3) % cfg.vocab_size;
  std::vector<std::vector<float>> grads;
  int64_t activations[3];
  for (Recompute recompute : {Recompute::none, Recompute::mlp, Recompute::block}) {
    const auto ops = backend::make_cuda_ops({.deterministic = true});
    GPT model(cfg, *ops, B, T, {}, nullptr, recompute);
    model.init_weights(3);
    model.forward_backward(tokens, targets, B, T);
    grads.push_back(download(*ops, model.grads()));
    activations[(int)recompute] = model.memory().activations;
  }
  // Block recompute reruns the same kernels: the same bits. MLP recompute takes the unfused GELU
  // (the fused epilogue's gelu comes from the fp32 accumulator, not the stored bf16 fc).
  EXPECT_EQ(grads[2], grads[0]) << "block recompute";
  double diff = 0, norm = 0;
  for (size_t i = 0; i < grads[0].size(); i++)
    diff += std::pow((double)grads[1][i] - grads[0][i], 2), norm += std::pow((double)grads[0][i], 2);
  EXPECT_LT(std::sqrt(diff / norm), 1e-2) << "mlp recompute";
  EXPECT_LT(activations[1], activations[0]);
  EXPECT_LT(activations[2], activations[1]);
}

// Loads checkpoint `ckpt` into a new model and optimizer on `ops` (initialised with other weights
// first) and expects every value as saved: the working copy equal to the master weights (rounded
// to bf16 where the parameters are bf16), and the master weights and moments, saved again from the
// loaded state into resave_dir, equal to the checkpoint's bit for bit.
void expect_loads_as_saved(const std::string& ckpt, Ops& ops, const std::string& resave_dir) {
  const CheckpointWeights saved = read_checkpoint_weights(ckpt);
  GPT model(saved.config, ops, 2, 64);
  model.init_weights(99);
  AdamW optimizer(model, OptimConfig{});
  const TrainingState state = load_checkpoint(ckpt, model, optimizer);
  const std::vector<float> params = download(ops, model.params());
  ASSERT_EQ(params.size(), saved.weights.size());
  const bool bf16 = model.params().dtype == DType::bf16;
  int64_t wrong = 0, first_wrong = -1;
  for (size_t i = 0; i < params.size(); i++) {
    const float want = bf16 ? bf16_to_float(float_to_bf16(saved.weights[i])) : saved.weights[i];
    if (params[i] != want && wrong++ == 0) first_wrong = (int64_t)i;
  }
  EXPECT_EQ(wrong, 0) << ops.name() << ": parameters differ from " << ckpt << "'s master weights, the first at "
                      << first_wrong;
  const std::unique_ptr<Comm> self = make_self_comm();
  const std::string again = save_checkpoint(resave_dir, "", model, optimizer, CheckpointRank{}, state, *self, 0);
  for (const TensorDifference& d : compare_checkpoints(ckpt, again))
    EXPECT_EQ(d.max_abs, 0) << ops.name() << ": " << d.tensor << " " << d.kind << " after loading " << ckpt;
}

// A checkpoint is the fp32 master weights and moments: the CPU backend's loads on the CUDA backend
// and the CUDA backend's on the CPU with every value as saved, and the run continues as the
// straight one does. On text, whose loss falls step by step: on random tokens it stays near ln V
// whatever the weights, so the losses would not show a load of the wrong weights. Catches a load
// that leaves the device's working copy at the weights it had (every parameter differs, and the
// next loss by 19%) or that skips a moment (v differs after saving again).
TEST(GpuTraining, CheckpointsMoveBetweenTheCpuAndTheCudaBackend) {
  KILN_NEED_DEVICE();
  test::TempDir dir;
  const std::string data = readme_dataset(dir), run = dir.path("run");
  const std::string constant = "optim.schedule=constant";  // the same learning rates whatever train.steps
  const std::vector<StepRecord> straight = train_small("cpu", 6, {constant}, data).records;
  ASSERT_EQ(straight.size(), 6u);
  EXPECT_LT(straight[3].loss, 0.97 * straight[1].loss) << "the loss moves too little to show a wrong load";
  train_small("cpu", 2, {constant, "checkpoint.every=2"}, data, run);
  expect_loads_as_saved(run + "/step_00000002", *backend::make_cuda_ops({}), dir.path("resaved_on_device"));
  train_small(kDevice, 4, {constant, "checkpoint.every=4"}, data, run);  // resumes at 2
  expect_loads_as_saved(run + "/step_00000004", *make_cpu_ops(), dir.path("resaved_on_cpu"));
  const std::vector<StepRecord> back = train_small("cpu", 6, {constant}, data, run).records;  // resumes at 4
  ASSERT_EQ(back.size(), 2u);
  std::ifstream in(run + "/metrics.jsonl");
  int rows = 0;
  for (std::string line; std::getline(in, line); rows++) {
    const double loss = nlohmann::json::parse(line)["loss"], expected = straight[rows].loss;
    EXPECT_LE(std::abs(loss - expected) / expected, 0.01) << "step " << rows + 1 << ": " << loss << " vs " << expected;
  }
  EXPECT_EQ(rows, 6);
}

// kiln plan and the start-up check predict, to the byte, what the model, AdamW and the backend
// allocate, on the CPU and the CUDA backend, with every recompute setting.
TEST(GpuTraining, TheMemoryPlanIsWhatIsAllocated) {
  KILN_NEED_DEVICE();
  const GPTConfig cfg = small_model();
  const int B = 2, T = 48;
  for (const bool on_device : {false, true})
    for (const bool deterministic : {false, true})
      for (const Recompute recompute : {Recompute::none, Recompute::mlp, Recompute::block}) {
        const auto ops = on_device ? backend::make_cuda_ops({deterministic}) : make_cpu_ops();
        GPT model(cfg, *ops, B, T, {}, nullptr, recompute);
        AdamW optimizer(model, OptimConfig{});
        PlanInput in;
        in.model = cfg;
        in.backend = on_device ? PlanBackend::cuda : PlanBackend::cpu;
        in.deterministic = deterministic;
        in.micro_batch = B;
        in.seq_len = T;
        in.recompute = recompute;
        const MemoryPlan plan = plan_memory(in);
        const ModelMemory& m = model.memory();
        const std::string where =
            ops->name() + (deterministic ? " deterministic" : "") + ", recompute " + recompute_name(recompute);
        EXPECT_EQ(plan.parameters, m.parameters) << where;
        EXPECT_EQ(plan.master, m.master) << where;
        EXPECT_EQ(plan.gradients, m.gradients) << where;
        EXPECT_EQ(plan.moments, optimizer.state_bytes()) << where;
        EXPECT_EQ(plan.activations, m.activations) << where;
        EXPECT_EQ(plan.logits, m.logits) << where;
        EXPECT_EQ(plan.workspace, m.workspace) << where;
      }
}

// ZeRO-1 on the CUDA backend: the flat buffers padded to whole shards, the master weights of this
// rank's shard only, and an optimizer for another range, or a shard that does not exist, refused.
TEST(GpuTraining, ZeroShardingKeepsOneShardOfTheMasterWeights) {
  KILN_NEED_DEVICE();
  const GPTConfig cfg = small_model();
  const auto ops = backend::make_cuda_ops({});
  GPT model(cfg, *ops, 1, 16, {}, nullptr, Recompute::none, {3, 1});
  const int64_t total = model.layout().total(), shard = (total + 2) / 3;
  EXPECT_EQ(model.padded_params().numel, 3 * shard);
  EXPECT_EQ(model.padded_grads().numel, 3 * shard);
  EXPECT_EQ(model.master().numel, shard);
  EXPECT_EQ(model.master_first(), shard);
  EXPECT_NO_THROW(AdamW(model, OptimConfig{}, shard, shard));
  EXPECT_EQ(test::error_of([&] { AdamW(model, OptimConfig{}, 0, total); }),
            "AdamW: elements [0, " + std::to_string(total) + ") are not all in the model's master weights [" +
                std::to_string(shard) + ", " + std::to_string(2 * shard) + ")");
  EXPECT_EQ(test::error_of([&] {
              GPT(cfg, *ops, 1, 16, {}, nullptr, Recompute::none, {2, 2});
            }),
            "GPT: ZeRO shard 2 of 2");
}

#ifndef KILN_TEST_GPU
// The emulated device's memory is configurable, so running out of it is tested without a GPU.
TEST(GpuTraining, AModelThatDoesNotFitIsRefusedBeforeAnyStep) {
  test::TempDir dir;
  const std::string message = test::error_of([&] { train_small("emu", 1, {"run.gpu_memory=\"24MiB\""}); });
  EXPECT_TRUE(test::mentions(
      message, {"the model does not fit", "needs", "activations", "emulator has 24.0 MiB", "--train.recompute=block"}))
      << message;
}

TEST(GpuTraining, RunningOutOfDeviceMemoryNamesTheSizes) {
  const auto ops = backend::make_cuda_ops({.emulated_memory_bytes = 64 << 20});
  const std::string message = test::error_of([&] { ops->allocate(100 << 20, DType::f32); });
  EXPECT_TRUE(test::mentions(message, {"out of device memory", "allocating 419430400 bytes", "of 67108864 free"}))
      << message;
  backend::make_cuda_ops({.emulated_memory_bytes = 80LL << 30});  // back to an H100's
}
#endif

}  // namespace
}  // namespace kiln
