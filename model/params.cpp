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
    add(p + "attn.c_proj.weight", {C, local.attn_width});      // row-parallel
    add(p + "attn.c_proj.bias", {C}, true);                     // replicated, added once
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
