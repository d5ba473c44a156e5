// glibc's libmvec provides vector versions of expf and tanhf; math.h declares them only under
// -ffast-math. Declaring the simd variants here lets `#pragma omp simd` loops call them without
// fast-math's other effects (NaN and infinity keep their meaning).
#pragma once

extern "C" {
__attribute__((simd("notinbranch"))) float expf(float) noexcept;
__attribute__((simd("notinbranch"))) float tanhf(float) noexcept;
}
