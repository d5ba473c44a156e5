// Tests of kernels/device/mma.h (mma.sync m16n8k16, ldmatrix, cp.async) on the emulator and, built
// with nvcc, on a GPU. The host references are written from the PTX ISA's fragment figures, in the
// opposite direction from the emulator where possible (scatter here, gather there).
#include "kernels/device/cuda_lang.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/device/mma.h"
#include "kernels/device/runtime.h"
#include "tests/device_test.h"

namespace kiln::KILN_NS {
namespace {

// ---- host helpers --------------------------------------------------------------------------------

uint16_t to_bf16(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
float from_bf16(uint16_t bits) {
  const uint32_t u = uint32_t(bits) << 16;  // bf16 is the top half of an fp32
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
uint16_t to_f16(float x) { return __half_as_ushort(__float2half_rn(x)); }
float from_f16(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }

std::vector<uint16_t> random_values(size_t n, uint16_t (*convert)(float), std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<uint16_t> v(n);
  for (uint16_t& x : v) x = convert(dist(rng));
  return v;
}

// ---- mma.m16n8k16: one warp, fragments loaded straight from global memory ------------------------

__device__ __forceinline__ uint32_t pack(uint16_t lo, uint16_t hi) { return uint32_t(lo) | uint32_t(hi) << 16; }

// A: 16x16 row-major; B: 16x8 with B[k * 8 + n]; C, D: 16x8 row-major.
template <bool kBf16>
__global__ void mma_one_warp(const uint16_t* A, const uint16_t* B, const float* C, float* D) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  // Per register (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"):
  // a register j: row g (+8 for odd j), columns 2t, 2t+1 (+8 for j >= 2);
  // b register j: k rows 2t, 2t+1 (+8 for j = 1), column g; c_i: row g (+8 for i >= 2), column 2t + i%2.
  uint32_t a[4], b[2];
  float c[4], d[4];
  for (int j = 0; j < 4; j++) {
    const int row = g + 8 * (j % 2), col = 2 * t + 8 * (j / 2);
    a[j] = pack(A[row * 16 + col], A[row * 16 + col + 1]);
  }
  for (int j = 0; j < 2; j++) {
    const int k = 2 * t + 8 * j;
    b[j] = pack(B[k * 8 + g], B[(k + 1) * 8 + g]);
  }
  for (int i = 0; i < 4; i++) c[i] = C[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2];
  if constexpr (kBf16)
    mma_m16n8k16_bf16(d, a, b, c);
  else
    mma_m16n8k16_f16(d, a, b, c);
  for (int i = 0; i < 4; i++) D[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = d[i];
}

template <bool kBf16>
void check_mma_one_warp(uint32_t seed) {
  std::mt19937 rng(seed);
  uint16_t (*to)(float) = kBf16 ? to_bf16 : to_f16;
  float (*from)(uint16_t) = kBf16 ? from_bf16 : from_f16;
  const std::vector<uint16_t> A = random_values(16 * 16, to, rng), B = random_values(16 * 8, to, rng);
  std::vector<float> C(16 * 8);
  for (float& x : C) x = std::uniform_real_distribution<float>(-4.0f, 4.0f)(rng);
  Stream s;
  DeviceBuffer<uint16_t> a(A.size()), b(B.size());
  DeviceBuffer<float> c(C.size()), d(C.size());
  a.upload(A, s);
  b.upload(B, s);
  c.upload(C, s);
  launch(mma_one_warp<kBf16>, 1, 32, 0, s, a.data(), b.data(), c.data(), d.data());
  const std::vector<float> D = d.to_host(s);
  double worst = 0;
  for (int m = 0; m < 16; m++)
    for (int n = 0; n < 8; n++) {
      float want = C[m * 8 + n];  // the emulator's documented order: c, then k = 0..15
      double scale = std::fabs(want);
      for (int k = 0; k < 16; k++) {
        want += from(A[m * 16 + k]) * from(B[k * 8 + n]);
        scale += std::fabs(from(A[m * 16 + k]) * from(B[k * 8 + n]));
      }
      const double err = std::fabs(D[m * 8 + n] - want) / scale;
      worst = std::max(worst, err);
      EXPECT_LE(err, 1e-5) << "D[" << m << "][" << n << "] = " << D[m * 8 + n] << ", want " << want;
#ifdef KILN_EMU
      EXPECT_EQ(D[m * 8 + n], want) << "D[" << m << "][" << n << "]: the emulator sums in a fixed order";
#endif
    }
  std::printf("mma m16n8k16 %s: max relative error %.3g\n", kBf16 ? "bf16" : "f16", worst);
}

using Mma = DeviceTest;
using Ldmatrix = DeviceTest;
using CpAsync = DeviceTest;
using Gemm = DeviceTest;

TEST_F(Mma, M16n8k16Bf16MatchesTheHostProduct) {
  for (uint32_t seed : {1u, 2u, 3u}) check_mma_one_warp<true>(seed);
}

TEST_F(Mma, M16n8k16F16MatchesTheHostProduct) {
  for (uint32_t seed : {4u, 5u}) check_mma_one_warp<false>(seed);
}

// ---- ldmatrix ------------------------------------------------------------------------------------

// Copies `tile` to shared memory; lane l then loads with its row address at shared[offset[l]].
template <int kNum, bool kTrans>
__global__ void ldmatrix_kernel(const uint16_t* tile, int elems, const int* offset, uint32_t* out) {
  uint16_t* smem = dynamic_shared<uint16_t>();
  for (int i = threadIdx.x; i < elems; i += blockDim.x) smem[i] = tile[i];
  __syncthreads();
  const int lane = threadIdx.x;
  uint32_t r[kNum];
  const uint16_t* row = smem + offset[lane];
  if constexpr (kNum == 1 && !kTrans) ldmatrix_x1(r, row);
  if constexpr (kNum == 1 && kTrans) ldmatrix_x1_trans(r, row);
  if constexpr (kNum == 2 && !kTrans) ldmatrix_x2(r, row);
  if constexpr (kNum == 2 && kTrans) ldmatrix_x2_trans(r, row);
  if constexpr (kNum == 4 && !kTrans) ldmatrix_x4(r, row);
  if constexpr (kNum == 4 && kTrans) ldmatrix_x4_trans(r, row);
  for (int i = 0; i < kNum; i++) out[lane * 4 + i] = r[i];
}

template <int kNum, bool kTrans>
void check_ldmatrix() {
  SCOPED_TRACE("ldmatrix x" + std::to_string(kNum) + (kTrans ? ".trans" : ""));
  // A 32 x 24 tile of distinct values; row stride 48 bytes keeps every 8-column start 16-byte aligned.
  constexpr int kRows = 32, kCols = 24;
  std::vector<uint16_t> tile(kRows * kCols);
  for (int r = 0; r < kRows; r++)
    for (int c = 0; c < kCols; c++) tile[r * kCols + c] = uint16_t(0x1000 + r * 64 + c);
  // Lane l addresses a scattered row (13 is odd, so l -> 13 l + 5 mod 32 is a permutation) at
  // column 0, 8 or 16; lanes beyond 8 * kNum give the tile's start, which the instruction ignores.
  std::vector<int> offset(32, 0);
  for (int l = 0; l < 8 * kNum; l++) offset[l] = ((13 * l + 5) % kRows) * kCols + 8 * (l % 3);
  // Expected registers, by scattering each element of each matrix to its lane (ISA figure for
  // ldmatrix: row r of an 8x8 matrix is held by lanes 4r..4r+3, two consecutive elements each,
  // the even column in the low half); .trans delivers the transpose, so stored element (r, c)
  // lands where (c, r) would.
  std::vector<uint32_t> want(32 * 4, 0);
  for (int i = 0; i < kNum; i++)
    for (int r = 0; r < 8; r++)
      for (int c = 0; c < 8; c++) {
        const uint16_t v = tile[offset[8 * i + r] + c];
        const int row = kTrans ? c : r, col = kTrans ? r : c;
        want[(4 * row + col / 2) * 4 + i] |= uint32_t(v) << (16 * (col % 2));
      }
  Stream s;
  DeviceBuffer<uint16_t> t(tile.size());
  DeviceBuffer<int> o(offset.size());
  DeviceBuffer<uint32_t> out(32 * 4);
  t.upload(tile, s);
  o.upload(offset, s);
  out.fill_bytes(0, s);
  launch(ldmatrix_kernel<kNum, kTrans>, 1, 32, tile.size() * sizeof(uint16_t), s, t.data(), (int)tile.size(), o.data(),
         out.data());
  const std::vector<uint32_t> got = out.to_host(s);
  for (int lane = 0; lane < 32; lane++)
    for (int i = 0; i < kNum; i++)
      EXPECT_EQ(got[lane * 4 + i], want[lane * 4 + i]) << "lane " << lane << " register " << i << std::hex << ": got 0x"
                                                       << got[lane * 4 + i] << ", want 0x" << want[lane * 4 + i];
}

TEST_F(Ldmatrix, X1X2X4MatchTheIsaLayout) {
  check_ldmatrix<1, false>();
  check_ldmatrix<2, false>();
  check_ldmatrix<4, false>();
}

TEST_F(Ldmatrix, TransposedX1X2X4MatchTheIsaLayout) {
  check_ldmatrix<1, true>();
  check_ldmatrix<2, true>();
  check_ldmatrix<4, true>();
}

// ---- cp.async ------------------------------------------------------------------------------------

// 16 bytes, the unit of cp_async_16. (Not uint4: a global-namespace type would let argument-dependent
// lookup find the toolkit's ::cudaFree next to the emulator's in DeviceBuffer.)
struct Chunk {
  alignas(16) uint32_t w[4];
};

// 32 threads; thread t copies chunk t (group 0, whole) and chunk 32 + t (group 1, only t % 17 of its
// 16 bytes, the rest zero-filled) into shared memory, and records what it reads at each stage.
__global__ void cp_async_groups(const Chunk* src, Chunk* early, Chunk* mid0, Chunk* mid1, Chunk* late1, Chunk* all) {
  Chunk* smem = dynamic_shared<Chunk>();
  const int t = threadIdx.x;
  cp_async_16(&smem[t], &src[t]);
  cp_async_commit();
  cp_async_16(&smem[32 + t], &src[32 + t], t % 17);
  cp_async_commit();
  early[t] = smem[t];  // before any wait: a race on the GPU, poison on the emulator
  cp_async_wait<1>();
  mid0[t] = smem[t];       // group 0 has landed
  mid1[t] = smem[32 + t];  // group 1 may still be in flight
  cp_async_wait<0>();
  late1[t] = smem[32 + t];
  cp_async_16(&smem[64 + t], &src[t]);  // never committed: wait_all covers it too
  cp_async_wait_all();
  all[t] = smem[64 + t];
}

struct CpAsyncRun {
  std::vector<Chunk> src, early, mid0, mid1, late1, all;
};

CpAsyncRun run_cp_async_groups() {
  CpAsyncRun run;
  run.src.resize(64);
  std::mt19937 rng(7);
  for (Chunk& v : run.src)
    for (uint32_t& w : v.w) w = (uint32_t)rng();
  Stream s;
  DeviceBuffer<Chunk> src(64), early(32), mid0(32), mid1(32), late1(32), all(32);
  src.upload(run.src, s);
  launch(cp_async_groups, 1, 32, 96 * sizeof(Chunk), s, src.data(), early.data(), mid0.data(), mid1.data(),
         late1.data(), all.data());
  run.early = early.to_host(s);
  run.mid0 = mid0.to_host(s);
  run.mid1 = mid1.to_host(s);
  run.late1 = late1.to_host(s);
  run.all = all.to_host(s);
  return run;
}

TEST_F(CpAsync, CopiesZeroFillsAndWaitsByGroup) {
  const CpAsyncRun run = run_cp_async_groups();
  for (int t = 0; t < 32; t++) {
    EXPECT_EQ(std::memcmp(&run.mid0[t], &run.src[t], 16), 0) << "thread " << t << ": group 0 after wait_group 1";
    unsigned char want[16] = {};
    std::memcpy(want, &run.src[32 + t], t % 17);
    EXPECT_EQ(std::memcmp(&run.late1[t], want, 16), 0) << "thread " << t << ": " << t % 17 << " bytes then zeros";
    EXPECT_EQ(std::memcmp(&run.all[t], &run.src[t], 16), 0) << "thread " << t << ": after wait_all";
  }
}

#ifdef KILN_EMU
// Expected failure, made visible: a read of a cp.async destination before the wait that covers it
// sees the emulator's poison (0xff bytes: NaN as bf16), never the data.
TEST_F(CpAsync, ReadBeforeWaitSeesPoison) {
  const CpAsyncRun run = run_cp_async_groups();
  for (int t = 0; t < 32; t++) {
    uint16_t early[8], pending[8];
    std::memcpy(early, &run.early[t], 16);
    std::memcpy(pending, &run.mid1[t], 16);
    for (int i = 0; i < 8; i++) {
      EXPECT_EQ(early[i], 0xffff) << "thread " << t << ": read before any wait";
      EXPECT_TRUE(std::isnan(from_bf16(early[i])));
      EXPECT_EQ(pending[i], 0xffff) << "thread " << t << ": group 1 still pending after wait_group 1";
    }
  }
}

// Every lane's address is misaligned, so the first lane to run fails before any lane waits in the
// collective (a lane left waiting in a failed block is not cleaned up by the engine).
__global__ void ldmatrix_misaligned(uint32_t* out) {
  const unsigned char* smem = dynamic_shared<unsigned char>();
  uint32_t r[4];
  ldmatrix_x4(r, smem + 16 * (threadIdx.x % 8) + 2);
  out[threadIdx.x] = r[0];
}

__global__ void cp_async_misaligned(const Chunk* src) {
  unsigned char* smem = dynamic_shared<unsigned char>();
  cp_async_16(smem + 16 * threadIdx.x + 8, src);
  cp_async_wait_all();
}

template <class Body>
std::string launch_error(Body body) {
  try {
    Stream s;
    body(s);
    s.synchronize();
  } catch (const std::runtime_error& e) {
    (void)cudaGetLastError();  // consumed here, so that later tests start clean
    return e.what();
  }
  return "";
}

TEST_F(Ldmatrix, MisalignedRowAddressIsReported) {
  DeviceBuffer<uint32_t> out(32);
  const std::string error =
      launch_error([&](const Stream& s) { launch(ldmatrix_misaligned, 1, 32, 256, s, out.data()); });
  EXPECT_NE(error.find("ldmatrix.m8n8.x4"), std::string::npos) << error;
  EXPECT_NE(error.find("not 16-byte aligned"), std::string::npos) << error;
}

TEST_F(CpAsync, MisalignedAddressIsReported) {
  DeviceBuffer<Chunk> src(1);
  const std::string error =
      launch_error([&](const Stream& s) { launch(cp_async_misaligned, 1, 32, 1024, s, src.data()); });
  EXPECT_NE(error.find("cp.async"), std::string::npos) << error;
  EXPECT_NE(error.find("16-byte aligned"), std::string::npos) << error;
}
#endif

// ---- a tiled bf16 GEMM: cp.async double buffering, ldmatrix, mma ---------------------------------

// C[M,N] = A[M,K] B[K,N], all row-major, M and N multiples of 64, K a multiple of 32. A block of
// 4 warps computes a 64x64 tile, each warp a 32x32 quarter (2 x 4 mma tiles of 16x8). K advances
// 32 at a time through two shared-memory stages: while one is multiplied, the next is in flight.
constexpr int kBM = 64, kBN = 64, kBK = 32, kGemmThreads = 128;
// Rows padded by 8 elements (16 bytes): starts stay 16-byte aligned for ldmatrix and cp.async,
// and the 8 rows one ldmatrix reads fall in different banks.
constexpr int kAStride = kBK + 8, kBStride = kBN + 8;
constexpr int kAStage = kBM * kAStride, kBStage = kBK * kBStride;
constexpr size_t kGemmSmem = 2 * (kAStage + kBStage) * sizeof(uint16_t);

__device__ void gemm_load_stage(uint16_t* As, uint16_t* Bs, const uint16_t* A, const uint16_t* B, int N, int K, int m0,
                                int n0, int k0) {
  for (int c = threadIdx.x; c < kBM * kBK / 8; c += kGemmThreads) {  // 16-byte chunks of the A tile
    const int r = c / (kBK / 8), col = c % (kBK / 8) * 8;
    cp_async_16(As + r * kAStride + col, A + (size_t)(m0 + r) * K + k0 + col);
  }
  for (int c = threadIdx.x; c < kBK * kBN / 8; c += kGemmThreads) {  // and of the B tile
    const int r = c / (kBN / 8), col = c % (kBN / 8) * 8;
    cp_async_16(Bs + r * kBStride + col, B + (size_t)(k0 + r) * N + n0 + col);
  }
}

__global__ void gemm_bf16(const uint16_t* A, const uint16_t* B, float* C, int M, int N, int K) {
  // Stage s: A tile at As + s * kAStage, B tile at Bs + s * kBStage (computed, not a pointer
  // array: an array indexed by kt % 2 would live in local memory).
  uint16_t* As = dynamic_shared<uint16_t>();
  uint16_t* Bs = As + 2 * kAStage;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  const int wm = warp / 2 * 32, wn = warp % 2 * 32;
  (void)M;
  float acc[2][4][4] = {};
  const int tiles = K / kBK;
  gemm_load_stage(As, Bs, A, B, N, K, m0, n0, 0);
  cp_async_commit();
  for (int kt = 0; kt < tiles; kt++) {
    if (kt + 1 < tiles) {
      gemm_load_stage(As + (kt + 1) % 2 * kAStage, Bs + (kt + 1) % 2 * kBStage, A, B, N, K, m0, n0, (kt + 1) * kBK);
      cp_async_commit();
      cp_async_wait<1>();  // all but the newest group: tile kt
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // every thread's part of tile kt has landed
    const uint16_t* as = As + kt % 2 * kAStage;
    const uint16_t* bs = Bs + kt % 2 * kBStage;
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t a[2][4], b[4][2];
      // A 16x16 block as four 8x8 matrices: lanes 0-15 give rows 0-15 at column 0, lanes 16-31 at 8.
      for (int mi = 0; mi < 2; mi++)
        ldmatrix_x4(a[mi], as + (wm + mi * 16 + lane % 16) * kAStride + kk + lane / 16 * 8);
      // B is stored k-major; .trans turns two 16x8 (k x n) blocks into col-major b fragments.
      for (int nj = 0; nj < 2; nj++) {
        uint32_t r[4];
        ldmatrix_x4_trans(r, bs + (kk + lane % 16) * kBStride + wn + nj * 16 + lane / 16 * 8);
        b[2 * nj][0] = r[0];
        b[2 * nj][1] = r[1];
        b[2 * nj + 1][0] = r[2];
        b[2 * nj + 1][1] = r[3];
      }
      for (int mi = 0; mi < 2; mi++)
        for (int ni = 0; ni < 4; ni++) mma_m16n8k16_bf16(acc[mi][ni], a[mi], b[ni], acc[mi][ni]);
    }
    __syncthreads();  // no warp still reads this stage when the next iteration refills it
  }
  for (int mi = 0; mi < 2; mi++)
    for (int ni = 0; ni < 4; ni++)
      for (int i = 0; i < 4; i++) {
        const int row = m0 + wm + mi * 16 + lane / 4 + 8 * (i / 2), col = n0 + wn + ni * 8 + 2 * (lane % 4) + i % 2;
        C[(size_t)row * N + col] = acc[mi][ni][i];
      }
}

struct GemmProblem {
  int M, N, K;
  std::vector<uint16_t> A, B;
};

GemmProblem make_gemm(int M, int N, int K, uint32_t seed) {
  std::mt19937 rng(seed);
  return {M, N, K, random_values((size_t)M * K, to_bf16, rng), random_values((size_t)K * N, to_bf16, rng)};
}

std::vector<float> run_gemm(const GemmProblem& p) {
  Stream s;
  DeviceBuffer<uint16_t> a(p.A.size()), b(p.B.size());
  DeviceBuffer<float> c((size_t)p.M * p.N);
  a.upload(p.A, s);
  b.upload(p.B, s);
  launch(gemm_bf16, dim3(p.N / kBN, p.M / kBM), kGemmThreads, kGemmSmem, s, a.data(), b.data(), c.data(), p.M, p.N,
         p.K);
  return c.to_host(s);
}

TEST_F(Gemm, TiledBf16MatchesTheHostTripleLoop) {
  // K = 96: an odd number of K tiles (3), so the stages do not simply alternate in pairs.
  const int shapes[][3] = {{128, 128, 64}, {64, 192, 128}, {128, 64, 96}, {256, 256, 256}};
  for (const auto& shape : shapes) {
    const int M = shape[0], N = shape[1], K = shape[2];
    SCOPED_TRACE(std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K));
    const GemmProblem p = make_gemm(M, N, K, 11 + M + N + K);
    const std::vector<float> got = run_gemm(p);
    double worst = 0, worst_abs = 0;
    int mismatches = 0, inexact = 0;
    for (int m = 0; m < M; m++)
      for (int n = 0; n < N; n++) {
        float want = 0;  // sequential in k, in fp32: the emulator's documented mma order
        double scale = 0;
        for (int k = 0; k < K; k++) {
          const float x = from_bf16(p.A[(size_t)m * K + k]) * from_bf16(p.B[(size_t)k * N + n]);
          want += x;
          scale += std::fabs(x);
        }
        const double diff = std::fabs((double)got[(size_t)m * N + n] - want);
        worst = std::max(worst, diff / scale);
        worst_abs = std::max(worst_abs, diff);
        mismatches += !(diff <= 1e-3 * scale);  // also counts NaN
        inexact += got[(size_t)m * N + n] != want;
      }
    std::printf("gemm %dx%dx%d: max error %.3g (%.3g relative to sum |a b|)\n", M, N, K, worst_abs, worst);
    EXPECT_EQ(mismatches, 0) << "elements off by more than 1e-3 relative";
#ifdef KILN_EMU
    EXPECT_EQ(inexact, 0) << "the emulator's fp32 sum order is that of the host loop";
#else
    (void)inexact;
#endif
  }
}

#ifdef KILN_EMU
// A missing barrier or wait would make the result depend on the order the emulator runs threads in.
TEST_F(Gemm, SameBitsUnderForwardAndReverseThreadOrder) {
  const GemmProblem p = make_gemm(64, 192, 128, 99);
  emu::settings().order = emu::Order::forward;
  const std::vector<float> forward = run_gemm(p);
  emu::settings().order = emu::Order::reverse;
  const std::vector<float> reverse = run_gemm(p);
  ASSERT_EQ(forward.size(), reverse.size());
  EXPECT_EQ(std::memcmp(forward.data(), reverse.data(), forward.size() * sizeof(float)), 0);
}
#endif

}  // namespace
}  // namespace kiln::KILN_NS
