// Training configuration, LR schedule, clipping, and a short training run whose loss must fall.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/prepare.h"
#include "model/gpt.h"
#include "model/cpu_ops.h"
#include "train/config.h"
#include "train/optimizer.h"
#include "train/schedule.h"
#include "train/tensorboard.h"
#include "train/trainer.h"
#include "tests/test_util.h"

namespace kiln {
namespace {

using namespace kiln::test;  // TempDir, error_of, mentions, read_file

namespace fs = std::filesystem;

TEST(TrainConfig, FileValuesAndOverrides) {
  TempDir dir;
  const std::string path = dir.file("c.toml",
                                    "[model]\npreset = \"test\"\n[data]\npath = \"x.txt\"\n"
                                    "[train]\nsteps = 7\n[optim]\nlr = 1\n");
  const TrainConfig cfg = load_train_config(path, {"train.batch_size=3", "optim.schedule=wsd", "model.n_layer=3"});
  EXPECT_EQ(cfg.model.n_embd, 32);  // from the preset
  EXPECT_EQ(cfg.model.n_layer, 3);  // override beats preset
  EXPECT_EQ(cfg.train.steps, 7);
  EXPECT_EQ(cfg.train.batch_size, 3);
  EXPECT_EQ(cfg.optim.lr, 1.0);  // an integer where a number is expected is fine
  EXPECT_EQ(cfg.optim.schedule, LrSchedule::wsd);
  EXPECT_EQ(cfg.data.path, "x.txt");
}

TEST(TrainConfig, ErrorsNameTheFileAndKey) {
  TempDir dir;
  const std::string ok = dir.file("ok.toml", "[data]\npath = \"x.txt\"\n");
  EXPECT_EQ(error_of([&] { load_train_config(ok, {"optim.lrr=1e-3"}); }),
            "command line --optim.lrr=1e-3: unknown key 'optim.lrr' (did you mean optim.lr?)");
  // A short flag is blamed as it was typed.
  EXPECT_EQ(error_of([&] { load_train_config(ok, {Override("train.steps=0", "--max-steps 0")}); }),
            "command line --max-steps 0: train.steps: expected >= 1");
  EXPECT_EQ(error_of([&] { load_train_config(ok, {"train.steps=ten"}); }),
            "command line --train.steps=ten: train.steps: expected an integer");
  EXPECT_EQ(error_of([&] { load_train_config(ok, {"train.steps=0"}); }),
            "command line --train.steps=0: train.steps: expected >= 1");
  EXPECT_EQ(error_of([&] { load_train_config(ok, {"steps"}); }), "override 'steps': expected --section.key=value");
  EXPECT_EQ(error_of([&] { load_train_config(ok, {"optim.schedule=linear"}); }),
            "command line --optim.schedule=linear: optim.schedule: 'linear': expected cosine, wsd or constant");
  EXPECT_EQ(error_of([&] { load_train_config(ok, {"train.seq_len=100000"}); }),
            "command line --train.seq_len=100000: train.seq_len: expected 1..256 (model.max_seq_len)");
  EXPECT_NE(error_of([&] { load_train_config(ok, {"model.preset=huge"}); }).find("unknown model preset 'huge'"),
            std::string::npos);
  const std::string typo = dir.file("typo.toml", "[data]\npath = \"x.txt\"\n[train]\nstep = 3\n");
  EXPECT_EQ(error_of([&] { load_train_config(typo, {}); }),
            typo + ": unknown key 'train.step' (did you mean train.steps?)");
  const std::string far = dir.file("far.toml", "[data]\npath = \"x.txt\"\n[train]\nxyzzy = 3\n");
  EXPECT_EQ(error_of([&] { load_train_config(far, {}); }), far + ": unknown key 'train.xyzzy'");
  const std::string syntax = dir.file("syntax.toml", "[train]\nsteps = = 3\n");
  EXPECT_NE(error_of([&] { load_train_config(syntax, {}); }).find(syntax + ":2:"), std::string::npos);
  const std::string no_data = dir.file("nodata.toml", "[train]\nsteps = 3\n");
  EXPECT_EQ(error_of([&] { load_train_config(no_data, {}); }),
            no_data + ": data.path: required (a dataset directory written by kiln prepare)");
  EXPECT_EQ(error_of([&] { load_train_config(ok, {"parallel.tp=0"}); }),
            "command line --parallel.tp=0: parallel.tp: expected >= 1");
  EXPECT_EQ(error_of([&] { load_train_config(ok, {"parallel.zero=2"}); }),
            "command line --parallel.zero=2: parallel.zero: expected 0 or 1 (ZeRO-1)");
  EXPECT_EQ(error_of([&] { load_train_config(ok, {"parallel.timeout_s=0"}); }),
            "command line --parallel.timeout_s=0: parallel.timeout_s: expected > 0 seconds");
  EXPECT_EQ(error_of([&] { load_train_config(ok, {"parallel.bucket_mb=-1"}); }),
            "command line --parallel.bucket_mb=-1: parallel.bucket_mb: expected >= 0 (0: one all-reduce after the "
            "backward pass)");
}

// Every numeric optimizer and schedule setting is range-checked, NaN and infinity included, naming
// the key, the value and where it came from.
TEST(TrainConfig, NumericSettingsAreRangeChecked) {
  TempDir dir;
  const std::string ok = dir.file("ok.toml", "[data]\npath = \"x.txt\"\n");
  for (const auto& [assignment, expected] : std::initializer_list<std::pair<const char*, const char*>>{
           {"optim.lr=nan", "optim.lr: nan: expected a finite number > 0"},
           {"optim.lr=inf", "optim.lr: inf: expected a finite number > 0"},
           {"optim.lr=0", "optim.lr: 0: expected a finite number > 0"},
           {"optim.beta1=1.5", "optim.beta1: 1.5: expected 0 <= beta1 < 1"},
           {"optim.beta1=1", "optim.beta1: 1: expected 0 <= beta1 < 1"},
           {"optim.beta2=-0.1", "optim.beta2: -0.1: expected 0 <= beta2 < 1"},
           {"optim.eps=0", "optim.eps: 0: expected a finite number > 0"},
           {"optim.grad_clip=-1", "optim.grad_clip: -1: expected a finite number >= 0 (0 disables clipping)"},
           {"optim.warmup_steps=-5", "optim.warmup_steps: expected >= 0"},
           {"optim.min_lr_ratio=2", "optim.min_lr_ratio: 2: expected 0 <= ratio <= 1"},
           {"optim.decay_fraction=5", "optim.decay_fraction: 5: expected 0 <= fraction <= 1"},
           {"optim.weight_decay=nan", "optim.weight_decay: nan: expected a finite number >= 0"},
           {"train.peak_tflops=-1", "train.peak_tflops: -1: expected > 0 TFLOP/s, or 0 for the GPU's own"},
           {"parallel.timeout_s=inf", "parallel.timeout_s: expected > 0 seconds"},
           {"run.threads=-1", "run.threads: -1: expected 0 (all cores) to "},
           {"run.threads=100000", "run.threads: 100000: expected 0 (all cores) to "}}) {
    const std::string e = error_of([&] { load_train_config(ok, {assignment}); });
    EXPECT_TRUE(mentions(e, {std::string("command line --") + assignment + ": " + expected})) << e;
  }
  // Edges that are allowed.
  EXPECT_NO_THROW(load_train_config(ok, {"optim.beta1=0", "optim.grad_clip=0", "optim.min_lr_ratio=1",
                                         "optim.weight_decay=0", "optim.warmup_steps=0", "run.threads=1"}));
  // From the file, the file is blamed.
  const std::string file = dir.file("nan.toml", "[data]\npath = \"x.txt\"\n[optim]\nlr = nan\n");
  EXPECT_EQ(error_of([&] { load_train_config(file, {}); }), file + ": optim.lr: nan: expected a finite number > 0");
}

TEST(TrainConfig, NearestNameSuggestsLikelyTypos) {
  EXPECT_EQ(nearest_name("train.step", config_keys()), "train.steps");
  EXPECT_EQ(nearest_name("optim.lrr", config_keys()), "optim.lr");
  EXPECT_EQ(nearest_name("--steps", {"--max-steps", "--seq-len", "--seed"}), "--max-steps");
  EXPECT_EQ(nearest_name("--batchsize", {"--max-steps", "--batch-size"}), "--batch-size");
  EXPECT_EQ(nearest_name("--frobnicate", {"--max-steps", "--batch-size"}), "");
}

// TensorBoard's record checksums: CRC-32C's published check value, and the mask over it.
TEST(TensorBoard, Crc32cAndItsMask) {
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(crc32c(""), 0u);
  const uint32_t crc = crc32c("123456789");
  EXPECT_EQ(masked_crc32c("123456789"), ((crc >> 15) | (crc << 17)) + 0xa282ead8u);
}

TEST(TrainConfig, SettingsListEveryKeySetSorted) {
  TempDir dir;
  const std::string path = dir.file("s.toml", "[train]\nsteps = 7\n[data]\npath = \"x\"\n");
  EXPECT_EQ(load_train_config(path, {"optim.lr=0.5"}).settings, "data.path = 'x'\noptim.lr = 0.5\ntrain.steps = 7\n");
}

TEST(Optimizer, ShardOutsideTheParametersIsRefused) {
  auto ops = make_cpu_ops();
  GPT model(GPTConfig::preset("test"), *ops, 1, 4);
  const int64_t total = model.layout().total();
  EXPECT_EQ(error_of([&] { AdamW(model, OptimConfig{}, total - 10, 11); }),
            "AdamW: elements [" + std::to_string(total - 10) + ", " + std::to_string(total + 1) + ") outside the " +
                std::to_string(total) + " parameters");
}

TEST(Model, TensorParallelNeedsItsGroup) {
  auto ops = make_cpu_ops();
  EXPECT_EQ(error_of([&] {
              GPT(GPTConfig::preset("test"), *ops, 1, 4, {2, 0});
            }),
            "GPT: tensor parallel rank 0 of 2 needs its group's Comm");
  const std::unique_ptr<Comm> self = make_self_comm();  // a group of 1 is not one of 2
  EXPECT_EQ(error_of([&] {
              GPT(GPTConfig::preset("test"), *ops, 1, 4, {2, 1}, self.get());
            }),
            "GPT: tensor parallel rank 1 of 2 needs its group's Comm");
}

TEST(Schedule, WarmupThenCosineToTheFloor) {
  OptimConfig o;
  o.lr = 1.0;
  o.warmup_steps = 10;
  o.min_lr_ratio = 0.1;
  EXPECT_DOUBLE_EQ(learning_rate(o, 0, 100), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(o, 9, 100), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(o, 10, 100), 1.0);
  EXPECT_NEAR(learning_rate(o, 99, 100), 0.1, 1e-12);
  for (int s = 11; s < 100; s++) EXPECT_LE(learning_rate(o, s, 100), learning_rate(o, s - 1, 100));
  o.schedule = LrSchedule::wsd;
  o.decay_fraction = 0.2;
  EXPECT_DOUBLE_EQ(learning_rate(o, 79, 100), 1.0);
  EXPECT_LT(learning_rate(o, 80, 100), 1.0);
  EXPECT_NEAR(learning_rate(o, 99, 100), 0.1, 1e-12);
}

TEST(Optimizer, GradScaleIsTheSameAsScalingTheGradients) {
  auto ops = make_cpu_ops();
  const GPTConfig cfg = GPTConfig::preset("test");
  GPT folded(cfg, *ops, 1, 4), scaled(cfg, *ops, 1, 4);
  const std::vector<int32_t> tokens = {1, 2, 3, 4}, targets = {2, 3, 4, 5};
  for (GPT* m : {&folded, &scaled}) {
    m->init_weights(3);
    m->zero_grads();
    m->forward_backward(tokens, targets, 1, 4);
  }
  const double norm = grad_norm(*ops, folded.grads());
  EXPECT_GT(norm, 0.0);
  const double factor = ref::clip_factor(norm, 0.5 * norm);
  EXPECT_NEAR(factor, 0.5, 1e-6);
  std::vector<float> g(scaled.grads().numel);
  ops->download(g, scaled.grads());
  for (float& v : g) v *= (float)factor;
  ops->upload(scaled.grads(), g);
  EXPECT_NEAR(grad_norm(*ops, scaled.grads()), 0.5 * norm, 1e-5 * norm);
  OptimConfig o;
  AdamW a(folded, o), b(scaled, o);
  a.step(1e-3, factor);
  b.step(1e-3);
  std::vector<float> pa(folded.params().numel), pb(scaled.params().numel);
  ops->download(pa, folded.params());
  ops->download(pb, scaled.params());
  EXPECT_EQ(pa, pb);
}

std::string repetitive_text() {
  std::ostringstream text;
  for (int i = 0; i < 200; i++) text << "the quick brown fox jumps over the lazy dog. " << (i % 7) << " kiln trains.\n";
  return text.str();
}

// A byte-level dataset of `text`, one document per line, every 10th line held out.
std::string prepare_text(const TempDir& dir, const std::string& text) {
  PrepareOptions o;
  o.inputs = {dir.file("corpus.txt", text)};
  o.separator = "\n";
  o.val_fraction = 0.1;
  o.output = dir.path("data");
  prepare_dataset(o);
  return o.output;
}

// lr = 1e30 blows the weights up in the first step: the second step's loss is not finite.
std::vector<Override> diverging_run(const TempDir& dir) {
  return {"model.preset=test", "data.path=random",     "train.seq_len=32", "train.batch_size=2",  "train.steps=6",
          "optim.lr=1e30",     "optim.warmup_steps=0", "run.device=cpu",   "run.dir=" + dir.str()};
}

TEST(Trainer, ANonFiniteLossStopsTheRunNamingTheStep) {
  TempDir dir;
  std::ostringstream log;
  const std::string message = error_of([&] { train(load_train_config("", diverging_run(dir)), log); });
  EXPECT_TRUE(mentions(message, {"step 2: the loss is", "nan", "train.nonfinite = skip"})) << message;
}

TEST(Trainer, NonFiniteStepsAreSkippedAndCountedWhenTheConfigSaysSo) {
  TempDir dir;
  std::vector<Override> overrides = diverging_run(dir);
  overrides.push_back("train.nonfinite=skip");
  std::ostringstream log;
  const std::vector<StepRecord> records = train(load_train_config("", overrides), log);
  ASSERT_EQ(records.size(), 6u);
  EXPECT_TRUE(std::isfinite(records[0].loss));
  EXPECT_TRUE(mentions(log.str(), {"step 2: loss", "step skipped (1 so far)", "5 step(s) skipped"})) << log.str();
  const std::string metrics = read_file(dir.path("metrics.jsonl"));
  EXPECT_NE(metrics.find("\"skipped\":true"), std::string::npos) << metrics;
  EXPECT_NE(error_of([&] {
              load_train_config("", {"data.path=x", "train.nonfinite=ignore"});
            }).find("train.nonfinite: 'ignore': expected stop or skip"),
            std::string::npos);
}

TEST(TrainConfig, GpuKeysAndTheirErrors) {
  const TrainConfig cfg =
      load_train_config("", {"data.path=x", "run.deterministic=true", "run.gpu_memory=80GB", "train.recompute=block"});
  EXPECT_TRUE(cfg.deterministic);
  EXPECT_EQ(cfg.gpu_memory_bytes, 80LL << 30);
  EXPECT_EQ(cfg.train.recompute, Recompute::block);
  EXPECT_EQ(parse_memory_size("512MiB"), 512LL << 20);
  EXPECT_EQ(parse_memory_size("1.5G"), 3LL << 29);
  EXPECT_EQ(parse_memory_size("lots"), -1);
  EXPECT_EQ(error_of([&] {
              load_train_config("", {"data.path=x", "run.gpu_memory=lots"});
            }),
            "command line --run.gpu_memory=lots: run.gpu_memory: 'lots': expected a size such as 80GB or 512MiB");
  EXPECT_EQ(error_of([&] {
              load_train_config("", {"data.path=x", "run.deterministic=1"});
            }),
            "command line --run.deterministic=1: run.deterministic: expected true or false");
  EXPECT_EQ(error_of([&] {
              load_train_config("", {"data.path=x", "train.recompute=all"});
            }),
            "command line --train.recompute=all: train.recompute: recompute 'all': expected none, mlp or block");
  EXPECT_EQ(error_of([&] {
              load_train_config("", {"data.path=x", "run.device=gpu"});
            }),
            "command line --run.device=gpu: run.device: 'gpu': expected auto, cpu, cuda or emu");
  // run.gpu names the GPU a dry run plans for: only there, and with its memory.
  EXPECT_EQ(load_train_config(
                "", {"data.path=x", "run.gpu=H100", "run.gpu_memory=80GB", "run.dry_run=true", "run.device=cuda"})
                .gpu,
            "H100");
  EXPECT_EQ(error_of([&] {
              load_train_config("", {"data.path=x", "run.gpu=H100", "run.gpu_memory=80GB"});
            }),
            "command line --run.gpu=H100: run.gpu: 'H100' is for planning: add --dry-run --device cuda");
  EXPECT_EQ(error_of([&] {
              load_train_config("", {"data.path=x", "run.gpu=H100", "run.dry_run=true", "run.device=cuda"});
            }),
            "command line --run.gpu=H100: run.gpu: 'H100': give its memory too (--gpu-memory, e.g. 80GB)");
  EXPECT_EQ(error_of([&] {
              load_train_config("", {"data.path=x", "train.sample_every=-1"});
            }),
            "command line --train.sample_every=-1: train.sample_every: expected >= 0 (0 disables sampling)");
  EXPECT_EQ(error_of([&] {
              load_train_config("", {"data.path=x", "train.batch_size=99999999999"});
            }),
            "command line --train.batch_size=99999999999: train.batch_size: expected an integer in range");
  EXPECT_EQ(error_of([&] {
              load_train_config("", {"data.path=x", "train.sample_tokens=0"});
            }),
            "command line --train.sample_tokens=0: train.sample_tokens: expected >= 1");
  EXPECT_EQ(error_of([&] {
              load_train_config("", {"data.path=x", "checkpoint.every=-2"});
            }),
            "command line --checkpoint.every=-2: checkpoint.every: expected >= 0 (0: never)");
  EXPECT_EQ(error_of([&] {
              load_train_config("", {"data.path=x", "checkpoint.keep=-1"});
            }),
            "command line --checkpoint.keep=-1: checkpoint.keep: expected >= 0 (0: keep all)");
  EXPECT_EQ(
      error_of([&] {
        load_train_config("", {"data.path=x", "checkpoint.async_max_mb=-1"});
      }),
      "command line --checkpoint.async_max_mb=-1: checkpoint.async_max_mb: expected >= 0 (0: always save in place)");
  EXPECT_EQ(error_of([&] {
              load_train_config("", {"data.path=x", "checkpoint.async=1"});
            }),
            "command line --checkpoint.async=1: checkpoint.async: expected true or false");
  EXPECT_EQ(error_of([&] {
              load_train_config("", {"data.path=x", "checkpoint.on_error=retry"});
            }),
            "command line --checkpoint.on_error=retry: checkpoint.on_error: 'retry': expected stop or continue");
}

TEST(Trainer, LossFallsWellBelowItsStart) {
  TempDir dir;
  const std::string data = prepare_text(dir, repetitive_text());
  const TrainConfig cfg = load_train_config(
      "", {"model.preset=test", "data.path=" + data, "train.batch_size=8", "train.seq_len=32", "train.steps=40",
           "train.eval_every=20", "optim.lr=1e-2", "optim.warmup_steps=5", "run.dir=" + dir.path("run")});
  std::ostringstream log;
  const std::vector<StepRecord> steps = train(cfg, log);
  ASSERT_EQ(steps.size(), 40u);
  const double first = steps.front().loss, last = steps.back().loss;
  std::printf("loss %.3f -> %.3f\n", first, last);
  EXPECT_NEAR(first, std::log(257.0), 0.5);  // an untrained byte model is near uniform
  EXPECT_LT(last, 0.5 * first);
  ASSERT_TRUE(steps.back().val_loss.has_value());
  EXPECT_LT(*steps.back().val_loss, 0.5 * first);

  // One metrics row per step, with the documented fields, and a progress line per step.
  std::ifstream metrics(dir.path("run") + "/metrics.jsonl");
  std::string line;
  int rows = 0, val_rows = 0;
  while (std::getline(metrics, line)) {
    const auto row = nlohmann::json::parse(line);
    for (const char* key : {"step", "loss", "lr", "grad_norm", "tokens_per_s"}) EXPECT_TRUE(row.contains(key)) << key;
    val_rows += row.contains("val_loss");
    rows++;
  }
  EXPECT_EQ(rows, 40);
  EXPECT_EQ(val_rows, 2);
  EXPECT_NE(log.str().find("step 40/40 | loss"), std::string::npos);
  EXPECT_NE(log.str().find("tok/s"), std::string::npos);
}

TEST(Trainer, SameSeedSameLosses) {
  TempDir dir;
  const std::string data = prepare_text(dir, repetitive_text());
  std::vector<Override> overrides = {"model.preset=test", "data.path=" + data, "train.batch_size=2",
                                     "train.seq_len=16",  "train.steps=3",     "train.eval_every=0"};
  std::ostringstream log;
  overrides.emplace_back("run.dir=" + dir.path("a"));
  const auto a = train(load_train_config("", overrides), log);
  overrides.back() = Override("run.dir=" + dir.path("b"));
  const auto b = train(load_train_config("", overrides), log);
  ASSERT_EQ(a.size(), 3u);
  ASSERT_EQ(b.size(), 3u);
  for (size_t i = 0; i < a.size(); i++) EXPECT_EQ(a[i].loss, b[i].loss);
}

TEST(Trainer, MissingOrShortDatasetIsAClearError) {
  TempDir dir;
  const std::string missing = dir.path("nope");
  EXPECT_EQ(error_of([&] {
              train(load_train_config("", {"data.path=" + missing, "run.dir=" + dir.path("r")}), std::cout);
            }),
            missing + ": dataset directory not found");
  const std::string short_data = prepare_text(dir, "tiny\n");
  EXPECT_NE(error_of([&] {
              train(load_train_config("", {"data.path=" + short_data, "run.dir=" + dir.path("r")}), std::cout);
            }).find("longer than any shard"),
            std::string::npos);
}

TEST(Trainer, ModelVocabularyMustMatchTheDataset) {
  TempDir dir;
  const std::string data = prepare_text(dir, repetitive_text());
  EXPECT_NE(error_of([&] {
              train(load_train_config("", {"data.path=" + data, "model.vocab_size=100", "run.dir=" + dir.path("r")}),
                    std::cout);
            }).find("model.vocab_size = 100 differs from the vocabulary of " + data + " (257, tokenizer bytes)"),
            std::string::npos);
}

}  // namespace
}  // namespace kiln
