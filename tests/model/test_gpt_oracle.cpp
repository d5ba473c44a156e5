// The CPU backend's GPT-2 against PyTorch: logits, loss, every parameter gradient and one AdamW
// step, from the fixture written by tests/oracle/make_gpt_fixture.py (computed in float64).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "data/h5.h"
#include "model/cpu_ops.h"
#include "model/gpt.h"
#include "train/optimizer.h"

namespace kiln {
namespace {

constexpr double kTolerance = 1e-4;  // fp32 against float64 gold

// max |got - want| / max |want|: the error relative to the tensor's scale.
double relative_error(std::span<const float> got, std::span<const double> want) {
  double max_err = 0, max_ref = 0;
  for (size_t i = 0; i < want.size(); i++) {
    if (!std::isfinite(got[i])) return INFINITY;
    max_err = std::max(max_err, std::abs((double)got[i] - want[i]));
    max_ref = std::max(max_ref, std::abs(want[i]));
  }
  return max_err / std::max(max_ref, 1e-30);
}

class GptOracle : public ::testing::Test {
 protected:
  void SetUp() override {
    cfg_.vocab_size = (int)fixture_.attribute<int64_t>("/", "vocab_size");
    cfg_.n_layer = (int)fixture_.attribute<int64_t>("/", "n_layer");
    cfg_.n_head = (int)fixture_.attribute<int64_t>("/", "n_head");
    cfg_.n_embd = (int)fixture_.attribute<int64_t>("/", "n_embd");
    cfg_.max_seq_len = (int)fixture_.attribute<int64_t>("/", "max_seq_len");
    B_ = (int)fixture_.attribute<int64_t>("/", "batch_size");
    T_ = (int)fixture_.attribute<int64_t>("/", "seq_len");
    ASSERT_GT(cfg_.padded_vocab(), cfg_.vocab_size) << "the fixture should exercise vocabulary padding";
    model_ = std::make_unique<GPT>(cfg_, *ops_, B_, T_);
    tokens_ = fixture_.read<int32_t>("tokens");
    targets_ = fixture_.read<int32_t>("targets");
    load_params();
  }

  // Fixture parameters into the model; the embedding's padding rows stay NaN-free zeros.
  void load_params() {
    std::vector<float> host(model_->layout().total(), 0.0f);
    for (const ParamSpec& s : model_->layout().specs()) {
      std::vector<int64_t> shape;
      const std::vector<float> values = fixture_.read<float>("params/" + s.name, &shape);
      if (s.name == "wte") {
        ASSERT_EQ(shape, (std::vector<int64_t>{cfg_.vocab_size, cfg_.n_embd}));
      } else {
        ASSERT_EQ(shape, s.shape) << s.name;
      }
      std::copy(values.begin(), values.end(), host.begin() + s.offset);
    }
    ops_->upload(model_->params(), host);
  }

  std::vector<float> download(const Tensor& t) {
    std::vector<float> out(t.numel);
    ops_->download(out, t);
    return out;
  }

  h5::File fixture_ = h5::File::open_read("tests/fixtures/gpt_oracle.h5");
  std::unique_ptr<Ops> ops_ = make_cpu_ops();
  GPTConfig cfg_;
  int B_ = 0, T_ = 0;
  std::unique_ptr<GPT> model_;
  std::vector<int32_t> tokens_, targets_;
};

TEST_F(GptOracle, LogitsAndLossMatchPyTorch) {
  const double loss = model_->forward(tokens_, targets_, B_, T_);
  const double want_loss = fixture_.read<double>("loss").at(0);
  EXPECT_NEAR(loss, want_loss, kTolerance * std::abs(want_loss));

  const int Vp = cfg_.padded_vocab(), V = cfg_.vocab_size;
  std::vector<float> padded((size_t)B_ * T_ * Vp, NAN);
  model_->download_logits(padded);
  std::vector<float> logits;  // drop the padding columns
  for (int n = 0; n < B_ * T_; n++) logits.insert(logits.end(), &padded[(size_t)n * Vp], &padded[(size_t)n * Vp + V]);
  const double err = relative_error(logits, fixture_.read<double>("logits"));
  std::printf("logits relative error %.3g, loss %.8f vs %.8f\n", err, loss, want_loss);
  EXPECT_LT(err, kTolerance);
}

TEST_F(GptOracle, EveryParameterGradientMatchesPyTorch) {
  model_->zero_grads();
  model_->forward_backward(tokens_, targets_, B_, T_);
  const std::vector<float> grads = download(model_->grads());
  double worst = 0;
  std::string worst_name;
  for (const ParamSpec& s : model_->layout().specs()) {
    const std::vector<double> want = fixture_.read<double>("grads/" + s.name);
    const std::span<const float> got(grads.data() + s.offset, want.size());
    const double err = relative_error(got, want);
    EXPECT_LT(err, kTolerance) << s.name;
    if (err > worst) worst = err, worst_name = s.name;
  }
  // Padding rows of the embedding never receive gradient.
  const ParamSpec& wte = model_->layout().find("wte");
  for (int64_t i = (int64_t)cfg_.vocab_size * cfg_.n_embd; i < wte.numel; i++)
    ASSERT_EQ(grads[wte.offset + i], 0.0f) << "wte padding element " << i;
  std::printf("worst gradient relative error %.3g (%s)\n", worst, worst_name.c_str());
}

TEST_F(GptOracle, OneAdamWStepMatchesTorchOptimAdamW) {
  OptimConfig o;
  o.lr = fixture_.attribute<double>("/adamw", "lr");
  o.beta1 = fixture_.attribute<double>("/adamw", "beta1");
  o.beta2 = fixture_.attribute<double>("/adamw", "beta2");
  o.eps = fixture_.attribute<double>("/adamw", "eps");
  o.weight_decay = fixture_.attribute<double>("/adamw", "weight_decay");
  AdamW adamw(*model_, o);
  model_->zero_grads();
  model_->forward_backward(tokens_, targets_, B_, T_);
  adamw.step(o.lr);
  const std::vector<float> params = download(model_->params());
  double worst = 0;
  for (const ParamSpec& s : model_->layout().specs()) {
    const std::vector<double> want = fixture_.read<double>("adamw/params/" + s.name);
    const double err = relative_error(std::span<const float>(params.data() + s.offset, want.size()), want);
    EXPECT_LT(err, kTolerance) << s.name;
    worst = std::max(worst, err);
  }
  std::printf("worst AdamW parameter relative error %.3g\n", worst);
}

}  // namespace
}  // namespace kiln
