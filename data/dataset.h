// A prepared dataset directory: dataset.json plus train_*.h5 / val_*.h5 shards (docs/design.md §6).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "data/file_checksum.h"
#include "data/shard.h"

namespace kiln {

struct Split {
  std::string name;  // "train" or "val"
  std::vector<std::unique_ptr<ShardReader>> shards;
  int64_t num_tokens = 0, num_documents = 0;
  int64_t bytes = 0;  // the shard files' sizes on disk
};

// How much of each shard Dataset::open checks against dataset.json. The header, the counts and the
// file size are cheap and always checked; the checksum reads every byte (about 0.7 GB/s on one core).
enum class DataCheck {
  sizes,      // header, counts and file size
  checksums,  // also each shard's FNV-1a checksum and its document offsets (`--verify-data`)
};

struct Dataset {
  std::string dir;
  std::string tokenizer_name;  // what make_tokenizer() takes: "bytes", "gpt2"
  TokenizerMeta meta;
  bool has_loss_mask = false;
  Split train, val;

  // Reads DIR/dataset.json and opens every shard it lists, checking each against it as `check` says.
  // Throws std::runtime_error naming the file and the field at fault.
  static Dataset open(const std::string& dir, DataCheck check = DataCheck::sizes);
};

// Writes DIR/dataset.json describing the shards written there.
struct ShardEntry {
  std::string file;  // a plain name inside the dataset directory
  int64_t num_tokens, num_documents;
  FileChecksum checksum;
};
void write_dataset_json(const std::string& dir, const std::string& tokenizer_name, const TokenizerMeta& meta,
                        bool has_loss_mask, const std::vector<ShardEntry>& train, const std::vector<ShardEntry>& val);

}  // namespace kiln
