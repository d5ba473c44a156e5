// One HDF5 token shard (docs/design.md §6): /tokens (uint16 when the vocabulary fits, else uint32),
// /doc_offsets (int64 start of each document), optional /loss_mask (uint8 per token), and the
// attributes format, format_version, vocab_size, tokenizer, eot_token, num_tokens, num_documents.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "data/h5.h"

namespace kiln {

inline constexpr const char* kShardFormat = "kiln-tokens";
inline constexpr int64_t kShardFormatVersion = 1;
inline constexpr int64_t kShardChunkTokens = 1 << 20;  // ~1M tokens per HDF5 chunk

struct TokenizerMeta {
  std::string tokenizer;  // name + hash of its files (Tokenizer::fingerprint())
  int64_t vocab_size = 0;
  int64_t eot_token = 0;
};

struct ShardData {
  std::vector<int32_t> tokens;       // documents concatenated, each ended by the end-of-text token
  std::vector<int64_t> doc_offsets;  // start of each document in tokens
  std::vector<uint8_t> loss_mask;    // empty, or one entry per token (1 = train on it)
};

// Token dtype size for a vocabulary: 2 bytes up to 65536 tokens, else 4.
inline size_t token_bytes(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

void write_shard(const std::string& path, const ShardData& data, const TokenizerMeta& meta, int gzip_level = 0);

// A shard opened for random access, its header checked against what the dataset expects.
// Every error names the file and the field.
class ShardReader {
 public:
  ShardReader(const std::string& path, const TokenizerMeta& expected);
  const std::string& path() const { return file_.path(); }
  int64_t num_tokens() const { return num_tokens_; }
  int64_t num_documents() const { return num_documents_; }
  bool has_loss_mask() const { return has_loss_mask_; }
  // Throws naming the shard and offset on an id outside the vocabulary (a corrupt shard): a scan of
  // what was read, far below 1% of a training step.
  void read_tokens(int64_t offset, std::span<int32_t> out) const;
  void read_loss_mask(int64_t offset, std::span<uint8_t> out) const { file_.read_range("loss_mask", offset, out); }
  std::vector<int64_t> doc_offsets() const { return file_.read<int64_t>("doc_offsets"); }

 private:
  h5::File file_;
  int64_t num_tokens_ = 0, num_documents_ = 0, vocab_size_ = 0;
  bool has_loss_mask_ = false;
};

}  // namespace kiln
