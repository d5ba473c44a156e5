#include "data/text_corpus.h"

#include <fstream>
#include <sstream>
#include <stdexcept>

#include "data/byte_tokenizer.h"

namespace kiln {

TextCorpus::TextCorpus(const std::string& path, double val_fraction, int seq_len) : seq_len_(seq_len) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open text corpus (data.path)");
  std::ostringstream text;
  text << in.rdbuf();
  tokens_ = ByteTokenizer::encode(text.str());
  if (val_fraction < 0 || val_fraction >= 1)
    throw std::runtime_error("data.val_fraction = " + std::to_string(val_fraction) + ": expected 0 <= x < 1");
  val_begin_ = tokens_.size() - static_cast<size_t>(val_fraction * tokens_.size());
  const size_t need = static_cast<size_t>(seq_len) + 2;
  if (val_begin_ < need || (val_fraction > 0 && val_tokens() < need))
    throw std::runtime_error(path + ": " + std::to_string(tokens_.size()) +
                             " bytes is too short for sequences of " + std::to_string(seq_len) +
                             " tokens (each split needs at least " + std::to_string(need) + ")");
}

void TextCorpus::sample(Batch& batch, bool validation, std::mt19937_64& rng) const {
  const size_t begin = validation ? val_begin_ : 0;
  const size_t end = validation ? tokens_.size() : val_begin_;
  if (validation && val_tokens() == 0) throw std::logic_error("TextCorpus: no validation split");
  std::uniform_int_distribution<size_t> start(begin, end - seq_len_ - 1);
  batch.T = seq_len_;
  batch.inputs.resize((size_t)batch.B * seq_len_);
  batch.targets.resize((size_t)batch.B * seq_len_);
  for (int b = 0; b < batch.B; b++) {
    const size_t s = start(rng);
    for (int t = 0; t < seq_len_; t++) {
      batch.inputs[(size_t)b * seq_len_ + t] = tokens_[s + t];
      batch.targets[(size_t)b * seq_len_ + t] = tokens_[s + t + 1];
    }
  }
}

}  // namespace kiln
