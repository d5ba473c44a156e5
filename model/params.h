// The parameter layout: every tensor of the model at a fixed offset in one flat allocation, so
// that gradients, AdamW moments, checkpoints and (later) gradient buckets are all flat ranges.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/tensor.h"

namespace kiln {

struct ParamSpec {
  std::string name;            // GPT-2 / Hugging Face naming, e.g. "h.0.attn.c_attn.weight"
  std::vector<int64_t> shape;  // this rank's shard; matrices in nn.Linear layout [out, in]
  int64_t offset = 0;          // in elements, into the flat buffer
  int64_t numel = 0;
  bool decay = false;       // AdamW weight decay applies to matrices only
  bool replicated = false;  // the same on every tensor-parallel rank (not sharded)
};

class ParamLayout {
 public:
  explicit ParamLayout(const GPTConfig& cfg, TensorParallel tp = {});
  const std::vector<ParamSpec>& specs() const { return specs_; }
  int64_t total() const { return total_; }
  // Parameters excluding the embedding's padding rows: the count GPT-2's papers quote.
  int64_t trained() const { return total_ - padding_; }
  const ParamSpec& find(const std::string& name) const;  // throws naming the tensor
  // fn(spec, begin, end) for every tensor overlapping [first, first + count) of the flat buffer,
  // with [begin, end) the overlap: an optimizer or norm over one shard, tensor by tensor.
  void for_each_overlap(int64_t first, int64_t count,
                        const std::function<void(const ParamSpec&, int64_t begin, int64_t end)>& fn) const;

 private:
  void add(std::string name, std::vector<int64_t> shape, bool replicated = false);
  std::vector<ParamSpec> specs_;
  int64_t total_ = 0;
  int64_t padding_ = 0;
};

// ZeRO-1's shard `index` of `shards` of a flat buffer of `total` elements: [first, first + count),
// shards of ceil(total / shards), the last ones short or empty.
struct FlatShard {
  int64_t first = 0, count = 0;
  int64_t size = 0;  // ceil(total / shards): the flat buffers are padded to shards x size
};
FlatShard flat_shard(int64_t total, int shards, int index);

// Where one tensor-parallel rank's tensor sits in the whole model's tensor: a box (start and
// count per dimension) of the global shape, whose row-major order is the local tensor's order.
// Global shapes are the unsharded ones, except that the fused QKV projection is [3, H, D, C]
// (bias [3, H, D]), so that a rank's heads are one box, and wte has the real vocabulary's rows
// only (a rank's padding rows are outside its box: its box may hold fewer rows than its tensor).
struct TensorSlice {
  std::vector<int64_t> global_shape, start, count;
  int64_t numel() const;  // of the box
  int64_t global_numel() const;
};
TensorSlice tensor_slice(const GPTConfig& cfg, TensorParallel tp, const ParamSpec& local);

// Copies a box between a row-major global array and the box's own row-major array.
void copy_box_out(const TensorSlice& box, const float* global, float* local);  // global -> local
void copy_box_in(const TensorSlice& box, const float* local, float* global);   // local -> global

// Named views of one flat buffer laid out by a ParamLayout (parameters, or their gradients).
struct BlockTensors {
  Tensor ln1_w, ln1_b, qkv_w, qkv_b, attn_proj_w, attn_proj_b;
  Tensor ln2_w, ln2_b, fc_w, fc_b, fc_proj_w, fc_proj_b;
};
struct ModelTensors {
  Tensor wte, wpe, lnf_w, lnf_b;
  std::vector<BlockTensors> blocks;
};
ModelTensors bind(const ParamLayout& layout, const Tensor& flat, int n_layer);

}  // namespace kiln
