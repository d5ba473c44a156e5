#include "model/params.h"

#include <algorithm>
#include <stdexcept>

namespace kiln {

ParamLayout::ParamLayout(const GPTConfig& cfg, TensorParallel tp) {
  cfg.validate();
  const LocalShape local(cfg, tp);
  const int64_t C = cfg.n_embd;
  add("wte", {local.vocab_rows, C});
  add("wpe", {cfg.max_seq_len, C}, true);
  for (int l = 0; l < cfg.n_layer; l++) {
    const std::string p = "h." + std::to_string(l) + ".";
    add(p + "ln_1.weight", {C}, true);
    add(p + "ln_1.bias", {C}, true);
    add(p + "attn.c_attn.weight", {3 * local.attn_width, C});  // column-parallel: this rank's heads
    add(p + "attn.c_attn.bias", {3 * local.attn_width});
    add(p + "attn.c_proj.weight", {C, local.attn_width});  // row-parallel
    add(p + "attn.c_proj.bias", {C}, true);                // replicated, added once
    add(p + "ln_2.weight", {C}, true);
    add(p + "ln_2.bias", {C}, true);
    add(p + "mlp.c_fc.weight", {local.mlp_width, C});
    add(p + "mlp.c_fc.bias", {local.mlp_width});
    add(p + "mlp.c_proj.weight", {C, local.mlp_width});
    add(p + "mlp.c_proj.bias", {C}, true);
  }
  add("ln_f.weight", {C}, true);
  add("ln_f.bias", {C}, true);
  // Rows of this rank's vocabulary shard past the real vocabulary are padding.
  const int64_t real_rows = std::clamp<int64_t>(cfg.vocab_size - local.vocab_begin, 0, local.vocab_rows);
  padding_ = (local.vocab_rows - real_rows) * C;
}

void ParamLayout::add(std::string name, std::vector<int64_t> shape, bool replicated) {
  ParamSpec spec{std::move(name), std::move(shape), total_, 1, false, replicated};
  for (int64_t d : spec.shape) spec.numel *= d;
  spec.decay = spec.shape.size() >= 2;
  total_ += spec.numel;
  specs_.push_back(std::move(spec));
}

void ParamLayout::for_each_overlap(int64_t first, int64_t count,
                                   const std::function<void(const ParamSpec&, int64_t, int64_t)>& fn) const {
  for (const ParamSpec& s : specs_) {
    const int64_t begin = std::max(s.offset, first), end = std::min(s.offset + s.numel, first + count);
    if (begin < end) fn(s, begin, end);
  }
}

const ParamSpec& ParamLayout::find(const std::string& name) const {
  for (const ParamSpec& s : specs_)
    if (s.name == name) return s;
  throw std::out_of_range("no parameter named '" + name + "'");
}

FlatShard flat_shard(int64_t total, int shards, int index) {
  const int64_t size = (total + shards - 1) / shards, first = std::min(total, index * size);
  return {first, std::min(total - first, size), size};
}

int64_t TensorSlice::numel() const {
  int64_t n = 1;
  for (int64_t c : count) n *= c;
  return n;
}

int64_t TensorSlice::global_numel() const {
  int64_t n = 1;
  for (int64_t g : global_shape) n *= g;
  return n;
}

TensorSlice tensor_slice(const GPTConfig& cfg, TensorParallel tp, const ParamSpec& s) {
  const LocalShape local(cfg, tp);
  const int64_t C = cfg.n_embd, H = cfg.n_head, D = cfg.head_size(), h = local.heads, r = tp.rank;
  const int64_t A = local.attn_width, M = local.mlp_width;
  auto box = [](std::vector<int64_t> shape, std::vector<int64_t> start, std::vector<int64_t> count) {
    return TensorSlice{std::move(shape), std::move(start), std::move(count)};
  };
  if (s.name == "wte") {
    const int64_t rows = std::clamp<int64_t>(cfg.vocab_size - local.vocab_begin, 0, local.vocab_rows);
    return box({cfg.vocab_size, C}, {std::min<int64_t>(local.vocab_begin, cfg.vocab_size), 0}, {rows, C});
  }
  if (s.replicated) return box(s.shape, std::vector<int64_t>(s.shape.size(), 0), s.shape);
  if (s.name.ends_with("c_attn.weight")) return box({3, H, D, C}, {0, r * h, 0, 0}, {3, h, D, C});
  if (s.name.ends_with("c_attn.bias")) return box({3, H, D}, {0, r * h, 0}, {3, h, D});
  if (s.name.ends_with("attn.c_proj.weight")) return box({C, C}, {0, r * A}, {C, A});
  if (s.name.ends_with("c_fc.weight")) return box({4 * C, C}, {r * M, 0}, {M, C});
  if (s.name.ends_with("c_fc.bias")) return box({4 * C}, {r * M}, {M});
  if (s.name.ends_with("mlp.c_proj.weight")) return box({C, 4 * C}, {0, r * M}, {C, M});
  throw std::logic_error("tensor_slice: no slicing rule for '" + s.name + "'");
}

namespace {

// Calls fn(global_offset, local_offset, run) for each contiguous run of the box (its last dimension).
template <class Fn>
void for_each_run(const TensorSlice& b, Fn&& fn) {
  const size_t dims = b.global_shape.size();
  if (b.numel() == 0) return;
  std::vector<int64_t> index(dims, 0);  // within the box, over all but the last dimension
  for (int64_t local = 0; local < b.numel(); local += b.count[dims - 1]) {
    int64_t global = 0;
    for (size_t d = 0; d < dims; d++) global = global * b.global_shape[d] + b.start[d] + (d + 1 < dims ? index[d] : 0);
    fn(global, local, b.count[dims - 1]);
    for (int d = (int)dims - 2; d >= 0 && ++index[d] == b.count[d]; d--) index[d] = 0;
  }
}

}  // namespace

void copy_box_out(const TensorSlice& box, const float* global, float* local) {
  for_each_run(box, [&](int64_t g, int64_t l, int64_t n) { std::copy_n(global + g, n, local + l); });
}

void copy_box_in(const TensorSlice& box, const float* local, float* global) {
  for_each_run(box, [&](int64_t g, int64_t l, int64_t n) { std::copy_n(local + l, n, global + g); });
}

ModelTensors bind(const ParamLayout& layout, const Tensor& flat, int n_layer) {
  if (flat.numel != layout.total())
    throw std::invalid_argument("parameter buffer of " + std::to_string(flat.numel) + " elements, layout needs " +
                                std::to_string(layout.total()));
  auto view = [&](const std::string& name) {
    const ParamSpec& s = layout.find(name);
    return flat.slice(s.offset, s.numel);
  };
  ModelTensors t{view("wte"), view("wpe"), view("ln_f.weight"), view("ln_f.bias"), {}};
  for (int l = 0; l < n_layer; l++) {
    const std::string p = "h." + std::to_string(l) + ".";
    t.blocks.push_back({view(p + "ln_1.weight"), view(p + "ln_1.bias"), view(p + "attn.c_attn.weight"),
                        view(p + "attn.c_attn.bias"), view(p + "attn.c_proj.weight"), view(p + "attn.c_proj.bias"),
                        view(p + "ln_2.weight"), view(p + "ln_2.bias"), view(p + "mlp.c_fc.weight"),
                        view(p + "mlp.c_fc.bias"), view(p + "mlp.c_proj.weight"), view(p + "mlp.c_proj.bias")});
  }
  return t;
}

}  // namespace kiln
