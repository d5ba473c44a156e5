#include "data/dataset.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

namespace kiln {
namespace {

using nlohmann::json;

nlohmann::json split_json(const std::vector<ShardEntry>& shards) {
  json out = {{"num_tokens", 0}, {"num_documents", 0}, {"shards", json::array()}};
  for (const ShardEntry& s : shards) {
    out["num_tokens"] = out["num_tokens"].get<int64_t>() + s.num_tokens;
    out["num_documents"] = out["num_documents"].get<int64_t>() + s.num_documents;
    out["shards"].push_back({{"file", s.file},
                             {"num_tokens", s.num_tokens},
                             {"num_documents", s.num_documents},
                             {"bytes", s.checksum.bytes},
                             {"fnv1a", s.checksum.hex()}});
  }
  return out;
}

// Typed access to dataset.json that names the file and the JSON path of a missing or bad field.
class JsonReader {
 public:
  JsonReader(std::string path, const json& doc) : path_(std::move(path)), doc_(doc) {}
  template <class T>
  T get(const json& obj, const std::string& key, const std::string& where) const {
    const std::string field = where.empty() ? key : where + "." + key;
    if (!obj.is_object() || !obj.contains(key)) throw std::runtime_error(path_ + ": field '" + field + "' missing");
    try {
      return obj.at(key).get<T>();
    } catch (const json::exception&) {
      throw std::runtime_error(path_ + ": field '" + field + "' has the wrong type (" + obj.at(key).dump() + ")");
    }
  }
  const json& doc() const { return doc_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const json& doc_;
};

// The document offsets are where documents start: 0 first, rising, inside the shard.
void check_doc_offsets(const ShardReader& shard) {
  const std::vector<int64_t> offsets = shard.doc_offsets();
  for (size_t i = 0; i < offsets.size(); i++) {
    const int64_t lower = i == 0 ? 0 : offsets[i - 1] + 1;
    if ((i == 0 && offsets[0] != 0) || offsets[i] < lower || offsets[i] >= shard.num_tokens())
      throw std::runtime_error(
          shard.path() + ": doc_offsets[" + std::to_string(i) + "] is " + std::to_string(offsets[i]) + ", expected " +
          (i == 0 ? std::string("0") : "a rising offset below " + std::to_string(shard.num_tokens())) +
          ": the shard is corrupt; prepare it again");
  }
}

// The size (always) and the checksum (with DataCheck::checksums) dataset.json records for a shard;
// returns the size. Datasets prepared before checksums record neither: they pass the size check and
// fail the checksum one.
int64_t check_file(const std::string& file, const JsonReader& r, const json& entry, const std::string& at,
                   DataCheck check) {
  const int64_t size = (int64_t)std::filesystem::file_size(file);
  if (entry.contains("bytes")) {
    const int64_t listed = r.get<int64_t>(entry, "bytes", at);
    if (size != listed)
      throw std::runtime_error(file + ": " + std::to_string(size) + " bytes, but " + r.path() + " lists " +
                               std::to_string(listed) + " (" + at + ".bytes): truncated or replaced");
  }
  if (check != DataCheck::checksums) return size;
  if (!entry.contains("fnv1a"))
    throw std::runtime_error(r.path() + ": " + at + " has no checksum (fnv1a) to verify " + file +
                             " against: prepared by a kiln before checksums; prepare it again");
  const std::string listed = r.get<std::string>(entry, "fnv1a", at);
  const std::string actual = file_checksum(file).hex();
  if (actual != listed)
    throw std::runtime_error(file + ": checksum " + actual + ", but " + r.path() + " lists " + listed + " (" + at +
                             ".fnv1a): the file is damaged; prepare it again");
  return size;
}

void open_split(Split& split, const JsonReader& r, const std::string& dir, const TokenizerMeta& meta,
                bool has_loss_mask, DataCheck check) {
  const json& obj = r.doc().at("splits").contains(split.name) ? r.doc().at("splits").at(split.name) : json();
  const std::string where = "splits." + split.name;
  if (obj.is_null()) throw std::runtime_error(r.path() + ": field '" + where + "' missing");
  split.num_tokens = r.get<int64_t>(obj, "num_tokens", where);
  split.num_documents = r.get<int64_t>(obj, "num_documents", where);
  const json shards = r.get<json>(obj, "shards", where);
  if (!shards.is_array()) throw std::runtime_error(r.path() + ": field '" + where + ".shards' is not a list");
  int64_t tokens = 0, documents = 0;
  std::set<std::string> seen;
  for (size_t i = 0; i < shards.size(); i++) {
    const std::string at = where + ".shards[" + std::to_string(i) + "]";
    const std::string name = r.get<std::string>(shards[i], "file", at);
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
      throw std::runtime_error(r.path() + ": " + at + ".file is '" + name +
                               "', expected a file name inside the dataset directory");
    if (!seen.insert(name).second)
      throw std::runtime_error(r.path() + ": " + at + ".file '" + name + "' is listed twice");
    const std::string file = dir + "/" + name;
    if (!std::filesystem::is_regular_file(file))
      throw std::runtime_error(file + ": missing (" + r.path() + " lists it as " + at + ")");
    split.bytes += check_file(file, r, shards[i], at, check);
    auto shard = std::make_unique<ShardReader>(file, meta);
    if (shard->has_loss_mask() != has_loss_mask)
      throw std::runtime_error(file + ": loss_mask " + (shard->has_loss_mask() ? "present" : "missing") + ", but " +
                               r.path() + " says has_loss_mask = " + (has_loss_mask ? "true" : "false"));
    struct Count {
      const char *field, *noun;
      int64_t actual;
    };
    for (const Count& c : {Count{"num_tokens", "tokens", shard->num_tokens()},
                           Count{"num_documents", "documents", shard->num_documents()}}) {
      const int64_t listed = r.get<int64_t>(shards[i], c.field, at);
      if (c.actual != listed)
        throw std::runtime_error(file + ": holds " + std::to_string(c.actual) + " " + c.noun + ", but " + r.path() +
                                 " lists " + std::to_string(listed) + " (" + at + "." + c.field + ")");
    }
    if (check == DataCheck::checksums) check_doc_offsets(*shard);
    tokens += shard->num_tokens();
    documents += shard->num_documents();
    split.shards.push_back(std::move(shard));
  }
  if (tokens != split.num_tokens)
    throw std::runtime_error(r.path() + ": " + where + ".num_tokens is " + std::to_string(split.num_tokens) +
                             ", but its shards hold " + std::to_string(tokens));
  if (documents != split.num_documents)
    throw std::runtime_error(r.path() + ": " + where + ".num_documents is " + std::to_string(split.num_documents) +
                             ", but its shards hold " + std::to_string(documents));
}

}  // namespace

void write_dataset_json(const std::string& dir, const std::string& tokenizer_name, const TokenizerMeta& meta,
                        bool has_loss_mask, const std::vector<ShardEntry>& train, const std::vector<ShardEntry>& val) {
  const json doc = {
      {"format", kShardFormat},         {"format_version", kShardFormatVersion},
      {"tokenizer", meta.tokenizer},    {"tokenizer_name", tokenizer_name},
      {"vocab_size", meta.vocab_size},  {"eot_token", meta.eot_token},
      {"has_loss_mask", has_loss_mask}, {"splits", {{"train", split_json(train)}, {"val", split_json(val)}}}};
  const std::string path = dir + "/dataset.json";
  std::ofstream out(path);
  out << doc.dump(2) << '\n';
  if (!out.flush()) throw std::runtime_error(path + ": write failed");
}

Dataset Dataset::open(const std::string& dir, DataCheck check) {
  const std::string path = dir + "/dataset.json";
  if (!std::filesystem::is_directory(dir)) throw std::runtime_error(dir + ": dataset directory not found");
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": not found (is " + dir + " a directory written by kiln prepare?)");
  json doc;
  try {
    doc = json::parse(in);
  } catch (const json::parse_error& e) {
    throw std::runtime_error(path + ": not valid JSON: " + e.what());
  }
  const JsonReader r(path, doc);
  const std::string format = r.get<std::string>(doc, "format", "");
  if (format != kShardFormat)
    throw std::runtime_error(path + ": format is '" + format + "', expected '" + kShardFormat + "'");
  const int64_t version = r.get<int64_t>(doc, "format_version", "");
  if (version != kShardFormatVersion)
    throw std::runtime_error(path + ": format_version " + std::to_string(version) + ", this kiln reads version " +
                             std::to_string(kShardFormatVersion));
  Dataset ds;
  ds.dir = dir;
  ds.tokenizer_name = r.get<std::string>(doc, "tokenizer_name", "");
  ds.meta = {r.get<std::string>(doc, "tokenizer", ""), r.get<int64_t>(doc, "vocab_size", ""),
             r.get<int64_t>(doc, "eot_token", "")};
  ds.has_loss_mask = r.get<bool>(doc, "has_loss_mask", "");
  r.get<json>(doc, "splits", "");
  ds.train.name = "train";
  ds.val.name = "val";
  open_split(ds.train, r, dir, ds.meta, ds.has_loss_mask, check);
  open_split(ds.val, r, dir, ds.meta, ds.has_loss_mask, check);
  if (ds.train.num_tokens == 0) throw std::runtime_error(path + ": the train split is empty");
  return ds;
}

}  // namespace kiln
