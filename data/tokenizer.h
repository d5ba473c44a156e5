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
  virtual std::string name() const = 0;   // "bytes" or "gpt2"
  virtual int vocab_size() const = 0;     // bytes: 257, gpt2: 50257
  virtual int32_t eot_token() const = 0;  // bytes: 256, gpt2: 50256 (<|endoftext|>)
  // Name plus a hash of the files it was loaded from ("gpt2:fnv1a64:<16 hex digits>"), so a token file
  // can be checked against the tokenizer a run uses. The byte tokenizer's is just "bytes".
  virtual std::string fingerprint() const = 0;
  // Thread-safe: `kiln prepare` calls it from several threads at once. Never fails: any byte string
  // encodes, and decode(encode(x)) == x.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Throws std::runtime_error on an id outside the vocabulary.
  virtual std::string decode(std::span<const int32_t> tokens) const = 0;
};

// "bytes" (dir is ignored) or "gpt2" (reads dir/encoder.json and dir/vocab.bpe; an empty dir means
// the vocabulary kiln ships, found by bundled_vocab_dir()). Throws std::runtime_error naming the
// file and what is wrong, or listing the valid names.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name, const std::string& dir);

// The directory holding the vocabulary files kiln ships for tokenizer `name` (data/vocab/NAME in
// the source tree). Searched in order: next to the binary (BIN/vocab/NAME), the binary's install
// prefix (BIN/../share/kiln/vocab/NAME), the configured install prefix, the source tree. Throws,
// listing every place searched, when none holds it.
std::string bundled_vocab_dir(const std::string& name);

// The tokenizer that made a dataset or checkpoint whose recorded fingerprint is `fingerprint`:
// files in `dir` when it holds them (a dataset prepared with --tokenizer-dir), else the bundled
// vocabulary. Throws, naming `what` and both fingerprints, when the files found are not the ones
// recorded.
std::unique_ptr<Tokenizer> tokenizer_matching(const std::string& name, const std::string& fingerprint,
                                              const std::string& dir, const std::string& what);

}  // namespace kiln
