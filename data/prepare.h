// `kiln prepare`: text or JSONL -> tokenized HDF5 shards plus dataset.json (docs/design.md §6).
//
// Inputs: plain text files (one document per file, or split at a separator string), or JSONL with
// a "text" field per line, or "prompt"/"response" fields for fine-tuning, which writes a
// /loss_mask that is 1 on response tokens (and the end-of-text after them) only. Documents are
// tokenized in parallel in blocks, then written in input order, so the shards are byte-identical
// whatever the thread count. Document i goes to validation when floor((i+1) f) > floor(i f):
// an evenly spaced fraction f of the documents (f = count / total for a document count).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace kiln {

struct PrepareOptions {
  std::vector<std::string> inputs;
  std::string format = "auto";  // text | jsonl | auto (jsonl when the file name ends in .jsonl)
  std::string separator;        // text: document separator; empty = one document per file
  std::string tokenizer = "bytes";
  std::string tokenizer_dir;
  std::string output;
  double val_fraction = 0.0;
  int64_t val_documents = -1;  // >= 0: exactly this many validation documents (overrides the fraction)
  int64_t shard_tokens = 100'000'000;
  int gzip_level = 0;  // 0: uncompressed (fastest random access)
  bool force = false;  // replace an existing output directory
};

struct PrepareSummary {
  int64_t documents = 0, val_documents = 0, empty_documents = 0;
  int64_t train_tokens = 0, val_tokens = 0;
  int train_shards = 0, val_shards = 0;
  int64_t input_bytes = 0, output_bytes = 0;
  double seconds = 0;
};

using PrepareProgress = std::function<void(int64_t bytes_done, int64_t bytes_total)>;

// Throws std::runtime_error naming the file (and line, for JSONL) at fault. Output is written to
// a temporary directory renamed into place at the end: an interrupted run leaves OUTPUT untouched.
PrepareSummary prepare_dataset(const PrepareOptions& options, const PrepareProgress& progress = {});

}  // namespace kiln
