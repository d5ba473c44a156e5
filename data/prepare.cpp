#include "data/prepare.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "data/dataset.h"
#include "data/gpt2_tokenizer.h"
#include "data/tokenizer.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kBlockBytes = 16 << 20;  // text tokenized in parallel per block

struct Document {
  std::string text;      // pretraining text, or the prompt
  std::string response;  // fine-tuning only
  bool fine_tune = false;
  std::vector<int32_t> tokens;  // filled by tokenize()
  std::vector<uint8_t> mask;
};

// Streams documents out of the input files in order; counts bytes consumed for progress.
class DocumentReader {
 public:
  explicit DocumentReader(const PrepareOptions& o) : opt_(o) {}

  bool next(Document& doc) {
    while (true) {
      if (!in_.is_open()) {
        if (file_index_ == opt_.inputs.size()) return false;
        open(opt_.inputs[file_index_++]);
      }
      if (jsonl_ ? next_jsonl(doc) : next_text(doc)) return true;
      in_.close();
    }
  }
  int64_t bytes_read() const { return done_bytes_; }
  // Whether the documents are prompt/response pairs; fixed by the first one, mixing is an error.
  bool fine_tune() const { return fine_tune_ == 1; }

 private:
  void open(const std::string& path) {
    path_ = path;
    in_.open(path, std::ios::binary);
    if (!in_) throw std::runtime_error(path + ": cannot open input file");
    jsonl_ = opt_.format == "jsonl" || (opt_.format == "auto" && path.ends_with(".jsonl"));
    line_ = 0;
    pending_.clear();
    at_eof_ = false;
  }

  // One document per file, or the next piece up to the separator.
  void check_kind(bool fine_tune, const std::string& where) {
    if (fine_tune_ < 0) fine_tune_ = fine_tune;
    if (fine_tune_ != (int)fine_tune)
      throw std::runtime_error(where + ": mixes " +
                               (fine_tune ? "a prompt/response document into text documents"
                                          : "a text document into prompt/response documents"));
  }

  bool next_text(Document& doc) {
    check_kind(false, path_);
    doc.fine_tune = false;
    doc.response.clear();
    if (opt_.separator.empty()) {
      if (at_eof_) return false;
      doc.text.assign(std::istreambuf_iterator<char>(in_), {});
      done_bytes_ += (int64_t)doc.text.size();
      at_eof_ = true;
      return true;
    }
    size_t found;
    while ((found = pending_.find(opt_.separator)) == std::string::npos && !at_eof_) {
      std::string chunk(1 << 20, '\0');
      in_.read(chunk.data(), (std::streamsize)chunk.size());
      chunk.resize(in_.gcount());
      at_eof_ = chunk.empty();
      pending_ += chunk;
    }
    if (found == std::string::npos) {
      if (pending_.empty()) return false;
      found = pending_.size();
    }
    doc.text = pending_.substr(0, found);
    const size_t consumed = std::min(pending_.size(), found + opt_.separator.size());
    done_bytes_ += (int64_t)consumed;
    pending_.erase(0, consumed);
    return true;
  }

  bool next_jsonl(Document& doc) {
    std::string line;
    while (std::getline(in_, line)) {
      line_++;
      done_bytes_ += (int64_t)line.size() + 1;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = path_ + ":" + std::to_string(line_);
      nlohmann::json obj;
      try {
        obj = nlohmann::json::parse(line);
      } catch (const nlohmann::json::parse_error& e) {
        throw std::runtime_error(where + ": not valid JSON (" + e.what() + ")");
      }
      auto field = [&](const char* key) {
        if (!obj.at(key).is_string()) throw std::runtime_error(where + ": field '" + key + "' is not a string");
        return obj.at(key).get<std::string>();
      };
      if (obj.is_object() && obj.contains("prompt") && obj.contains("response")) {
        doc.fine_tune = true;
        doc.text = field("prompt");
        doc.response = field("response");
        check_kind(true, where);
      } else if (obj.is_object() && obj.contains("text")) {
        doc.fine_tune = false;
        doc.text = field("text");
        doc.response.clear();
        check_kind(false, where);
      } else {
        throw std::runtime_error(where + ": expected a 'text' field, or 'prompt' and 'response' fields");
      }
      return true;
    }
    return false;
  }

  const PrepareOptions& opt_;
  std::ifstream in_;
  std::string path_, pending_;
  size_t file_index_ = 0;
  int64_t line_ = 0, done_bytes_ = 0;
  bool jsonl_ = false, at_eof_ = false;
  int fine_tune_ = -1;  // unknown until the first document
};

void tokenize(Document& doc, const Tokenizer& tok) {
  doc.tokens = tok.encode(doc.text);
  doc.mask.assign(doc.tokens.size(), doc.fine_tune ? 0 : 1);
  if (doc.fine_tune) {
    const std::vector<int32_t> response = tok.encode(doc.response);
    doc.tokens.insert(doc.tokens.end(), response.begin(), response.end());
    doc.mask.insert(doc.mask.end(), response.size(), 1);
  }
  doc.tokens.push_back(tok.eot_token());
  doc.mask.push_back(1);  // learn to stop
}

// Accumulates one split's documents into shards of about shard_tokens tokens.
class ShardSink {
 public:
  ShardSink(std::string dir, std::string split, const TokenizerMeta& meta, const PrepareOptions& o)
      : dir_(std::move(dir)), split_(std::move(split)), meta_(meta), opt_(o) {}

  void add(const Document& doc, bool keep_mask) {
    if (!data_.tokens.empty() && (int64_t)(data_.tokens.size() + doc.tokens.size()) > opt_.shard_tokens)
      flush(keep_mask);
    data_.doc_offsets.push_back((int64_t)data_.tokens.size());
    data_.tokens.insert(data_.tokens.end(), doc.tokens.begin(), doc.tokens.end());
    data_.loss_mask.insert(data_.loss_mask.end(), doc.mask.begin(), doc.mask.end());
  }
  void flush(bool keep_mask) {
    if (data_.tokens.empty()) return;
    char name[64];
    std::snprintf(name, sizeof name, "%s_%06zu.h5", split_.c_str(), entries_.size());
    if (!keep_mask) data_.loss_mask.clear();
    write_shard(dir_ + "/" + name, data_, meta_, opt_.gzip_level);
    entries_.push_back(
        {name, (int64_t)data_.tokens.size(), (int64_t)data_.doc_offsets.size(), file_checksum(dir_ + "/" + name)});
    tokens_ += (int64_t)data_.tokens.size();
    data_ = {};
  }
  const std::vector<ShardEntry>& entries() const { return entries_; }
  int64_t tokens() const { return tokens_; }

 private:
  std::string dir_, split_;
  TokenizerMeta meta_;
  const PrepareOptions& opt_;
  ShardData data_;
  std::vector<ShardEntry> entries_;
  int64_t tokens_ = 0;
};

// Tokenizes every document and writes the shards and dataset.json into `dir`.
void write_shards(const PrepareOptions& o, const Tokenizer& tok, const TokenizerMeta& meta,
                  const std::function<bool(int64_t)>& is_val, const std::string& dir, PrepareSummary& sum,
                  const PrepareProgress& progress) {
  ShardSink train(dir, "train", meta, o), val(dir, "val", meta, o);
  DocumentReader reader(o);
  bool more = true;
  std::vector<Document> block;
  while (more) {
    block.clear();
    int64_t block_bytes = 0;
    while (block_bytes < kBlockBytes) {
      Document d;
      more = reader.next(d);
      if (!more) break;
      block_bytes += (int64_t)(d.text.size() + d.response.size());
      block.push_back(std::move(d));
    }
#pragma omp parallel for schedule(dynamic, 16)
    for (size_t i = 0; i < block.size(); i++) tokenize(block[i], tok);
    for (Document& d : block) {
      if (d.text.empty() && d.response.empty()) {
        sum.empty_documents++;
        continue;
      }
      const bool to_val = is_val(sum.documents++);
      sum.val_documents += to_val;
      (to_val ? val : train).add(d, reader.fine_tune());
    }
    if (progress) progress(reader.bytes_read(), sum.input_bytes);
  }
  train.flush(reader.fine_tune());
  val.flush(reader.fine_tune());
  if (train.tokens() == 0) throw std::runtime_error("kiln prepare: no training documents in the input");
  write_dataset_json(dir, tok.name(), meta, reader.fine_tune(), train.entries(), val.entries());

  sum.train_tokens = train.tokens();
  sum.val_tokens = val.tokens();
  sum.train_shards = (int)train.entries().size();
  sum.val_shards = (int)val.entries().size();
}

void check_options(const PrepareOptions& o) {
  if (o.inputs.empty()) throw std::runtime_error("kiln prepare: no input files");
  if (o.output.empty()) throw std::runtime_error("kiln prepare: no output directory (--output)");
  if (o.format != "auto" && o.format != "text" && o.format != "jsonl")
    throw std::runtime_error("--format '" + o.format + "': expected text, jsonl or auto");
  if (!(o.val_fraction >= 0 && o.val_fraction < 1))  // NaN fails both
    throw std::runtime_error("--val-fraction " + std::to_string(o.val_fraction) + ": expected 0 <= f < 1");
  if (o.gzip_level < 0 || o.gzip_level > 9)
    throw std::runtime_error("--gzip " + std::to_string(o.gzip_level) + ": expected 0 (uncompressed) to 9");
  if (o.shard_tokens < 1) throw std::runtime_error("--shard-tokens: expected >= 1");
  for (const std::string& in : o.inputs)
    if (!fs::is_regular_file(in)) throw std::runtime_error(in + ": input file not found");
  if (fs::exists(o.output) && !o.force)
    throw std::runtime_error(o.output + ": already exists; pass --force to replace it");
}

}  // namespace

PrepareSummary prepare_dataset(const PrepareOptions& o, const PrepareProgress& progress) {
  const auto start = std::chrono::steady_clock::now();
  check_options(o);
  const std::unique_ptr<Tokenizer> tok = make_tokenizer(o.tokenizer, o.tokenizer_dir);
  const TokenizerMeta meta{tok->fingerprint(), tok->vocab_size(), tok->eot_token()};

  PrepareSummary sum;
  for (const std::string& in : o.inputs) sum.input_bytes += (int64_t)fs::file_size(in);
  int64_t total_docs = 0;
  if (o.val_documents >= 0) {  // a counting pass, so that the count can be spread evenly
    DocumentReader counter(o);
    for (Document d; counter.next(d);) total_docs += !(d.text.empty() && d.response.empty());
    if (o.val_documents >= total_docs)
      throw std::runtime_error("--val-docs " + std::to_string(o.val_documents) + ": the input has only " +
                               std::to_string(total_docs) + " documents");
  }
  auto is_val = [&](int64_t i) -> bool {
    if (o.val_documents >= 0) return (i + 1) * o.val_documents / total_docs > i * o.val_documents / total_docs;
    return std::floor((double)(i + 1) * o.val_fraction) > std::floor((double)i * o.val_fraction);
  };

  const std::string tmp = o.output + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    write_shards(o, *tok, meta, is_val, tmp, sum, progress);
    // Files given with --tokenizer-dir travel with the dataset, so that it decodes anywhere; the
    // bundled vocabulary is found by its fingerprint instead (tokenizer_matching()).
    if (o.tokenizer == "gpt2" && !o.tokenizer_dir.empty()) {
      const auto [encoder, merges] = Gpt2Tokenizer::files_in(o.tokenizer_dir);
      for (const std::string& file : {encoder, merges}) fs::copy_file(file, fs::path(tmp) / fs::path(file).filename());
    }
  } catch (...) {
    fs::remove_all(tmp);  // a failed run leaves nothing behind; a killed one leaves only OUTPUT.tmp-PID
    throw;
  }
  // Move into place: the old output (with --force) is removed only once the new one is complete.
  if (fs::exists(o.output)) {
    const std::string old = o.output + ".old-" + std::to_string(::getpid());
    fs::rename(o.output, old);
    fs::rename(tmp, o.output);
    fs::remove_all(old);
  } else {
    fs::rename(tmp, o.output);
  }
  for (const auto& entry : fs::directory_iterator(o.output)) sum.output_bytes += (int64_t)entry.file_size();
  sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return sum;
}

}  // namespace kiln
