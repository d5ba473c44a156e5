#include "data/gpt2_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <stdexcept>

#include "kernels/fnv1a.h"

namespace kiln {
namespace {

// GPT-2's pre-tokenizer: English contractions, letters, digits and other symbols (each optionally
// after one space), then whitespace. `\s+(?!\S)` leaves the last space of a run to start the next word.
// In PCRE2's UCP mode \s also matches U+180E, which Unicode no longer counts as a space; tiktoken
// then differs on that one (deprecated) character.
constexpr char kPattern[] = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Pieces longer than this skip the cache: rare, and they would make its memory bound meaningless.
constexpr size_t kMaxCachedPiece = 64;

// GPT-2's bytes_to_unicode: the printable bytes ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) stand for
// themselves and the other 68 for U+0100, U+0101, ... in byte order, so every token is printable text.
// Returns the inverse, code point -> byte (-1 for code points outside the alphabet).
std::array<int, 324> byte_of_codepoint() {
  std::array<int, 324> byte_of;
  byte_of.fill(-1);
  int next = 256;
  for (int b = 0; b < 256; b++) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    byte_of[printable ? b : next++] = b;
  }
  return byte_of;
}

// A token as spelled in encoder.json or vocab.bpe, back to raw bytes; false if a character is not in
// the alphabet (every alphabet character is one or two bytes of UTF-8).
bool unspell(std::string_view s, const std::array<int, 324>& byte_of, std::string& out) {
  out.clear();
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    unsigned cp = c;
    if (c >= 0x80) {
      if ((c & 0xE0) != 0xC0 || i + 1 >= s.size() || (static_cast<unsigned char>(s[i + 1]) & 0xC0) != 0x80)
        return false;
      cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu);
      i += 2;
    } else {
      i += 1;
    }
    if (cp >= byte_of.size() || byte_of[cp] < 0) return false;
    out.push_back(static_cast<char>(byte_of[cp]));
  }
  return true;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open (missing or unreadable)");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

// Owns the compiled pattern. Matching only reads it, so threads share it; each call to split brings
// its own match data.
class Gpt2Tokenizer::Regex {
 public:
  Regex() {
    int error = 0;
    PCRE2_SIZE offset = 0;
    // MATCH_INVALID_UTF: bytes that are not valid UTF-8 match nothing, instead of failing the whole
    // match; split() hands them on as pieces of their own.
    code_.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kPattern), PCRE2_ZERO_TERMINATED,
                              PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &offset, nullptr));
    if (!code_) throw std::runtime_error("gpt2 tokenizer: cannot compile the pre-tokenizer regex: " + message(error));
    // Without JIT support (or where it is not allowed) pcre2_match interprets the pattern instead.
    pcre2_jit_compile(code_.get(), PCRE2_JIT_COMPLETE);
  }

  // Calls fn(piece) for each pre-token of text in order. The pieces tile the text: every byte is in
  // exactly one. A run of bytes that is not valid UTF-8 is one piece, which BPE then treats like any
  // other; GPT-2 itself never saw such bytes (its text was always valid Unicode).
  void split(std::string_view text, const std::function<void(std::string_view)>& fn) const {
    const std::unique_ptr<pcre2_match_data, MatchDataFree> match(pcre2_match_data_create(1, nullptr));
    if (!match) throw std::bad_alloc();
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0;
    while (pos < text.size()) {
      const int rc = pcre2_match(code_.get(), subject, text.size(), pos, 0, match.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) throw std::runtime_error("gpt2 tokenizer: pre-tokenizer regex failed: " + message(rc));
      const PCRE2_SIZE* span = pcre2_get_ovector_pointer(match.get());
      if (span[0] > pos) fn(text.substr(pos, span[0] - pos));  // invalid UTF-8 the match skipped over
      fn(text.substr(span[0], span[1] - span[0]));             // never empty: every alternative takes a character
      pos = span[1];
    }
    if (pos < text.size()) fn(text.substr(pos));
  }

 private:
  struct CodeFree {
    void operator()(pcre2_code* c) const { pcre2_code_free(c); }
  };
  struct MatchDataFree {
    void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
  };
  static std::string message(int error) {
    PCRE2_UCHAR buffer[256];
    pcre2_get_error_message(error, buffer, sizeof buffer);
    return reinterpret_cast<const char*>(buffer);
  }

  std::unique_ptr<pcre2_code, CodeFree> code_;
};

// Piece -> token ids for pieces seen before. Sharded by hash so that threads rarely wait on the same
// lock. A full shard is simply cleared: text keeps reusing the same few thousand words, so they come
// back at once, and memory stays under kShards * kShardCapacity short entries (some 15 MB).
class Gpt2Tokenizer::WordCache {
 public:
  // Appends the cached ids of piece to out; false if it is not cached.
  bool find(std::string_view piece, std::vector<int32_t>& out) {
    Shard& shard = shard_of(piece);
    std::lock_guard lock(shard.mutex);
    const auto it = shard.map.find(piece);
    if (it == shard.map.end()) return false;
    out.insert(out.end(), it->second.begin(), it->second.end());
    return true;
  }
  void insert(std::string_view piece, const std::vector<int32_t>& ids) {
    Shard& shard = shard_of(piece);
    std::lock_guard lock(shard.mutex);
    if (shard.map.size() >= kShardCapacity) shard.map.clear();
    shard.map.emplace(piece, ids);
  }

 private:
  static constexpr size_t kShards = 64;
  static constexpr size_t kShardCapacity = 2048;
  // Transparent hashing, so lookups take a string_view without building a std::string.
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct Shard {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>, Hash, std::equal_to<>> map;
  };
  Shard& shard_of(std::string_view piece) {
    // The top bits choose the shard; the map buckets by the low ones.
    return shards_[(Hash{}(piece) >> 32) % kShards];
  }

  std::array<Shard, kShards> shards_;
};

Gpt2Tokenizer::Gpt2Tokenizer(const std::string& dir)
    : regex_(std::make_unique<Regex>()), cache_(std::make_unique<WordCache>()) {
  if (!std::filesystem::is_directory(dir))
    throw std::runtime_error(dir +
                             ": GPT-2 tokenizer directory not found (it holds encoder.json and vocab.bpe, "
                             "or Hugging Face's copies of them, vocab.json and merges.txt)");
  auto [encoder_path, merges_path] = files_in(dir);
  if (encoder_path.empty()) {  // neither pair: name the files of OpenAI's release in the error
    encoder_path = dir + "/encoder.json";
    merges_path = dir + "/vocab.bpe";
  }
  const std::array<int, 324> byte_of = byte_of_codepoint();
  std::string bytes;  // one token's raw bytes

  // encoder.json: {"token": id, ...}, ids dense in 0..N-1.
  const std::string encoder_text = read_file(encoder_path);
  nlohmann::json encoder;
  try {
    encoder = nlohmann::json::parse(encoder_text);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(encoder_path + ": invalid JSON: " + e.what());
  }
  if (!encoder.is_object() || encoder.empty())
    throw std::runtime_error(encoder_path + ": expected a JSON object mapping token strings to ids");
  token_bytes_.resize(encoder.size());
  std::vector<bool> seen(encoder.size());
  std::unordered_map<std::string, int32_t> id_of;  // raw bytes -> id, for reading the merges
  for (const auto& [key, value] : encoder.items()) {
    const std::string what = encoder_path + ": token \"" + key + "\"";
    if (!value.is_number_integer()) throw std::runtime_error(what + ": id " + value.dump() + " is not an integer");
    const int64_t id = value.get<int64_t>();
    if (id < 0 || id >= static_cast<int64_t>(encoder.size()))
      throw std::runtime_error(what + ": id " + std::to_string(id) + " is outside 0.." +
                               std::to_string(encoder.size() - 1) + " (ids must be dense)");
    if (seen[id]) throw std::runtime_error(what + ": id " + std::to_string(id) + " is used twice");
    if (!unspell(key, byte_of, bytes))
      throw std::runtime_error(what + " has a character outside GPT-2's byte alphabet");
    seen[id] = true;
    token_bytes_[id] = bytes;
    id_of.emplace(bytes, static_cast<int32_t>(id));
  }
  for (int b = 0; b < 256; b++) {
    const auto it = id_of.find(std::string(1, static_cast<char>(b)));
    if (it == id_of.end()) throw std::runtime_error(encoder_path + ": no token for byte " + std::to_string(b));
    byte_token_[b] = it->second;
  }
  const auto eot = id_of.find("<|endoftext|>");
  if (eot == id_of.end()) throw std::runtime_error(encoder_path + ": no \"<|endoftext|>\" token");
  eot_ = eot->second;

  // vocab.bpe: a "#version" line, then one merge per line, "left right", best first.
  const std::string merges_text = read_file(merges_path);
  std::string_view rest = merges_text;
  std::string left, right;
  for (int line_no = 1; !rest.empty(); line_no++) {
    const size_t end = std::min(rest.find('\n'), rest.size());
    std::string_view line = rest.substr(0, end);
    rest.remove_prefix(std::min(end + 1, rest.size()));
    if (line.ends_with('\r')) line.remove_suffix(1);
    if ((line_no == 1 && line.starts_with("#version")) || line.empty()) continue;
    const std::string where = merges_path + ":" + std::to_string(line_no) + ": ";
    const size_t space = line.find(' ');
    if (space == 0 || space == std::string_view::npos || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string_view::npos)
      throw std::runtime_error(where + "expected two tokens separated by one space, got '" + std::string(line) + "'");
    const std::string a(line.substr(0, space)), b(line.substr(space + 1));  // as spelled in the file
    if (!unspell(a, byte_of, left) || !unspell(b, byte_of, right))
      throw std::runtime_error(where + "'" + std::string(line) + "' has a character outside GPT-2's byte alphabet");
    auto token_id = [&](const std::string& raw, const std::string& spelled) {
      const auto it = id_of.find(raw);
      if (it == id_of.end()) throw std::runtime_error(where + "'" + spelled + "' is not a token in encoder.json");
      return it->second;
    };
    const int32_t l = token_id(left, a), r = token_id(right, b), merged = token_id(left + right, a + b);
    merges_.emplace(pair_key(l, r), Merge{static_cast<int32_t>(merges_.size()), merged});
  }

  char hash[17];
  const uint64_t files_hash =
      fnv1a(merges_text.data(), merges_text.size(), fnv1a(encoder_text.data(), encoder_text.size()));
  std::snprintf(hash, sizeof hash, "%016" PRIx64, files_hash);
  fingerprint_ = std::string("gpt2:fnv1a64:") + hash;
}

Gpt2Tokenizer::~Gpt2Tokenizer() = default;

std::pair<std::string, std::string> Gpt2Tokenizer::files_in(const std::string& dir) {
  // OpenAI's release names the two files encoder.json and vocab.bpe; a Hugging Face GPT-2
  // directory has the same files as vocab.json and merges.txt.
  std::error_code ec;
  if (std::filesystem::exists(dir + "/encoder.json", ec)) return {dir + "/encoder.json", dir + "/vocab.bpe"};
  if (std::filesystem::exists(dir + "/vocab.json", ec)) return {dir + "/vocab.json", dir + "/merges.txt"};
  return {};
}

std::vector<int32_t> Gpt2Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 4);  // English averages about four bytes a token
  regex_->split(text, [&](std::string_view piece) { encode_piece(piece, out); });
  return out;
}

void Gpt2Tokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.size() == 1) {
    out.push_back(byte_token_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (piece.size() <= kMaxCachedPiece && cache_->find(piece, out)) return;
  const std::vector<int32_t> ids = bpe(piece);
  if (piece.size() <= kMaxCachedPiece) cache_->insert(piece, ids);
  out.insert(out.end(), ids.begin(), ids.end());
}

// BPE on one piece: start from its bytes and apply the lowest-ranked merge among adjacent symbols,
// the leftmost on ties, until none applies. Symbols are a linked list over byte positions and the
// candidate merges wait in a min-heap ordered by (rank, position); a candidate whose symbols have
// changed since it was pushed is dropped when popped. This is O(n log n), so a piece that is a
// megabyte of spaces costs what its length says rather than n^2.
std::vector<int32_t> Gpt2Tokenizer::bpe(std::string_view piece) const {
  const int n = static_cast<int>(piece.size());
  std::vector<int32_t> id(n);  // symbol starting at byte i; -1 once merged into its left neighbour
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; i++) {
    id[i] = byte_token_[static_cast<unsigned char>(piece[i])];
    prev[i] = i - 1;
    next[i] = i + 1;  // n: no next symbol
  }
  struct Candidate {
    int32_t rank;
    int left;                   // position of the left symbol
    int32_t left_id, right_id;  // the pair it was pushed for
    int32_t result;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto consider = [&](int left) {
    const int right = next[left];
    if (right >= n) return;
    const auto it = merges_.find(pair_key(id[left], id[right]));
    if (it != merges_.end()) heap.push({it->second.rank, left, id[left], id[right], it->second.result});
  };
  for (int i = 0; i + 1 < n; i++) consider(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    // A merge always makes a longer token, so unchanged ids on both sides mean an unchanged pair.
    const int right = next[c.left];
    if (id[c.left] != c.left_id || right >= n || id[right] != c.right_id) continue;
    id[c.left] = c.result;
    id[right] = -1;
    next[c.left] = next[right];
    if (next[right] < n) prev[next[right]] = c.left;
    if (prev[c.left] >= 0) consider(prev[c.left]);
    consider(c.left);
  }
  std::vector<int32_t> out;
  for (int i = 0; i < n; i = next[i]) out.push_back(id[i]);
  return out;
}

std::string Gpt2Tokenizer::decode(std::span<const int32_t> tokens) const {
  std::string out;
  for (int32_t t : tokens) {
    if (t < 0 || t >= vocab_size())
      throw std::runtime_error("gpt2 tokenizer: token id " + std::to_string(t) + " is outside the vocabulary (0.." +
                               std::to_string(vocab_size() - 1) + ")");
    out += token_bytes_[t];
  }
  return out;
}

}  // namespace kiln
