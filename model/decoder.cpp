#include "model/decoder.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/cpu/ops.h"

namespace kiln {

Decoder::Decoder(const GPTConfig& config, std::vector<float> weights)
    : cfg_(config), layout_(config), weights_(std::move(weights)) {
  if ((int64_t)weights_.size() != layout_.total())
    throw std::invalid_argument("Decoder: " + std::to_string(weights_.size()) + " weights, the model has " +
                                std::to_string(layout_.total()));
  const size_t cache = (size_t)cfg_.n_layer * cfg_.max_seq_len * cfg_.n_embd;
  k_cache_.assign(cache, 0.0f);
  v_cache_.assign(cache, 0.0f);
  logits_.resize(cfg_.padded_vocab());
}

void Decoder::attend(int layer, int n) {
  const int C = cfg_.n_embd, H = cfg_.n_head, D = cfg_.head_size();
  const float scale = 1.0f / std::sqrt((float)D);
  const float* keys = k_cache_.data() + (size_t)layer * cfg_.max_seq_len * C;
  const float* values = v_cache_.data() + (size_t)layer * cfg_.max_seq_len * C;
#pragma omp parallel for collapse(2) schedule(static)
  for (int i = 0; i < n; i++)
    for (int h = 0; h < H; h++) {
      const int visible = length_ + i + 1;  // causal: positions 0 .. length_ + i
      const float* q = qkv_.data() + (size_t)i * 3 * C + h * D;
      std::vector<float> p(visible);
      float max = -INFINITY;
      for (int j = 0; j < visible; j++) {
        const float* k = keys + (size_t)j * C + h * D;
        float dot = 0;
        for (int d = 0; d < D; d++) dot += q[d] * k[d];
        p[j] = dot * scale;
        max = std::max(max, p[j]);
      }
      float sum = 0;
      for (float& s : p) sum += (s = std::exp(s - max));
      float* out = att_.data() + (size_t)i * C + h * D;
      std::fill(out, out + D, 0.0f);
      for (int j = 0; j < visible; j++) {
        const float* v = values + (size_t)j * C + h * D;
        const float w = p[j] / sum;
        for (int d = 0; d < D; d++) out[d] += w * v[d];
      }
    }
}

std::span<const float> Decoder::append(std::span<const int32_t> tokens) {
  const int n = (int)tokens.size(), C = cfg_.n_embd, C3 = 3 * C, C4 = 4 * C;
  if (n == 0) throw std::invalid_argument("Decoder::append: no tokens");
  if (length_ + n > cfg_.max_seq_len)
    throw std::runtime_error("the context of " + std::to_string(length_ + n) +
                             " tokens passes the model's max_seq_len " + std::to_string(cfg_.max_seq_len));
  x_.resize((size_t)n * C), ln_.resize(x_.size()), att_.resize(x_.size()), proj_.resize(x_.size());
  mean_.resize(n), rstd_.resize(n), qkv_.resize((size_t)n * C3), fc_.resize((size_t)n * C4),
      fc_gelu_.resize(fc_.size());

  // x = wte[token] + wpe[position]
  const float *wte = weight("wte"), *wpe = weight("wpe");
  for (int i = 0; i < n; i++) {
    if (tokens[i] < 0 || tokens[i] >= cfg_.vocab_size)
      throw std::runtime_error("token " + std::to_string(tokens[i]) + " is outside the vocabulary of " +
                               std::to_string(cfg_.vocab_size));
    for (int c = 0; c < C; c++)
      x_[(size_t)i * C + c] = wte[(size_t)tokens[i] * C + c] + wpe[(size_t)(length_ + i) * C + c];
  }
  for (int l = 0; l < cfg_.n_layer; l++) {
    const std::string p = "h." + std::to_string(l) + ".";
    cpu::layernorm_forward(ln_.data(), mean_.data(), rstd_.data(), x_.data(), weight(p + "ln_1.weight"),
                           weight(p + "ln_1.bias"), n, C);
    cpu::matmul_forward(qkv_.data(), ln_.data(), weight(p + "attn.c_attn.weight"), weight(p + "attn.c_attn.bias"), n, C,
                        C3);
    // This step's keys and values join the cache, then every query attends to the cache.
    float* k = k_cache_.data() + ((size_t)l * cfg_.max_seq_len + length_) * C;
    float* v = v_cache_.data() + ((size_t)l * cfg_.max_seq_len + length_) * C;
    for (int i = 0; i < n; i++) {
      std::copy_n(qkv_.data() + (size_t)i * C3 + C, C, k + (size_t)i * C);
      std::copy_n(qkv_.data() + (size_t)i * C3 + 2 * C, C, v + (size_t)i * C);
    }
    attend(l, n);
    cpu::matmul_forward(proj_.data(), att_.data(), weight(p + "attn.c_proj.weight"), weight(p + "attn.c_proj.bias"), n,
                        C, C);
    for (size_t i = 0; i < x_.size(); i++) x_[i] += proj_[i];
    cpu::layernorm_forward(ln_.data(), mean_.data(), rstd_.data(), x_.data(), weight(p + "ln_2.weight"),
                           weight(p + "ln_2.bias"), n, C);
    cpu::matmul_forward(fc_.data(), ln_.data(), weight(p + "mlp.c_fc.weight"), weight(p + "mlp.c_fc.bias"), n, C, C4);
    cpu::gelu_forward(fc_gelu_.data(), fc_.data(), (int64_t)fc_.size());
    cpu::matmul_forward(proj_.data(), fc_gelu_.data(), weight(p + "mlp.c_proj.weight"), weight(p + "mlp.c_proj.bias"),
                        n, C4, C);
    for (size_t i = 0; i < x_.size(); i++) x_[i] += proj_[i];
  }
  length_ += n;
  // Only the last row's logits are wanted: ln_f and the tied LM head on it alone.
  const float* last = x_.data() + (size_t)(n - 1) * C;
  cpu::layernorm_forward(ln_.data(), mean_.data(), rstd_.data(), last, weight("ln_f.weight"), weight("ln_f.bias"), 1,
                         C);
  cpu::matmul_forward(logits_.data(), ln_.data(), wte, nullptr, 1, C, cfg_.padded_vocab());
  return std::span<const float>(logits_).first(cfg_.vocab_size);
}

}  // namespace kiln
