// kiln prepare: text and JSONL in, token shards and dataset.json out. The byte tokenizer makes the
// expected tokens easy to compute here: each byte is its own id, and the end-of-text token is 256.
#include <gtest/gtest.h>

#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "data/dataset.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "tests/test_util.h"

namespace kiln {
namespace {

using namespace kiln::test;  // TempDir, error_of, mentions, read_file

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int32_t kEot = 256;  // the byte tokenizer's end-of-text token

PrepareOptions options(std::vector<std::string> inputs, std::string output) {
  PrepareOptions o;
  o.inputs = std::move(inputs);
  o.output = std::move(output);
  o.tokenizer = "bytes";
  return o;
}

// What the byte tokenizer makes of a document: its bytes, then end-of-text.
std::vector<int32_t> byte_tokens(const std::string& text) {
  std::vector<int32_t> out;
  for (unsigned char c : text) out.push_back(c);
  out.push_back(kEot);
  return out;
}

// A split read back document by document, through ShardReader.
struct Documents {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<uint8_t>> masks;  // empty unless the shards have a loss mask
  std::vector<int64_t> shard_sizes;         // tokens per shard
};

Documents read_documents(const Split& split) {
  Documents out;
  for (const auto& shard : split.shards) {
    const int64_t n = shard->num_tokens();
    std::vector<int32_t> tokens(n);
    shard->read_tokens(0, tokens);
    std::vector<uint8_t> mask(shard->has_loss_mask() ? n : 0);
    if (!mask.empty()) shard->read_loss_mask(0, mask);
    std::vector<int64_t> offsets = shard->doc_offsets();
    EXPECT_EQ((int64_t)offsets.size(), shard->num_documents()) << shard->path();
    EXPECT_TRUE(!offsets.empty() && offsets.front() == 0) << shard->path() << ": the first document starts at 0";
    offsets.push_back(n);
    for (size_t d = 0; d + 1 < offsets.size(); d++) {
      out.tokens.emplace_back(tokens.begin() + offsets[d], tokens.begin() + offsets[d + 1]);
      if (!mask.empty()) out.masks.emplace_back(mask.begin() + offsets[d], mask.begin() + offsets[d + 1]);
    }
    out.shard_sizes.push_back(n);
  }
  return out;
}

std::vector<std::vector<int32_t>> byte_documents(const std::vector<std::string>& texts) {
  std::vector<std::vector<int32_t>> out;
  for (const std::string& t : texts) out.push_back(byte_tokens(t));
  return out;
}

// A JSONL line {"text": text}, or {"prompt": ..., "response": ...}.
std::string text_line(const std::string& text) { return json{{"text", text}}.dump() + "\n"; }
std::string pair_line(const std::string& prompt, const std::string& response) {
  return json{{"prompt", prompt}, {"response", response}}.dump() + "\n";
}

// No OUTPUT.tmp-* or OUTPUT.old-* is left next to OUTPUT.
::testing::AssertionResult no_leftovers(const std::string& output) {
  const fs::path out(output);
  for (const auto& entry : fs::directory_iterator(out.parent_path())) {
    const std::string name = entry.path().filename().string();
    if (name.starts_with(out.filename().string() + ".tmp-") || name.starts_with(out.filename().string() + ".old-"))
      return ::testing::AssertionFailure() << entry.path() << " was left behind";
  }
  return ::testing::AssertionSuccess();
}

// Reads a whole file's bytes.
std::string contents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// Every file in `dir`, name -> bytes.
std::map<std::string, std::string> directory_contents(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& entry : fs::directory_iterator(dir)) out[entry.path().filename().string()] = contents(entry.path());
  return out;
}

// Small pseudo-random documents: "doc <i>: " then words, so each one can be told apart.
std::vector<std::string> make_documents(int count, int max_words, uint32_t seed = 1) {
  std::mt19937 rng(seed);
  const std::vector<std::string> words = {"the", "kiln", "fires", "clay", "at",           "night", "\xc3\xa9t\xc3\xa9",
                                          "\n",  "1234", "!?",    "\t",   "gl\xc3\xbchen"};
  std::vector<std::string> docs;
  for (int i = 0; i < count; i++) {
    std::string d = "doc " + std::to_string(i) + ":";
    const int n = (int)(rng() % max_words);
    for (int w = 0; w < n; w++) d += " " + words[rng() % words.size()];
    docs.push_back(d);
  }
  return docs;
}

std::string jsonl_of(const std::vector<std::string>& docs) {
  std::string out;
  for (const std::string& d : docs) out += text_line(d);
  return out;
}

TEST(Prepare, TextFilesAreOneDocumentEach) {
  TempDir dir;
  const std::string binary("beta \xff\x00 gamma", 13);  // any bytes, even invalid UTF-8 and NUL
  const std::string a = dir.file("a.txt", "alpha\n"), empty = dir.file("empty.txt", ""), b = dir.file("b.txt", binary);
  const std::string out = dir.path("out");
  const PrepareSummary sum = prepare_dataset(options({a, empty, b}, out));
  EXPECT_EQ(sum.documents, 2);
  EXPECT_EQ(sum.empty_documents, 1);

  const Dataset ds = Dataset::open(out);
  EXPECT_EQ(ds.tokenizer_name, "bytes");
  EXPECT_EQ(ds.meta.vocab_size, 257);
  EXPECT_EQ(ds.meta.eot_token, kEot);
  EXPECT_FALSE(ds.has_loss_mask);
  const Documents docs = read_documents(ds.train);
  EXPECT_EQ(docs.tokens, byte_documents({"alpha\n", binary}));
  EXPECT_TRUE(docs.masks.empty());
  ASSERT_EQ(ds.train.shards.size(), 1u);
  EXPECT_EQ(ds.train.shards[0]->doc_offsets(), (std::vector<int64_t>{0, 7}));
  EXPECT_EQ(ds.val.num_documents, 0);
}

TEST(Prepare, TextWithASeparator) {
  TempDir dir;
  const std::string sep = "<|sep|>";
  // Empty pieces are skipped; a separator at the end ends the last document.
  const std::string a = dir.file("a.txt", "one" + sep + "two\n" + sep + sep + "three");
  const std::string b = dir.file("b.txt", "four" + sep);
  // A document longer than the reader's 1 MiB chunks, with the separator straddling the boundary.
  const std::string big((1 << 20) - 3, 'x');
  const std::string c = dir.file("c.txt", big + sep + "tail");
  PrepareOptions o = options({a, b, c}, dir.path("out"));
  o.separator = sep;
  const PrepareSummary sum = prepare_dataset(o);
  EXPECT_EQ(sum.documents, 6);
  EXPECT_EQ(sum.empty_documents, 1);
  const Documents docs = read_documents(Dataset::open(o.output).train);
  EXPECT_EQ(docs.tokens, byte_documents({"one", "two\n", "three", "four", big, "tail"}));
}

TEST(Prepare, JsonlTextDocuments) {
  TempDir dir;
  const std::vector<std::string> texts = {"hello", "w\xc3\xb6rld\nwith \"quotes\" and \\ slashes", "\t"};
  // Blank lines are skipped, as is a document with empty text; CRLF line ends are fine.
  const std::string input = dir.file("in.jsonl", text_line(texts[0]) + "\n   \n" + text_line("") + text_line(texts[1]) +
                                                     json{{"text", texts[2]}, {"id", 3}}.dump() + "\r\n");
  const PrepareSummary sum = prepare_dataset(options({input}, dir.path("out")));
  EXPECT_EQ(sum.documents, 3);
  EXPECT_EQ(sum.empty_documents, 1);
  const Dataset ds = Dataset::open(dir.path("out"));
  EXPECT_FALSE(ds.has_loss_mask);
  EXPECT_EQ(read_documents(ds.train).tokens, byte_documents(texts));

  // format = jsonl reads JSONL whatever the file is called; format = text takes the line as text.
  const std::string renamed = dir.file("in.txt", contents(input));
  PrepareOptions as_jsonl = options({renamed}, dir.path("as_jsonl"));
  as_jsonl.format = "jsonl";
  prepare_dataset(as_jsonl);
  EXPECT_EQ(read_documents(Dataset::open(as_jsonl.output).train).tokens, byte_documents(texts));
  PrepareOptions as_text = options({input}, dir.path("as_text"));
  as_text.format = "text";
  prepare_dataset(as_text);
  EXPECT_EQ(read_documents(Dataset::open(as_text.output).train).tokens, byte_documents({contents(input)}));
}

TEST(Prepare, PromptResponsePairsMaskThePrompt) {
  TempDir dir;
  const std::vector<std::pair<std::string, std::string>> pairs = {
      {"Q: 2+2?\nA:", " 4"}, {"", "no prompt"}, {"translate: chat", " cat"}, {"long prompt, short answer", "."}};
  std::string lines;
  for (const auto& [p, r] : pairs) lines += pair_line(p, r);
  const std::string input = dir.file("pairs.jsonl", lines);
  const PrepareSummary sum = prepare_dataset(options({input}, dir.path("out")));
  EXPECT_EQ(sum.documents, (int64_t)pairs.size());

  const Dataset ds = Dataset::open(dir.path("out"));
  EXPECT_TRUE(ds.has_loss_mask);
  const Documents docs = read_documents(ds.train);
  ASSERT_EQ(docs.tokens.size(), pairs.size());
  ASSERT_EQ(docs.masks.size(), pairs.size());
  for (size_t i = 0; i < pairs.size(); i++) {
    const auto& [prompt, response] = pairs[i];
    EXPECT_EQ(docs.tokens[i], byte_tokens(prompt + response)) << "document " << i;
    // 0 on the prompt, 1 on the response and on the end-of-text after it.
    std::vector<uint8_t> mask(prompt.size(), 0);
    mask.resize(prompt.size() + response.size() + 1, 1);
    EXPECT_EQ(docs.masks[i], mask) << "document " << i;
  }
}

TEST(Prepare, ShardsEndAtDocumentBoundaries) {
  TempDir dir;
  std::vector<std::string> texts = make_documents(60, 12);
  texts[17] = std::string(250, 'L');  // longer than a shard on its own
  const std::string input = dir.file("in.jsonl", jsonl_of(texts));
  PrepareOptions o = options({input}, dir.path("out"));
  o.shard_tokens = 100;
  const PrepareSummary sum = prepare_dataset(o);
  const Dataset ds = Dataset::open(o.output);
  const Documents docs = read_documents(ds.train);
  EXPECT_EQ(docs.tokens, byte_documents(texts));  // in order, none split
  ASSERT_GT(docs.shard_sizes.size(), 5u);
  EXPECT_EQ(sum.train_shards, (int)docs.shard_sizes.size());

  size_t first_doc = 0;  // of the current shard
  for (size_t s = 0; s < ds.train.shards.size(); s++) {
    const int64_t docs_here = ds.train.shards[s]->num_documents();
    const int64_t size = docs.shard_sizes[s];
    EXPECT_TRUE(size <= o.shard_tokens || docs_here == 1) << "shard " << s << " holds " << size << " tokens";
    // Each shard is as full as whole documents allow: the next one would not have fit.
    if (s + 1 < ds.train.shards.size()) {
      EXPECT_GT(size + (int64_t)docs.tokens[first_doc + docs_here].size(), o.shard_tokens) << "shard " << s;
    }
    first_doc += docs_here;
  }
  // Shard files are numbered in order.
  EXPECT_EQ(ds.train.shards[0]->path(), o.output + "/train_000000.h5");
  EXPECT_EQ(ds.train.shards[1]->path(), o.output + "/train_000001.h5");
}

// Which of `all` went to validation, by index, given the split's documents in order.
std::vector<int64_t> val_indices(const std::vector<std::string>& all, const Documents& val) {
  std::vector<int64_t> out;
  size_t next = 0;
  for (size_t i = 0; i < all.size() && next < val.tokens.size(); i++)
    if (byte_tokens(all[i]) == val.tokens[next]) out.push_back((int64_t)i), next++;
  EXPECT_EQ(next, val.tokens.size()) << "validation documents are not a subsequence of the input";
  return out;
}

// Prepares `texts` with a validation split and checks that train and val partition them in order,
// the validation documents evenly spaced; returns their indices.
std::vector<int64_t> check_val_split(const std::vector<std::string>& texts, double fraction, int64_t count,
                                     int64_t expected_val) {
  TempDir dir;
  PrepareOptions o = options({dir.file("in.jsonl", jsonl_of(texts))}, dir.path("out"));
  o.val_fraction = fraction;
  o.val_documents = count;
  o.shard_tokens = 5000;  // several shards per split
  const PrepareSummary sum = prepare_dataset(o);
  const Dataset ds = Dataset::open(o.output);
  const Documents train = read_documents(ds.train), val = read_documents(ds.val);
  EXPECT_EQ(sum.val_documents, expected_val);
  EXPECT_EQ(ds.val.num_documents, expected_val);
  EXPECT_EQ((int64_t)val.tokens.size(), expected_val);
  EXPECT_EQ(ds.train.num_documents, (int64_t)texts.size() - expected_val);

  const std::vector<int64_t> in_val = val_indices(texts, val);
  std::vector<std::string> rest;
  for (size_t i = 0, v = 0; i < texts.size(); i++) {
    if (v < in_val.size() && in_val[v] == (int64_t)i)
      v++;
    else
      rest.push_back(texts[i]);
  }
  EXPECT_EQ(train.tokens, byte_documents(rest));

  // Evenly spread: consecutive validation documents are total / count apart, give or take one.
  const double spacing = (double)texts.size() / expected_val;
  if (!in_val.empty()) {
    EXPECT_LT(in_val.front(), spacing + 1);
  }
  for (size_t v = 1; v < in_val.size(); v++) {
    EXPECT_GE(in_val[v] - in_val[v - 1], std::floor(spacing)) << "validation documents " << v - 1 << " and " << v;
    EXPECT_LE(in_val[v] - in_val[v - 1], std::ceil(spacing)) << "validation documents " << v - 1 << " and " << v;
  }
  return in_val;
}

TEST(Prepare, ValidationSplitByFraction) {
  const std::vector<std::string> texts = make_documents(1000, 8);
  const std::vector<int64_t> val = check_val_split(texts, 0.1, -1, 100);
  ASSERT_EQ(val.size(), 100u);
  EXPECT_GT(val.back(), 900);                           // reaches the end, not bunched at the start
  check_val_split(make_documents(37, 8), 0.25, -1, 9);  // floor(37 * 0.25)
}

TEST(Prepare, ValidationSplitByCount) {
  const std::vector<std::string> texts = make_documents(1000, 8);
  const std::vector<int64_t> val = check_val_split(texts, 0.5, 7, 7);  // a count overrides the fraction
  ASSERT_EQ(val.size(), 7u);
  EXPECT_GT(val.back(), 800);
  check_val_split(texts, 0, 1, 1);
  check_val_split(texts, 0, 999, 999);
  check_val_split(texts, 0.3, 0, 0);
}

TEST(Prepare, ValidationCountIgnoresEmptyDocuments) {
  // Empty documents are dropped before the split, so a count is exact among the rest.
  TempDir dir;
  std::string lines;
  for (int i = 0; i < 20; i++) lines += text_line(i % 2 ? "" : "doc " + std::to_string(i));
  PrepareOptions o = options({dir.file("in.jsonl", lines)}, dir.path("out"));
  o.val_documents = 4;
  const PrepareSummary sum = prepare_dataset(o);
  EXPECT_EQ(sum.documents, 10);
  EXPECT_EQ(sum.empty_documents, 10);
  EXPECT_EQ(sum.val_documents, 4);
  EXPECT_EQ(Dataset::open(o.output).val.num_documents, 4);
}

// Prepares the same input with `threads` OpenMP threads into `output`.
PrepareSummary prepare_with_threads(PrepareOptions o, const std::string& output, int threads) {
  const int before = omp_get_max_threads();
  omp_set_num_threads(threads);
  o.output = output;
  const PrepareSummary sum = prepare_dataset(o);
  omp_set_num_threads(before);
  return sum;
}

TEST(Prepare, OutputIsIdenticalWhateverTheThreadCount) {
  TempDir dir;
  // A few MB of small documents, in two files, into a dozen or so shards per split.
  const std::vector<std::string> texts = make_documents(4000, 400, 7);
  const std::vector<std::string> half1(texts.begin(), texts.begin() + 2500), half2(texts.begin() + 2500, texts.end());
  PrepareOptions o = options({dir.file("a.jsonl", jsonl_of(half1)), dir.file("b.jsonl", jsonl_of(half2))}, "");
  o.val_fraction = 0.05;
  o.shard_tokens = 250'000;
  const PrepareSummary one = prepare_with_threads(o, dir.path("one"), 1);
  // A second later, so that anything time-dependent in the files would show.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  const PrepareSummary two = prepare_with_threads(o, dir.path("two"), 2);
  EXPECT_GT(one.train_shards, 5);
  EXPECT_GT(one.val_shards, 0);
  EXPECT_EQ(two.train_tokens, one.train_tokens);
  EXPECT_EQ(two.train_shards, one.train_shards);

  // Same tokens first (a clearer failure), then the same bytes.
  const Dataset ds1 = Dataset::open(dir.path("one")), ds2 = Dataset::open(dir.path("two"));
  EXPECT_EQ(read_documents(ds2.train).tokens, read_documents(ds1.train).tokens);
  EXPECT_EQ(read_documents(ds2.val).tokens, read_documents(ds1.val).tokens);
  const auto files1 = directory_contents(dir.path("one")), files2 = directory_contents(dir.path("two"));
  ASSERT_EQ(files1.size(), files2.size());
  EXPECT_EQ(files1.size(), (size_t)(one.train_shards + one.val_shards + 1));
  for (const auto& [name, bytes] : files1) {
    ASSERT_TRUE(files2.count(name)) << name;
    EXPECT_TRUE(files2.at(name) == bytes) << name << " differs between 1 and 2 threads";
  }
}

TEST(Prepare, SummaryAgreesWithTheDataset) {
  TempDir dir;
  const std::vector<std::string> texts = make_documents(300, 30, 3);
  const std::string input = dir.file("in.jsonl", jsonl_of(texts) + text_line(""));
  PrepareOptions o = options({input}, dir.path("out"));
  o.val_fraction = 0.2;
  o.shard_tokens = 2000;
  std::vector<std::pair<int64_t, int64_t>> progress;
  const PrepareSummary sum = prepare_dataset(o, [&](int64_t done, int64_t total) {
    progress.push_back({done, total});
  });
  const Dataset ds = Dataset::open(o.output);

  EXPECT_EQ(sum.documents, 300);
  EXPECT_EQ(sum.empty_documents, 1);
  EXPECT_EQ(sum.val_documents, 60);
  EXPECT_EQ(sum.documents, ds.train.num_documents + ds.val.num_documents);
  EXPECT_EQ(sum.val_documents, ds.val.num_documents);
  EXPECT_EQ(sum.train_tokens, ds.train.num_tokens);
  EXPECT_EQ(sum.val_tokens, ds.val.num_tokens);
  EXPECT_EQ(sum.train_shards, (int)ds.train.shards.size());
  EXPECT_EQ(sum.val_shards, (int)ds.val.shards.size());
  int64_t all_tokens = 0;
  for (const std::string& t : texts) all_tokens += (int64_t)t.size() + 1;
  EXPECT_EQ(sum.train_tokens + sum.val_tokens, all_tokens);
  EXPECT_EQ(sum.input_bytes, (int64_t)fs::file_size(input));
  int64_t output_bytes = 0;
  for (const auto& entry : fs::directory_iterator(o.output)) output_bytes += (int64_t)entry.file_size();
  EXPECT_EQ(sum.output_bytes, output_bytes);
  EXPECT_GE(sum.seconds, 0);
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.back().second, sum.input_bytes);
  EXPECT_EQ(progress.back().first, sum.input_bytes);
}

// The GPT-2 vocabulary kiln ships (data/vocab/gpt2), by path.
const std::string kGpt2Dir = std::string(KILN_SOURCE_DIR) + "/data/vocab/gpt2";

TEST(Prepare, GPT2Tokenizer) {
  TempDir dir;
  const std::vector<std::string> texts = {"Hello world, this is kiln.", "  Indented\n\nparagraphs 12345!",
                                          "caf\xc3\xa9 \xe2\x82\xac"};
  PrepareOptions o = options({dir.file("in.jsonl", jsonl_of(texts))}, dir.path("out"));
  o.tokenizer = "gpt2";  // no directory: the bundled vocabulary, recorded by fingerprint only
  prepare_dataset(o);
  const Dataset ds = Dataset::open(o.output);
  EXPECT_FALSE(fs::exists(o.output + "/encoder.json"));
  const std::unique_ptr<Tokenizer> tok = make_tokenizer("gpt2", kGpt2Dir);
  EXPECT_EQ(ds.tokenizer_name, "gpt2");
  EXPECT_EQ(ds.meta.tokenizer, tok->fingerprint());
  EXPECT_EQ(ds.meta.vocab_size, 50257);
  EXPECT_EQ(ds.meta.eot_token, 50256);
  const Documents docs = read_documents(ds.train);
  ASSERT_EQ(docs.tokens.size(), texts.size());
  for (size_t i = 0; i < texts.size(); i++) {
    ASSERT_FALSE(docs.tokens[i].empty());
    EXPECT_EQ(docs.tokens[i].back(), 50256);
    EXPECT_LT(docs.tokens[i].size(), texts[i].size() + 1) << "BPE should merge some bytes";
    const std::vector<int32_t> body(docs.tokens[i].begin(), docs.tokens[i].end() - 1);
    EXPECT_EQ(tok->decode(body), texts[i]);
  }
}

// Files given with --tokenizer-dir travel with the dataset (a copy of each), so that it decodes
// with nothing else at hand.
TEST(Prepare, GPT2TokenizerFilesTravelWithTheDataset) {
  TempDir dir;
  PrepareOptions o = options({dir.file("in.txt", "Hello world")}, dir.path("out"));
  o.tokenizer = "gpt2";
  o.tokenizer_dir = kGpt2Dir;
  prepare_dataset(o);
  EXPECT_EQ(read_file(o.output + "/encoder.json"), read_file(kGpt2Dir + "/encoder.json"));
  EXPECT_EQ(read_file(o.output + "/vocab.bpe"), read_file(kGpt2Dir + "/vocab.bpe"));
  const Dataset ds = Dataset::open(o.output);
  EXPECT_EQ(tokenizer_matching("gpt2", ds.meta.tokenizer, ds.dir, ds.dir)->decode(std::vector<int32_t>{15496}),
            "Hello");
}

TEST(Prepare, GPT2TokensAreIdenticalWhateverTheThreadCount) {
  // The GPT-2 tokenizer shares a cache between threads: many short, repetitive documents exercise it.
  TempDir dir;
  const std::vector<std::string> texts = make_documents(3000, 60, 11);
  PrepareOptions o = options({dir.file("in.jsonl", jsonl_of(texts))}, "");
  o.tokenizer = "gpt2";
  o.tokenizer_dir = kGpt2Dir;
  prepare_with_threads(o, dir.path("one"), 1);
  prepare_with_threads(o, dir.path("four"), 4);
  const Dataset one = Dataset::open(dir.path("one")), four = Dataset::open(dir.path("four"));
  const Documents docs = read_documents(one.train);
  EXPECT_EQ(read_documents(four.train).tokens, docs.tokens);
  const std::unique_ptr<Tokenizer> tok = make_tokenizer("gpt2", kGpt2Dir);
  ASSERT_EQ(docs.tokens.size(), texts.size());
  for (size_t i = 0; i < texts.size(); i += 97) {
    std::vector<int32_t> expected = tok->encode(texts[i]);
    expected.push_back(tok->eot_token());
    EXPECT_EQ(docs.tokens[i], expected) << "document " << i;
  }
}

// ---- errors --------------------------------------------------------------------------------------

// An existing OUTPUT with a file in it, to check a failed run leaves it as it was.
std::string make_existing_output(const TempDir& dir) {
  const std::string out = dir.path("out");
  fs::create_directories(out);
  std::ofstream(out + "/keep.txt") << "precious";
  return out;
}

::testing::AssertionResult untouched(const std::string& out) {
  if (directory_contents(out) != std::map<std::string, std::string>{{"keep.txt", "precious"}})
    return ::testing::AssertionFailure() << out << " was changed";
  return no_leftovers(out);
}

TEST(PrepareErrors, ExistingOutputNeedsForce) {
  TempDir dir;
  const std::string input = dir.file("in.txt", "some text");
  const std::string out = make_existing_output(dir);
  EXPECT_TRUE(mentions(error_of([&] { prepare_dataset(options({input}, out)); }), {out, "already exists", "--force"}));
  EXPECT_TRUE(untouched(out));

  PrepareOptions forced = options({input}, out);
  forced.force = true;
  prepare_dataset(forced);
  EXPECT_FALSE(fs::exists(out + "/keep.txt"));
  EXPECT_EQ(read_documents(Dataset::open(out).train).tokens, byte_documents({"some text"}));
  EXPECT_TRUE(no_leftovers(out));
}

// Runs prepare on `o`, expecting it to fail with a message containing `parts`; checks that it leaves
// no OUTPUT behind, and, run again with --force over an existing OUTPUT, that it leaves that intact.
void expect_failure(const TempDir& dir, PrepareOptions o, std::initializer_list<std::string> parts) {
  o.output = dir.path("fresh");
  EXPECT_TRUE(mentions(error_of([&] { prepare_dataset(o); }), parts));
  EXPECT_FALSE(fs::exists(o.output));
  EXPECT_TRUE(no_leftovers(o.output));

  o.output = make_existing_output(dir);
  o.force = true;
  EXPECT_TRUE(mentions(error_of([&] { prepare_dataset(o); }), parts));
  EXPECT_TRUE(untouched(o.output));
  fs::remove_all(o.output);
}

TEST(PrepareErrors, InputFilesAreNamed) {
  TempDir dir;
  const std::string good = dir.file("good.txt", "text");
  const std::string missing = dir.path("missing.txt");
  expect_failure(dir, options({good, missing}, ""), {missing, "not found"});
  expect_failure(dir, options({good, dir.path("")}, ""), {dir.path("")});  // a directory, not a file
  expect_failure(dir, options({}, ""), {"no input files"});
}

TEST(PrepareErrors, BadJsonlLinesAreNamedByFileAndLine) {
  TempDir dir;
  auto jsonl = [&](const std::string& name, const std::string& lines) {
    return options({dir.file("ok.jsonl", text_line("fine")), dir.file(name, lines)}, "");
  };
  const std::string broken = dir.path("broken.jsonl"), no_text = dir.path("no_text.jsonl"),
                    not_string = dir.path("not_string.jsonl"), half_pair = dir.path("half_pair.jsonl");
  expect_failure(dir, jsonl("broken.jsonl", text_line("a") + "\n" + "{\"text\": \"unterminated}\n"),
                 {broken + ":3:", "not valid JSON"});
  expect_failure(dir, jsonl("no_text.jsonl", text_line("a") + json{{"title", "x"}}.dump() + "\n"),
                 {no_text + ":2:", "'text'", "'prompt'", "'response'"});
  expect_failure(dir, jsonl("not_string.jsonl", "{\"text\": 5}\n"), {not_string + ":1:", "'text'", "not a string"});
  expect_failure(dir, jsonl("half_pair.jsonl", json{{"prompt", "x"}}.dump() + "\n"), {half_pair + ":1:"});
  expect_failure(dir, jsonl("array.jsonl", "[1, 2]\n"), {dir.path("array.jsonl") + ":1:"});
}

TEST(PrepareErrors, TextAndPromptResponseDoNotMix) {
  TempDir dir;
  const std::string mixed = dir.file("mixed.jsonl", text_line("a") + text_line("b") + pair_line("q", "a"));
  expect_failure(dir, options({mixed}, ""), {mixed + ":3:", "mixes"});
  const std::string pairs_first = dir.file("pairs_first.jsonl", pair_line("q", "a") + text_line("b"));
  expect_failure(dir, options({pairs_first}, ""), {pairs_first + ":2:", "mixes"});
  // Across files: a text file, then prompt/response pairs.
  const std::string text = dir.file("plain.txt", "plain text"), pairs = dir.file("pairs.jsonl", pair_line("q", "a"));
  expect_failure(dir, options({text, pairs}, ""), {pairs + ":1:", "mixes"});
}

TEST(PrepareErrors, BadOptions) {
  TempDir dir;
  const std::string input = dir.file("in.jsonl", jsonl_of(make_documents(5, 3)));
  PrepareOptions too_many = options({input}, "");
  too_many.val_documents = 5;
  expect_failure(dir, too_many, {"5", "only 5 documents"});
  PrepareOptions fraction = options({input}, "");
  fraction.val_fraction = 1.0;
  expect_failure(dir, fraction, {"val-fraction"});
  fraction.val_fraction = std::nan("");
  expect_failure(dir, fraction, {"--val-fraction nan: expected 0 <= f < 1"});
  for (int level : {-1, 10}) {
    PrepareOptions gzip = options({input}, "");
    gzip.gzip_level = level;
    expect_failure(dir, gzip, {"--gzip " + std::to_string(level) + ": expected 0 (uncompressed) to 9"});
  }
  PrepareOptions format = options({input}, "");
  format.format = "csv";
  expect_failure(dir, format, {"csv"});
  PrepareOptions tokenizer = options({input}, "");
  tokenizer.tokenizer = "sentencepiece";
  expect_failure(dir, tokenizer, {"sentencepiece", "bytes", "gpt2"});
  PrepareOptions shard_tokens = options({input}, "");
  shard_tokens.shard_tokens = 0;
  expect_failure(dir, shard_tokens, {"shard-tokens"});
  PrepareOptions no_output = options({input}, "");
  EXPECT_TRUE(mentions(error_of([&] { prepare_dataset(no_output); }), {"output"}));
}

TEST(PrepareErrors, NothingToTrainOn) {
  TempDir dir;
  expect_failure(dir, options({dir.file("empty.jsonl", text_line("") + "\n")}, ""), {"no training documents"});
  expect_failure(dir, options({dir.file("empty.txt", "")}, ""), {"no training documents"});
}

}  // namespace
}  // namespace kiln
