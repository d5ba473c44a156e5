// Checkpoints on one process (the MPI layouts: tests/parallel/checkpoint_resume.sh): bit-exact
// resume, metrics without repeated steps, fine-tuning from parameters, a failed save that leaves
// the previous checkpoint, and a clear error for every malformed checkpoint.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/h5.h"
#include "data/prepare.h"
#include "kernels/fnv1a.h"
#include "tests/test_util.h"
#include "model/cpu_ops.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/trainer.h"

namespace kiln {
namespace {

using namespace kiln::test;
namespace fs = std::filesystem;
using nlohmann::json;

// kiln's README as a byte-level dataset: the loader's position is part of what resumes.
std::string readme_data(const TempDir& dir) {
  PrepareOptions o;
  o.inputs = {std::string(KILN_SOURCE_DIR) + "/README.md"};
  o.output = dir.path("data");
  prepare_dataset(o);
  return o.output;
}

struct TrainRun {
  std::vector<StepRecord> records;
  std::string log;
};

TrainRun train_test(const std::string& run_dir, const std::string& data, int steps, std::vector<Override> extra = {}) {
  std::vector<Override> o = {"model.preset=test",
                             "data.path=" + data,
                             "train.seq_len=32",
                             "train.batch_size=4",
                             "train.steps=" + std::to_string(steps),
                             "train.eval_every=0",
                             "run.device=cpu",
                             "run.dir=" + run_dir};
  o.insert(o.end(), extra.begin(), extra.end());
  std::ostringstream log;
  std::vector<StepRecord> records = train(load_train_config("", o), log);
  return {records, log.str()};
}

std::vector<json> metrics(const std::string& run_dir) {
  std::vector<json> rows;
  std::ifstream in(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) rows.push_back(json::parse(line));
  return rows;
}

TEST(Checkpoint, StopAndResumeIsBitExact) {
  TempDir dir;
  const std::string data = readme_data(dir);
  train_test(dir.path("straight"), data, 8);
  train_test(dir.path("resumed"), data, 4, {"checkpoint.every=2"});
  EXPECT_EQ(latest_checkpoint(dir.path("resumed")), dir.path("resumed") + "/step_00000004");
  const TrainRun second = train_test(dir.path("resumed"), data, 8, {"checkpoint.every=4"});
  EXPECT_TRUE(mentions(second.log, {"resumed from " + dir.path("resumed") + "/step_00000004 at step 4"}));
  ASSERT_EQ(second.records.size(), 4u);
  const std::vector<json> a = metrics(dir.path("straight")), b = metrics(dir.path("resumed"));
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 8u);
  for (size_t i = 0; i < a.size(); i++) {
    EXPECT_EQ(b[i]["step"], i + 1);
    EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "step " << i + 1;
    EXPECT_EQ(a[i]["grad_norm"].get<double>(), b[i]["grad_norm"].get<double>()) << "step " << i + 1;
  }
  // Saved at steps 2, 4 and 8: checkpoint.keep = 3 (the default) keeps all three.
  for (const char* step : {"/step_00000002", "/step_00000004", "/step_00000008"})
    EXPECT_TRUE(fs::exists(dir.path("resumed") + step)) << step;
  EXPECT_NO_THROW(verify_checkpoint(dir.path("resumed") + "/step_00000008"));
}

TEST(Checkpoint, RowsPastTheCheckpointAreDroppedOnResume) {
  TempDir dir;
  const std::string run = dir.path("run");
  train_test(run, "random", 4, {"checkpoint.every=2"});
  // As if the job died after step 4's metrics but before its checkpoint committed.
  fs::remove_all(run + "/step_00000004");
  std::ofstream(run + "/latest") << "step_00000002\n";
  train_test(run, "random", 4, {"checkpoint.every=2"});
  std::vector<int> steps;
  for (const json& row : metrics(run)) steps.push_back(row["step"]);
  EXPECT_EQ(steps, (std::vector<int>{1, 2, 3, 4}));
}

// Every run saves at its end (checkpoint.every = 0: only there), so that its model can be used.
TEST(Checkpoint, EveryRunSavesAtItsEnd) {
  TempDir dir;
  train_test(dir.path("run"), "random", 3);
  EXPECT_EQ(latest_checkpoint(dir.path("run")), dir.path("run") + "/step_00000003");
  EXPECT_FALSE(fs::exists(dir.path("run") + "/step_00000001"));
}

// Started again once finished: says so, trains nothing, and leaves the metrics as they were.
TEST(Checkpoint, AFinishedRunSaysSoAndTrainsNothing) {
  TempDir dir;
  train_test(dir.path("run"), "random", 3);
  const std::string before = read_file(dir.path("run") + "/metrics.jsonl");
  const TrainRun again = train_test(dir.path("run"), "random", 3);
  EXPECT_TRUE(again.records.empty());
  EXPECT_TRUE(mentions(again.log, {"run already at step 3 of 3: nothing to do"})) << again.log;
  EXPECT_EQ(read_file(dir.path("run") + "/metrics.jsonl"), before);
}

TEST(Checkpoint, KeepsTheNewestK) {
  TempDir dir;
  train_test(dir.path("run"), "random", 6, {"checkpoint.every=1", "checkpoint.keep=2"});
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir.path("run")))
    if (e.path().filename().string().starts_with("step_")) left.push_back(e.path().filename().string());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"step_00000005", "step_00000006"}));
}

TEST(Checkpoint, AChangedModelShapeIsRefusedNamingTheField) {
  TempDir dir;
  train_test(dir.path("run"), "random", 2, {"checkpoint.every=2"});
  const std::string message = error_of([&] { train_test(dir.path("run"), "random", 4, {"model.n_embd=64"}); });
  EXPECT_TRUE(mentions(message, {"step_00000002", "saved with model.n_embd = 32; the config says 64"})) << message;
}

// Fine-tuning takes the checkpoint's model shape, whatever the config's preset says; only an
// override on the command line that disagrees is refused, naming the key and both values.
TEST(Checkpoint, FineTuningTakesTheCheckpointsShape) {
  TempDir dir;
  train_test(dir.path("base"), "random", 2, {"model.n_embd=64", "model.n_layer=3"});
  const TrainRun tuned = train_test(dir.path("tuned"), "random", 1, {"checkpoint.init_from=" + dir.path("base")});
  EXPECT_TRUE(mentions(tuned.log, {"parameters from"})) << tuned.log;
  EXPECT_EQ(checkpoint_info(latest_checkpoint(dir.path("tuned"))).model.n_embd, 64);
  EXPECT_EQ(checkpoint_info(latest_checkpoint(dir.path("tuned"))).model.n_layer, 3);
  const std::string e = error_of([&] {
    train_test(dir.path("other"), "random", 1,
               {"checkpoint.init_from=" + dir.path("base"), "model.n_embd=48", "model.n_layer=3"});
  });
  EXPECT_TRUE(mentions(e, {"init-from", "fine-tuning keeps the checkpoint's model shape",
                           "model.n_embd = 48 on the command line, 64 in the checkpoint"}))
      << e;
  EXPECT_FALSE(mentions(e, {"model.n_layer ="})) << e;  // agrees with the checkpoint
  EXPECT_FALSE(mentions(e, {"resume"})) << e;
}

TEST(Checkpoint, FineTuningTakesTheParametersOnly) {
  TempDir dir;
  const TrainRun base = train_test(dir.path("base"), "random", 6, {"checkpoint.every=6", "optim.lr=3e-3"});
  const TrainRun tuned =
      train_test(dir.path("tuned"), "random", 1, {"checkpoint.init_from=" + dir.path("base") + "/step_00000006"});
  EXPECT_TRUE(mentions(tuned.log, {"parameters from", "start afresh"}));
  ASSERT_EQ(tuned.records.size(), 1u);
  EXPECT_EQ(tuned.records[0].step, 1);  // a new schedule
  // Random tokens: the trained model is no better at them, but it starts where base ended.
  EXPECT_NE(tuned.records[0].loss, base.records[0].loss);
  EXPECT_EQ(error_of([&] {
              load_train_config("", {"data.path=x", "checkpoint.resume=a", "checkpoint.init_from=b"});
            }),
            "command line --checkpoint.init_from=b: checkpoint.init_from: cannot be combined with checkpoint.resume "
            "(resume continues a run, "
            "init_from starts one)");
}

// A background save is taken at its step and written while the next steps train: the same
// checkpoint, bit for bit, as a save in place. A snapshot over checkpoint.async_max_mb saves in place.
TEST(Checkpoint, BackgroundSavesOverlapTrainingAndEqualSavesInPlace) {
  TempDir dir;
  const TrainRun background = train_test(dir.path("bg"), "random", 4, {"checkpoint.every=2", "train.log_every=1"});
  const TrainRun in_place = train_test(dir.path("fg"), "random", 4, {"checkpoint.every=2", "checkpoint.async=false"});
  const TrainRun bounded =
      train_test(dir.path("bound"), "random", 2, {"checkpoint.every=2", "checkpoint.async_max_mb=0"});
  const std::string& log = background.log;
  const size_t snapshot = log.find("step 2: checkpoint snapshot"), step3 = log.find("step 3/4"),
               saved = log.find("saved " + dir.path("bg") + "/step_00000002 (");
  ASSERT_NE(snapshot, std::string::npos) << log;
  ASSERT_NE(saved, std::string::npos) << log;
  EXPECT_LT(snapshot, step3);
  EXPECT_LT(step3, saved) << "step 3 trained while step 2's checkpoint was written";
  EXPECT_TRUE(mentions(in_place.log, {"saved " + dir.path("fg") + "/step_00000002 in"})) << in_place.log;
  EXPECT_TRUE(mentions(bounded.log, {"saved " + dir.path("bound") + "/step_00000002 in"})) << bounded.log;
  for (const char* step : {"/step_00000002", "/step_00000004"})
    for (const TensorDifference& d : compare_checkpoints(dir.path("bg") + step, dir.path("fg") + step))
      EXPECT_EQ(d.max_abs, 0.0) << step << " " << d.tensor << " " << d.kind;
}

// Relative to an earlier checkpoint of a's run, each tensor's ||a - b|| / ||a - reference||: 0
// for a against itself, 1 for a against the reference (its whole update missing), infinite for a
// tensor that differs where a did not move.
TEST(Checkpoint, ComparedRelativeToTheUpdatesSinceAnEarlierOne) {
  TempDir dir;
  train_test(dir.path("run"), "random", 4, {"checkpoint.every=2", "checkpoint.keep=0"});
  const std::string step2 = dir.path("run") + "/step_00000002", step4 = dir.path("run") + "/step_00000004";
  for (const TensorDifference& d : compare_checkpoints(step4, step4, step2))
    EXPECT_EQ(d.relative(), 0.0) << d.tensor << " " << d.kind;
  for (const TensorDifference& d : compare_checkpoints(step4, step2, step2)) {
    EXPECT_GT(d.update_norm, 0.0) << d.tensor << " " << d.kind;
    EXPECT_EQ(d.relative(), 1.0) << d.tensor << " " << d.kind;
  }
  EXPECT_EQ((TensorDifference{"t", "m", 0.0, 1e-9, 0.0}.relative()), INFINITY);
  EXPECT_EQ((TensorDifference{"t", "m", 0.0, 0.0, 0.0}.relative()), 0.0);
}

// The test preset has 28 tensors, each stored as master, m and v: 84 dataset writes per save.
TEST(Checkpoint, AFullDiskLeavesThePreviousCheckpointAndTrainingGoesOn) {
  TempDir dir;
  inject_checkpoint_faults({.fail_write = 85, .stop_at = ""});  // the second save's first write
  const TrainRun run = train_test(dir.path("run"), "random", 4, {"checkpoint.every=2", "checkpoint.on_error=continue"});
  inject_checkpoint_faults({});
  EXPECT_EQ(run.records.size(), 4u);
  EXPECT_TRUE(mentions(run.log, {"checkpoint " + dir.path("run") + "/step_00000004 not saved",
                                 "No space left on device", "latest still names the previous one", "training goes on"}))
      << run.log;
  EXPECT_EQ(latest_checkpoint(dir.path("run")), dir.path("run") + "/step_00000002");
  EXPECT_FALSE(fs::exists(dir.path("run") + "/step_00000004.tmp"));
  EXPECT_NO_THROW(verify_checkpoint(dir.path("run") + "/step_00000002"));
}

TEST(Checkpoint, AFullDiskStopsTheRunWhenConfiguredTo) {
  TempDir dir;
  inject_checkpoint_faults({.fail_write = 3, .stop_at = ""});
  const std::string message = error_of([&] { train_test(dir.path("run"), "random", 2, {"checkpoint.every=2"}); });
  inject_checkpoint_faults({});
  EXPECT_TRUE(mentions(message, {"step_00000002 not saved", "No space left on device"})) << message;
  EXPECT_EQ(latest_checkpoint(dir.path("run")), "");
}

// A sound checkpoint to break, one way per test.
// A diverged model (a NaN in its weights) is never saved: the save fails naming the tensor, and
// latest keeps naming the last sound checkpoint.
TEST(Checkpoint, NonFiniteWeightsAreNeverSaved) {
  TempDir dir;
  train_test(dir.path("run"), "random", 2);
  const auto ops = make_cpu_ops();
  GPT model(GPTConfig::preset("test"), *ops, 1, 8);
  std::vector<float> weights(model.layout().total(), 0.01f);
  weights[model.layout().find("h.0.attn.c_attn.weight").offset + 5] = std::nanf("");
  model.set_weights(weights);
  AdamW optimizer(model, OptimConfig{});
  TrainingState state;
  state.step = 3;
  const std::string e = error_of(
      [&] { save_checkpoint(dir.path("run"), "", model, optimizer, CheckpointRank{}, state, *make_self_comm(), 0); });
  EXPECT_TRUE(mentions(e, {"tensor 'h.0.attn.c_attn.weight' (master) holds 1 non-finite value(s): not saved"})) << e;
  EXPECT_EQ(latest_checkpoint(dir.path("run")), dir.path("run") + "/step_00000002");
  EXPECT_FALSE(fs::exists(dir.path("run") + "/step_00000003"));
  EXPECT_FALSE(fs::exists(dir.path("run") + "/step_00000003.tmp"));
}

class BrokenCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    train_test(dir_.path("run"), "random", 2, {"checkpoint.every=2"});
    ckpt_ = dir_.path("run") + "/step_00000002";
    ASSERT_NO_THROW(verify_checkpoint(ckpt_));
  }
  json manifest() const { return json::parse(read_file(ckpt_ + "/manifest.json")); }
  // Writes an edited manifest with its checksum made to match, as a buggy writer would: the checks
  // behind the checksum are what is tested (a hand edit that keeps the old checksum is refused by it).
  void write_manifest(json m) const {
    m.erase("checksum");
    const std::string text = m.dump();
    m["checksum"] = fmt::format("{:016x}", fnv1a(text.data(), text.size()));
    std::ofstream(ckpt_ + "/manifest.json") << m.dump();
  }
  std::string rank_file() const { return ckpt_ + "/rank_00000.h5"; }
  // Both the verifier and a resume must refuse it, naming what is wrong.
  void expect_refused(std::initializer_list<std::string> parts) {
    const std::string verify = error_of([&] { verify_checkpoint(ckpt_); });
    EXPECT_TRUE(mentions(verify, parts)) << verify;
    const std::string resume = error_of([&] { train_test(dir_.path("run"), "random", 4); });
    EXPECT_NE(resume, "(no error)");
  }
  TempDir dir_;
  std::string ckpt_;
};

// A NaN written into the rank file behind kiln's back, with its size and checksum made to match:
// only reading the values finds it, and verify does.
TEST_F(BrokenCheckpoint, NonFiniteValues) {
  json m = manifest();
  std::vector<std::pair<std::string, std::vector<float>>> datasets;
  {
    const h5::File in = h5::File::open_read(rank_file());
    for (const json& t : m["tensors"])
      for (const json& p : t["pieces"]) datasets.emplace_back(p["dataset"], in.read<float>(p["dataset"]));
  }
  datasets.front().second[0] = std::numeric_limits<float>::infinity();
  {
    h5::File out = h5::File::create(rank_file());
    for (const auto& [name, values] : datasets) out.write<float>(name, std::span<const float>(values), H5T_IEEE_F32LE);
    out.close();
  }
  const std::string bytes = read_file(rank_file());
  m["files"][0]["bytes"] = bytes.size();
  m["files"][0]["fnv1a"] = fmt::format("{:016x}", fnv1a(bytes.data(), bytes.size()));
  write_manifest(m);
  expect_refused({"holds 1 non-finite value(s) of"});
}

TEST_F(BrokenCheckpoint, MissingFile) {
  fs::remove(rank_file());
  expect_refused({rank_file(), "missing or unreadable"});
}

TEST_F(BrokenCheckpoint, TruncatedFile) {
  fs::resize_file(rank_file(), fs::file_size(rank_file()) / 2);
  expect_refused({rank_file(), "bytes, the manifest says", "truncated"});
}

TEST_F(BrokenCheckpoint, WrongChecksum) {
  std::fstream f(rank_file(), std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(4000);
  f.put('\x5a');
  f.close();
  expect_refused({rank_file(), "checksum", "the manifest says"});
}

TEST_F(BrokenCheckpoint, ManifestMissesATensor) {
  json m = manifest();
  json& tensors = m["tensors"];
  tensors.erase(tensors.begin() + 1);  // wpe
  write_manifest(m);
  expect_refused({ckpt_ + "/manifest.json", "no tensor 'wpe'"});
}

TEST_F(BrokenCheckpoint, ShapeMismatch) {
  json m = manifest();
  m["tensors"][1]["global_shape"] = {32, 64};  // as many elements, another shape
  write_manifest(m);
  expect_refused({"tensor 'wpe' has global_shape [32,64], the model's is [64,32]"});
}

TEST_F(BrokenCheckpoint, FutureFormatVersion) {
  json m = manifest();
  m["format"] = kCheckpointFormat + 1;
  write_manifest(m);
  expect_refused({ckpt_ + "/manifest.json", "format: 3, this kiln reads formats 1 to 2 (a newer kiln wrote it)"});
}

// A hand edit of the manifest (here: the step) is refused by its checksum.
TEST_F(BrokenCheckpoint, EditedManifest) {
  json m = manifest();
  m["step"] = 1000;
  std::ofstream(ckpt_ + "/manifest.json") << m.dump(1);
  expect_refused({ckpt_ + "/manifest.json: checksum", "the manifest says", "(edited or damaged)"});
}

// A format-1 manifest (written before manifests had a checksum) still loads.
TEST_F(BrokenCheckpoint, FormatOneStillLoads) {
  json m = manifest();
  m.erase("checksum");
  m["format"] = 1;
  std::ofstream(ckpt_ + "/manifest.json") << m.dump(1);
  EXPECT_NO_THROW(verify_checkpoint(ckpt_));
  EXPECT_NO_THROW(train_test(dir_.path("run"), "random", 4));
}

// Values of the wrong type or range, and paths leading out of the checkpoint, are refused by
// field, each naming the manifest.
TEST_F(BrokenCheckpoint, ManifestSchemaAndRanges) {
  const json good = manifest();
  for (const auto& [edit, expected] : std::initializer_list<std::pair<std::function<void(json&)>, std::string>>{
           {[](json& m) { m["tensors"][0]["dtype"] = "bogus"; }, "dtype: expected \"f32\", found \"bogus\""},
           {[](json& m) { m["step"] = -1; }, "step: expected an integer in 0.."},
           {[](json& m) { m["step"] = "two"; }, "step: expected an integer in 0.."},
           {[](json& m) { m["adamw_step"] = 5; }, "adamw_step: expected an integer in 0..2, found 5"},
           {[](json& m) {
              m["loader"] = {{"seed", 1}, {"epoch", 0}, {"position", 1e15}};
            },
            "loader.position"},
           {[](json& m) { m["tensors"][0]["pieces"][0]["file"] = "../step_00000004/rank_00000.h5"; },
            "pieces[].file: expected a file name inside the checkpoint directory"},
           {[](json& m) { m["files"][0]["name"] = "/etc/passwd"; }, "files[].name: expected a file name inside"},
           {[](json& m) { m["tensors"][0]["global_shape"] = {1000000000000}; },
            "global_shape: expected an integer in 1.."},
           {[](json& m) { m["model"]["n_layer"] = "2"; }, "model.n_layer: expected an integer"}}) {
    json m = good;
    edit(m);
    write_manifest(m);
    expect_refused({ckpt_ + "/manifest.json", expected});
  }
}

TEST_F(BrokenCheckpoint, CorruptLatest) {
  std::ofstream(dir_.path("run") + "/latest") << "step_00000099\n";
  EXPECT_TRUE(mentions(error_of([&] { latest_checkpoint(dir_.path("run")); }),
                       {dir_.path("run") + "/latest", "names step_00000099, which does not exist"}));
  std::ofstream(dir_.path("run") + "/latest") << "../elsewhere\n";
  EXPECT_TRUE(mentions(error_of([&] { latest_checkpoint(dir_.path("run")); }),
                       {dir_.path("run") + "/latest", "expected a checkpoint directory name, found '../elsewhere'"}));
}

}  // namespace
}  // namespace kiln
