// The training data loader: the permutation, how sequences are cut from shards, epochs, the data-
// parallel split of each global batch, resuming from a saved state, validation passes and loss masks.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <memory>
#include <set>

#include "data/dataset.h"
#include "data/loader.h"
#include "data/shard.h"
#include "tests/test_util.h"

namespace kiln {
namespace {

using namespace kiln::test;  // TempDir, error_of, mentions, read_file

namespace fs = std::filesystem;

// ---- permute ---------------------------------------------------------------------------------

std::vector<int64_t> permutation(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> out(n);
  for (int64_t i = 0; i < n; i++) out[i] = permute(i, n, seed, epoch);
  return out;
}

TEST(Permute, IsABijection) {
  for (int64_t n : {1, 2, 3, 4, 7, 8, 100, 1000, 4096, 4097, 100003}) {
    for (auto [seed, epoch] : {std::pair<uint64_t, int64_t>{0, 0}, {1, 0}, {1, 5}, {0xdeadbeefcafeULL, 123456}}) {
      const std::vector<int64_t> p = permutation(n, seed, epoch);
      std::vector<bool> seen(n, false);
      for (int64_t i = 0; i < n; i++) {
        ASSERT_GE(p[i], 0) << "n " << n << " seed " << seed << " epoch " << epoch << " index " << i;
        ASSERT_LT(p[i], n) << "n " << n << " seed " << seed << " epoch " << epoch << " index " << i;
        ASSERT_FALSE(seen[p[i]]) << "n " << n << " seed " << seed << " epoch " << epoch << ": " << p[i] << " twice";
        seen[p[i]] = true;
      }
    }
  }
}

TEST(Permute, DependsOnSeedAndEpochOnly) {
  const int64_t n = 1000;
  const std::vector<int64_t> base = permutation(n, 42, 0);
  EXPECT_EQ(permutation(n, 42, 0), base);  // a pure function
  EXPECT_NE(permutation(n, 43, 0), base);
  EXPECT_NE(permutation(n, 42, 1), base);
  EXPECT_NE(permutation(n, 43, 1), permutation(n, 42, 1));
  std::vector<int64_t> identity(n);
  for (int64_t i = 0; i < n; i++) identity[i] = i;
  EXPECT_NE(base, identity);
  // Shuffled, not shifted: few neighbours stay neighbours (a random permutation keeps about one).
  int kept = 0;
  for (int64_t i = 0; i + 1 < n; i++) kept += base[i + 1] == base[i] + 1;
  EXPECT_LT(kept, 20);
  // Small domains get every order eventually.
  std::set<std::vector<int64_t>> orders;
  for (uint64_t seed = 0; seed < 200; seed++) orders.insert(permutation(3, seed, 0));
  EXPECT_EQ(orders.size(), 6u);
}

// ---- datasets whose tokens say where they are --------------------------------------------------

constexpr int64_t kVocab = 65536;  // stored as uint16, like GPT-2 tokens
constexpr int64_t kShardStride = 10000;

// Token p of shard s is s * kShardStride + p, so every row of a batch tells which shard and offset it
// came from, and a sequence that ran across a shard boundary would show a jump. The loss mask (when
// asked for) is a fixed function of the token.
uint8_t mask_of(int32_t token) { return (token * 7 + token / 3) % 5 < 2; }

class PositionDataset {
 public:
  PositionDataset(std::vector<int64_t> train_sizes, bool with_mask = false, std::vector<int64_t> val_sizes = {})
      : train_sizes_(std::move(train_sizes)) {
    const TokenizerMeta meta{"positions", kVocab, kVocab - 1};
    auto split = [&](const std::string& name, const std::vector<int64_t>& sizes) {
      std::vector<ShardEntry> entries;
      for (size_t s = 0; s < sizes.size(); s++) {
        ShardData data;
        for (int64_t p = 0; p < sizes[s]; p++) data.tokens.push_back((int32_t)(s * kShardStride + p));
        if (with_mask)
          for (int32_t t : data.tokens) data.loss_mask.push_back(mask_of(t));
        data.doc_offsets = {0};
        const std::string file = name + "_" + std::to_string(s) + ".h5";
        write_shard(dir_.path(file), data, meta);
        entries.push_back({file, sizes[s], 1, file_checksum(dir_.path(file))});
      }
      return entries;
    };
    write_dataset_json(dir_.str(), "positions", meta, with_mask, split("train", train_sizes_), split("val", val_sizes));
    dataset_ = std::make_unique<Dataset>(Dataset::open(dir_.str()));
  }
  const Split& train() const { return dataset_->train; }
  const Split& val() const { return dataset_->val; }

  // The first token of every training sequence of seq_len + 1 tokens, in index order: sequence i of a
  // shard is tokens [i*T, i*T + T + 1), shard by shard.
  std::vector<int32_t> sequence_starts(int T) const {
    std::vector<int32_t> out;
    for (size_t s = 0; s < train_sizes_.size(); s++)
      for (int64_t start = 0; start + T + 1 <= train_sizes_[s]; start += T)
        out.push_back((int32_t)(s * kShardStride + start));
    return out;
  }

 private:
  TempDir dir_;
  std::vector<int64_t> train_sizes_;
  std::unique_ptr<Dataset> dataset_;
};

LoaderOptions options(int batch_size, int seq_len, uint64_t seed = 1234, int dp_rank = 0, int dp_size = 1) {
  LoaderOptions o;
  o.batch_size = batch_size;
  o.seq_len = seq_len;
  o.seed = seed;
  o.dp_rank = dp_rank;
  o.dp_size = dp_size;
  return o;
}

// Checks every row of `batch` is one whole sequence (a valid start, then consecutive tokens, targets
// shifted by one, the mask of each target) and returns the rows' first tokens.
std::vector<int32_t> rows_of(const Batch& batch, const std::set<int32_t>& valid_starts, bool with_mask = false) {
  const int T = batch.T;
  EXPECT_EQ(batch.inputs.size(), (size_t)batch.B * T);
  EXPECT_EQ(batch.targets.size(), (size_t)batch.B * T);
  EXPECT_EQ(batch.loss_mask.size(), with_mask ? (size_t)batch.B * T : 0u);
  std::vector<int32_t> starts;
  for (int b = 0; b < batch.B; b++) {
    const int32_t start = batch.inputs[(size_t)b * T];
    EXPECT_TRUE(valid_starts.count(start)) << "row " << b << " starts at token " << start;
    for (int t = 0; t < T; t++) {
      const size_t i = (size_t)b * T + t;
      EXPECT_EQ(batch.inputs[i], start + t) << "row " << b << " column " << t;
      EXPECT_EQ(batch.targets[i], start + t + 1) << "row " << b << " column " << t;
      if (with_mask && i < batch.loss_mask.size()) {
        EXPECT_EQ(batch.loss_mask[i], mask_of(batch.targets[i])) << "row " << b << " column " << t;
      }
    }
    starts.push_back(start);
  }
  return starts;
}

std::set<int32_t> as_set(const std::vector<int32_t>& v) { return {v.begin(), v.end()}; }

// The rows of the next `count` batches, one vector per batch (checked as in rows_of).
std::vector<std::vector<int32_t>> take(DataLoader& loader, int count, const std::set<int32_t>& valid_starts) {
  std::vector<std::vector<int32_t>> out;
  for (int k = 0; k < count; k++) {
    const Batch* b = loader.next();
    EXPECT_NE(b, nullptr);
    if (!b) break;
    out.push_back(rows_of(*b, valid_starts));
  }
  return out;
}

std::vector<int32_t> flatten(const std::vector<std::vector<int32_t>>& batches) {
  std::vector<int32_t> out;
  for (const auto& b : batches) out.insert(out.end(), b.begin(), b.end());
  return out;
}

TEST(DataLoader, SequencesAreCutFromOneShardEach) {
  const PositionDataset data({100, 37, 250, 9, 64});
  for (int T : {1, 8, 36, 63}) {
    SCOPED_TRACE("seq_len " + std::to_string(T));
    const std::vector<int32_t> starts = data.sequence_starts(T);
    DataLoader loader(data.train(), options(2, T));
    EXPECT_EQ(loader.num_sequences(), (int64_t)starts.size());
    EXPECT_EQ(loader.batches_per_epoch(), (int64_t)starts.size() / 2);
    const Batch* b = loader.next();
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b->B, 2);
    EXPECT_EQ(b->T, T);
    // Two epochs' worth, every row checked by rows_of.
    take(loader, 2 * (int)loader.batches_per_epoch(), as_set(starts));
  }
}

TEST(DataLoader, EpochsVisitEachSequenceOnceInTheirOwnOrder) {
  const PositionDataset data({100, 37, 250, 64});
  const int T = 8, B = 4;
  const std::vector<int32_t> starts = data.sequence_starts(T);
  const int64_t n = (int64_t)starts.size(), per_epoch = n / B;
  ASSERT_GT(n % B, 0) << "the test wants sequences left over at the end of an epoch";
  DataLoader loader(data.train(), options(B, T, 99));
  ASSERT_EQ(loader.batches_per_epoch(), per_epoch);

  std::vector<std::vector<int32_t>> epochs;
  for (int64_t e = 0; e < 3; e++) {
    const std::vector<int32_t> seen = flatten(take(loader, (int)per_epoch, as_set(starts)));
    EXPECT_EQ(seen.size(), (size_t)(per_epoch * B));
    EXPECT_EQ(as_set(seen).size(), seen.size()) << "a sequence repeats within epoch " << e;
    EXPECT_EQ(loader.state(), (LoaderState{99, e, per_epoch * B}));
    // The documented order: position i of epoch e is sequence permute(i, n, seed, e).
    for (size_t i = 0; i < seen.size(); i++)
      ASSERT_EQ(seen[i], starts[permute((int64_t)i, n, 99, e)]) << "epoch " << e << " position " << i;
    epochs.push_back(seen);
  }
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);
  loader.next();
  EXPECT_EQ(loader.state(), (LoaderState{99, 3, B}));
}

TEST(DataLoader, DifferentSeedsGiveDifferentStreams) {
  const PositionDataset data({500});
  const std::set<int32_t> valid = as_set(data.sequence_starts(4));
  DataLoader a(data.train(), options(8, 4, 1)), b(data.train(), options(8, 4, 2)), c(data.train(), options(8, 4, 1));
  const auto first = take(a, 5, valid);
  EXPECT_NE(first, take(b, 5, valid));
  EXPECT_EQ(first, take(c, 5, valid));
}

// The global batches of dp_size loaders (one per rank, batch_size rows each), rank slices in rank
// order, checking each rank's slice has batch_size rows and that ranks agree on the state.
std::vector<std::vector<int32_t>> global_batches(const Split& split, int global, int dp_size, int T, int count,
                                                 const std::set<int32_t>& valid, const LoaderState* from = nullptr) {
  std::vector<std::unique_ptr<DataLoader>> ranks;
  for (int r = 0; r < dp_size; r++) {
    ranks.push_back(std::make_unique<DataLoader>(split, options(global / dp_size, T, 7, r, dp_size)));
    if (from) ranks.back()->restore(*from);
  }
  std::vector<std::vector<int32_t>> out(count);
  for (int k = 0; k < count; k++) {
    std::vector<std::vector<int32_t>> slices;
    for (int r = 0; r < dp_size; r++) {
      const Batch* b = ranks[r]->next();
      EXPECT_NE(b, nullptr);
      if (!b) return out;
      EXPECT_EQ(b->B, global / dp_size) << "rank " << r << " batch " << k;
      slices.push_back(rows_of(*b, valid));
      EXPECT_EQ(ranks[r]->state(), ranks[0]->state()) << "rank " << r << " batch " << k;
    }
    std::set<int32_t> all;
    for (const auto& s : slices) all.insert(s.begin(), s.end());
    EXPECT_EQ(all.size(), (size_t)global) << "ranks' slices overlap in batch " << k;
    out[k] = flatten(slices);
  }
  return out;
}

TEST(DataLoader, GlobalBatchIsIndependentOfTheDataParallelSplit) {
  const PositionDataset data({200, 77, 130});
  const int T = 5, G = 6;
  const std::set<int32_t> valid = as_set(data.sequence_starts(T));
  const int per_epoch = (int)(valid.size() / G);
  const int count = per_epoch + per_epoch / 2 + 1;  // into the second epoch
  const auto single = global_batches(data.train(), G, 1, T, count, valid);
  EXPECT_EQ(global_batches(data.train(), G, 2, T, count, valid), single);
  EXPECT_EQ(global_batches(data.train(), G, 3, T, count, valid), single);
  EXPECT_EQ(global_batches(data.train(), G, 6, T, count, valid), single);
}

TEST(DataLoader, RestoreYieldsExactlyTheBatchesThatFollowed) {
  const PositionDataset data({150, 90, 41});
  const int T = 7, B = 3;
  const std::set<int32_t> valid = as_set(data.sequence_starts(T));
  DataLoader probe(data.train(), options(B, T));
  const int per_epoch = (int)probe.batches_per_epoch();
  ASSERT_GE(per_epoch, 4);

  // Save after k batches: mid-epoch, at the very end of an epoch, and one batch into the next.
  for (int k : {0, 2, per_epoch, per_epoch + 1, 2 * per_epoch - 1}) {
    SCOPED_TRACE("saved after " + std::to_string(k) + " batches");
    DataLoader original(data.train(), options(B, T));
    take(original, k, valid);
    const LoaderState saved = original.state();
    const auto followed = take(original, per_epoch + 2, valid);  // crosses an epoch boundary

    DataLoader resumed(data.train(), options(B, T));
    take(resumed, 1, valid);  // the fresh loader has already started its own stream
    resumed.restore(saved);
    EXPECT_EQ(resumed.state(), saved);
    EXPECT_EQ(take(resumed, per_epoch + 2, valid), followed);

    original.restore(saved);  // rewinding a loader works as well
    EXPECT_EQ(take(original, per_epoch + 2, valid), followed);
  }
}

TEST(DataLoader, RestoredBatchesMatchTokenForToken) {
  const PositionDataset data({300}, true);
  const int T = 6, B = 2;
  DataLoader original(data.train(), options(B, T));
  for (int k = 0; k < 5; k++) original.next();
  const LoaderState saved = original.state();
  std::vector<Batch> followed;
  for (int k = 0; k < 30; k++) followed.push_back(*original.next());
  DataLoader resumed(data.train(), options(B, T));
  resumed.restore(saved);
  for (int k = 0; k < 30; k++) {
    const Batch* b = resumed.next();
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b->inputs, followed[k].inputs) << "batch " << k;
    EXPECT_EQ(b->targets, followed[k].targets) << "batch " << k;
    EXPECT_EQ(b->loss_mask, followed[k].loss_mask) << "batch " << k;
  }
}

TEST(DataLoader, RestoreIntoAnotherDataParallelSplit) {
  const PositionDataset data({180, 95});
  const int T = 4, G = 4;
  const std::set<int32_t> valid = as_set(data.sequence_starts(T));
  DataLoader single(data.train(), options(G, T, 7));
  const int per_epoch = (int)single.batches_per_epoch();
  take(single, per_epoch - 2, valid);
  const LoaderState saved = single.state();
  const auto followed = take(single, 5, valid);  // crosses into epoch 1
  EXPECT_EQ(global_batches(data.train(), G, 2, T, 5, valid, &saved), followed);
  EXPECT_EQ(global_batches(data.train(), G, 4, T, 5, valid, &saved), followed);
}

TEST(DataLoader, RestoreRejectsStatesOfOtherStreams) {
  const PositionDataset data({200});
  DataLoader loader(data.train(), options(2, 4, 5, 0, 2));  // global batch 4
  const std::string bad_seed = error_of([&] { loader.restore({6, 0, 0}); });
  EXPECT_TRUE(mentions(bad_seed, {"seed 6", "seed 5"}));
  EXPECT_TRUE(mentions(error_of([&] { loader.restore({5, 0, 2}); }), {"position 2", "global batch 4"}));
  EXPECT_NE(error_of([&] { loader.restore({5, -1, 0}); }), "(no error)");
  EXPECT_NE(error_of([&] { loader.restore({5, 0, -4}); }), "(no error)");
  EXPECT_EQ(error_of([&] { loader.restore({5, 3, 8}); }), "(no error)");
  // A rejected state leaves the loader usable.
  EXPECT_NE(loader.next(), nullptr);
}

TEST(DataLoader, ValidationVisitsEverySequenceOnceInOrder) {
  const PositionDataset data({100, 37, 250});
  const int T = 8, B = 5;
  const std::vector<int32_t> starts = data.sequence_starts(T);
  ASSERT_NE(starts.size() % B, 0u) << "the test wants a partial last batch";
  LoaderOptions o = options(B, T);
  o.shuffle = false;
  DataLoader loader(data.train(), o);
  EXPECT_EQ(loader.batches_per_epoch(), (int64_t)(starts.size() + B - 1) / B);

  for (int pass = 0; pass < 2; pass++) {
    SCOPED_TRACE("pass " + std::to_string(pass));
    std::vector<int32_t> seen;
    std::vector<int> sizes;
    while (const Batch* b = loader.next()) {
      sizes.push_back(b->B);
      const std::vector<int32_t> rows = rows_of(*b, as_set(starts));
      seen.insert(seen.end(), rows.begin(), rows.end());
      ASSERT_LE(seen.size(), starts.size());
    }
    EXPECT_EQ(seen, starts);
    ASSERT_EQ((int64_t)sizes.size(), loader.batches_per_epoch());
    EXPECT_EQ(sizes.back(), (int)(starts.size() % B));
    for (size_t k = 0; k + 1 < sizes.size(); k++) EXPECT_EQ(sizes[k], B);
    EXPECT_EQ(loader.next(), nullptr);  // and stays at the end
    EXPECT_EQ(loader.next(), nullptr);
    loader.restore({});  // rewinds for the next pass
  }
}

TEST(DataLoader, ValidationAcrossRanksCoversEverySequenceOnce) {
  const PositionDataset data({100, 37, 250});
  const int T = 8, B = 4, ranks = 3;
  const std::vector<int32_t> starts = data.sequence_starts(T);
  std::vector<std::unique_ptr<DataLoader>> loaders;
  for (int r = 0; r < ranks; r++) {
    LoaderOptions o = options(B, T, 0, r, ranks);
    o.shuffle = false;
    loaders.push_back(std::make_unique<DataLoader>(data.train(), o));
  }
  std::vector<int32_t> seen;
  int batches = 0;
  while (true) {
    std::vector<const Batch*> got;
    for (auto& l : loaders) got.push_back(l->next());
    // Ranks run the same number of batches (collectives need every rank), some rows possibly empty.
    for (int r = 1; r < ranks; r++) ASSERT_EQ(got[r] == nullptr, got[0] == nullptr) << "batch " << batches;
    if (!got[0]) break;
    for (const Batch* b : got) {
      const std::vector<int32_t> rows = rows_of(*b, as_set(starts));
      seen.insert(seen.end(), rows.begin(), rows.end());
    }
    ASSERT_LE(++batches, 1000);
  }
  EXPECT_EQ(seen, starts);
}

TEST(DataLoader, ValidationSplitWithFewerSequencesThanABatch) {
  const PositionDataset data({1000}, false, {20});
  LoaderOptions o = options(8, 4);
  o.shuffle = false;
  DataLoader loader(data.val(), o);
  EXPECT_EQ(loader.num_sequences(), 4);  // (20 - 1) / 4 sequences of 5 tokens
  const Batch* b = loader.next();
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->B, 4);
  EXPECT_EQ(b->inputs.front(), 0);
  EXPECT_EQ(loader.next(), nullptr);
}

TEST(DataLoader, LossMaskIsTheMaskOfEachTarget) {
  const PositionDataset masked({120, 80}, true);
  const int T = 6;
  const std::set<int32_t> valid = as_set(masked.sequence_starts(T));
  DataLoader loader(masked.train(), options(3, T));
  for (int k = 0; k < 40; k++) {
    const Batch* b = loader.next();
    ASSERT_NE(b, nullptr);
    rows_of(*b, valid, true);  // checks loss_mask[i] == mask_of(targets[i])
    // Not trivially all ones or all zeros.
    EXPECT_NE(std::count(b->loss_mask.begin(), b->loss_mask.end(), 1), 0);
    EXPECT_NE(std::count(b->loss_mask.begin(), b->loss_mask.end(), 0), 0);
  }
  LoaderOptions o = options(3, T);
  o.shuffle = false;
  DataLoader val(masked.train(), o);
  while (const Batch* b = val.next()) rows_of(*b, valid, true);

  const PositionDataset plain({120, 80});
  DataLoader unmasked(plain.train(), options(3, T));
  EXPECT_TRUE(unmasked.next()->loss_mask.empty());
}

TEST(DataLoader, ErrorsSayWhatIsTooSmall) {
  const PositionDataset data({10, 20});
  // 20 tokens make one sequence of 19 + 1, none of 20 + 1.
  EXPECT_EQ(DataLoader(data.train(), options(1, 19)).num_sequences(), 1);
  EXPECT_TRUE(mentions(error_of([&] { DataLoader(data.train(), options(1, 20)); }),
                       {"'train'", "longer than any shard", "20"}));
  // 9 + 4 = 13 sequences of 2+1 tokens: fine for a global batch of 12, not of 14.
  EXPECT_EQ(DataLoader(data.train(), options(6, 2, 0, 1, 2)).batches_per_epoch(), 1);
  EXPECT_TRUE(mentions(error_of([&] { DataLoader(data.train(), options(7, 2, 0, 1, 2)); }),
                       {"'train'", "13 sequences", "fewer than one global batch of 14"}));
  EXPECT_NE(error_of([&] { DataLoader(data.train(), options(0, 2)); }), "(no error)");
  EXPECT_NE(error_of([&] { DataLoader(data.train(), options(1, 0)); }), "(no error)");
  EXPECT_NE(error_of([&] { DataLoader(data.train(), options(1, 2, 0, 2, 2)); }), "(no error)");
  EXPECT_NE(error_of([&] { DataLoader(data.train(), options(1, 2, 0, -1, 2)); }), "(no error)");
}

TEST(DataLoader, DestroyingALoaderMidStreamReturns) {
  const PositionDataset data({5000, 3000});
  for (int prefetch : {1, 2, 8}) {
    for (int taken = 0; taken < 3; taken++) {
      LoaderOptions o = options(4, 16);
      o.prefetch = prefetch;
      DataLoader loader(data.train(), o);
      for (int k = 0; k < taken; k++) ASSERT_NE(loader.next(), nullptr);
    }  // the destructor must stop the prefetching thread, whatever it is doing
  }
  LoaderOptions o = options(4, 16);
  o.shuffle = false;
  DataLoader finished(data.train(), o);
  while (finished.next()) {
  }
}

}  // namespace
}  // namespace kiln
