#include "train/checkpoint.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <chrono>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "data/file_checksum.h"
#include "data/gpt2_tokenizer.h"
#include "data/h5.h"
#include "model/cpu_ops.h"
#include "kernels/fnv1a.h"
#include "model/params.h"
#include "train/durable_file.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int64_t kMaxCheckpointPieceFloats = 16 << 20;  // 64 MB: HDF5's global lock is held no longer per write

std::string rank_file(int world_rank) { return fmt::format("rank_{:05}.h5", world_rank); }

// Every piece that every rank of `rank`'s layout writes: the master weights and moments by their
// ZeRO-1 shard's owner (DP rank 0 of each TP rank without ZeRO-1), and tensors replicated over TP
// by TP rank 0 only. Deterministic, so rank 0 writes the manifest alone.
std::vector<CheckpointPiece> all_pieces(const GPTConfig& cfg, const CheckpointRank& rank) {
  std::vector<CheckpointPiece> pieces;
  for (int t = 0; t < rank.tp; t++) {
    const ParamLayout layout(cfg, {rank.tp, t});
    for (int d = 0; d < rank.dp; d++) {
      const CheckpointRank writer{rank.tp, t, rank.dp, d, rank.zero1};
      const FlatShard shard = flat_shard(layout.total(), rank.zero1 ? rank.dp : 1, rank.zero1 ? d : 0);
      const int64_t first = shard.first, count = shard.count;
      for (const ParamSpec& s : layout.specs()) {
        if (s.replicated && t != 0) continue;
        const TensorSlice box = tensor_slice(cfg, {rank.tp, t}, s);
        auto add = [&](const std::string& kind, int64_t begin, int64_t end) {
          for (int64_t at = begin; at < end; at += kMaxCheckpointPieceFloats)
            pieces.push_back({kind, s.name, box.start, box.count, at, std::min(end, at + kMaxCheckpointPieceFloats),
                              rank_file(writer.world_rank()), fmt::format("{}:{}:{}", kind, s.name, at)});
        };
        // The state this writer owns of the tensor's real (non-padding) elements.
        const int64_t begin = std::max(first, s.offset) - s.offset;
        const int64_t end = std::min({first + count, s.offset + s.numel, s.offset + box.numel()}) - s.offset;
        if ((rank.zero1 || d == 0) && begin < end) {
          add("master", begin, end);
          add("m", begin, end);
          add("v", begin, end);
        }
      }
    }
  }
  return pieces;
}

json model_json(const GPTConfig& c) {
  return {{"vocab_size", c.vocab_size},
          {"max_seq_len", c.max_seq_len},
          {"n_layer", c.n_layer},
          {"n_head", c.n_head},
          {"n_embd", c.n_embd}};
}

// The inverse of model_json: the saved model's sizes (the other fields their defaults).
GPTConfig model_from_json(const json& m) {
  GPTConfig c;
  c.vocab_size = m.at("vocab_size");
  c.max_seq_len = m.at("max_seq_len");
  c.n_layer = m.at("n_layer");
  c.n_head = m.at("n_head");
  c.n_embd = m.at("n_embd");
  return c;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": missing or unreadable");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// What inject_checkpoint_faults() set: nothing, outside the tests.
CheckpointFaults faults;
int writes_since_injected = 0;

void maybe_fail_write(const std::string& file) {
  if (faults.fail_write > 0 && ++writes_since_injected == faults.fail_write)
    throw std::runtime_error(file + ": write failed: " + std::strerror(ENOSPC) + " (an injected fault)");
}

void maybe_stop_at(const char* point) {
  if (faults.stop_at == point) std::raise(SIGSTOP);
}

// The manifest's checksum: FNV-1a over its compact JSON without the checksum field (the JSON
// object's keys are sorted, so the text is canonical).
std::string manifest_checksum(json manifest) {
  manifest.erase("checksum");
  const std::string text = manifest.dump();
  return fmt::format("{:016x}", fnv1a(text.data(), text.size()));
}

// Throws "PATH: FIELD: expected WHAT" unless `ok`.
void require(bool ok, const std::string& path, const std::string& field, const std::string& expected) {
  if (!ok) throw std::runtime_error(path + ": " + field + ": expected " + expected);
}

// A file name inside the checkpoint directory: no path, so nothing outside it is ever read.
bool plain_file_name(const json& name) {
  if (!name.is_string()) return false;
  const std::string s = name;
  return !s.empty() && s.find('/') == std::string::npos && s != "." && s != "..";
}

json read_manifest(const std::string& dir) {
  const std::string path = dir + "/manifest.json";
  json m;
  try {
    m = json::parse(read_bytes(path));
  } catch (const json::exception& e) {
    throw std::runtime_error(path + ": not valid JSON: " + e.what());
  }
  require(m.is_object(), path, "the manifest", "a JSON object");
  const int format = m.contains("format") && m["format"].is_number_integer() ? m["format"].get<int>() : -1;
  if (format < kOldestCheckpointFormat || format > kCheckpointFormat)
    throw std::runtime_error(path + ": format: " + std::to_string(format) + ", this kiln reads formats " +
                             std::to_string(kOldestCheckpointFormat) + " to " + std::to_string(kCheckpointFormat) +
                             (format > kCheckpointFormat ? " (a newer kiln wrote it)" : ""));
  if (format >= 2) {
    require(m.contains("checksum") && m["checksum"].is_string(), path, "checksum", "a string (format 2)");
    if (m["checksum"] != manifest_checksum(m))
      throw std::runtime_error(path + ": checksum " + manifest_checksum(m) + ", the manifest says " +
                               std::string(m["checksum"]) + " (edited or damaged)");
  }
  for (const char* field : {"step", "model", "layout", "files", "tensors"})
    if (!m.contains(field)) throw std::runtime_error(path + ": missing field '" + field + "'");
  // The schema and ranges, so that nothing below meets a value of the wrong type or size.
  auto integer = [&](const json& v, const std::string& field, int64_t lo, int64_t hi) {
    require(v.is_number_integer() && v.get<int64_t>() >= lo && v.get<int64_t>() <= hi, path, field,
            fmt::format("an integer in {}..{}, found {}", lo, hi, v.dump()));
  };
  constexpr int64_t kMax = int64_t{1} << 50;
  integer(m["step"], "step", 0, kMax);
  if (m.contains("adamw_step")) integer(m["adamw_step"], "adamw_step", 0, m["step"].get<int64_t>());
  require(m["model"].is_object(), path, "model", "an object");
  for (const char* field : {"vocab_size", "max_seq_len", "n_layer", "n_head", "n_embd"}) {
    require(m["model"].contains(field), path, std::string("model.") + field, "an integer");
    integer(m["model"][field], std::string("model.") + field, 1, int64_t{1} << 24);
  }
  if (m.contains("loader")) {
    require(m["loader"].is_object(), path, "loader", "an object");
    for (const char* field : {"seed", "epoch", "position"}) {
      require(m["loader"].contains(field), path, std::string("loader.") + field, "an integer");
      integer(m["loader"][field], std::string("loader.") + field, 0,
              field == std::string("seed") ? std::numeric_limits<int64_t>::max() : kMax);
    }
  }
  require(m["files"].is_array(), path, "files", "an array");
  for (const json& f : m["files"]) {
    require(f.is_object() && plain_file_name(f.value("name", json())), path, "files[].name",
            "a file name inside the checkpoint directory, found " + f.value("name", json()).dump());
    integer(f.value("bytes", json()), "files[].bytes", 0, kMax);
    require(f.value("fnv1a", json()).is_string(), path, "files[].fnv1a", "a string");
  }
  require(m["tensors"].is_array(), path, "tensors", "an array");
  for (const json& t : m["tensors"]) {
    require(t.is_object() && t.value("name", json()).is_string(), path, "tensors[].name", "a string");
    const std::string name = t["name"];
    require(t.value("dtype", json()) == "f32", path, "tensor '" + name + "': dtype",
            "\"f32\", found " + t.value("dtype", json()).dump());
    require(t.value("global_shape", json()).is_array(), path, "tensor '" + name + "': global_shape", "an array");
    int64_t numel = 1;
    for (const json& d : t["global_shape"]) {
      integer(d, "tensor '" + name + "': global_shape", 1, int64_t{1} << 34);
      numel = std::min<int64_t>(numel * d.get<int64_t>(), kMax);
    }
    require(numel <= (int64_t{1} << 36), path, "tensor '" + name + "': global_shape", "at most 2^36 elements");
    require(t.value("pieces", json()).is_array(), path, "tensor '" + name + "': pieces", "an array");
    for (const json& p : t["pieces"]) {
      const std::string field = "tensor '" + name + "': pieces[]";
      require(p.is_object() && plain_file_name(p.value("file", json())), path, field + ".file",
              "a file name inside the checkpoint directory, found " + p.value("file", json()).dump());
      require(p.value("dataset", json()).is_string() && p.value("kind", json()).is_string(), path,
              field + ".dataset/kind", "strings");
      integer(p.value("begin", json()), field + ".begin", 0, numel);
      integer(p.value("end", json()), field + ".end", p["begin"].get<int64_t>(), numel);
      require(p.value("start", json()).is_array() && p.value("count", json()).is_array(), path, field + ".start/count",
              "arrays");
    }
  }
  return m;
}

std::vector<CheckpointPiece> pieces_of(const json& tensor) {
  std::vector<CheckpointPiece> out;
  for (const json& p : tensor.at("pieces"))
    out.push_back({p.at("kind"), tensor.at("name"), p.at("start"), p.at("count"), p.at("begin"), p.at("end"),
                   p.at("file"), p.at("dataset")});
  return out;
}

// The whole (global) tensor `name` of kind `kind`, assembled from its pieces.
std::vector<float> global_tensor(const std::string& dir, const json& tensor, const std::string& kind,
                                 std::map<std::string, h5::File>& files) {
  TensorSlice whole{tensor.at("global_shape").get<std::vector<int64_t>>(), {}, {}};
  std::vector<float> global(whole.global_numel(), 0.0f);
  // CheckpointPieces grouped by box: each box's values are filled, then placed.
  std::map<std::vector<int64_t>, std::vector<float>> boxes;
  std::map<std::vector<int64_t>, TensorSlice> slices;
  bool found = false;
  for (const CheckpointPiece& p : pieces_of(tensor)) {
    if (p.kind != kind) continue;
    found = true;
    TensorSlice box{whole.global_shape, p.start, p.count};
    bool inside = p.start.size() == whole.global_shape.size() && p.count.size() == whole.global_shape.size();
    for (size_t d = 0; inside && d < p.start.size(); d++)
      inside = p.start[d] >= 0 && p.count[d] >= 0 && p.start[d] + p.count[d] <= whole.global_shape[d];
    if (!inside)
      throw std::runtime_error(
          fmt::format("{}/manifest.json: tensor '{}': piece {} has a box outside its global_shape {}", dir, p.tensor,
                      p.dataset, tensor.at("global_shape").dump()));
    std::vector<float>& values = boxes[p.start];
    if (values.empty()) values.assign(box.numel(), 0.0f), slices[p.start] = box;
    auto it = files.find(p.file);
    if (it == files.end()) it = files.emplace(p.file, h5::File::open_read(dir + "/" + p.file)).first;
    if (p.begin < 0 || p.end > box.numel() || p.begin > p.end)
      throw std::runtime_error(dir + "/manifest.json: " + p.dataset + ": range outside its box");
    it->second.read_range<float>(p.dataset, 0, std::span<float>(values.data() + p.begin, p.end - p.begin));
  }
  if (!found)
    throw std::runtime_error(dir + "/manifest.json: tensor '" + std::string(tensor.at("name")) + "' has no " + kind +
                             " pieces");
  for (const auto& [start, values] : boxes) copy_box_in(slices[start], values.data(), global.data());
  return global;
}

// This rank's local tensor `s` from the global one (its padding rows stay zero).
void local_from_global(const GPTConfig& cfg, TensorParallel tp, const ParamSpec& s, const std::vector<float>& global,
                       float* local) {
  const TensorSlice box = tensor_slice(cfg, tp, s);
  if ((int64_t)global.size() != box.global_numel())
    throw std::runtime_error("checkpoint tensor '" + s.name + "' holds " + std::to_string(global.size()) +
                             " values, the model's global shape " + std::to_string(box.global_numel()));
  std::fill(local, local + s.numel, 0.0f);
  copy_box_out(box, global.data(), local);
}

void check_model(const std::string& dir, const json& saved, const GPTConfig& cfg) {
  const json now = model_json(cfg);
  for (const auto& [field, value] : now.items())
    if (saved.at("model").at(field) != value)
      throw std::runtime_error(
          fmt::format("{}: saved with model.{} = {}; the config says {} (the model's shape "
                      "cannot change on resume)",
                      dir, field, saved.at("model").at(field).dump(), value.dump()));
}

const json& tensor_entry(const std::string& dir, const json& manifest, const std::string& name) {
  for (const json& t : manifest.at("tensors"))
    if (t.at("name") == name) return t;
  throw std::runtime_error(dir + "/manifest.json: no tensor '" + name + "'");
}

// Every file the manifest lists has its recorded size and FNV-1a hash.
void check_files(const std::string& dir, const json& manifest) {
  for (const json& f : manifest.at("files")) {
    const std::string path = dir + "/" + std::string(f.at("name"));
    const FileChecksum sum = file_checksum(path);
    if (sum.bytes != f.at("bytes").get<int64_t>())
      throw std::runtime_error(fmt::format("{}: {} bytes, the manifest says {} (truncated?)", path, sum.bytes,
                                           f.at("bytes").get<int64_t>()));
    const std::string hash = sum.hex(), recorded = f.at("fnv1a").get<std::string>();
    if (hash != recorded) throw std::runtime_error(path + ": checksum " + hash + ", the manifest says " + recorded);
  }
}

}  // namespace

int64_t snapshot_bytes(const GPTConfig& config, const CheckpointRank& rank) {
  const std::string mine = rank_file(rank.world_rank());
  int64_t floats = 0;
  for (const CheckpointPiece& p : all_pieces(config, rank))
    if (p.file == mine) floats += p.end - p.begin;
  return floats * (int64_t)sizeof(float);
}

CheckpointSnapshot snapshot_checkpoint(const std::string& settings, GPT& model, AdamW& optimizer,
                                       const CheckpointRank& rank, const TrainingState& state) {
  CheckpointSnapshot snap{
      model.config(), rank, state, settings, optimizer.steps_taken(), all_pieces(model.config(), rank), {}};
  const std::string mine = rank_file(rank.world_rank());
  snap.values.resize(snap.pieces.size());
  // Each piece straight from the backend's buffer (a GPU's memory, or the host's) into its own.
  for (size_t i = 0; i < snap.pieces.size(); i++) {
    const CheckpointPiece& p = snap.pieces[i];
    if (p.file != mine) continue;
    const bool master = p.kind == "master";
    const Tensor& buffer = master ? model.master() : p.kind == "m" ? optimizer.m() : optimizer.v();
    const int64_t offset =
        model.layout().find(p.tensor).offset - (master ? model.master_first() : optimizer.first()) + p.begin;
    snap.values[i].resize(p.end - p.begin);
    model.ops().download(snap.values[i], buffer.slice(offset, p.end - p.begin));
  }
  return snap;
}

int64_t CheckpointSnapshot::bytes() const {
  int64_t n = 0;
  for (const std::vector<float>& v : values) n += (int64_t)(v.size() * sizeof(float));
  return n;
}

namespace {

// Phase 1 of a save: this rank's pieces into its own file in `tmp`, fsynced; its size and checksum
// (none when the rank holds no piece). A model that diverged is never saved, so that `latest`
// always names usable weights.
FileChecksum write_rank_file(const std::string& tmp, const CheckpointSnapshot& snap) {
  const std::string mine = rank_file(snap.rank.world_rank());
  std::optional<h5::File> file;
  for (size_t i = 0; i < snap.pieces.size(); i++) {
    const CheckpointPiece& p = snap.pieces[i];
    if (p.file != mine) continue;
    if (const auto bad =
            std::count_if(snap.values[i].begin(), snap.values[i].end(), [](float x) { return !std::isfinite(x); }))
      throw std::runtime_error(
          fmt::format("tensor '{}' ({}) holds {} non-finite value(s): not saved", p.tensor, p.kind, bad));
    if (!file) file.emplace(h5::File::create(tmp + "/" + mine));
    maybe_fail_write(tmp + "/" + mine);
    file->write<float>(p.dataset, std::span<const float>(snap.values[i]), H5T_IEEE_F32LE);
  }
  if (!file) return {};
  file->close();
  fsync_path(tmp + "/" + mine, false);
  return file_checksum(tmp + "/" + mine);
}

// What each rank reports after phase 1, gathered on every rank.
struct RankWrite {
  FileChecksum file;  // bytes 0: the rank wrote no file
  bool failed = false;
};
std::vector<RankWrite> gather_rank_writes(Comm& world, const RankWrite& mine) {
  // One all-reduce of sums over slots, three per rank: size, checksum, failure.
  std::vector<int64_t> slots(3 * world.size(), 0);
  slots[3 * world.rank()] = mine.file.bytes;
  slots[3 * world.rank() + 1] = (int64_t)mine.file.fnv1a;
  slots[3 * world.rank() + 2] = mine.failed;
  world.all_reduce_sum(slots);
  std::vector<RankWrite> all(world.size());
  for (int r = 0; r < world.size(); r++)
    all[r] = {FileChecksum{slots[3 * r], (uint64_t)slots[3 * r + 1]}, slots[3 * r + 2] != 0};
  return all;
}

// The manifest of a snapshot whose rank files are `writes`, checksummed.
json make_manifest(const CheckpointSnapshot& snap, const std::vector<RankWrite>& writes) {
  const GPTConfig& cfg = snap.config;
  json files = json::array();
  for (size_t r = 0; r < writes.size(); r++)
    if (writes[r].file.bytes > 0)
      files.push_back({{"name", rank_file((int)r)}, {"bytes", writes[r].file.bytes}, {"fnv1a", writes[r].file.hex()}});
  std::map<std::string, json> pieces_by_tensor;  // one pass: a job has pieces per rank and tensor
  for (const CheckpointPiece& p : snap.pieces)
    pieces_by_tensor[p.tensor].push_back({{"kind", p.kind},
                                          {"start", p.start},
                                          {"count", p.count},
                                          {"begin", p.begin},
                                          {"end", p.end},
                                          {"file", p.file},
                                          {"dataset", p.dataset}});
  json tensors = json::array();
  const ParamLayout full(cfg, {1, 0});
  for (const ParamSpec& s : full.specs())
    tensors.push_back({{"name", s.name},
                       {"global_shape", tensor_slice(cfg, {1, 0}, s).global_shape},
                       {"dtype", "f32"},
                       {"pieces", pieces_by_tensor[s.name]}});
  json manifest = {{"format", kCheckpointFormat},
                   {"step", snap.state.step},
                   {"model", model_json(cfg)},
                   {"layout", {{"tp", snap.rank.tp}, {"dp", snap.rank.dp}, {"zero1", snap.rank.zero1}}},
                   {"settings", snap.settings},
                   {"adamw_step", snap.adamw_step},
                   {"random_tokens", snap.state.random_tokens},
                   {"files", files},
                   {"tensors", tensors}};
  if (snap.state.loader)
    manifest["loader"] = {{"seed", snap.state.loader->seed},
                          {"epoch", snap.state.loader->epoch},
                          {"position", snap.state.loader->position}};
  const TokenizerRecord& tok = snap.state.tokenizer;
  if (!tok.name.empty()) manifest["tokenizer"] = {{"name", tok.name}, {"fingerprint", tok.fingerprint}};
  manifest["checksum"] = manifest_checksum(manifest);
  return manifest;
}

// Phase 2, on rank 0: the manifest (and a tokenizer that is not the bundled one) into `tmp`, then
// `tmp` renamed to `final_dir` and `latest` pointed at it, each step fsynced. Until `latest`
// changes, it names the previous checkpoint.
void commit_checkpoint(const std::string& run_dir, const std::string& tmp, const std::string& final_dir,
                       const json& manifest, const TokenizerRecord& tokenizer) {
  if (!tokenizer.name.empty() && !tokenizer.files_dir.empty()) {
    const auto [encoder, merges] = Gpt2Tokenizer::files_in(tokenizer.files_dir);
    for (const std::string& file : {encoder, merges})
      fs::copy_file(file, tmp + "/" + fs::path(file).filename().string());
  }
  maybe_stop_at("save-files");
  write_atomically(tmp + "/manifest.json", manifest.dump(1));
  fsync_path(tmp, true);
  fs::remove_all(final_dir);  // a step saved before, by a run resumed from an earlier one
  fs::rename(tmp, final_dir);
  fsync_path(run_dir, true);
  maybe_stop_at("save-renamed");
  write_atomically(run_dir + "/latest", fs::path(final_dir).filename().string() + "\n");
  fsync_path(run_dir, true);
  maybe_stop_at("save-latest");
}

// Keeps the newest `keep` checkpoints in run_dir (0: all).
void prune_checkpoints(const std::string& run_dir, int keep) {
  std::vector<std::string> steps;
  for (const auto& e : fs::directory_iterator(run_dir)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.starts_with("step_") && !n.ends_with(".tmp")) steps.push_back(n);
  }
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; keep > 0 && i + keep < steps.size(); i++) fs::remove_all(run_dir + "/" + steps[i]);
}

}  // namespace

void inject_checkpoint_faults(const CheckpointFaults& injected) {
  faults = injected;
  writes_since_injected = 0;
}

// A two-phase commit: every rank writes its file into step_N.tmp, the ranks agree that all did,
// and rank 0 commits; a failure anywhere leaves `latest` as it was, on every rank's word.
std::string write_checkpoint(const std::string& run_dir, const CheckpointSnapshot& snap, Comm& world, int keep) {
  std::string final_dir = run_dir + fmt::format("/step_{:08}", snap.state.step);
  const std::string tmp = final_dir + ".tmp";
  if (world.rank() == 0) {
    fs::remove_all(tmp);
    fs::create_directories(tmp);
  }
  world.barrier();

  std::string error;
  const RankWrite mine = [&]() -> RankWrite {
    try {
      return {write_rank_file(tmp, snap), false};
    } catch (const std::exception& e) {
      error = e.what();
      return {FileChecksum{0, 0}, true};
    }
  }();
  const std::vector<RankWrite> writes = gather_rank_writes(world, mine);
  int failed = -1;
  for (int r = 0; r < world.size() && failed < 0; r++)
    if (writes[r].failed) failed = r;

  if (failed < 0 && world.rank() == 0) {
    try {
      commit_checkpoint(run_dir, tmp, final_dir, make_manifest(snap, writes), snap.state.tokenizer);
      prune_checkpoints(run_dir, keep);
    } catch (const std::exception& e) {
      error = e.what();
      failed = 0;
    }
  }
  int64_t committed = failed < 0 ? 1 : 0;
  world.all_reduce_sum(std::span<int64_t>(&committed, 1));  // rank 0's commit can fail too
  if (committed != world.size() || failed >= 0) {
    if (world.rank() == 0) fs::remove_all(tmp);
    throw std::runtime_error(fmt::format("checkpoint {} not saved (rank {}: {}); {} still names the previous one",
                                         final_dir, failed < 0 ? 0 : failed, error.empty() ? "failed" : error,
                                         run_dir + "/latest"));
  }
  return final_dir;
}

std::string save_checkpoint(const std::string& run_dir, const std::string& settings, GPT& model, AdamW& optimizer,
                            const CheckpointRank& rank, const TrainingState& state, Comm& world, int keep) {
  return write_checkpoint(run_dir, snapshot_checkpoint(settings, model, optimizer, rank, state), world, keep);
}

AsyncCheckpointWriter::~AsyncCheckpointWriter() {
  if (!writing_.valid()) return;
  try {
    writing_.get();
  } catch (const std::exception&) {  // reported by wait(); a destructor cannot
  }
}

void AsyncCheckpointWriter::start(const std::string& run_dir, CheckpointSnapshot snapshot, int keep) {
  if (writing_.valid()) throw std::logic_error("AsyncCheckpointWriter::start: the previous save was not waited for");
  writing_ = std::async(std::launch::async, [this, run_dir, keep, snap = std::move(snapshot)] {
    comm_.set_context(fmt::format("checkpoint step {}", snap.state.step));
    const auto start = std::chrono::steady_clock::now();
    std::string dir = write_checkpoint(run_dir, snap, comm_, keep);
    return std::pair{dir, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()};
  });
}

std::optional<std::pair<std::string, double>> AsyncCheckpointWriter::wait() {
  if (!writing_.valid()) return std::nullopt;
  return writing_.get();
}

std::string latest_checkpoint(const std::string& run_dir) {
  const std::string path = run_dir + "/latest";
  if (!fs::exists(path)) return "";
  std::string name = read_bytes(path);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  if (name.empty() || name.find('/') != std::string::npos)
    throw std::runtime_error(path + ": expected a checkpoint directory name, found '" + name + "'");
  if (!fs::is_directory(run_dir + "/" + name))
    throw std::runtime_error(path + ": names " + name + ", which does not exist in " + run_dir);
  return run_dir + "/" + name;
}

namespace {

// The master weights of the tensor-parallel rank `tp` of `cfg`, in its flat layout.
std::vector<float> master_weights(const std::string& dir, const json& manifest, const GPTConfig& cfg, TensorParallel tp,
                                  std::map<std::string, h5::File>& files) {
  const ParamLayout layout(cfg, tp);
  std::vector<float> master(layout.total(), 0.0f);
  for (const ParamSpec& s : layout.specs())
    local_from_global(cfg, tp, s, global_tensor(dir, tensor_entry(dir, manifest, s.name), "master", files),
                      master.data() + s.offset);
  return master;
}

// The tokenizer a manifest records (none in checkpoints of random tokens, or imported ones).
TokenizerRecord tokenizer_record(const std::string& dir, const json& manifest) {
  if (!manifest.contains("tokenizer")) return {};
  const json& t = manifest.at("tokenizer");
  return {t.at("name"), t.at("fingerprint"), Gpt2Tokenizer::files_in(dir).first.empty() ? "" : dir};
}

// The manifest of a checkpoint the model can load, every file's checksum checked, and this
// rank's master weights loaded from it.
json load_master(const std::string& dir, GPT& model, std::map<std::string, h5::File>& files) {
  json manifest = read_manifest(dir);
  check_model(dir, manifest, model.config());
  check_files(dir, manifest);
  model.set_weights(master_weights(dir, manifest, model.config(), model.tensor_parallel(), files));
  return manifest;
}

}  // namespace

void load_parameters(const std::string& dir, GPT& model) {
  std::map<std::string, h5::File> files;
  load_master(dir, model, files);
}

TrainingState load_checkpoint(const std::string& dir, GPT& model, AdamW& optimizer) {
  std::map<std::string, h5::File> files;
  const json manifest = load_master(dir, model, files);
  maybe_stop_at("load");
  const GPTConfig& cfg = model.config();
  std::vector<float> m(optimizer.count()), v(optimizer.count()), local;
  model.layout().for_each_overlap(
      optimizer.first(), optimizer.count(), [&](const ParamSpec& s, int64_t begin, int64_t end) {
        const json& entry = tensor_entry(dir, manifest, s.name);
        for (auto [kind, out] : {std::pair{"m", &m}, std::pair{"v", &v}}) {
          local.resize(s.numel);
          local_from_global(cfg, model.tensor_parallel(), s, global_tensor(dir, entry, kind, files), local.data());
          std::copy(local.begin() + (begin - s.offset), local.begin() + (end - s.offset),
                    out->begin() + (begin - optimizer.first()));
        }
      });
  model.ops().upload(optimizer.m(), m);
  model.ops().upload(optimizer.v(), v);
  optimizer.set_steps_taken(manifest.at("adamw_step"));
  TrainingState state;
  state.step = manifest.at("step");
  state.random_tokens = manifest.value("random_tokens", "");
  if (manifest.contains("loader"))
    state.loader =
        LoaderState{manifest["loader"].at("seed"), manifest["loader"].at("epoch"), manifest["loader"].at("position")};
  state.tokenizer = tokenizer_record(dir, manifest);
  return state;
}

std::string resolve_checkpoint(const std::string& path) {
  if (fs::exists(path + "/manifest.json")) return path;
  std::string latest = latest_checkpoint(path);
  if (latest.empty())
    throw std::runtime_error(path + ": neither a checkpoint (no manifest.json) nor a run directory with a latest file");
  return latest;
}

CheckpointInfo checkpoint_info(const std::string& dir) {
  const json manifest = read_manifest(dir);
  return {model_from_json(manifest.at("model")), manifest.value("settings", "")};
}

CheckpointWeights read_checkpoint_weights(const std::string& dir) {
  const json manifest = read_manifest(dir);
  check_files(dir, manifest);
  CheckpointWeights out{
      model_from_json(manifest.at("model")), {}, manifest.value("settings", ""), tokenizer_record(dir, manifest)};
  std::map<std::string, h5::File> files;
  out.weights = master_weights(dir, manifest, out.config, {1, 0}, files);
  return out;
}

std::string save_weights_checkpoint(const std::string& run_dir, const GPTConfig& config, std::vector<float> weights) {
  const auto ops = make_cpu_ops();
  GPT model(config, *ops, 1, 1);
  model.set_weights(weights);
  weights = {};
  AdamW optimizer(model, OptimConfig{});
  const std::unique_ptr<Comm> self = make_self_comm();
  fs::create_directories(run_dir);
  return save_checkpoint(run_dir, "", model, optimizer, CheckpointRank{}, TrainingState{}, *self, 0);
}

void verify_checkpoint(const std::string& dir) {
  const json manifest = read_manifest(dir);
  check_files(dir, manifest);
  std::map<std::string, h5::File> files;
  const GPTConfig cfg = model_from_json(manifest.at("model"));
  const ParamLayout layout(cfg, {1, 0});
  for (const ParamSpec& s : layout.specs()) {
    const json& entry = tensor_entry(dir, manifest, s.name);
    const std::vector<int64_t> shape = tensor_slice(cfg, {1, 0}, s).global_shape;
    if (entry.at("global_shape").get<std::vector<int64_t>>() != shape)
      throw std::runtime_error(fmt::format("{}/manifest.json: tensor '{}' has global_shape {}, the model's is {}", dir,
                                           s.name, entry.at("global_shape").dump(), json(shape).dump()));
    for (const char* kind : {"master", "m", "v"}) {  // every piece reads, and holds finite numbers
      const std::vector<float> values = global_tensor(dir, entry, kind, files);
      if (const auto bad = std::count_if(values.begin(), values.end(), [](float x) { return !std::isfinite(x); }))
        throw std::runtime_error(fmt::format("{}: tensor '{}' ({}) holds {} non-finite value(s) of {}", dir, s.name,
                                             kind, bad, values.size()));
    }
  }
}

double TensorDifference::relative() const {
  if (std::isnan(norm) || std::isnan(update_norm)) return INFINITY;
  if (update_norm == 0) return norm == 0 ? 0.0 : INFINITY;
  return norm / update_norm;
}

std::vector<TensorDifference> compare_checkpoints(const std::string& a, const std::string& b,
                                                  const std::string& reference) {
  const json ma = read_manifest(a), mb = read_manifest(b), mr = reference.empty() ? json() : read_manifest(reference);
  check_files(a, ma);
  check_files(b, mb);
  const GPTConfig cfg = model_from_json(ma.at("model"));
  check_model(b, mb, cfg);
  if (!reference.empty()) {
    check_files(reference, mr);
    check_model(reference, mr, cfg);
  }
  std::map<std::string, h5::File> files_a, files_b, files_r;
  std::vector<TensorDifference> out;
  const ParamLayout layout(cfg, {1, 0});
  for (const ParamSpec& s : layout.specs())
    for (const char* kind : {"master", "m", "v"}) {
      const std::vector<float> x = global_tensor(a, tensor_entry(a, ma, s.name), kind, files_a);
      const std::vector<float> y = global_tensor(b, tensor_entry(b, mb, s.name), kind, files_b);
      const std::vector<float> r = reference.empty()
                                       ? std::vector<float>()
                                       : global_tensor(reference, tensor_entry(reference, mr, s.name), kind, files_r);
      TensorDifference d{s.name, kind};
      for (size_t i = 0; i < x.size(); i++) {
        const double diff = std::abs((double)x[i] - (double)y[i]);
        d.max_abs = std::isnan(diff) ? INFINITY : std::max(d.max_abs, diff);
        d.norm += diff * diff;
        if (!r.empty()) d.update_norm += ((double)x[i] - r[i]) * ((double)x[i] - r[i]);
      }
      d.norm = std::sqrt(d.norm);
      d.update_norm = std::sqrt(d.update_norm);
      out.push_back(d);
    }
  return out;
}

std::string describe_checkpoint(const std::string& dir) {
  const json m = read_manifest(dir);
  std::ostringstream out;
  out << fmt::format("{}: step {}, format {}, AdamW step {}\n", dir, m.at("step").get<int64_t>(),
                     m.at("format").get<int>(), m.value("adamw_step", 0));
  out << "model: " << m.at("model").dump() << "\nlayout: " << m.at("layout").dump() << "\n";
  if (m.contains("loader")) out << "loader: " << m["loader"].dump() << "\n";
  if (m.contains("tokenizer")) out << "tokenizer: " << m["tokenizer"].dump() << "\n";
  if (const std::string settings = m.value("settings", ""); !settings.empty()) {
    out << "settings:\n";
    std::istringstream lines(settings);
    for (std::string line; std::getline(lines, line);) out << "  " << line << "\n";
  }
  int64_t bytes = 0;
  for (const json& f : m.at("files")) bytes += f.at("bytes").get<int64_t>();
  out << fmt::format("files: {} ({:.1f} MiB)\n", m.at("files").size(), bytes / 1048576.0);
  for (const json& t : m.at("tensors"))
    out << fmt::format("  {:<28} {:<18} {} pieces\n", std::string(t.at("name")), t.at("global_shape").dump(),
                       t.at("pieces").size());
  return out.str();
}

}  // namespace kiln
