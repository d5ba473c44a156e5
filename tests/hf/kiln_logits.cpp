// kiln_logits CHECKPOINT OUT TOKEN...: the logits [T, vocab_size] of one sequence under a
// checkpoint's weights, from kiln's CPU training forward pass, as raw little-endian float32 (for
// tests/hf/check_transformers.py, which compares them with transformers' GPT-2).
#include <cstdlib>
#include <fstream>
#include <iostream>

#include "model/cpu_ops.h"
#include "model/gpt.h"
#include "train/checkpoint.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: kiln_logits CHECKPOINT OUT TOKEN...\n";
    return 2;
  }
  try {
    const kiln::CheckpointWeights ckpt = kiln::read_checkpoint_weights(kiln::resolve_checkpoint(argv[1]));
    std::vector<int32_t> tokens;
    for (int i = 3; i < argc; i++) tokens.push_back(std::atoi(argv[i]));
    const int T = (int)tokens.size(), V = ckpt.config.vocab_size, Vp = ckpt.config.padded_vocab();
    const auto ops = kiln::make_cpu_ops();
    kiln::GPT model(ckpt.config, *ops, 1, T);
    model.set_weights(ckpt.weights);
    model.forward(tokens, std::vector<int32_t>(T, -1), 1, T);
    std::vector<float> logits((size_t)T * Vp);
    model.download_logits(logits);
    std::ofstream out(argv[2], std::ios::binary);
    for (int t = 0; t < T; t++)
      out.write(reinterpret_cast<const char*>(logits.data() + (size_t)t * Vp), V * sizeof(float));
    if (!out) throw std::runtime_error(std::string(argv[2]) + ": write failed");
  } catch (const std::exception& e) {
    std::cerr << "kiln_logits: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
