// GPT-2 model sizes, and the shapes one tensor-parallel rank holds of them.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kiln {

struct GPTConfig {
  int vocab_size = 50257;
  int max_seq_len = 1024;
  int n_layer = 12;
  int n_head = 12;
  int n_embd = 768;
  // The embedding table is padded to a multiple of this many rows (times the TP size), so that
  // matmuls over the vocabulary get friendly shapes; the padding rows are never trained.
  int vocab_multiple = 128;

  int head_size() const { return n_embd / n_head; }
  int padded_vocab(int tp_size = 1) const;
  // Throws std::invalid_argument naming the field when a size is not positive or inconsistent.
  void validate() const;

  // gpt2-124m, gpt2-350m, gpt2-774m, gpt2-1558m (GPT-2's vocabulary), and byte-level test sizes
  // tiny and test. Throws listing the valid names.
  static GPTConfig preset(std::string_view name);
  static std::vector<std::string> preset_names();
};

// Activation recomputation: what the backward pass rebuilds instead of keeping from the forward.
enum class Recompute {
  none,   // every activation the backward reads is kept
  mlp,    // gelu(fc) is recomputed from fc in the backward
  block,  // only each block's input is kept; a block's activations are recomputed before its backward
};
Recompute parse_recompute(const std::string& name);  // none | mlp | block; throws otherwise
const char* recompute_name(Recompute r);

// One rank's share of a tensor-parallel group (Megatron-style, docs/design.md §4): heads, the MLP's
// hidden width and vocabulary rows are split; size 1 is the unsharded model.
struct TensorParallel {
  int size = 1;
  int rank = 0;
};

// Local (per-rank) dimensions of a config under tensor parallelism.
struct LocalShape {
  int heads, head_size, attn_width, mlp_width, vocab_rows, vocab_begin;
  LocalShape(const GPTConfig& cfg, TensorParallel tp);
};

}  // namespace kiln
