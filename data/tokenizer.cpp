#include "data/tokenizer.h"

#include <stdexcept>

#include "data/byte_tokenizer.h"
#include "data/gpt2_tokenizer.h"

namespace kiln {
namespace {

// ByteTokenizer behind the interface. Unlike ByteTokenizer::decode, decode rejects ids >= 257.
class BytesTokenizer final : public Tokenizer {
 public:
  std::string name() const override { return "bytes"; }
  int vocab_size() const override { return ByteTokenizer::kVocabSize; }
  int32_t eot_token() const override { return ByteTokenizer::kEndOfText; }
  std::string fingerprint() const override { return "bytes"; }  // no files, nothing to hash
  std::vector<int32_t> encode(std::string_view text) const override { return ByteTokenizer::encode(text); }
  std::string decode(std::span<const int32_t> tokens) const override {
    std::string out;
    out.reserve(tokens.size());
    for (int32_t t : tokens) {
      if (t < 0 || t >= ByteTokenizer::kVocabSize)
        throw std::runtime_error("bytes tokenizer: token id " + std::to_string(t) + " is outside the vocabulary (0.." +
                                 std::to_string(ByteTokenizer::kVocabSize - 1) + ")");
      if (t != ByteTokenizer::kEndOfText) out.push_back(static_cast<char>(t));  // end of text decodes to nothing
    }
    return out;
  }
};

}  // namespace

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name, const std::string& dir) {
  if (name == "bytes") return std::make_unique<BytesTokenizer>();
  if (name == "gpt2") return std::make_unique<Gpt2Tokenizer>(dir);
  throw std::runtime_error("unknown tokenizer '" + name + "' (valid: bytes, gpt2)");
}

}  // namespace kiln
