#include "model/gpt.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <stdexcept>
#include <string>

namespace kiln {

GPT::GPT(const GPTConfig& cfg, Ops& ops, int max_batch, int max_seq, TensorParallel tp, Comm* tp_comm,
         Recompute recompute, ZeroSharding zero)
    : cfg_(cfg),
      ops_(ops),
      tp_(tp),
      tp_comm_(tp.size > 1 ? tp_comm : nullptr),
      local_(cfg, tp),
      layout_(cfg, tp),
      max_batch_(max_batch),
      max_seq_(max_seq),
      recompute_(recompute) {
  if (tp.size > 1 && (!tp_comm || tp_comm->size() != tp.size || tp_comm->rank() != tp.rank))
    throw std::invalid_argument("GPT: tensor parallel rank " + std::to_string(tp.rank) + " of " +
                                std::to_string(tp.size) + " needs its group's Comm");
  if (max_batch < 1) throw std::invalid_argument("batch size " + std::to_string(max_batch) + ": expected >= 1");
  if (max_seq < 1 || max_seq > cfg.max_seq_len)
    throw std::invalid_argument("sequence length " + std::to_string(max_seq) + ": expected 1.." +
                                std::to_string(cfg.max_seq_len) + " (model.max_seq_len)");
  const DType wd = ops.compute_dtype(), f32 = DType::f32, i32 = DType::i32;
  auto alloc = [&](int64_t& category, int64_t numel, DType dtype) {
    category += numel * (int64_t)dtype_size(dtype);
    return ops.allocate(numel, dtype);
  };
  if (zero.shards < 1 || zero.index < 0 || zero.index >= zero.shards)
    throw std::invalid_argument("GPT: ZeRO shard " + std::to_string(zero.index) + " of " + std::to_string(zero.shards));
  shard_ = flat_shard(layout_.total(), zero.shards, zero.index);
  const int64_t padded = shard_.size * zero.shards;
  params_ = alloc(memory_.parameters, padded, wd);
  grads_ = alloc(memory_.gradients, padded, f32);
  params_view_ = params_.view().slice(0, layout_.total());
  grads_view_ = grads_.view().slice(0, layout_.total());
  // fp32 parameters are their own master weights; otherwise this rank's shard of them in fp32.
  master_first_ = wd == f32 ? 0 : shard_.first;
  master_ = wd == f32 ? Buffer(params_view_, nullptr) : alloc(memory_.master, shard_.count, f32);
  w_ = bind(layout_, params_view_, cfg.n_layer);
  g_ = bind(layout_, grads_view_, cfg.n_layer);
  auto span = [&](const std::string& first, const std::string& last) {
    const ParamSpec& l = layout_.find(last);
    return Range{layout_.find(first).offset, l.offset + l.numel};
  };
  embedding_range_ = span("wte", "wpe");
  lnf_range_ = span("ln_f.weight", "ln_f.bias");
  for (int l = 0; l < cfg.n_layer; l++) {
    const std::string p = "h." + std::to_string(l) + ".";
    block_ranges_.push_back(span(p + "ln_1.weight", p + "mlp.c_proj.bias"));
  }

  const int64_t N = (int64_t)max_batch * max_seq, C = cfg.n_embd;
  const int64_t A = local_.attn_width, H = local_.mlp_width, Vp = local_.vocab_rows;
  auto act = [&](int64_t numel, DType dtype) { return alloc(memory_.activations, numel, dtype); };
  auto scratch = [&](int64_t numel) { return alloc(memory_.workspace, numel, wd); };
  tokens_ = act(N, i32);
  targets_ = act(N, i32);
  encoded_ = act(N * C, wd);
  // A block's activations; residual3 and gelu(fc) left out where recompute shares them.
  auto block = [&](bool residual3, bool fc_gelu) {
    return BlockActivations{act(N * C, wd),
                            act(N, f32),
                            act(N, f32),
                            act(N * 3 * A, wd),
                            act(N * A, wd),
                            act(N * local_.heads, f32),
                            act(N * C, wd),
                            act(N * C, wd),
                            act(N * C, wd),
                            act(N, f32),
                            act(N, f32),
                            act(N * H, wd),
                            fc_gelu ? act(N * H, wd) : Buffer{},
                            act(N * C, wd),
                            residual3 ? act(N * C, wd) : Buffer{}};
  };
  // Block recompute keeps each block's output (the next one's input) and rebuilds the rest in one
  // shared set; MLP recompute keeps everything but gelu(fc), rebuilt in one shared buffer.
  const BlockActivations shared = recompute == Recompute::block ? block(false, true) : BlockActivations{};
  const Buffer shared_gelu = recompute == Recompute::mlp ? act(N * H, wd) : Buffer{};
  for (int l = 0; l < cfg.n_layer; l++) {
    BlockActivations a = recompute == Recompute::block ? shared : block(true, recompute == Recompute::none);
    if (recompute == Recompute::block) a.residual3 = act(N * C, wd);
    if (recompute == Recompute::mlp) a.fc_gelu = shared_gelu;
    blocks_.push_back(a);
  }
  lnf_ = act(N * C, wd);
  lnf_mean_ = act(N, f32);
  lnf_rstd_ = act(N, f32);
  logits_ = alloc(memory_.logits, N * Vp, wd);
  losses_ = alloc(memory_.logits, N, f32);
  d_residual_ = scratch(N * C);
  d_ln_ = scratch(N * C);
  d_qkv_ = scratch(N * 3 * A);
  d_att_ = scratch(N * A);
  d_fc_ = scratch(N * H);
  if (tp_comm_) {
    zero_wpe_ = alloc(memory_.workspace, (int64_t)cfg.max_seq_len * C, wd);
    ce_max_ = alloc(memory_.logits, N, f32);
    ce_global_max_ = alloc(memory_.logits, N, f32);
    ce_sums_ = alloc(memory_.logits, 2 * N, f32);
  }
  const int widest = (int)std::max({3 * A, H, C, Vp});
  memory_.workspace +=
      ops.reserve_workspace({N, max_batch, max_seq, (int)C, local_.heads, local_.head_size, widest, (int)H});
  host_losses_.resize(N);
  host_tokens_.resize(N);
}

void GPT::tp_all_reduce(const Tensor& t) {
  if (!tp_comm_) return;
  make_ready_for(ops_, *tp_comm_);  // the ops that write t come first
  if (t.dtype == DType::bf16)
    tp_comm_->all_reduce_sum_bf16(std::span<uint16_t>(static_cast<uint16_t*>(t.data), (size_t)t.numel));
  else
    tp_comm_->all_reduce_sum(std::span<float>(t.f32(), (size_t)t.numel));
}

namespace {

// The whole (one-process) model's initial weights, in the layout of `full`.
std::vector<float> initial_weights(const GPTConfig& cfg, const ParamLayout& full, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> host(full.total(), 0.0f);
  const float residual_std = 0.02f / std::sqrt(2.0f * cfg.n_layer);
  for (const ParamSpec& s : full.specs()) {
    float* p = host.data() + s.offset;
    const bool gain = s.name.ends_with("ln_1.weight") || s.name.ends_with("ln_2.weight") || s.name == "ln_f.weight";
    if (gain) {
      std::fill(p, p + s.numel, 1.0f);
    } else if (s.decay) {
      const bool residual_out = s.name.ends_with("attn.c_proj.weight") || s.name.ends_with("mlp.c_proj.weight");
      const float std_dev = residual_out ? residual_std : 0.02f;
      for (int64_t i = 0; i < s.numel; i++) p[i] = std_dev * normal(rng);
    }
  }
  // The embedding's padding rows stay zero: they never receive gradient, so they never move.
  const ParamSpec& wte = full.find("wte");
  std::fill(host.begin() + wte.offset + (int64_t)cfg.vocab_size * cfg.n_embd, host.begin() + wte.offset + wte.numel,
            0.0f);
  return host;
}

// Rows [first, first + count) of a row-major [rows, width] tensor, as many as it has; the rest zero.
void copy_rows(float* dst, const float* src, int64_t src_rows, int64_t first, int64_t count, int64_t width) {
  for (int64_t r = 0; r < count; r++)
    if (first + r < src_rows) std::copy_n(src + (first + r) * width, width, dst + r * width);
}

}  // namespace

void GPT::init_weights(uint64_t seed) {
  const ParamLayout full(cfg_, {1, 0});
  const std::vector<float> whole = initial_weights(cfg_, full, seed);
  if (tp_.size == 1) return set_weights(whole);
  // This rank's slice of every tensor (model/params.cpp's shapes).
  std::vector<float> host(layout_.total(), 0.0f);
  const int64_t C = cfg_.n_embd, A = local_.attn_width, H = local_.mlp_width;
  for (const ParamSpec& s : layout_.specs()) {
    const ParamSpec& g = full.find(s.name);
    const float* src = whole.data() + g.offset;
    float* dst = host.data() + s.offset;
    if (s.replicated) {
      std::copy_n(src, s.numel, dst);
    } else if (s.name == "wte") {
      copy_rows(dst, src, g.shape[0], local_.vocab_begin, local_.vocab_rows, C);
    } else if (s.name.ends_with("c_attn.weight") || s.name.ends_with("c_attn.bias")) {
      const int64_t width = s.shape.size() == 2 ? C : 1;  // q, k and v: this rank's heads of each
      for (int part = 0; part < 3; part++)
        copy_rows(dst + part * A * width, src, 3 * C, part * C + tp_.rank * A, A, width);
    } else if (s.name.ends_with("c_fc.weight") || s.name.ends_with("c_fc.bias")) {
      copy_rows(dst, src, 4 * C, tp_.rank * H, H, s.shape.size() == 2 ? C : 1);
    } else {  // attn.c_proj.weight [C, C] and mlp.c_proj.weight [C, 4C]: this rank's input columns
      const int64_t cols = s.shape[1], full_cols = g.shape[1];
      for (int64_t r = 0; r < C; r++) std::copy_n(src + r * full_cols + tp_.rank * cols, cols, dst + r * cols);
    }
  }
  set_weights(host);
}

void GPT::set_weights(std::span<const float> host) {
  if (master_.view().data != params_view_.data) ops_.upload(master_, host.subspan(master_first_, master_.view().numel));
  ops_.upload(params_view_, host);
}

std::vector<float> GPT::download_weights() const {
  const bool whole = master_.view().numel == layout_.total();
  std::vector<float> host(layout_.total());
  ops_.download(host, whole ? master_.view() : params_view_);
  return host;
}

double GPT::forward(std::span<const int32_t> tokens, std::span<const int32_t> targets, int B, int T) {
  return run_forward(tokens, targets, B, T, false, 0.0f);
}

double GPT::forward_backward(std::span<const int32_t> tokens, std::span<const int32_t> targets, int B, int T,
                             float loss_scale, const GradsReady& ready) {
  const double loss = run_forward(tokens, targets, B, T, true, loss_scale);
  backward(B, T, ready);
  return loss;
}

void GPT::download_logits(std::span<float> out) {
  const int64_t n = (int64_t)last_B_ * last_T_ * local_.vocab_rows;
  ops_.download(out, logits_.view().slice(0, n));
}

void GPT::block_forward(int l, int B, int T) {
  const int64_t N = (int64_t)B * T;
  const int C = cfg_.n_embd, A = local_.attn_width, H = local_.mlp_width;
  auto rows = [N](const Buffer& b, int64_t width) { return b.view().slice(0, N * width); };
  const BlockTensors& w = w_.blocks[l];
  BlockActivations& a = blocks_[l];
  const Tensor residual = l == 0 ? rows(encoded_, C) : rows(blocks_[l - 1].residual3, C);
  const bool first_rank = tp_.rank == 0;
  ops_.matmul_forward(rows(a.qkv, 3 * A), rows(a.ln1, C), w.qkv_w, w.qkv_b, N, C, 3 * A);
  ops_.attention_forward(rows(a.att, A), rows(a.lse, local_.heads), rows(a.qkv, 3 * A), B, T, local_.heads,
                         local_.head_size);
  // Row-parallel: partial products over this rank's heads, summed; the bias added once.
  ops_.matmul_forward(rows(a.att_proj, C), rows(a.att, A), w.attn_proj_w, first_rank ? w.attn_proj_b : Tensor{}, N, A,
                      C);
  tp_all_reduce(rows(a.att_proj, C));
  ops_.residual_layernorm_forward(rows(a.residual2, C), rows(a.ln2, C), rows(a.ln2_mean, 1), rows(a.ln2_rstd, 1),
                                  residual, rows(a.att_proj, C), w.ln2_w, w.ln2_b, N, C);
  // Fused into the GEMM, except under MLP recompute: its backward rebuilds gelu(fc) from the
  // stored bf16 fc, which must give what the forward used, bit for bit.
  if (recompute_ == Recompute::mlp) {
    ops_.matmul_forward(rows(a.fc, H), rows(a.ln2, C), w.fc_w, w.fc_b, N, C, H);
    ops_.gelu_forward(rows(a.fc_gelu, H), rows(a.fc, H), N * H);
  } else {
    ops_.matmul_gelu_forward(rows(a.fc_gelu, H), rows(a.fc, H), rows(a.ln2, C), w.fc_w, w.fc_b, N, C, H);
  }
  ops_.matmul_forward(rows(a.fc_proj, C), rows(a.fc_gelu, H), w.fc_proj_w, first_rank ? w.fc_proj_b : Tensor{}, N, H,
                      C);
  tp_all_reduce(rows(a.fc_proj, C));
}

double GPT::run_forward(std::span<const int32_t> tokens, std::span<const int32_t> targets, int B, int T, bool with_grad,
                        float loss_scale) {
  if (B < 1 || B > max_batch_ || T < 1 || T > max_seq_)
    throw std::invalid_argument("batch " + std::to_string(B) + "x" + std::to_string(T) + " exceeds the " +
                                std::to_string(max_batch_) + "x" + std::to_string(max_seq_) +
                                " the model was built for");
  const int64_t N = (int64_t)B * T;
  if ((int64_t)tokens.size() != N || (int64_t)targets.size() != N)
    throw std::invalid_argument("tokens/targets must hold B*T = " + std::to_string(N) + " entries");
  last_B_ = B;
  last_T_ = T;
  const int C = cfg_.n_embd, Vp = local_.vocab_rows;
  auto rows = [N](const Buffer& b, int64_t width) { return b.view().slice(0, N * width); };
  const Tensor tok = rows(tokens_, 1), tgt = rows(targets_, 1);
  ops_.upload(tok, tokens);
  ops_.upload(tgt, targets);
  std::copy(tokens.begin(), tokens.end(), host_tokens_.begin());

  // Vocab-parallel: each rank adds the rows of its vocabulary slice (rank 0 also wpe), summed over ranks.
  const bool first_rank = tp_.rank == 0;
  ops_.embedding_forward(rows(encoded_, C), tok, w_.wte, first_rank ? w_.wpe : zero_wpe_.view(), B, T, C,
                         local_.vocab_begin, local_.vocab_rows);
  tp_all_reduce(rows(encoded_, C));
  for (int l = 0; l < cfg_.n_layer; l++) {
    BlockActivations& a = blocks_[l];
    // ln_1 of block 0 reads the embedding; later blocks' ln_1 was fused into the previous block's end.
    if (l == 0)
      ops_.layernorm_forward(rows(a.ln1, C), rows(a.ln1_mean, 1), rows(a.ln1_rstd, 1), rows(encoded_, C),
                             w_.blocks[0].ln1_w, w_.blocks[0].ln1_b, N, C);
    block_forward(l, B, T);
    // residual3 = residual2 + mlp; then the next block's ln_1, or ln_f after the last block.
    const bool last = l + 1 == cfg_.n_layer;
    const Buffer& ln_out = last ? lnf_ : blocks_[l + 1].ln1;
    const Buffer& ln_mean = last ? lnf_mean_ : blocks_[l + 1].ln1_mean;
    const Buffer& ln_rstd = last ? lnf_rstd_ : blocks_[l + 1].ln1_rstd;
    ops_.residual_layernorm_forward(rows(a.residual3, C), rows(ln_out, C), rows(ln_mean, 1), rows(ln_rstd, 1),
                                    rows(a.residual2, C), rows(a.fc_proj, C), last ? w_.lnf_w : w_.blocks[l + 1].ln1_w,
                                    last ? w_.lnf_b : w_.blocks[l + 1].ln1_b, N, C);
  }
  // Tied LM head: logits = ln_f(x) @ wte^T over this rank's vocabulary rows.
  ops_.matmul_forward(rows(logits_, Vp), rows(lnf_, C), w_.wte, Tensor{}, N, C, Vp);

  int64_t valid = 0;
  for (int32_t t : targets) valid += t >= 0;
  const float dloss = valid > 0 ? loss_scale / (float)valid : 0.0f;
  if (!tp_comm_) {
    ops_.cross_entropy(rows(losses_, 1), rows(logits_, Vp), tgt, N, cfg_.vocab_size, Vp, with_grad, dloss);
  } else {
    // Vocab-parallel: the slices' row max, sum-exp and target logit, combined by two all-reduces
    // (max, then sum-exp and target logit together); the logits are never gathered.
    const int columns = (int)std::clamp<int64_t>(cfg_.vocab_size - local_.vocab_begin, 0, Vp);  // real ones
    const Tensor max = rows(ce_max_, 1), global_max = rows(ce_global_max_, 1);
    const Tensor sums = ce_sums_.view().slice(0, 2 * N), sumexp = sums.slice(0, N), target = sums.slice(N, N);
    ops_.cross_entropy_stats(max, sumexp, target, rows(logits_, Vp), tgt, N, local_.vocab_begin, columns, Vp);
    ops_.copy(global_max, max);
    make_ready_for(ops_, *tp_comm_);
    tp_comm_->all_reduce_max(std::span<float>(global_max.f32(), (size_t)N));
    ops_.rescale_sumexp(sumexp, max, global_max, N);
    tp_all_reduce(sums);
    ops_.cross_entropy_from_stats(rows(losses_, 1), rows(logits_, Vp), tgt, global_max, sumexp, target, N,
                                  local_.vocab_begin, columns, Vp, with_grad, dloss);
  }
  ops_.download(std::span<float>(host_losses_.data(), N), rows(losses_, 1));
  double sum = 0;
  for (int64_t i = 0; i < N; i++) sum += host_losses_[i];
  return valid > 0 ? sum / (double)valid : 0.0;
}

// Reverse of run_forward. d_residual carries the gradient of the residual stream down the
// network; each layernorm's backward adds its branch's gradient into it.
void GPT::backward(int B, int T, const GradsReady& ready) {
  auto done = [&](Range r) {
    if (ready) ready(r.first, r.end - r.first);
  };
  const int64_t N = (int64_t)B * T;
  const int C = cfg_.n_embd, A = local_.attn_width, H = local_.mlp_width, Vp = local_.vocab_rows;
  auto rows = [N](const Buffer& b, int64_t width) { return b.view().slice(0, N * width); };
  const Tensor d_res = rows(d_residual_, C), d_ln = rows(d_ln_, C), d_qkv = rows(d_qkv_, 3 * A);
  const Tensor d_att = rows(d_att_, A), d_fc = rows(d_fc_, H);

  // logits_ now holds d(loss)/d(logits) (cross_entropy wrote it in place).
  ops_.matmul_backward(d_ln, g_.wte, Tensor{}, rows(logits_, Vp), rows(lnf_, C), w_.wte, N, C, Vp);
  tp_all_reduce(d_ln);  // column-parallel (over the vocabulary): each rank's part of d(ln_f)
  ops_.zero(d_res);
  ops_.layernorm_backward(d_res, g_.lnf_w, g_.lnf_b, d_ln, rows(blocks_.back().residual3, C), w_.lnf_w,
                          rows(lnf_mean_, 1), rows(lnf_rstd_, 1), N, C);
  done(lnf_range_);
  for (int l = cfg_.n_layer - 1; l >= 0; l--) {
    const BlockTensors &w = w_.blocks[l], &g = g_.blocks[l];
    BlockActivations& a = blocks_[l];
    const Tensor residual = l == 0 ? rows(encoded_, C) : rows(blocks_[l - 1].residual3, C);
    if (recompute_ == Recompute::block) {  // the block again, from its kept input
      ops_.layernorm_forward(rows(a.ln1, C), rows(a.ln1_mean, 1), rows(a.ln1_rstd, 1), residual, w.ln1_w, w.ln1_b, N,
                             C);
      block_forward(l, B, T);
    }
    if (recompute_ == Recompute::mlp) ops_.gelu_forward(rows(a.fc_gelu, H), rows(a.fc, H), N * H);
    // MLP branch: residual3 = residual2 + c_proj(gelu(c_fc(ln_2(residual2)))).
    ops_.matmul_gelu_backward(d_fc, g.fc_b, g.fc_proj_w, g.fc_proj_b, d_res, rows(a.fc_gelu, H), w.fc_proj_w,
                              rows(a.fc, H), N, H, C);
    ops_.matmul_backward(d_ln, g.fc_w, Tensor{}, d_fc, rows(a.ln2, C), w.fc_w, N, C, H);  // fc_b: just above
    tp_all_reduce(d_ln);
    ops_.layernorm_backward(d_res, g.ln2_w, g.ln2_b, d_ln, rows(a.residual2, C), w.ln2_w, rows(a.ln2_mean, 1),
                            rows(a.ln2_rstd, 1), N, C);
    // Attention branch: residual2 = residual + c_proj(attention(c_attn(ln_1(residual)))).
    ops_.matmul_backward(d_att, g.attn_proj_w, g.attn_proj_b, d_res, rows(a.att, A), w.attn_proj_w, N, A, C);
    ops_.attention_backward(d_qkv, d_att, rows(a.qkv, 3 * A), rows(a.att, A), rows(a.lse, local_.heads), B, T,
                            local_.heads, local_.head_size);
    ops_.matmul_backward(d_ln, g.qkv_w, g.qkv_b, d_qkv, rows(a.ln1, C), w.qkv_w, N, C, 3 * A);
    tp_all_reduce(d_ln);
    ops_.layernorm_backward(d_res, g.ln1_w, g.ln1_b, d_ln, residual, w.ln1_w, rows(a.ln1_mean, 1), rows(a.ln1_rstd, 1),
                            N, C);
    done(block_ranges_[l]);
  }
  ops_.embedding_backward(g_.wte, g_.wpe, d_res, rows(tokens_, 1), std::span<const int32_t>(host_tokens_.data(), N), B,
                          T, C, local_.vocab_begin, local_.vocab_rows);
  done(embedding_range_);  // wte is final only now: the tied LM head wrote into it first
}

}  // namespace kiln
