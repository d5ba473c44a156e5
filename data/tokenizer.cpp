#include "data/tokenizer.h"

#include <unistd.h>

#include <filesystem>
#include <stdexcept>
#include <vector>

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
  if (name == "gpt2") return std::make_unique<Gpt2Tokenizer>(dir.empty() ? bundled_vocab_dir(name) : dir);
  throw std::runtime_error("unknown tokenizer '" + name + "' (valid: bytes, gpt2)");
}

std::string bundled_vocab_dir(const std::string& name) {
  namespace fs = std::filesystem;
  std::vector<fs::path> places;
  std::error_code ec;
  const fs::path binary = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    places.push_back(binary.parent_path() / "vocab" / name);
    places.push_back(binary.parent_path().parent_path() / "share/kiln/vocab" / name);
  }
  places.push_back(fs::path(KILN_INSTALL_VOCAB_DIR) / name);
  places.push_back(fs::path(KILN_SOURCE_VOCAB_DIR) / name);
  std::string searched;
  for (const fs::path& place : places) {
    if (fs::is_directory(place, ec)) return fs::weakly_canonical(place).string();
    searched += (searched.empty() ? "" : ", ") + place.string();
  }
  throw std::runtime_error("the " + name + " vocabulary kiln ships was not found (searched " + searched +
                           "); pass --tokenizer-dir DIR, a directory with its files");
}

std::unique_ptr<Tokenizer> tokenizer_matching(const std::string& name, const std::string& fingerprint,
                                              const std::string& dir, const std::string& what) {
  const bool has_files = name == "gpt2" && !Gpt2Tokenizer::files_in(dir).first.empty();
  std::unique_ptr<Tokenizer> tokenizer = make_tokenizer(name, has_files ? dir : "");
  if (tokenizer->fingerprint() != fingerprint)
    throw std::runtime_error(what + ": made by tokenizer " + fingerprint + ", but the " + name + " files found (" +
                             (has_files ? dir : bundled_vocab_dir(name)) + ") are " + tokenizer->fingerprint() +
                             "; put the tokenizer files it was made with in " + dir);
  return tokenizer;
}

}  // namespace kiln
