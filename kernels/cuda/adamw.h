// The optimizer step on the device, over all parameters at once (one flat buffer): AdamW with fp32
// master weights and moments and a bf16 copy of the parameters for the forward pass, plus the
// global gradient norm that clipping needs. The math is ref::adamw_update (kernels/ref/adamw_ref.cpp,
// torch.optim.AdamW with bias correction; clipping folded in as hp.grad_scale) and
// ref::sum_squares (kernels/ref/grad_norm_ref.cpp).
#pragma once

#include <cstdint>
#include <span>

#include "kernels/device/runtime.h"
#include "kernels/ref/ref.h"

namespace kiln::KILN_NS {

// The table's entries (kernels/ref/ref.h): one per tensor of the flat buffer.
using ref::AdamWRange;

// Throws std::invalid_argument unless the (host copy of the) table is usable by adamw_update:
// count >= 0, inside [0, n), sorted by offset and not overlapping. adamw_update reads the table
// on the device and cannot check it: check it once here, when it is built.
void check_adamw_ranges(std::span<const AdamWRange> ranges, int64_t n);

// One AdamW step on n parameters, in one launch:
//   g = hp.grad_scale * grads;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
//   master = master * (1 - lr wd) - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps);
//   params = bf16(master), rounded to nearest even.
// with wd = hp.weight_decay for elements inside a range with decay = true and 0 elsewhere (also for
// elements in no range). ranges: device array of num_ranges >= 1 entries, valid for
// check_adamw_ranges. master, grads, m, v must be 16-byte aligned and params 8-byte aligned
// (4 elements per access); hp as torch checks it: step >= 1, betas in [0, 1), lr, eps and
// weight_decay >= 0, and a finite grad_scale.
void adamw_update(const Stream& stream, float* master, __nv_bfloat16* params, const float* grads, float* m, float* v,
                  const AdamWRange* ranges, int num_ranges, int64_t n, const ref::AdamWParams& hp);

// result[0] = sum of grads[i]^2 over n values (the squared global norm), fp32, in two launches:
// kGradNormPartials blocks each sum a fixed strided share into partials[block], then one block
// sums the partials in a fixed tree. The split depends only on n, never on the device, so the
// result is bitwise the same on every run (and every GPU of one architecture). partials holds
// kGradNormPartials floats of scratch; grads must be 16-byte aligned.
inline constexpr int kGradNormPartials = 512;
void grad_norm_squared(const Stream& stream, float* result, float* partials, const float* grads, int64_t n);

}  // namespace kiln::KILN_NS
