// GPT-2's byte-level BPE, loaded from encoder.json (token -> id) and vocab.bpe (merges, best first),
// or the same files under Hugging Face's names, vocab.json and merges.txt.
//
// encode: split the text into pre-tokens with GPT-2's regex (PCRE2), then run BPE on the bytes of
// each pre-token. A pre-token is a word with its leading space, a number, a run of punctuation or of
// whitespace, so BPE runs on short pieces, and a cache maps pieces seen before to their ids.
//
// Token strings are kept as raw bytes: encoder.json and vocab.bpe spell every byte as a printable
// character (GPT-2's bytes_to_unicode), and loading maps those characters back.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "data/tokenizer.h"

namespace kiln {

class Gpt2Tokenizer final : public Tokenizer {
 public:
  // Reads dir/encoder.json and dir/vocab.bpe; throws naming the file (and line) that is wrong.
  explicit Gpt2Tokenizer(const std::string& dir);
  ~Gpt2Tokenizer() override;

  // The (encoder, merges) files a tokenizer loaded from dir reads: encoder.json and vocab.bpe, else
  // vocab.json and merges.txt; two empty strings when dir holds neither pair.
  static std::pair<std::string, std::string> files_in(const std::string& dir);

  std::string name() const override { return "gpt2"; }
  int vocab_size() const override { return static_cast<int>(token_bytes_.size()); }
  int32_t eot_token() const override { return eot_; }
  std::string fingerprint() const override { return fingerprint_; }
  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(std::span<const int32_t> tokens) const override;

 private:
  struct Merge {
    int32_t rank;    // line order in vocab.bpe: lower merges first
    int32_t result;  // id of the merged token
  };
  class Regex;      // the compiled pre-tokenizer pattern (PCRE2)
  class WordCache;  // piece -> ids, shared by all threads

  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  // Appends the ids of one pre-token: from the cache, else by BPE.
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
  std::vector<int32_t> bpe(std::string_view piece) const;

  std::vector<std::string> token_bytes_;        // id -> raw bytes
  int32_t byte_token_[256] = {};                // byte -> id of its one-byte token
  std::unordered_map<uint64_t, Merge> merges_;  // pair_key(left, right) -> merge
  int32_t eot_ = -1;
  std::string fingerprint_;
  std::unique_ptr<Regex> regex_;
  std::unique_ptr<WordCache> cache_;
};

}  // namespace kiln
