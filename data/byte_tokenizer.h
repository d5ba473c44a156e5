// Byte-level tokenizer: token = byte value (0..255), plus an end-of-text token 256.
// Needs no files and round-trips any input, including invalid UTF-8.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

struct ByteTokenizer {
  static constexpr int32_t kEndOfText = 256;
  static constexpr int kVocabSize = 257;

  static std::vector<int32_t> encode(std::string_view text) {
    std::vector<int32_t> tokens(text.size());
    for (size_t i = 0; i < text.size(); i++) tokens[i] = static_cast<unsigned char>(text[i]);
    return tokens;
  }
  // The end-of-text token decodes to nothing.
  static std::string decode(const std::vector<int32_t>& tokens) {
    std::string out;
    for (int32_t t : tokens)
      if (t >= 0 && t < 256) out.push_back(static_cast<char>(t));
    return out;
  }
};

}  // namespace kiln
