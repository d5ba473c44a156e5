#include "data/dataset.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace kiln {
namespace {

using nlohmann::json;

nlohmann::json split_json(const std::vector<ShardEntry>& shards) {
  json out = {{"num_tokens", 0}, {"num_documents", 0}, {"shards", json::array()}};
  for (const ShardEntry& s : shards) {
    out["num_tokens"] = out["num_tokens"].get<int64_t>() + s.num_tokens;
    out["num_documents"] = out["num_documents"].get<int64_t>() + s.num_documents;
    out["shards"].push_back({{"file", s.file}, {"num_tokens", s.num_tokens}, {"num_documents", s.num_documents}});
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

void open_split(Split& split, const JsonReader& r, const std::string& dir, const TokenizerMeta& meta,
                bool has_loss_mask) {
  const json& obj = r.doc().at("splits").contains(split.name) ? r.doc().at("splits").at(split.name) : json();
  const std::string where = "splits." + split.name;
  if (obj.is_null()) throw std::runtime_error(r.path() + ": field '" + where + "' missing");
  split.num_tokens = r.get<int64_t>(obj, "num_tokens", where);
  split.num_documents = r.get<int64_t>(obj, "num_documents", where);
  const json shards = r.get<json>(obj, "shards", where);
  int64_t tokens = 0;
  for (size_t i = 0; i < shards.size(); i++) {
    const std::string at = where + ".shards[" + std::to_string(i) + "]";
    const std::string file = dir + "/" + r.get<std::string>(shards[i], "file", at);
    auto shard = std::make_unique<ShardReader>(file, meta);
    if (shard->has_loss_mask() != has_loss_mask)
      throw std::runtime_error(file + ": loss_mask " + (shard->has_loss_mask() ? "present" : "missing") + ", but " +
                               r.path() + " says has_loss_mask = " + (has_loss_mask ? "true" : "false"));
    const int64_t listed = r.get<int64_t>(shards[i], "num_tokens", at);
    if (shard->num_tokens() != listed)
      throw std::runtime_error(file + ": holds " + std::to_string(shard->num_tokens()) + " tokens, but " + r.path() +
                               " lists " + std::to_string(listed) + " (" + at + ".num_tokens)");
    tokens += listed;
    split.shards.push_back(std::move(shard));
  }
  if (tokens != split.num_tokens)
    throw std::runtime_error(r.path() + ": " + where + ".num_tokens is " + std::to_string(split.num_tokens) +
                             ", but its shards hold " + std::to_string(tokens));
}

}  // namespace

void write_dataset_json(const std::string& dir, const std::string& tokenizer_name, const TokenizerMeta& meta,
                        bool has_loss_mask, const std::vector<ShardEntry>& train, const std::vector<ShardEntry>& val) {
  const json doc = {{"format", kShardFormat},
                    {"format_version", kShardFormatVersion},
                    {"tokenizer", meta.tokenizer},
                    {"tokenizer_name", tokenizer_name},
                    {"vocab_size", meta.vocab_size},
                    {"eot_token", meta.eot_token},
                    {"has_loss_mask", has_loss_mask},
                    {"splits", {{"train", split_json(train)}, {"val", split_json(val)}}}};
  const std::string path = dir + "/dataset.json";
  std::ofstream out(path);
  out << doc.dump(2) << '\n';
  if (!out.flush()) throw std::runtime_error(path + ": write failed");
}

Dataset Dataset::open(const std::string& dir) {
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
  if (format != kShardFormat) throw std::runtime_error(path + ": format is '" + format + "', expected '" + kShardFormat + "'");
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
  open_split(ds.train, r, dir, ds.meta, ds.has_loss_mask);
  open_split(ds.val, r, dir, ds.meta, ds.has_loss_mask);
  if (ds.train.num_tokens == 0) throw std::runtime_error(path + ": the train split is empty");
  return ds;
}

}  // namespace kiln
