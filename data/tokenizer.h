// The tokenizer interface the data layer works against: text <-> token ids, plus what a token file
// records about the tokenizer that made it (name, vocabulary size, end-of-text id, fingerprint).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string name() const = 0;         // "bytes" or "gpt2"
  virtual int vocab_size() const = 0;           // bytes: 257, gpt2: 50257
  virtual int32_t eot_token() const = 0;        // bytes: 256, gpt2: 50256 (<|endoftext|>)
  // Name plus a hash of the files it was loaded from ("gpt2:fnv1a64:<16 hex digits>"), so a token file
  // can be checked against the tokenizer a run uses. The byte tokenizer's is just "bytes".
  virtual std::string fingerprint() const = 0;
  // Thread-safe: `kiln prepare` calls it from several threads at once. Never fails: any byte string
  // encodes, and decode(encode(x)) == x.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Throws std::runtime_error on an id outside the vocabulary.
  virtual std::string decode(std::span<const int32_t> tokens) const = 0;
};

// "bytes" (dir is ignored) or "gpt2" (reads dir/encoder.json and dir/vocab.bpe). Throws
// std::runtime_error naming the file and what is wrong, or listing the valid names.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name, const std::string& dir);

}  // namespace kiln
