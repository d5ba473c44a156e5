// HDF5 token shards and dataset directories: write_shard / ShardReader round trips, and every way a
// shard or dataset.json can be wrong, each reported with the file and the field at fault.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "data/dataset.h"
#include "data/file_checksum.h"
#include "data/h5.h"
#include "data/shard.h"
#include "tests/test_util.h"

namespace kiln {
namespace {

using namespace kiln::test;  // TempDir, error_of, mentions, read_file

namespace fs = std::filesystem;
using nlohmann::json;

// Whether `message` contains every one of `parts`; on failure, says which one is missing.
TokenizerMeta test_meta(int64_t vocab_size) { return {"test-tokenizer:0123", vocab_size, vocab_size - 1}; }

// n tokens spread over the whole vocabulary, documents starting at `doc_offsets`, and (if asked) a
// loss mask that is 1 on every third token.
ShardData make_data(int64_t n, int64_t vocab_size, std::vector<int64_t> doc_offsets, bool with_mask) {
  ShardData d;
  for (int64_t i = 0; i < n; i++) d.tokens.push_back((int32_t)((i * 7919 + 13) % vocab_size));
  d.doc_offsets = std::move(doc_offsets);
  if (with_mask)
    for (int64_t i = 0; i < n; i++) d.loss_mask.push_back(i % 3 == 0);
  return d;
}

// A shard file written field by field with h5::File, independently of write_shard, so that each
// field can be made wrong on its own. The defaults describe a valid shard for test_meta(257).
struct RawShard {
  std::vector<int32_t> tokens = std::vector<int32_t>(100, 7);
  hid_t token_type = H5T_STD_U16LE;
  std::vector<int64_t> doc_offsets = {0, 40};
  std::vector<uint8_t> loss_mask;  // written when not empty
  std::string format = "kiln-tokens";
  int64_t format_version = 1;
  TokenizerMeta meta = test_meta(257);
  std::optional<int64_t> num_tokens, num_documents;  // default: the sizes of tokens / doc_offsets
  std::set<std::string> omit;                        // attributes to leave out

  void write(const std::string& path) const {
    h5::File f = h5::File::create(path);
    f.write<int32_t>("tokens", tokens, token_type);
    f.write<int64_t>("doc_offsets", doc_offsets, H5T_STD_I64LE);
    if (!loss_mask.empty()) f.write<uint8_t>("loss_mask", loss_mask, H5T_STD_U8LE);
    auto text = [&](const std::string& name, const std::string& value) {
      if (!omit.count(name)) f.set_attribute(name, value);
    };
    auto number = [&](const std::string& name, int64_t value) {
      if (!omit.count(name)) f.set_attribute<int64_t>(name, value);
    };
    text("format", format);
    number("format_version", format_version);
    number("vocab_size", meta.vocab_size);
    text("tokenizer", meta.tokenizer);
    number("eot_token", meta.eot_token);
    number("num_tokens", num_tokens.value_or((int64_t)tokens.size()));
    number("num_documents", num_documents.value_or((int64_t)doc_offsets.size()));
  }
};

// The error ShardReader gives for `raw` when the dataset expects `expected`.
std::string reader_error(const TempDir& dir, const RawShard& raw, const TokenizerMeta& expected = test_meta(257)) {
  const std::string path = dir.path("raw.h5");
  raw.write(path);
  return error_of([&] { ShardReader reader(path, expected); });
}

std::vector<int32_t> read_tokens(const ShardReader& r, int64_t offset, int64_t count) {
  std::vector<int32_t> out(count);
  r.read_tokens(offset, out);
  return out;
}

std::vector<uint8_t> read_mask(const ShardReader& r, int64_t offset, int64_t count) {
  std::vector<uint8_t> out(count);
  r.read_loss_mask(offset, out);
  return out;
}

template <class T>
std::vector<T> slice(const std::vector<T>& v, int64_t offset, int64_t count) {
  return std::vector<T>(v.begin() + offset, v.begin() + offset + count);
}

// Writes `data`, reads it back through ShardReader and h5::File, and checks it all.
void check_round_trip(int64_t vocab_size, size_t expected_token_bytes, bool with_mask, int gzip_level = 0,
                      int64_t n = 1000) {
  SCOPED_TRACE("vocab " + std::to_string(vocab_size) + (with_mask ? ", with mask" : ", no mask") + ", gzip " +
               std::to_string(gzip_level) + ", " + std::to_string(n) + " tokens");
  TempDir dir;
  const std::string path = dir.path("shard.h5");
  const ShardData data = make_data(n, vocab_size, {0, 1, n / 3, n - 2}, with_mask);
  const TokenizerMeta meta = test_meta(vocab_size);
  write_shard(path, data, meta, gzip_level);

  const h5::File f = h5::File::open_read(path);
  const h5::DatasetInfo tokens = f.info("tokens");
  EXPECT_TRUE(tokens.is_integer);
  EXPECT_FALSE(tokens.is_signed);
  EXPECT_EQ(tokens.element_size, expected_token_bytes);
  EXPECT_EQ(tokens.shape, std::vector<int64_t>{n});
  EXPECT_EQ(f.string_attribute("/", "format"), "kiln-tokens");
  EXPECT_EQ(f.attribute<int64_t>("/", "format_version"), 1);
  EXPECT_EQ(f.attribute<int64_t>("/", "vocab_size"), vocab_size);
  EXPECT_EQ(f.string_attribute("/", "tokenizer"), meta.tokenizer);
  EXPECT_EQ(f.attribute<int64_t>("/", "eot_token"), meta.eot_token);
  EXPECT_EQ(f.attribute<int64_t>("/", "num_tokens"), n);
  EXPECT_EQ(f.attribute<int64_t>("/", "num_documents"), 4);
  EXPECT_EQ(f.has("loss_mask"), with_mask);

  const ShardReader r(path, meta);
  EXPECT_EQ(r.path(), path);
  EXPECT_EQ(r.num_tokens(), n);
  EXPECT_EQ(r.num_documents(), 4);
  EXPECT_EQ(r.has_loss_mask(), with_mask);
  EXPECT_EQ(r.doc_offsets(), data.doc_offsets);
  EXPECT_EQ(read_tokens(r, 0, n), data.tokens);
  for (auto [offset, count] : {std::pair<int64_t, int64_t>{0, 1}, {1, 5}, {n / 2 - 3, 17}, {n - 3, 3}, {n - 1, 1}}) {
    EXPECT_EQ(read_tokens(r, offset, count), slice(data.tokens, offset, count)) << "at " << offset;
    if (with_mask) {
      EXPECT_EQ(read_mask(r, offset, count), slice(data.loss_mask, offset, count)) << "at " << offset;
    }
  }
  // Reads past the end fail, naming the file.
  EXPECT_TRUE(mentions(error_of([&] { read_tokens(r, n - 2, 3); }), {path, "tokens"}));
}

TEST(Shard, RoundTripSmallVocabularyStoresUint16) {
  check_round_trip(257, 2, false);
  check_round_trip(257, 2, true);
  check_round_trip(65536, 2, false);  // the largest vocabulary whose ids fit 16 bits
}

TEST(Shard, RoundTripLargeVocabularyStoresUint32) {
  check_round_trip(65537, 4, false);
  check_round_trip(70000, 4, true);
}

TEST(Shard, RoundTripCompressedAcrossChunks) {
  // More than one HDF5 chunk, so ranges straddle a chunk boundary, and gzip on.
  check_round_trip(257, 2, true, 6, kShardChunkTokens + 4321);
  check_round_trip(70000, 4, false, 1, kShardChunkTokens + 4321);
}

TEST(Shard, UnreadableFilesNameThePath) {
  TempDir dir;
  const TokenizerMeta meta = test_meta(257);
  const std::string missing = dir.path("missing.h5");
  EXPECT_TRUE(mentions(error_of([&] { ShardReader r(missing, meta); }), {missing, "cannot open"}));

  const std::string garbage = dir.file("garbage.h5", std::string(4096, 'x') + "this is not an HDF5 file");
  EXPECT_TRUE(mentions(error_of([&] { ShardReader r(garbage, meta); }), {garbage, "cannot open"}));

  const std::string truncated = dir.path("truncated.h5");
  write_shard(truncated, make_data(100000, 257, {0}, true), meta);
  ASSERT_NO_THROW(ShardReader(truncated, meta));
  fs::resize_file(truncated, fs::file_size(truncated) / 2);
  EXPECT_TRUE(mentions(error_of([&] { ShardReader r(truncated, meta); }), {truncated}));
}

TEST(Shard, RawWriterMakesValidShards) {  // so the failures below are due to the one field changed
  TempDir dir;
  EXPECT_EQ(reader_error(dir, RawShard{}), "(no error)");
  RawShard with_mask;
  with_mask.loss_mask.assign(with_mask.tokens.size(), 1);
  EXPECT_EQ(reader_error(dir, with_mask), "(no error)");
}

TEST(Shard, HeaderErrorsNameTheFileAndField) {
  TempDir dir;
  const std::string path = dir.path("raw.h5");

  RawShard format;
  format.format = "npy-tokens";
  EXPECT_TRUE(mentions(reader_error(dir, format), {path, "format", "npy-tokens", "kiln-tokens"}));

  RawShard version;
  version.format_version = 2;
  EXPECT_TRUE(mentions(reader_error(dir, version), {path, "format_version", "2"}));

  RawShard vocab;  // a shard written for another vocabulary
  EXPECT_TRUE(mentions(reader_error(dir, vocab, test_meta(300)), {path, "vocab_size", "257", "300"}));

  RawShard tokenizer;
  tokenizer.meta.tokenizer = "gpt2:fnv1a64:aaaaaaaaaaaaaaaa";
  TokenizerMeta expected = test_meta(257);
  expected.tokenizer = "gpt2:fnv1a64:bbbbbbbbbbbbbbbb";
  EXPECT_TRUE(mentions(reader_error(dir, tokenizer, expected),
                       {path, "tokenizer", "gpt2:fnv1a64:aaaaaaaaaaaaaaaa", "gpt2:fnv1a64:bbbbbbbbbbbbbbbb"}));

  RawShard eot;
  eot.meta.eot_token = 0;
  EXPECT_TRUE(mentions(reader_error(dir, eot), {path, "eot_token", "256"}));

  for (const std::string attribute :
       {"format", "format_version", "vocab_size", "tokenizer", "eot_token", "num_tokens", "num_documents"}) {
    RawShard missing;
    missing.omit = {attribute};
    EXPECT_TRUE(mentions(reader_error(dir, missing), {path, "'" + attribute + "'"}));
  }
}

TEST(Shard, TokenDtypeMustMatchTheVocabulary) {
  TempDir dir;
  const std::string path = dir.path("raw.h5");
  RawShard wide;  // uint32 for a vocabulary that fits uint16
  wide.token_type = H5T_STD_U32LE;
  EXPECT_TRUE(mentions(reader_error(dir, wide), {path, "tokens", "32", "uint16"}));

  RawShard narrow;  // uint16 for a vocabulary that needs uint32
  narrow.meta = test_meta(70000);
  EXPECT_TRUE(mentions(reader_error(dir, narrow, test_meta(70000)), {path, "tokens", "16", "uint32"}));

  RawShard is_signed;
  is_signed.token_type = H5T_STD_I16LE;
  EXPECT_TRUE(mentions(reader_error(dir, is_signed), {path, "tokens", "signed"}));

  RawShard floats;
  floats.token_type = H5T_IEEE_F32LE;
  EXPECT_TRUE(mentions(reader_error(dir, floats), {path, "tokens"}));
}

// A token id outside the vocabulary (a flipped bit, a shard written for another vocabulary) stops
// the read, naming the shard and the offset, instead of training on a zero embedding.
TEST(Shard, TokenIdsOutsideTheVocabularyAreRefused) {
  TempDir dir;
  const std::string path = dir.path("shard.h5");
  ShardData data = make_data(100, 257, {0}, false);
  data.tokens[42] = 300;  // fits uint16, outside a 257-token vocabulary
  write_shard(path, data, test_meta(257));
  const ShardReader r(path, test_meta(257));
  EXPECT_EQ(read_tokens(r, 0, 40), slice(data.tokens, 0, 40));  // the sound part reads
  const std::string e = error_of([&] { read_tokens(r, 40, 5); });
  EXPECT_TRUE(mentions(e, {path, "tokens: id 300 at offset 42 is outside the vocabulary (0..256)", "corrupt"})) << e;
}

TEST(Shard, SizesMustAgreeWithTheAttributes) {
  TempDir dir;
  const std::string path = dir.path("raw.h5");
  RawShard tokens;
  tokens.num_tokens = 101;
  EXPECT_TRUE(mentions(reader_error(dir, tokens), {path, "tokens", "100", "num_tokens", "101"}));

  RawShard documents;
  documents.num_documents = 3;
  EXPECT_TRUE(mentions(reader_error(dir, documents), {path, "doc_offsets", "num_documents", "3"}));

  RawShard mask;
  mask.loss_mask.assign(99, 1);
  EXPECT_TRUE(mentions(reader_error(dir, mask), {path, "loss_mask", "99"}));

  RawShard empty;
  empty.tokens.clear();
  empty.doc_offsets.clear();
  EXPECT_TRUE(mentions(reader_error(dir, empty), {path, "num_tokens", "empty"}));

  // The same through write_shard.
  write_shard(path, ShardData{}, test_meta(257));
  EXPECT_TRUE(mentions(error_of([&] { ShardReader r(path, test_meta(257)); }), {path, "num_tokens", "empty"}));
}

// A dataset directory: train shards of the given sizes (and val shards), written with write_shard
// and described by write_dataset_json, as kiln prepare would.
void write_dataset(const TempDir& dir, const std::vector<int64_t>& train_sizes, const std::vector<int64_t>& val_sizes,
                   bool with_mask = false, const TokenizerMeta& meta = test_meta(257)) {
  auto split = [&](const std::string& name, const std::vector<int64_t>& sizes) {
    std::vector<ShardEntry> entries;
    for (size_t i = 0; i < sizes.size(); i++) {
      const std::string file = name + "_" + std::to_string(i) + ".h5";
      const ShardData data = make_data(sizes[i], meta.vocab_size, {0, sizes[i] / 2}, with_mask);
      write_shard(dir.path(file), data, meta);
      entries.push_back({file, sizes[i], 2, file_checksum(dir.path(file))});
    }
    return entries;
  };
  write_dataset_json(dir.str(), "bytes", meta, with_mask, split("train", train_sizes), split("val", val_sizes));
}

json read_json(const std::string& path) { return json::parse(std::ifstream(path)); }
void write_json(const std::string& path, const json& doc) { std::ofstream(path) << doc.dump(2); }

// Changes dataset.json in `dir` with `edit`, then returns the error Dataset::open gives.
std::string open_error_after(const TempDir& dir, const std::function<void(json&)>& edit) {
  const std::string path = dir.path("dataset.json");
  const json original = read_json(path);
  json doc = original;
  edit(doc);
  write_json(path, doc);
  const std::string error = error_of([&] { Dataset::open(dir.str()); });
  write_json(path, original);
  return error;
}

TEST(Dataset, OpenReadsBackWhatWasWritten) {
  TempDir dir;
  write_dataset(dir, {100, 250, 7}, {30}, true);
  const Dataset ds = Dataset::open(dir.str());
  EXPECT_EQ(ds.dir, dir.str());
  EXPECT_EQ(ds.tokenizer_name, "bytes");
  EXPECT_EQ(ds.meta.tokenizer, test_meta(257).tokenizer);
  EXPECT_EQ(ds.meta.vocab_size, 257);
  EXPECT_EQ(ds.meta.eot_token, 256);
  EXPECT_TRUE(ds.has_loss_mask);
  EXPECT_EQ(ds.train.name, "train");
  EXPECT_EQ(ds.val.name, "val");
  EXPECT_EQ(ds.train.num_tokens, 100 + 250 + 7);
  EXPECT_EQ(ds.train.num_documents, 3 * 2);
  EXPECT_EQ(ds.val.num_tokens, 30);
  EXPECT_EQ(ds.val.num_documents, 2);
  ASSERT_EQ(ds.train.shards.size(), 3u);
  ASSERT_EQ(ds.val.shards.size(), 1u);
  EXPECT_EQ(ds.train.shards[1]->path(), dir.path("train_1.h5"));
  EXPECT_EQ(ds.train.shards[1]->num_tokens(), 250);
  EXPECT_EQ(read_tokens(*ds.train.shards[1], 0, 250), make_data(250, 257, {}, false).tokens);

  const json doc = read_json(dir.path("dataset.json"));
  EXPECT_EQ(doc["format"], "kiln-tokens");
  EXPECT_EQ(doc["format_version"], 1);
  EXPECT_EQ(doc["splits"]["train"]["shards"][2]["file"], "train_2.h5");
  EXPECT_EQ(doc["splits"]["train"]["shards"][2]["num_tokens"], 7);
}

TEST(Dataset, EmptyValidationSplitIsFine) {
  TempDir dir;
  write_dataset(dir, {100}, {});
  const Dataset ds = Dataset::open(dir.str());
  EXPECT_EQ(ds.val.num_tokens, 0);
  EXPECT_TRUE(ds.val.shards.empty());
  EXPECT_FALSE(ds.has_loss_mask);
}

TEST(Dataset, MissingOrUnparsableDirectory) {
  TempDir dir;
  const std::string missing = dir.path("nope");
  EXPECT_TRUE(mentions(error_of([&] { Dataset::open(missing); }), {missing, "not found"}));

  const std::string empty = dir.path("empty");
  fs::create_directories(empty);
  EXPECT_TRUE(mentions(error_of([&] { Dataset::open(empty); }), {empty + "/dataset.json", "not found"}));

  const std::string broken = dir.path("broken");
  fs::create_directories(broken);
  std::ofstream(broken + "/dataset.json") << "{\"format\": \"kiln-tokens\", ";
  EXPECT_TRUE(mentions(error_of([&] { Dataset::open(broken); }), {broken + "/dataset.json", "not valid JSON"}));
}

TEST(Dataset, BadFieldsAreNamed) {
  TempDir dir;
  write_dataset(dir, {100, 50}, {20});
  const std::string json_path = dir.path("dataset.json");
  ASSERT_NO_THROW(Dataset::open(dir.str()));

  for (const std::string field : {"format", "format_version", "tokenizer", "tokenizer_name", "vocab_size", "eot_token",
                                  "has_loss_mask", "splits"})
    EXPECT_TRUE(
        mentions(open_error_after(dir, [&](json& d) { d.erase(field); }), {json_path, "'" + field + "'", "missing"}));
  EXPECT_TRUE(mentions(open_error_after(dir, [](json& d) { d["splits"].erase("val"); }), {json_path, "splits.val"}));
  EXPECT_TRUE(mentions(open_error_after(dir, [](json& d) { d["splits"]["train"]["shards"][1].erase("file"); }),
                       {json_path, "splits.train.shards[1].file"}));
  EXPECT_TRUE(mentions(open_error_after(dir, [](json& d) { d["vocab_size"] = "many"; }),
                       {json_path, "vocab_size", "wrong type"}));
  EXPECT_TRUE(mentions(open_error_after(dir, [](json& d) { d["format"] = "other"; }), {json_path, "format", "other"}));
  EXPECT_TRUE(
      mentions(open_error_after(dir, [](json& d) { d["format_version"] = 9; }), {json_path, "format_version", "9"}));
  EXPECT_TRUE(mentions(open_error_after(dir, [](json& d) { d["splits"]["train"]["num_tokens"] = 151; }),
                       {json_path, "splits.train.num_tokens", "151", "150"}));
  EXPECT_TRUE(mentions(
      open_error_after(dir,
                       [](json& d) {
                         d["splits"]["train"] = {{"num_tokens", 0}, {"num_documents", 0}, {"shards", json::array()}};
                       }),
      {json_path, "train split is empty"}));
}

TEST(Dataset, ShardsAreCheckedAgainstTheListing) {
  TempDir dir;
  write_dataset(dir, {100, 50}, {20});
  const std::string json_path = dir.path("dataset.json");

  // The listing's count is off: the message names the shard, dataset.json and the entry.
  EXPECT_TRUE(mentions(open_error_after(dir, [](json& d) { d["splits"]["train"]["shards"][1]["num_tokens"] = 51; }),
                       {dir.path("train_1.h5"), "50", json_path, "51", "splits.train.shards[1].num_tokens"}));
  // dataset.json's tokenizer disagrees with the shards'.
  EXPECT_TRUE(mentions(open_error_after(dir, [](json& d) { d["vocab_size"] = 50257; }),
                       {dir.path("train_0.h5"), "vocab_size", "257", "50257"}));
  EXPECT_TRUE(mentions(open_error_after(dir, [](json& d) { d["tokenizer"] = "bytes"; }),
                       {dir.path("train_0.h5"), "tokenizer", "bytes"}));

  // A listed shard is gone.
  fs::remove(dir.path("val_0.h5"));
  EXPECT_TRUE(mentions(error_of([&] { Dataset::open(dir.str()); }), {dir.path("val_0.h5")}));
}

TEST(Dataset, ListingsAreReconciledWithTheShards) {
  TempDir dir;
  write_dataset(dir, {100, 50}, {20});
  const std::string json_path = dir.path("dataset.json");
  EXPECT_TRUE(mentions(open_error_after(dir, [](json& d) { d["splits"]["train"]["shards"][0]["num_documents"] = 3; }),
                       {dir.path("train_0.h5"), "2 documents", json_path, "splits.train.shards[0].num_documents"}));
  EXPECT_TRUE(mentions(open_error_after(dir, [](json& d) { d["splits"]["val"]["num_documents"] = 7; }),
                       {json_path, "splits.val.num_documents is 7", "hold 2"}));
  // A listed file outside the directory, or listed twice (its tokens would count double).
  EXPECT_TRUE(mentions(open_error_after(dir, [](json& d) { d["splits"]["val"]["shards"][0]["file"] = "../val_0.h5"; }),
                       {json_path, "splits.val.shards[0].file", "../val_0.h5", "inside the dataset directory"}));
  EXPECT_TRUE(mentions(
      open_error_after(dir, [](json& d) { d["splits"]["train"]["shards"][1] = d["splits"]["train"]["shards"][0]; }),
      {json_path, "splits.train.shards[1].file", "train_0.h5", "listed twice"}));
  EXPECT_TRUE(mentions(open_error_after(dir, [](json& d) { d["splits"]["train"]["shards"] = "train_0.h5"; }),
                       {json_path, "splits.train.shards", "not a list"}));
  // The size on disk against the one recorded at prepare time: a truncated copy is caught at open.
  const std::string shard = dir.path("train_1.h5");
  const auto size = fs::file_size(shard);
  fs::resize_file(shard, size - 100);
  EXPECT_TRUE(mentions(error_of([&] { Dataset::open(dir.str()); }),
                       {shard, std::to_string(size - 100) + " bytes", json_path, std::to_string(size),
                        "splits.train.shards[1].bytes", "truncated"}));
}

TEST(Dataset, VerifyingChecksumsCatchesAFlippedBit) {
  TempDir dir;
  write_dataset(dir, {1000, 50}, {20});
  const std::string json_path = dir.path("dataset.json");
  const Dataset sound = Dataset::open(dir.str(), DataCheck::checksums);
  EXPECT_EQ(sound.train.bytes,
            (int64_t)(fs::file_size(dir.path("train_0.h5")) + fs::file_size(dir.path("train_1.h5"))));
  // One bit in the middle of the first shard. Any byte will do: the checksum is checked before
  // HDF5 reads the file, so the message is the same wherever the damage is.
  const std::string shard = dir.path("train_0.h5");
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    const auto middle = (std::streamoff)(fs::file_size(shard) / 2);
    f.seekg(middle);
    const char c = (char)f.get();
    f.seekp(middle);
    f.put((char)(c ^ 0x10));
  }
  EXPECT_TRUE(mentions(error_of([&] { Dataset::open(dir.str(), DataCheck::checksums); }),
                       {shard, "checksum", json_path, "splits.train.shards[0].fnv1a", "damaged"}));
  // A dataset.json without checksums (an older kiln's) opens, but cannot be verified.
  const std::string error = open_error_after(dir, [](json& d) {
    for (json& e : d["splits"]["train"]["shards"]) e.erase("fnv1a");
  });
  EXPECT_EQ(error, "(no error)");
  json doc = read_json(json_path);
  for (json& e : doc["splits"]["train"]["shards"]) e.erase("fnv1a");
  write_json(json_path, doc);
  EXPECT_TRUE(mentions(error_of([&] { Dataset::open(dir.str(), DataCheck::checksums); }),
                       {json_path, "splits.train.shards[0]", "no checksum", "prepare it again"}));
}

TEST(Dataset, VerifyingChecksDocumentOffsets) {
  TempDir dir;
  const TokenizerMeta meta = test_meta(257);
  write_shard(dir.path("train_0.h5"), make_data(100, 257, {0, 60, 40}, false), meta);
  write_dataset_json(dir.str(), "bytes", meta, false, {{"train_0.h5", 100, 3, file_checksum(dir.path("train_0.h5"))}},
                     {});
  ASSERT_NO_THROW(Dataset::open(dir.str()));  // the offsets are read only when verifying
  EXPECT_TRUE(mentions(error_of([&] { Dataset::open(dir.str(), DataCheck::checksums); }),
                       {dir.path("train_0.h5"), "doc_offsets[2] is 40", "corrupt"}));
}

TEST(Dataset, ShardsMustAgreeAboutTheLossMask) {
  // dataset.json promises a loss mask the shards do not have (or the other way round): the loader would
  // silently train on every token, or fail mid-run, so open() must refuse it.
  TempDir with_mask, without_mask;
  write_dataset(with_mask, {100}, {}, true);
  write_dataset(without_mask, {100}, {}, false);
  EXPECT_TRUE(mentions(open_error_after(without_mask, [](json& d) { d["has_loss_mask"] = true; }),
                       {without_mask.path("train_0.h5"), "loss_mask"}));
  EXPECT_TRUE(mentions(open_error_after(with_mask, [](json& d) { d["has_loss_mask"] = false; }),
                       {with_mask.path("train_0.h5"), "loss_mask"}));
}

}  // namespace
}  // namespace kiln
