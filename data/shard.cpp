#include "data/shard.h"

#include <stdexcept>

namespace kiln {

void write_shard(const std::string& path, const ShardData& data, const TokenizerMeta& meta, int gzip_level) {
  h5::File f = h5::File::create(path);
  const hid_t token_type = token_bytes(meta.vocab_size) == 2 ? H5T_STD_U16LE : H5T_STD_U32LE;
  f.write<int32_t>("tokens", data.tokens, token_type, kShardChunkTokens, gzip_level);
  f.write<int64_t>("doc_offsets", data.doc_offsets, H5T_STD_I64LE, kShardChunkTokens, gzip_level);
  if (!data.loss_mask.empty())
    f.write<uint8_t>("loss_mask", data.loss_mask, H5T_STD_U8LE, kShardChunkTokens, gzip_level);
  f.set_attribute("format", std::string(kShardFormat));
  f.set_attribute<int64_t>("format_version", kShardFormatVersion);
  f.set_attribute<int64_t>("vocab_size", meta.vocab_size);
  f.set_attribute("tokenizer", meta.tokenizer);
  f.set_attribute<int64_t>("eot_token", meta.eot_token);
  f.set_attribute<int64_t>("num_tokens", (int64_t)data.tokens.size());
  f.set_attribute<int64_t>("num_documents", (int64_t)data.doc_offsets.size());
  f.close();
}

ShardReader::ShardReader(const std::string& path, const TokenizerMeta& expected) : file_(h5::File::open_read(path)) {
  auto fail = [&](const std::string& field, const std::string& why) {
    throw std::runtime_error(path + ": " + field + ": " + why);
  };
  const std::string format = file_.string_attribute("/", "format");
  if (format != kShardFormat) fail("format", "'" + format + "', expected '" + kShardFormat + "'");
  const int64_t version = file_.attribute<int64_t>("/", "format_version");
  if (version != kShardFormatVersion)
    fail("format_version",
         std::to_string(version) + ", this kiln reads version " + std::to_string(kShardFormatVersion));
  const int64_t vocab = file_.attribute<int64_t>("/", "vocab_size");
  if (vocab != expected.vocab_size)
    fail("vocab_size", std::to_string(vocab) + ", expected " + std::to_string(expected.vocab_size));
  const std::string tokenizer = file_.string_attribute("/", "tokenizer");
  if (tokenizer != expected.tokenizer) fail("tokenizer", "'" + tokenizer + "', expected '" + expected.tokenizer + "'");
  const int64_t eot = file_.attribute<int64_t>("/", "eot_token");
  if (eot != expected.eot_token)
    fail("eot_token", std::to_string(eot) + ", expected " + std::to_string(expected.eot_token));

  const h5::DatasetInfo tokens = file_.info("tokens");
  if (!tokens.is_integer || tokens.is_signed || tokens.element_size != token_bytes(vocab) || tokens.shape.size() != 1)
    fail("tokens", "stored as " + std::string(tokens.is_signed ? "signed " : "") +
                       std::to_string(tokens.element_size * 8) + "-bit values of rank " +
                       std::to_string(tokens.shape.size()) + ", expected 1-D uint" +
                       std::to_string(token_bytes(vocab) * 8) + " for vocab_size " + std::to_string(vocab));
  vocab_size_ = vocab;
  num_tokens_ = file_.attribute<int64_t>("/", "num_tokens");
  if (tokens.numel() != num_tokens_)
    fail("tokens", std::to_string(tokens.numel()) + " tokens, but num_tokens says " + std::to_string(num_tokens_));
  if (num_tokens_ == 0) fail("num_tokens", "the shard is empty");
  num_documents_ = file_.attribute<int64_t>("/", "num_documents");
  if (file_.info("doc_offsets").numel() != num_documents_)
    fail("doc_offsets", std::to_string(file_.info("doc_offsets").numel()) + " entries, but num_documents says " +
                            std::to_string(num_documents_));
  has_loss_mask_ = file_.has("loss_mask");
  if (has_loss_mask_ && file_.info("loss_mask").numel() != num_tokens_)
    fail("loss_mask",
         std::to_string(file_.info("loss_mask").numel()) + " entries for " + std::to_string(num_tokens_) + " tokens");
}

void ShardReader::read_tokens(int64_t offset, std::span<int32_t> out) const {
  file_.read_range("tokens", offset, out);
  for (size_t i = 0; i < out.size(); i++)
    if (out[i] < 0 || out[i] >= vocab_size_)
      throw std::runtime_error(path() + ": tokens: id " + std::to_string(out[i]) + " at offset " +
                               std::to_string(offset + (int64_t)i) + " is outside the vocabulary (0.." +
                               std::to_string(vocab_size_ - 1) + "): the shard is corrupt; prepare it again");
}

}  // namespace kiln
