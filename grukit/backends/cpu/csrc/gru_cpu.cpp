// grukit's fused CPU GRU: one layer, one direction, forward (inference and training) and backward through time.
//
// Shapes (PyTorch gate order r, z, n everywhere):
//   x: (T, B, I)   h0: (B, H)   w_ih: (3H, I)   w_hh: (3H, H)   b_ih, b_hh: (3H,) or none   lengths: (B,) int64
//   y: (T, B, H) in input time order   h_n: (B, H)
//
// Forward: the input side gi = x W_ih^T + b_ih (+ the r/z parts of b_hh, all of b_hh when reset_after is false),
// then a time loop in which each step computes h W_hh^T from a W_hh packed once per call so that each panel holds
// the r, z and n rows of the same kV hidden units, with the gate math applied from registers. The input side is
// one GEMM over all steps before the loop, except where both weight matrices fit in L2 and the batch fills the
// register tile (fuse_input): there each step also runs x_t W_ih^T from a packed W_ih into the same accumulators,
// which saves writing and re-reading the (T, B, 3H) gi buffer. Where W_ih is small (project_with_kernel) the GEMM
// is the same micro-kernel over all T*B rows, each thread projecting the panels its loop reads, instead of a call
// into MKL. At B = 1 (forward_loop_ahead, both forms) the loop itself projects the next block of 8 steps
// while it streams W_hh, in FMA slots the bandwidth-bound recurrent product leaves idle. The loop allocates nothing
// and calls no ATen operator. Training saves the gates and the state entering each step.
//
// Recurrent dropout and zoneout (Masks) run in forward_loop and its backward; layer norm (each gate's recurrent
// product normalised over its H units) needs a step's whole product before its gates: forward_loop_norm, one
// thread, with the input side computed and normalised by the caller.
//
// Backward: one fused loop per step (gate gradients, then dh_prev += dgh W_hh from a transposed packing; split over
// two threads by hidden units as the forward is, one barrier a step), then batched GEMMs for dx, dW_ih, dW_hh and
// the bias gradients.
//
// Vectors are GCC vector extensions sized to the widest ISA the compiler targets (-march=native picks AVX-512 or
// AVX2; anything else gets 16-byte vectors), so the same source builds everywhere.

#include <ATen/EmptyTensor.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "team.h"

namespace {

using grukit::Part;

#define GRUKIT_INLINE inline __attribute__((always_inline))

// Batch rows per micro-kernel: R rows x 3 gates accumulators, plus 3 weight vectors and a broadcast, must fit the
// vector registers (32 with AVX-512, 16 otherwise: 4 x 3 + 3 + 1, every one). On an AMD EPYC Zen 3 (AVX2) 4 rows
// against 3 (bench/ab_builds.py, one process): eval forward B8H256 1.15x, B8H64 1.09x, B64H256 1.07x, B16H512 1.06x,
// B64H1024 1.00-1.03x, reset_before B8H256 1.15x; training 0.97-1.02x.
#ifndef GRUKIT_MAX_ROWS
#if defined(__AVX512F__)
#define GRUKIT_MAX_ROWS 8
#else
#define GRUKIT_MAX_ROWS 4
#endif
#endif
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif
constexpr int kMaxRows = GRUKIT_MAX_ROWS;

template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(kVecBytes)));
  typedef int32_t I __attribute__((vector_size(kVecBytes)));
  static constexpr int N = kVecBytes / 4;
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(kVecBytes)));
  typedef int64_t I __attribute__((vector_size(kVecBytes)));
  static constexpr int N = kVecBytes / 8;
};

// Loads and stores of n <= N lanes (n == N is the hot path; the tail pads with zeros).
template <typename T>
GRUKIT_INLINE typename Simd<T>::V load(const T* p /* (n,) */, int n) {
  typename Simd<T>::V v;
  if (n == Simd<T>::N) {
    std::memcpy(&v, p, sizeof(v));
  } else {
    v = typename Simd<T>::V{};
    std::memcpy(&v, p, n * sizeof(T));
  }
  return v;
}

template <typename T>
GRUKIT_INLINE void store(T* p /* (n,) */, typename Simd<T>::V v, int n) {
  if (n == Simd<T>::N) {
    std::memcpy(p, &v, sizeof(v));
  } else {
    std::memcpy(p, &v, n * sizeof(T));
  }
}

// A broadcast; the initializer form compiles to one vbroadcastss/sd (a loop of lane stores does not).
template <typename T, size_t... L>
GRUKIT_INLINE typename Simd<T>::V splat_impl(T s, std::index_sequence<L...>) {
  return typename Simd<T>::V{((void)L, s)...};
}
template <typename T>
GRUKIT_INLINE typename Simd<T>::V splat(T s) {
  return splat_impl<T>(s, std::make_index_sequence<Simd<T>::N>{});
}

// ------------------------------------------------------------------------------------------------ activations

using VF = Simd<float>::V;
using IF = Simd<float>::I;

// exp(x) for float lanes, Cephes' polynomial: about 1 ulp relative error on [-87.3, 88]. With AVX-512 the 2^n
// factor is one vscalefps and the rounding one vroundscaleps instead of integer bit tricks.
GRUKIT_INLINE VF exp_f(VF x) {
  const VF lo = splat<float>(-87.3f), hi = splat<float>(88.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
#if defined(__AVX512F__)
  const VF n = (VF)_mm512_roundscale_ps((__m512)(x * 1.44269504088896341f), _MM_FROUND_TO_NEAREST_INT);
#else
  const VF magic = splat<float>(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const VF n = (x * 1.44269504088896341f + magic) - magic;
#endif
  VF r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  VF p = splat<float>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
#if defined(__AVX512F__)
  return (VF)_mm512_scalef_ps((__m512)p, (__m512)n);
#else
  IF bits = (__builtin_convertvector(n, IF) + 127) << 23;
  return p * (VF)bits;
#endif
}

// 1 / d for d >= 1: the hardware's reciprocal estimate and one Newton step (relative error below 1e-7, a few
// cycles instead of a division's latency and throughput).
GRUKIT_INLINE VF reciprocal(VF d) {
#if defined(__AVX512F__)
  const VF e = (VF)_mm512_rcp14_ps((__m512)d);
  return e * (2.0f - d * e);
#elif defined(__AVX__)
  const VF e = (VF)_mm256_rcp_ps((__m256)d);
  return e * (2.0f - d * e);
#else
  return 1.0f / d;
#endif
}

GRUKIT_INLINE VF sigmoid_v(VF x) { return reciprocal(1.0f + exp_f(-x)); }

// tanh(x) = 2 sigmoid(2x) - 1: one exp and one reciprocal, absolute error about 2e-7 (exp_f clamps, so no
// overflow: large |x| gives exactly +-1).
GRUKIT_INLINE VF tanh_v(VF x) { return 2.0f * reciprocal(1.0f + exp_f(-2.0f * x)) - 1.0f; }

// float64 lanes: libm per lane (float64 is for gradcheck and accuracy, not speed).
using VD = Simd<double>::V;
inline VD sigmoid_v(VD x) {
  VD out;
  for (int i = 0; i < Simd<double>::N; ++i) out[i] = 1.0 / (1.0 + std::exp(-x[i]));
  return out;
}
inline VD tanh_v(VD x) {
  VD out;
  for (int i = 0; i < Simd<double>::N; ++i) out[i] = std::tanh(x[i]);
  return out;
}

// ------------------------------------------------------------------------------------------------ packing

// Weights in bfloat16 (the stepper's opt-in): the upper 16 bits of a float32, rounded to nearest even, stored in
// pairs along k: one 32-bit lane holds the weights of k = 2i (low half) and k = 2i + 1 (high half), so a vector of
// N lanes widens to two float32 vectors with one shift and one mask (no cross-lane conversion).
using bf16_t = uint16_t;
using bf16x2_t = uint32_t;

GRUKIT_INLINE bf16_t to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<bf16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

// Rows of a panel along k: K for plain weights, ceil(K / 2) pairs for bfloat16.
template <typename W>
constexpr int64_t panel_depth(int64_t K) {
  return std::is_same_v<W, bf16x2_t> ? (K + 1) / 2 : K;
}

#if defined(__AVX512F__)
// out[d * stride + l] = rows[l][d] for l < 16, d < depth <= 16: a 16 x 16 transpose in registers (rows read one
// cache line each, masked past depth), four rounds of 16 shuffles instead of 256 scalar loads and strided stores.
constexpr int64_t kPackAhead = 128;  // floats: each row is prefetched 8 cache lines ahead of its reads
GRUKIT_INLINE void transpose_16x16(const float* rows /* (16, ld) */, int64_t ld, int depth, float* out,
                                   int64_t stride) {
  const __mmask16 mask = static_cast<__mmask16>((1u << depth) - 1u);
  __m512 r[16], t[16];
  for (int l = 0; l < 16; ++l) {
    r[l] = _mm512_maskz_loadu_ps(mask, rows + l * ld);
    _mm_prefetch(reinterpret_cast<const char*>(rows + l * ld + kPackAhead), _MM_HINT_T0);
  }
  for (int l = 0; l < 16; l += 2) {  // 32-bit interleave of row pairs, within each 128-bit lane
    t[l] = _mm512_unpacklo_ps(r[l], r[l + 1]);
    t[l + 1] = _mm512_unpackhi_ps(r[l], r[l + 1]);
  }
  auto lo64 = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  auto hi64 = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  for (int q = 0; q < 16; q += 4) {  // r[q + c], lane i: rows q..q+3 at d = 4i + c
    r[q] = lo64(t[q], t[q + 2]);
    r[q + 1] = hi64(t[q], t[q + 2]);
    r[q + 2] = lo64(t[q + 1], t[q + 3]);
    r[q + 3] = hi64(t[q + 1], t[q + 3]);
  }
  for (int c = 0; c < 4; ++c) {  // the 4 x 4 transpose of 128-bit lanes among r[c], r[4 + c], r[8 + c], r[12 + c]
    const __m512 a0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), a1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd);
    const __m512 b0 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
    const __m512 b1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
    t[c] = _mm512_shuffle_f32x4(a0, b0, 0x88);
    t[4 + c] = _mm512_shuffle_f32x4(a1, b1, 0x88);
    t[8 + c] = _mm512_shuffle_f32x4(a0, b0, 0xdd);
    t[12 + c] = _mm512_shuffle_f32x4(a1, b1, 0xdd);
  }
  for (int d = 0; d < depth; ++d) _mm512_storeu_ps(out + d * stride, t[d]);
}
#endif

// Forward packing: out[p][k][g][l] = w[row0 + g*H + p*N + l][k] (0 past H), panels p in [p_begin, min(p_end, P)) of
// P = ceil(H/N), N = T's lanes;
// W = bf16x2_t stores the weights rounded to bfloat16, in pairs along k (out[p][k/2][g][l], 0 past K).
template <typename T, typename W = T>
void pack_gate_panels(const T* w /* (rows, K) */, int64_t K, int64_t H, int64_t row0, int G,
                      W* out /* (P, panel_depth(K), G, N) */, int64_t p_begin = 0, int64_t p_end = INT64_MAX) {
  constexpr int N = Simd<T>::N;
  const int64_t P = (H + N - 1) / N;
  const int64_t D = panel_depth<W>(K);
  auto weight = [&](int64_t j, int g, int64_t k) { return j < H && k < K ? w[(row0 + g * H + j) * K + k] : T(0); };
  for (int64_t p = p_begin; p < std::min(p_end, P); ++p) {
    if constexpr (std::is_same_v<T, W>) {
      if ((p + 1) * N <= H) {  // a full panel, no bounds to check: one cache line of each of its G*N rows at a time
        // (a gather along k would step through rows K apart, which share L1 sets when K * sizeof(T) is a multiple
        // of 4 KiB: packing W_hh at H = 1024 took 9 ms)
        constexpr int64_t kLine = 64 / sizeof(T);
#if defined(__AVX512F__)
        if constexpr (std::is_same_v<T, float> && N == 16) {  // one gate's 16 rows at a time: 16 read streams
          for (int g = 0; g < G; ++g)
            for (int64_t d0 = 0; d0 < D; d0 += kLine)
              transpose_16x16(w + (row0 + g * H + p * N) * K + d0, K, static_cast<int>(std::min(kLine, D - d0)),
                              out + ((p * D + d0) * G + g) * N, G * N);
          continue;
        }
#endif
        for (int64_t d0 = 0; d0 < D; d0 += kLine) {
          const int64_t d1 = std::min(D, d0 + kLine);
          for (int g = 0; g < G; ++g)
            for (int l = 0; l < N; ++l) {
              const T* row = w + (row0 + g * H + p * N + l) * K;
              W* o = out + (p * D * G + g) * N + l;
              for (int64_t d = d0; d < d1; ++d) o[d * G * N] = row[d];
            }
        }
        continue;
      }
    }
    for (int64_t d = 0; d < D; ++d)
      for (int g = 0; g < G; ++g)
        for (int l = 0; l < N; ++l) {
          const int64_t j = p * N + l;
          if constexpr (std::is_same_v<T, W>) {
            out[((p * D + d) * G + g) * N + l] = weight(j, g, d);
          } else {
            static_assert(std::is_same_v<T, float> && std::is_same_v<W, bf16x2_t>, "bfloat16 serves float32 only");
            out[((p * D + d) * G + g) * N + l] =
                bf16x2_t(to_bf16(weight(j, g, 2 * d))) | (bf16x2_t(to_bf16(weight(j, g, 2 * d + 1))) << 16);
          }
        }
  }
}

// Backward packing (the transpose): out[p][m][l] = w[m][p*N + l] (0 past H), m < M = 3H rows.
// Panels [p_begin, p_end) of P = ceil(H / N).
template <typename T>
void pack_column_panels(const T* w /* (M, H) */, int64_t M, int64_t H, T* out /* (P, M, N) */, int64_t p_begin,
                        int64_t p_end) {
  constexpr int N = Simd<T>::N;
  for (int64_t p = p_begin; p < p_end; ++p) {
    const int n = static_cast<int>(std::min<int64_t>(N, H - p * N));  // each row's N columns: one vector copied
    for (int64_t m = 0; m < M; ++m) store<T>(out + (p * M + m) * N, load<T>(w + m * H + p * N, n), N);
  }
}

// ------------------------------------------------------------------------------------------------ micro-kernel

// A vector of bfloat16 pairs widened to float32: the k = 2i weights (low halves) and the k = 2i + 1 ones (high).
GRUKIT_INLINE void widen_pairs(const bf16x2_t* p /* (N,) */, VF& even, VF& odd) {
  IF v;
  std::memcpy(&v, p, sizeof(v));
  even = (VF)(v << 16);
  odd = (VF)(v & IF{} - 65536);  // 0xFFFF0000 in every lane
}

// acc[r][g] = sum_k src[r][k] * panel[k/2][g][:] from bfloat16 pairs (float32 arithmetic), R rows, one panel.
template <int R, int G>
GRUKIT_INLINE void panel_product_pairs(const float* src /* (R, ld) rows, K used */, int64_t ld, int64_t K,
                                       const bf16x2_t* panel /* (ceil(K/2), G, N) */, VF (&acc)[R][G]) {
  constexpr int N = Simd<float>::N;
  VF odd_acc[R][G];
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < G; ++g) acc[r][g] = odd_acc[r][g] = VF{};
  const int64_t pairs = K / 2;
  int64_t d = 0;
  if constexpr (R == 1) {
    // One row: a second pair of chains over odd d, 4 G in all (2 G chains of 4-cycle FMAs, 6 at G = 3, ran the
    // FMA units at 3/4 at most), the second set's products after the first's (both at once spilled on AVX2's 16
    // registers: 0.93x). bf16 stepper, AMD EPYC Zen 3 (AVX2), bench/ab_builds.py: H64 1.03x, H256 1.05x, H1024 1.11x.
    VF acc2[G] = {}, odd2[G] = {};
    // Pair dd's products into the chains (e, o).
    auto pair_into = [&](int64_t dd, VF(&e)[G], VF(&o)[G]) __attribute__((always_inline)) {
      const VF se = splat<float>(src[2 * dd]), so = splat<float>(src[2 * dd + 1]);
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g) {
        VF we, wo;
        widen_pairs(panel + (dd * G + g) * N, we, wo);
        e[g] += se * we;
        o[g] += so * wo;
      }
    };
    for (; d + 2 <= pairs; d += 2) {
      pair_into(d, acc[0], odd_acc[0]);
      pair_into(d + 1, acc2, odd2);
    }
    for (int g = 0; g < G; ++g) {
      acc[0][g] += acc2[g];
      odd_acc[0][g] += odd2[g];
    }
  }
  for (; d < pairs; ++d) {
    VF we[G], wo[G];
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) widen_pairs(panel + (d * G + g) * N, we[g], wo[g]);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const VF se = splat<float>(src[r * ld + 2 * d]), so = splat<float>(src[r * ld + 2 * d + 1]);
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g) {
        acc[r][g] += se * we[g];
        odd_acc[r][g] += so * wo[g];
      }
    }
  }
  if (K % 2) {  // the last k has no partner (its high halves are zero)
    for (int g = 0; g < G; ++g) {
      VF we, wo;
      widen_pairs(panel + (pairs * G + g) * N, we, wo);
      for (int r = 0; r < R; ++r) acc[r][g] += splat<float>(src[r * ld + K - 1]) * we;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < G; ++g) acc[r][g] += odd_acc[r][g];
}

// v, held in a register. Without it GCC folds each weight load into every FMA that uses it (a memory operand per
// FMA): R loads of each weight vector instead of one, and on 16-register builds the 3-row tile's 9 FMAs then wait
// on 12 loads a k (two 32-byte loads a cycle), not on the FMA units.
template <typename V>
GRUKIT_INLINE V in_register(V v) {
#if defined(__SSE__) && !defined(__AVX512F__)  // AVX-512 builds as measured before (103-113 % of the floor)
  asm("" : "+x"(v));
#endif
  return v;
}

// acc[r][g] += src[r * ld] * w[g * N:] for one k: G weight vectors loaded once, R broadcasts.
template <typename T, int R, int G>
GRUKIT_INLINE void panel_row(const T* src, int64_t ld, const T* w, typename Simd<T>::V (&acc)[R][G]) {
  using V = typename Simd<T>::V;
  constexpr int N = Simd<T>::N;
  V wv[G];
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g) wv[g] = in_register(load<T>(w + g * N, N));
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const V s = splat<T>(src[r * ld]);
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) acc[r][g] += s * wv[g];
  }
}

// One core's L2 in bytes (sysconf; 512 KiB where it does not say).
inline int64_t l2_bytes() {
  static const int64_t bytes = [] {
    const long reported = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return reported > 0 ? int64_t{reported} : int64_t{512 << 10};
  }();
  return bytes;
}

// The next panel a loop reads, fetched into L2 a cache line at a time while the current one's row blocks run
// (panel_product's multi-row tiles call at(k) once per k they pass): where W_hh exceeds L2, a panel's first row
// block otherwise waits on L3 for each line (the hardware prefetcher does not run far enough ahead). On an AMD EPYC
// Zen 3 (AVX2, 512 KiB L2), the 4-row tile alone over 128 panels of 1024 x 24 floats (W_hh at H = 1024), 64 rows
// (bench/micro/panel_ahead.cpp): 71-78 GFLOP/s without, 84-89 with (16 panels, L2-resident: 82-86); forward_loop,
// bench/ab_builds.py: B8H1024 1.04-1.27x, B16H1024 1.21x, reset_before B8H1024 1.11x, B64H1024 1.00-1.04x. Not at
// B = 1, a stream the hardware prefetcher serves better (4 lines every 4 k made B1H512 0.85x, B1H1024 0.90x), and
// not for the step's gi rows (12 lines a row block ahead made B64H256 0.88x).
struct PanelAhead {
  const char* next = nullptr;
  const char* end = nullptr;
  int64_t mask = 0;  // a line every mask + 1 k

  // bytes at `panel`, over `blocks` row blocks of K k each: a line every 1, 2, 4 or 8 k, the sparsest that covers
  // the panel (or every k, where even that does not). None where the loop's panels (`streamed` bytes in all) fit
  // L2, nor for panels up to 32 KiB: those stay in L1 from the first row block on, and fetching the next one
  // beside them evicts them (AMD fills L1 whatever the hint; at H = 256, 24 KiB panels, the fetch made B = 64
  // 0.95x, reset_before B = 8 0.95x).
  // `panel` null: no next panel (the loop's last).
  template <typename W>
  GRUKIT_INLINE static PanelAhead over(const W* panel, int64_t bytes, int64_t blocks, int64_t K, int64_t streamed) {
    if (panel == nullptr || bytes <= (32 << 10) || streamed <= l2_bytes()) return PanelAhead{};
    const int64_t per_line = blocks * K / std::max<int64_t>(1, bytes / 64);
    int64_t every = 1;
    while (every < 8 && 2 * every <= per_line) every *= 2;
    const char* p = reinterpret_cast<const char*>(panel);
    return PanelAhead{p, p + bytes, every - 1};
  }

  // What panel_product takes: null where there is nothing to fetch (no test in its loop).
  PanelAhead* use() { return next < end ? this : nullptr; }

  GRUKIT_INLINE void at(int64_t k) {
    if ((k & mask) == 0 && next < end) {
      __builtin_prefetch(next, 0, 2);
      next += 64;
    }
  }
};

// acc[r][g] = sum_k src[r][k] * panel[k][g][:] for R batch rows and one panel of N hidden units (kAdd: added to
// what acc holds, in the same registers); kstride, the distance between the panel's k rows, is G * N for a packed
// panel (H for one read in place from (M, H) W_hh); src[r][k] is src[r * ld + k * sk] (sk = 1: rows; ld = 1 and sk
// the row length: the columns of a matrix).
template <typename T, int R, int G, bool kAdd = false>
GRUKIT_INLINE void panel_product(const T* src /* (R, ld) rows, K used */, int64_t ld, int64_t K,
                                 const T* panel /* (K, G, N) */, typename Simd<T>::V (&acc)[R][G],
                                 int64_t kstride = G * Simd<T>::N, int64_t sk = 1, PanelAhead* ahead = nullptr) {
  using V = typename Simd<T>::V;
  constexpr int N = Simd<T>::N;
  if constexpr (!kAdd) {
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < G; ++g) acc[r][g] = V{};
  }
  if constexpr (R == 1) {
    // One row: 4 independent accumulator chains over k hide the FMA latency (a stream of W at load bandwidth).
    V a1[G] = {}, a2[G] = {}, a3[G] = {};
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
      const T* w = panel + k * kstride;
      const V s0 = splat<T>(src[k * sk]), s1 = splat<T>(src[(k + 1) * sk]), s2 = splat<T>(src[(k + 2) * sk]),
              s3 = splat<T>(src[(k + 3) * sk]);
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g) {
        acc[0][g] += s0 * load<T>(w + g * N, N);
        a1[g] += s1 * load<T>(w + kstride + g * N, N);
        a2[g] += s2 * load<T>(w + 2 * kstride + g * N, N);
        a3[g] += s3 * load<T>(w + 3 * kstride + g * N, N);
      }
    }
    for (; k < K; ++k) {
      const V s = splat<T>(src[k * sk]);
      for (int g = 0; g < G; ++g) acc[0][g] += s * load<T>(panel + k * kstride + g * N, N);
    }
    for (int g = 0; g < G; ++g) acc[0][g] += (a1[g] + a2[g]) + a3[g];
  } else {
    // C chains over k where the tile has too few accumulators to cover the FMA latency (R * G < 8: the backward's
    // one-gate products, small row blocks; 3 chains of 4-cycle FMAs kept AVX2's 3-row one-gate tile at 3/8 of the
    // FMA rate), added at the end. Chain 0 is acc itself (more[0] unused).
    constexpr int C = std::min(4, std::max(1, 8 / (R * G)));
    V more[C][R][G];
    for (int c = 1; c < C; ++c)
      for (int r = 0; r < R; ++r)
        for (int g = 0; g < G; ++g) more[c][r][g] = V{};
    int64_t k = 0;
    for (; k + C <= K; k += C) {
      if (ahead) ahead->at(k);
      panel_row<T, R, G>(src + k * sk, ld, panel + k * kstride, acc);
#pragma GCC unroll 4
      for (int c = 1; c < C; ++c) panel_row<T, R, G>(src + (k + c) * sk, ld, panel + (k + c) * kstride, more[c]);
    }
    for (; k < K; ++k) panel_row<T, R, G>(src + k * sk, ld, panel + k * kstride, acc);
    for (int c = 1; c < C; ++c)
      for (int r = 0; r < R; ++r)
        for (int g = 0; g < G; ++g) acc[r][g] += more[c][r][g];
  }
}

template <int R>
using Rows = std::integral_constant<int, R>;

// Calls body(Rows<R>{}, b0) over row blocks of R in {kMaxRows, 4, 2, 1} covering [0, B); with kMaxRows = 4, a
// remainder of 3 rows is one block of 3 (as 2 + 1, B = 3 ran 0.86x the 3-row tile on an AMD EPYC Zen 3, AVX2).
template <typename F>
inline void for_row_blocks(int64_t B, F&& body) {
  int64_t b0 = 0;
  for (; b0 + kMaxRows <= B; b0 += kMaxRows) body(Rows<kMaxRows>{}, b0);
  if constexpr (kMaxRows > 4) {
    for (; b0 + 4 <= B; b0 += 4) body(Rows<4>{}, b0);
  }
  if constexpr (kMaxRows == 4) {
    if (b0 + 3 <= B) {
      body(Rows<3>{}, b0);
      b0 += 3;
    }
  }
  if constexpr (kMaxRows > 2) {
    for (; b0 + 2 <= B; b0 += 2) body(Rows<2>{}, b0);
  }
  for (; b0 < B; b0 += 1) body(Rows<1>{}, b0);
}

// How many row blocks for_row_blocks runs over B rows.
inline int64_t row_blocks(int64_t B) {
  int64_t blocks = 0;
  for_row_blocks(B, [&](auto, int64_t) { ++blocks; });
  return blocks;
}

// The panel a loop visits i-th (i in [begin, end)): begin + i forward, end - 1 - i backward. The loops over time
// alternate (forward on even steps, backward on odd ones: snake order), so a step starts on the panels the one
// before read last, still in cache. Weights a little larger than a cache level (W_hh at H = 64, 48 KiB, against a
// 32 KiB L1; W_ih and W_hh at H = 256, 1.5 MiB, against a 1 MiB L2) otherwise lose every line to LRU eviction just
// before it is read again. On an AMD EPYC, one thread, both builds A/B in one process: the streaming step (the
// stepper alternates from call to call) 6-8 % faster at H = 64, 8-15 % at H = 256, 18-39 % at H = 1024; the B = 1
// loop (forward_loop_ahead, T = 256) 1-5 % at H = 256, within noise (0.96-1.04x) at H = 64; forward_loop at B = 1
// (reset_after: weights past the ahead loop's 2 MiB, or masks) 2-6 % at H in {512, 1024}. forward_loop keeps one
// order at B >= 2 (1-6 % slower at B = 8 snaked) and in the reset_before form (1 % slower at B = 1, H = 1024), and
// so does the backward through time (0.95-1.04x at B = 1). Each panel's arithmetic is the same either way, so are
// the results.
GRUKIT_INLINE int64_t visit(int64_t begin, int64_t end, int64_t i, bool back) { return back ? begin + end - 1 - i : i; }

GRUKIT_INLINE bool valid_step(const int64_t* lengths /* (B,) or null */, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

// ------------------------------------------------------------------------------------------------ forward loop

// Where a step's input-side gate pre-activations x_t W_ih^T + folded biases come from: `gi`, computed for all steps
// by one GEMM before the loop, or (gi null) the loop itself, from W_ih packed like W_hh (wih, (P, I, 3, N)) and
// `fold` (3H,) or null: no (T, B, 3H) buffer to write and read back, and the micro-kernel's FLOP rate (small H and
// large B, where the GEMM runs below it).
template <typename T>
struct InputSide {
  const T* gi;    // (T, B, 3H) or null
  const T* x;     // (T, B, I) when gi is null
  const T* wih;   // (P, I, 3, N) when gi is null
  const T* fold;  // (3H,) or null
  int64_t I;
};

// f[g] = the folded input-side bias of gate g for the n hidden units from j0 (zeros when fold is null).
template <typename T>
GRUKIT_INLINE void load_gate_biases(const T* fold /* (3H,) or null */, int64_t H, int64_t j0, int n,
                                    typename Simd<T>::V (&f)[3]) {
  for (int g = 0; g < 3; ++g) f[g] = fold ? load<T>(fold + g * H + j0, n) : typename Simd<T>::V{};
}

// in[r][g] = the input-side pre-activation of gate g for rows b0 + r of step t, hidden units of panel p.
template <typename T, int R>
GRUKIT_INLINE void input_gates(const InputSide<T>& side, int64_t t, int64_t B, int64_t H, int64_t b0, int64_t p,
                               int n, typename Simd<T>::V (&in)[R][3]) {
  using V = typename Simd<T>::V;
  constexpr int N = Simd<T>::N;
  const int64_t j0 = p * N;
  if (side.gi != nullptr) {
    for (int r = 0; r < R; ++r) {
      const T* g = side.gi + (t * B + b0 + r) * 3 * H + j0;
      for (int q = 0; q < 3; ++q) in[r][q] = load<T>(g + q * H, n);
    }
    return;
  }
  const T* x = side.x + (t * B + b0) * side.I;
  const T* wih = side.wih + p * side.I * 3 * N;
  if (side.fold == nullptr) {
    panel_product<T, R, 3>(x, side.I, side.I, wih, in);
    return;
  }
  V f[3];
  load_gate_biases<T>(side.fold, H, j0, n, f);
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < 3; ++g) in[r][g] = f[g];
  panel_product<T, R, 3, true>(x, side.I, side.I, wih, in);
}

// The r and z pre-activations of rows b0 + r: the input side `in` (input_gates), then the recurrent product from
// `src` added in the same registers (no second set of accumulators to spill and sum); G = 3 adds the n product
// (reset_after's W_hn h, from zero into acc[r][2]; in[r][2] stays the input side of n).
template <typename T, int R, int G>
GRUKIT_INLINE void gate_preactivations(const typename Simd<T>::V (&in)[R][3], const T* src /* (R, H) rows */,
                                       int64_t H, const T* panel /* (H, G, N) */, typename Simd<T>::V (&acc)[R][G],
                                       PanelAhead* ahead = nullptr) {
  for (int r = 0; r < R; ++r) {
    acc[r][0] = in[r][0];
    acc[r][1] = in[r][1];
    if constexpr (G == 3) acc[r][2] = typename Simd<T>::V{};
  }
  panel_product<T, R, G, true>(src, H, H, panel, acc, G * Simd<T>::N, 1, ahead);
}

// gi[row][g*H + j] = x[row] W_ih^T + fold for the hidden units of panels [p_begin, p_end) and all T*B rows, from
// W_ih packed like W_hh ((P, I, 3, N)): the micro-kernel in place of a GEMM call where W_ih fits L2. Each thread of
// a split loop projects only its own panels (the only ones its loop reads), so no barrier separates the two.
template <typename T>
void project_input(const T* x /* (rows, I) */, const T* wih /* (P, I, 3, N) */, const T* fold /* (3H,) or null */,
                   T* gi /* (rows, 3H) out */, int64_t rows, int64_t I, int64_t H, int64_t p_begin, int64_t p_end) {
  using V = typename Simd<T>::V;
  constexpr int N = Simd<T>::N;
  // Chunks of rows whose x stays in L2 while every panel passes over them (all rows per panel streamed x from
  // memory once per panel), a multiple of kMaxRows so that each row sees the same tiles chunked or not.
  const int64_t chunk = std::max<int64_t>(1, (256 << 10) / (kMaxRows * I * int64_t{sizeof(T)})) * kMaxRows;
  const int64_t panel_bytes = sizeof(T) * I * 3 * N;
  for (int64_t c0 = 0; c0 < rows; c0 += chunk) {
    const int64_t c_rows = std::min(chunk, rows - c0);
    const T* xc = x + c0 * I;
    for (int64_t p = p_begin; p < p_end; ++p) {
      const int64_t j0 = p * N;
      const int n = static_cast<int>(std::min<int64_t>(N, H - j0));
      V f[3];
      load_gate_biases<T>(fold, H, j0, n, f);
      const T* panel = wih + p * I * 3 * N;
      PanelAhead ahead = PanelAhead::over(p + 1 < p_end ? panel + I * 3 * N : nullptr, panel_bytes,
                                          row_blocks(c_rows), I, panel_bytes * (p_end - p_begin));
      for_row_blocks(c_rows, [&](auto block, int64_t r0) {
        constexpr int R = decltype(block)::value;
        V acc[R][3];
        panel_product<T, R, 3>(xc + r0 * I, I, I, panel, acc, 3 * N, 1, ahead.use());
        T* out = gi + (c0 + r0) * 3 * H + j0;
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r)
          for (int g = 0; g < 3; ++g) store<T>(out + r * 3 * H + g * H, acc[r][g] + f[g], n);
      });
    }
  }
}

// The regularisers of a training call (grukit.nn.GRU samples the masks; see GRUMasks): `drop` scales the state
// entering the recurrent products (recurrent dropout, the same (B, H) mask every step, already divided by 1 - p);
// zoneout keeps a unit's previous value with weight k: h = h_new + k (h_prev - h_new), k from `keep` (T, B, H) of
// 0/1 in input time order, or the scalar keep_p (eval: the expectation). forward_loop serves them; the other loops
// do not (gru_forward routes masked calls there).
template <typename T>
struct Masks {
  const T* drop = nullptr;  // (B, H) or null
  const T* keep = nullptr;  // (T, B, H) or null
  T keep_p = 0;
  bool any() const { return drop != nullptr || zoneout(); }
  bool zoneout() const { return keep != nullptr || keep_p != T(0); }
  // k for rows b of step t, hidden units [j0, j0 + n).
  GRUKIT_INLINE typename Simd<T>::V keep_at(int64_t t, int64_t B, int64_t H, int64_t b, int64_t j0, int n) const {
    return keep ? load<T>(keep + (t * B + b) * H + j0, n) : splat<T>(keep_p);
  }
};

template <typename T, bool kResetAfter, bool kTrain>
void forward_loop(const InputSide<T>& side /* the input-side gate pre-activations */,
                  const T* wpack /* reset_after: (P, H, 3, N); else (P, H, 2, N) then (P, H, 1, N) */,
                  const T* b_hn /* (H,) or null; reset_after only */, const T* h0 /* (B, H) */,
                  const int64_t* lengths /* (B,) or null */, T* y /* (T, B, H) out */, T* h_n /* (B, H) out */,
                  T* gates /* training: reset_after (T, B, 4H) [r, z, n, hn]; else (T, B, 3H) [r, z, n] */,
                  T* hs /* training: (T, B, H) state entering each step */,
                  T* work /* (4, B, H) scratch: two state buffers, r*h (or z), the input-side n; with masks.drop
                             (6, B, H): then the two dropped states */,
                  int64_t steps, int64_t B, int64_t H, bool reverse, const Masks<T>& masks,
                  const Part& part /* this thread's share of the hidden-unit panels */) {
  using V = typename Simd<T>::V;
  constexpr int N = Simd<T>::N;
  const int64_t P = (H + N - 1) / N;
  const int64_t gate_stride = kResetAfter ? 4 * H : 3 * H;
  T* h_cur = work;
  T* h_next = work + B * H;
  T* scratch = work + 2 * B * H;  // reset_after=false: r * h for the n product
  T* x_n = work + 3 * B * H;      // reset_after=false: the input side of n, from phase 1 to phase 2
  // What the recurrent products read: the state, or with recurrent dropout the state times the mask.
  const T* drop = masks.drop;
  T* src_cur = drop ? work + 4 * B * H : h_cur;
  T* src_next = drop ? work + 5 * B * H : h_next;
  const bool zoneout = masks.zoneout();
  const int64_t p_begin = part.begin(P), p_end = part.end(P);
  if (part.tid == 0) {
    std::memcpy(h_cur, h0, sizeof(T) * B * H);
    if (drop)
      for (int64_t i = 0; i < B * H; ++i) src_cur[i] = h0[i] * drop[i];
  }
  part.sync();
  const T* wn = wpack + P * H * 2 * N;  // reset_after=false: the n panels after the r/z ones
  // What PanelAhead spreads each next panel's fetch over: this thread's share of W_hh, a step's row blocks.
  const int64_t streamed = sizeof(T) * H * 3 * N * (p_end - p_begin), blocks = row_blocks(B);

  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = reverse ? steps - 1 - s : s;
    T* y_t = y + t * B * H;
    // The state after the step (zoneout applied) into h_next and y, and what the next products read.
    auto finish = [&](int64_t b, int64_t j0, int n, V hnew, V hp) {
      if (zoneout) hnew += masks.keep_at(t, B, H, b, j0, n) * (hp - hnew);
      store<T>(h_next + b * H + j0, hnew, n);
      store<T>(y_t + b * H + j0, hnew, n);
      if (drop) store<T>(src_next + b * H + j0, hnew * load<T>(drop + b * H + j0, n), n);
    };
    // A sequence past its length keeps its state and outputs zeros (training saves the state it kept).
    auto carry_state = [&](int64_t b, int64_t j0, int n, V hp) {
      store<T>(h_next + b * H + j0, hp, n);
      store<T>(y_t + b * H + j0, V{}, n);
      if (drop) store<T>(src_next + b * H + j0, load<T>(src_cur + b * H + j0, n), n);
      if constexpr (kTrain) store<T>(hs + (t * B + b) * H + j0, hp, n);
    };
    if constexpr (kResetAfter) {
      const bool back = B == 1 && s % 2 == 1;  // snake order (visit) where the step streams W_hh alone
      for (int64_t i = p_begin; i < p_end; ++i) {
        const int64_t p = visit(p_begin, p_end, i, back);
        const int64_t j0 = p * N;
        const int n = static_cast<int>(std::min<int64_t>(N, H - j0));
        const T* panel = wpack + p * H * 3 * N;
        const V bn = b_hn ? load<T>(b_hn + j0, n) : V{};
        const T* next = i + 1 < p_end ? wpack + visit(p_begin, p_end, i + 1, back) * H * 3 * N : nullptr;
        PanelAhead ahead = PanelAhead::over(next, sizeof(T) * H * 3 * N, blocks, H, streamed);
        for_row_blocks(B, [&](auto rows, int64_t b0) {
          constexpr int R = decltype(rows)::value;
          V in[R][3], acc[R][3];
          input_gates<T, R>(side, t, B, H, b0, p, n, in);
          gate_preactivations<T, R, 3>(in, src_cur + b0 * H, H, panel, acc, ahead.use());
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            const int64_t b = b0 + r;
            const V hp = load<T>(h_cur + b * H + j0, n);
            if (!valid_step(lengths, b, t)) {
              carry_state(b, j0, n, hp);
              continue;
            }
            const V rg = sigmoid_v(acc[r][0]);
            const V zg = sigmoid_v(acc[r][1]);
            const V hn = acc[r][2] + bn;
            const V ng = tanh_v(in[r][2] + rg * hn);
            finish(b, j0, n, ng + zg * (hp - ng), hp);
            if constexpr (kTrain) {
              T* gs = gates + (t * B + b) * gate_stride + j0;
              store<T>(gs, rg, n);
              store<T>(gs + H, zg, n);
              store<T>(gs + 2 * H, ng, n);
              store<T>(gs + 3 * H, hn, n);
              store<T>(hs + (t * B + b) * H + j0, hp, n);
            }
          }
        });
      }
    } else {
      // Phase 1: r and z from h; r * h into scratch, z into h_next (overwritten in phase 2).
      for (int64_t p = p_begin; p < p_end; ++p) {
        const int64_t j0 = p * N;
        const int n = static_cast<int>(std::min<int64_t>(N, H - j0));
        const T* panel = wpack + p * H * 2 * N;
        PanelAhead ahead =
            PanelAhead::over(p + 1 < p_end ? panel + H * 2 * N : nullptr, sizeof(T) * H * 2 * N, blocks, H, streamed);
        for_row_blocks(B, [&](auto rows, int64_t b0) {
          constexpr int R = decltype(rows)::value;
          V in[R][3], acc[R][2];
          input_gates<T, R>(side, t, B, H, b0, p, n, in);
          gate_preactivations<T, R, 2>(in, src_cur + b0 * H, H, panel, acc, ahead.use());
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            const int64_t b = b0 + r;
            const V rg = sigmoid_v(acc[r][0]);
            const V zg = sigmoid_v(acc[r][1]);
            store<T>(x_n + b * H + j0, in[r][2], n);
            store<T>(scratch + b * H + j0, rg * load<T>(src_cur + b * H + j0, n), n);
            store<T>(h_next + b * H + j0, zg, n);
            if constexpr (kTrain) {
              T* gs = gates + (t * B + b) * gate_stride + j0;
              store<T>(gs, rg, n);
              store<T>(gs + H, zg, n);
            }
          }
        });
      }
      part.sync();  // phase 2 reads all of r * h
      // Phase 2: n from r * h, then the new state.
      for (int64_t p = p_begin; p < p_end; ++p) {
        const int64_t j0 = p * N;
        const int n = static_cast<int>(std::min<int64_t>(N, H - j0));
        const T* panel = wn + p * H * N;
        PanelAhead ahead =
            PanelAhead::over(p + 1 < p_end ? panel + H * N : nullptr, sizeof(T) * H * N, blocks, H, streamed);
        for_row_blocks(B, [&](auto rows, int64_t b0) {
          constexpr int R = decltype(rows)::value;
          V acc[R][1];
          panel_product<T, R, 1>(scratch + b0 * H, H, H, panel, acc, N, 1, ahead.use());
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            const int64_t b = b0 + r;
            const V hp = load<T>(h_cur + b * H + j0, n);
            if (!valid_step(lengths, b, t)) {
              carry_state(b, j0, n, hp);
              continue;
            }
            const V zg = load<T>(h_next + b * H + j0, n);
            const V ng = tanh_v(load<T>(x_n + b * H + j0, n) + acc[r][0]);
            finish(b, j0, n, ng + zg * (hp - ng), hp);
            if constexpr (kTrain) {
              store<T>(gates + (t * B + b) * gate_stride + 2 * H + j0, ng, n);
              store<T>(hs + (t * B + b) * H + j0, hp, n);
            }
          }
        });
      }
    }
    part.sync();  // the next step reads every unit of h_next
    std::swap(h_cur, h_next);
    std::swap(src_cur, src_next);
  }
  if (part.tid == 0) std::memcpy(h_n, h_cur, sizeof(T) * B * H);
}

// ------------------------------------------------------------------------------------------------ B = 1 loop

// At B = 1 a step's recurrent product streams W_hh from cache with one FMA per weight vector loaded, so half the FMA
// slots sit idle; the input projection is a GEMM that needs the FMAs and little bandwidth. forward_loop_ahead runs
// them together: while step s of a block of kAhead steps streams W_hh panel p, the same loop adds 1/kAhead of the
// next block's input projection for panel p (kAhead rows, one W_ih vector load per kAhead FMAs), so by the block's
// end the next block's gi tile is complete. No (T, 3H) gi buffer, no GEMM call, and the projection's FLOPs hide in
// the recurrent stream's load time.
constexpr int kAhead = 8;

// acc[g] = h W_hh^T for panel `whh` (K_h rows of k, G gates: 3, or reset_before's r and z), and on the way
// tile[r][g] += x_r[k] W_ih[k][g] for k in [k0, k1) of the next block's rows, all 3 gates (tile: kAhead rows of
// stride ld at the panel's offset; `first` starts it from the folded biases f instead). Each iteration pairs kAhead
// recurrent k with one projection k.
template <typename T, int G>
GRUKIT_INLINE void panel_product_ahead(const T* h /* (K_h,) */, int64_t K_h, const T* whh /* (K_h, G, N) */,
                                       const T* const (&xr)[kAhead] /* (I,) each */,
                                       const T* wih /* (I, 3, N) */, int64_t k0, int64_t k1,
                                       T* tile /* (kAhead, ld) */, int64_t ld, int64_t H, int n, bool first,
                                       const typename Simd<T>::V (&f)[3], typename Simd<T>::V (&acc)[G]) {
  using V = typename Simd<T>::V;
  constexpr int N = Simd<T>::N;
  constexpr int R = kAhead;
  V g[R][3];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < 3; ++q) g[r][q] = first ? f[q] : load<T>(tile + r * ld + q * H, n);
  for (int q = 0; q < G; ++q) acc[q] = V{};
  int64_t kh = 0, ki = k0;
  for (; ki < k1 && kh + R <= K_h; ++ki, kh += R) {
    const T* wi = wih + ki * 3 * N;
    const V w0 = load<T>(wi, N), w1 = load<T>(wi + N, N), w2 = load<T>(wi + 2 * N, N);
#pragma GCC unroll 8
    for (int m = 0; m < R; ++m) {  // projection row m and recurrent k = kh + m, mixed for the schedulers
      const V s = splat<T>(xr[m][ki]);
      g[m][0] += s * w0;
      g[m][1] += s * w1;
      g[m][2] += s * w2;
      const T* wh = whh + (kh + m) * G * N;
      const V sh = splat<T>(h[kh + m]);
#pragma GCC unroll 3
      for (int q = 0; q < G; ++q) acc[q] += sh * load<T>(wh + q * N, N);
    }
  }
  for (; ki < k1; ++ki) {
    const T* wi = wih + ki * 3 * N;
    const V w0 = load<T>(wi, N), w1 = load<T>(wi + N, N), w2 = load<T>(wi + 2 * N, N);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const V s = splat<T>(xr[r][ki]);
      g[r][0] += s * w0;
      g[r][1] += s * w1;
      g[r][2] += s * w2;
    }
  }
  for (; kh < K_h; ++kh) {
    const T* wh = whh + kh * G * N;
    const V s = splat<T>(h[kh]);
#pragma GCC unroll 3
    for (int q = 0; q < G; ++q) acc[q] += s * load<T>(wh + q * N, N);
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < 3; ++q) store<T>(tile + r * ld + q * H, g[r][q], n);
}

// The loop at B = 1 (see kAhead): x (steps, 1, I) and W_ih packed like W_hh (P, I, 3, N), fold (3H,) or null.
// work: (kAheadWork H): two state buffers, two gi tiles (this block's, the next one's), then reset_before's r * h
// and z. The reset_before form runs each step in two phases as forward_loop does: r and z (with the next block's
// projection on the way), a barrier, then the n product over r * h. Other arguments as forward_loop's.
constexpr int64_t kAheadWork = 4 + 6 * kAhead;
// Panels whose products run before their gates (see forward_loop_ahead). A/B in one process at B = 1, T = 256:
// eval 1.05x at H = 64 (55 of 61 rounds), 1.02-1.04x at H = 128, 1.00x at H = 256 with 4 panels; training (which
// also stores the gates) 0.97x with 4 and 0.98-1.00x with 2 at H = 64, T = 64, so it keeps one panel at a time.
template <bool kTrain>
constexpr int64_t kGateGroup = kTrain ? 1 : 4;

template <typename T, bool kResetAfter, bool kTrain>
void forward_loop_ahead(const T* x /* (steps, 1, I) */, const T* wih /* (P, I, 3, N) */,
                        const T* fold /* (3H,) or null */, int64_t I,
                        const T* wpack /* reset_after: (P, H, 3, N); else (P, H, 2, N) then (P, H, 1, N) */,
                        const T* b_hn /* (H,) or null */, const T* h0 /* (1, H) */,
                        const int64_t* lengths /* (1,) or null */, T* y /* (steps, 1, H) out */,
                        T* h_n /* (1, H) out */, T* gates /* training: (steps, 1, 4H), reset_before 3H */,
                        T* hs /* training: (steps, 1, H) */, T* work /* (kAheadWork H) */, int64_t steps,
                        int64_t H, bool reverse, const Part& part) {
  using V = typename Simd<T>::V;
  constexpr int N = Simd<T>::N;
  constexpr int R = kAhead;
  const int64_t P = (H + N - 1) / N, ld = 3 * H;
  T* h_cur = work;
  T* h_next = work + H;
  T* tiles = work + 2 * H;  // (2, R, 3H)
  T* rh = tiles + 2 * R * ld;  // reset_before: r * h, then z
  T* zs = rh + H;
  const T* wn = wpack + P * H * 2 * N;  // reset_before: the n panels
  const int64_t gate_stride = kResetAfter ? 4 * H : 3 * H;
  const int64_t p_begin = part.begin(P), p_end = part.end(P);
  auto time_of = [&](int64_t s) { return reverse ? steps - 1 - s : s; };
  auto block_rows = [&](int64_t block, const T* (&xr)[R]) {  // past the last step: repeats of it (results unused)
    for (int r = 0; r < R; ++r) xr[r] = x + time_of(std::min(block * R + r, steps - 1)) * I;
  };
  auto biases = [&](int64_t j0, int n, V (&f)[3]) { load_gate_biases<T>(fold, H, j0, n, f); };
  {  // block 0's tile, before the loop: each thread its own panels (the only ones it reads)
    const T* xr[R];
    block_rows(0, xr);
    for (int64_t p = p_begin; p < p_end; ++p) {
      const int64_t j0 = p * N;
      const int n = static_cast<int>(std::min<int64_t>(N, H - j0));
      V f[3], unused[3];
      biases(j0, n, f);
      panel_product_ahead<T, 3>(nullptr, 0, nullptr, xr, wih + p * I * 3 * N, 0, I, tiles + j0, ld, H, n, true, f,
                                unused);
    }
  }
  if (part.tid == 0) std::memcpy(h_cur, h0, sizeof(T) * H);
  part.sync();
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = time_of(s), block = s / R, i = s % R;
    T* y_t = y + t * H;
    const T* in_t = tiles + (block % 2) * R * ld + i * ld;
    T* next = tiles + ((block + 1) % 2) * R * ld;
    const bool ahead = (block + 1) * R < steps;
    const T* xr[R];
    block_rows(block + 1, xr);
    const int64_t k0 = I * i / R, k1 = I * (i + 1) / R;
    const bool valid = valid_step(lengths, 0, t);
    // acc = h_cur W_hh^T over the G gates of `panel`, and the next block's projection slice on the way
    auto recurrent = [&](auto gate_count, int64_t p, int64_t j0, int n, const T* panel, auto& acc) {
      constexpr int G = decltype(gate_count)::value;
      if (ahead) {
        V f[3];
        biases(j0, n, f);
        panel_product_ahead<T, G>(h_cur, H, panel, xr, wih + p * I * 3 * N, k0, k1, next + j0, ld, H, n, i == 0, f,
                                  acc);
      } else {
        V one[1][G];
        panel_product<T, 1, G>(h_cur, H, H, panel, one);
        for (int q = 0; q < G; ++q) acc[q] = one[0][q];
      }
    };
    auto finish = [&](int64_t j0, int n, V hp, V zg, V ng) {  // the new state, or the kept one past the length
      if (!valid) {
        store<T>(h_next + j0, hp, n);
        store<T>(y_t + j0, V{}, n);
      } else {
        const V hnew = ng + zg * (hp - ng);
        store<T>(h_next + j0, hnew, n);
        store<T>(y_t + j0, hnew, n);
        if constexpr (kTrain) store<T>(gates + t * gate_stride + 2 * H + j0, ng, n);
      }
      if constexpr (kTrain) store<T>(hs + t * H + j0, hp, n);
    };
    const bool back = s % 2 == 1;  // snake order (visit); reset_before's phase 2 runs the other way
    if constexpr (kResetAfter) {
      // The products of kGateGroup panels first, then their gates: one panel's gates are a chain of dependent
      // operations (sigmoid r, then tanh of n that reads r) that the next panel's products could not overlap once
      // the reorder buffer fills; several panels' chains side by side can (same arithmetic per panel).
      for (int64_t g0 = p_begin; g0 < p_end; g0 += kGateGroup<kTrain>) {
        const int64_t g1 = std::min(p_end, g0 + kGateGroup<kTrain>);
        V accs[kGateGroup<kTrain>][3];
        for (int64_t q = g0; q < g1; ++q) {
          const int64_t p = visit(p_begin, p_end, q, back);
          const int64_t j0 = p * N;
          const int n = static_cast<int>(std::min<int64_t>(N, H - j0));
          recurrent(std::integral_constant<int, 3>{}, p, j0, n, wpack + p * H * 3 * N, accs[q - g0]);
        }
        for (int64_t q = g0; q < g1; ++q) {
          const int64_t p = visit(p_begin, p_end, q, back);
          const int64_t j0 = p * N;
          const int n = static_cast<int>(std::min<int64_t>(N, H - j0));
          const V* acc = accs[q - g0];
          const V hp = load<T>(h_cur + j0, n);
          if (!valid) {  // past the sequence's length: keep the state, output zeros
            finish(j0, n, hp, V{}, V{});
            continue;
          }
          const V bn = b_hn ? load<T>(b_hn + j0, n) : V{};
          const V rg = sigmoid_v(load<T>(in_t + j0, n) + acc[0]);
          const V zg = sigmoid_v(load<T>(in_t + H + j0, n) + acc[1]);
          const V hn = acc[2] + bn;
          const V ng = tanh_v(load<T>(in_t + 2 * H + j0, n) + rg * hn);
          if constexpr (kTrain) {
            T* gs = gates + t * 4 * H + j0;
            store<T>(gs, rg, n);
            store<T>(gs + H, zg, n);
            store<T>(gs + 3 * H, hn, n);
          }
          finish(j0, n, hp, zg, ng);
        }
      }
    } else {
      for (int64_t q = p_begin; q < p_end; ++q) {  // phase 1: r and z; r * h and z for phase 2
        const int64_t p = visit(p_begin, p_end, q, back);
        const int64_t j0 = p * N;
        const int n = static_cast<int>(std::min<int64_t>(N, H - j0));
        V acc[2];
        recurrent(std::integral_constant<int, 2>{}, p, j0, n, wpack + p * H * 2 * N, acc);
        const V rg = sigmoid_v(load<T>(in_t + j0, n) + acc[0]);
        const V zg = sigmoid_v(load<T>(in_t + H + j0, n) + acc[1]);
        store<T>(rh + j0, rg * load<T>(h_cur + j0, n), n);
        store<T>(zs + j0, zg, n);
        if constexpr (kTrain) {
          store<T>(gates + t * 3 * H + j0, rg, n);
          store<T>(gates + t * 3 * H + H + j0, zg, n);
        }
      }
      part.sync();  // phase 2 reads all of r * h
      for (int64_t q = p_begin; q < p_end; ++q) {  // phase 2: n from r * h, then the new state
        const int64_t p = visit(p_begin, p_end, q, !back);
        const int64_t j0 = p * N;
        const int n = static_cast<int>(std::min<int64_t>(N, H - j0));
        V one[1][1];
        panel_product<T, 1, 1>(rh, H, H, wn + p * H * N, one);
        const V ng = tanh_v(load<T>(in_t + 2 * H + j0, n) + one[0][0]);
        finish(j0, n, load<T>(h_cur + j0, n), load<T>(zs + j0, n), ng);
      }
    }
    part.sync();  // the next step reads every unit of h_next
    std::swap(h_cur, h_next);
  }
  if (part.tid == 0) std::memcpy(h_n, h_cur, sizeof(T) * H);
}

// ------------------------------------------------------------------------------------------------ streaming step

// One time step of the reset_after form with no lengths (the streaming step): the input product comes from W_ih
// packed like W_hh, so the step makes no ATen call and needs no gi buffer. h_n and y_t get the new state. W = T, or
// bf16x2_t for float32 with bfloat16 weight pairs.
template <typename T, int R, int G, typename W>
GRUKIT_INLINE void weight_product(const T* src, int64_t ld, int64_t K, const W* panel,
                                  typename Simd<T>::V (&acc)[R][G]) {
  if constexpr (std::is_same_v<W, T>) {
    panel_product<T, R, G>(src, ld, K, panel, acc);
  } else {
    panel_product_pairs<R, G>(src, ld, K, panel, acc);
  }
}

// The panels [p_begin, p_end) of a streaming step: for each panel and block of R rows, the input product ai (3
// gates, W_ih packed (P, depth(I), 3, N)) and the recurrent one ah (G gates: the first G of each whh panel, panels
// of depth(H) x G), then gates(Rows<R>, b0, j0, n, f, ai, ah) with f the panel's folded biases; `back` visits the
// panels backward (see visit: the stepper alternates from call to call).
template <typename T, typename W, int G, typename F>
GRUKIT_INLINE void step_panels(const T* x /* (B, I) */, const T* h0 /* (B, H) */, const W* wih, const W* whh,
                               const T* fold /* (3H,) or null */, int64_t B, int64_t I, int64_t H, int64_t p_begin,
                               int64_t p_end, bool back, F&& gates) {
  using V = typename Simd<T>::V;
  constexpr int N = Simd<T>::N;
  const int64_t panel_i_size = panel_depth<W>(I) * 3 * N, panel_h_size = panel_depth<W>(H) * G * N;
  for (int64_t i = p_begin; i < p_end; ++i) {
    const int64_t p = visit(p_begin, p_end, i, back);
    const int64_t j0 = p * N;
    const int n = static_cast<int>(std::min<int64_t>(N, H - j0));
    const W* panel_i = wih + p * panel_i_size;
    const W* panel_h = whh + p * panel_h_size;
    if (i + 1 < p_end) {  // the next panels: start their first lines on the way while this one computes
      const int64_t next = visit(p_begin, p_end, i + 1, back);
      __builtin_prefetch(whh + next * panel_h_size);
      __builtin_prefetch(wih + next * panel_i_size);
    }
    V f[3];
    load_gate_biases<T>(fold, H, j0, n, f);
    for_row_blocks(B, [&](auto rows, int64_t b0) {
      constexpr int R = decltype(rows)::value;
      V ai[R][3], ah[R][G];
      weight_product<T, R, 3, W>(x + b0 * I, I, I, panel_i, ai);
      weight_product<T, R, G, W>(h0 + b0 * H, H, H, panel_h, ah);
      gates(rows, b0, j0, n, f, ai, ah);
    });
  }
}

template <typename T, typename W = T>
void step_kernel(const T* x /* (B, I) */, const T* h0 /* (B, H) */, const W* wih /* (P, depth(I), 3, N) */,
                 const W* whh /* (P, depth(H), 3, N) */, const T* fold /* (3H,) or null: b_ih + [b_hr, b_hz, 0] */,
                 const T* b_hn /* (H,) or null */, T* y /* (B, H) out */, T* h_n /* (B, H) out, may be y */,
                 int64_t B, int64_t I, int64_t H, int64_t p_begin, int64_t p_end /* the panels to compute */,
                 T keep = 0 /* eval zoneout: h = h_new + keep (h_prev - h_new) */, bool back = false /* visit */) {
  using V = typename Simd<T>::V;
  step_panels<T, W, 3>(x, h0, wih, whh, fold, B, I, H, p_begin, p_end, back,
                       [&](auto rows, int64_t b0, int64_t j0, int n, const V(&f)[3], auto& ai, auto& ah) {
                         constexpr int R = decltype(rows)::value;
                         const V bn = b_hn ? load<T>(b_hn + j0, n) : V{};
#pragma GCC unroll 8
                         for (int r = 0; r < R; ++r) {
                           const int64_t o = (b0 + r) * H + j0;
                           const V hp = load<T>(h0 + o, n);
                           const V rg = sigmoid_v((f[0] + ai[r][0]) + ah[r][0]);
                           const V zg = sigmoid_v((f[1] + ai[r][1]) + ah[r][1]);
                           const V ng = tanh_v((f[2] + ai[r][2]) + rg * (ah[r][2] + bn));
                           V hnew = ng + zg * (hp - ng);
                           if (keep != T(0)) hnew += keep * (hp - hnew);
                           store<T>(h_n + o, hnew, n);
                           if (y != h_n) store<T>(y + o, hnew, n);
                         }
                       });
}

// The streaming step in the reset_before form, in two phases with a barrier between them (phase 2 reads r * h of
// every unit). Phase 1, panels [p_begin, p_end): r and z from x and h, the input side of n; into `work` (3, B, H):
// r * h, z, x_n. whh: the r/z panels (P, depth(H), 2, N) then the n panels (P, depth(H), 1, N), as pack_hh(w, false);
// fold: b_ih + b_hh (b_hn folded too: it sits outside r in this form).
template <typename T, typename W = T>
void step_kernel_before_rz(const T* x /* (B, I) */, const T* h0 /* (B, H) */, const W* wih /* (P, depth(I), 3, N) */,
                           const W* whh, const T* fold /* (3H,) or null */, T* work /* (3, B, H) out */, int64_t B,
                           int64_t I, int64_t H, int64_t p_begin, int64_t p_end, bool back /* visit */) {
  using V = typename Simd<T>::V;
  T* rh = work;
  T* z = work + B * H;
  T* x_n = work + 2 * B * H;
  step_panels<T, W, 2>(x, h0, wih, whh, fold, B, I, H, p_begin, p_end, back,
                       [&](auto rows, int64_t b0, int64_t j0, int n, const V(&f)[3], auto& ai, auto& ah) {
                         constexpr int R = decltype(rows)::value;
#pragma GCC unroll 8
                         for (int r = 0; r < R; ++r) {
                           const int64_t o = (b0 + r) * H + j0;
                           const V rg = sigmoid_v((f[0] + ai[r][0]) + ah[r][0]);
                           store<T>(z + o, sigmoid_v((f[1] + ai[r][1]) + ah[r][1]), n);
                           store<T>(x_n + o, f[2] + ai[r][2], n);
                           store<T>(rh + o, rg * load<T>(h0 + o, n), n);
                         }
                       });
}

// Phase 2: n = tanh(x_n + W_hn (r * h)) and the new state into h_n (and y unless it is h_n), from phase 1's work.
template <typename T, typename W = T>
void step_kernel_before_n(const T* h0 /* (B, H) */, const W* whh /* as step_kernel_before_rz's */,
                          const T* work /* (3, B, H) */, T* y /* (B, H) out */, T* h_n /* (B, H) out, may be y */,
                          int64_t B, int64_t H, int64_t p_begin, int64_t p_end, T keep /* as step_kernel's */,
                          bool back /* visit */) {
  using V = typename Simd<T>::V;
  constexpr int N = Simd<T>::N;
  const int64_t P = (H + N - 1) / N, panel_size = panel_depth<W>(H) * N;
  const W* wn = whh + P * panel_depth<W>(H) * 2 * N;
  const T* rh = work;
  const T* z = work + B * H;
  const T* x_n = work + 2 * B * H;
  for (int64_t i = p_begin; i < p_end; ++i) {
    const int64_t p = visit(p_begin, p_end, i, back);
    const int64_t j0 = p * N;
    const int n = static_cast<int>(std::min<int64_t>(N, H - j0));
    const W* panel = wn + p * panel_size;
    if (i + 1 < p_end) __builtin_prefetch(wn + visit(p_begin, p_end, i + 1, back) * panel_size);
    for_row_blocks(B, [&](auto rows, int64_t b0) {
      constexpr int R = decltype(rows)::value;
      V acc[R][1];
      weight_product<T, R, 1, W>(rh + b0 * H, H, H, panel, acc);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const int64_t o = (b0 + r) * H + j0;
        const V hp = load<T>(h0 + o, n);
        const V ng = tanh_v(load<T>(x_n + o, n) + acc[r][0]);
        V hnew = ng + load<T>(z + o, n) * (hp - ng);
        if (keep != T(0)) hnew += keep * (hp - hnew);
        store<T>(h_n + o, hnew, n);
        if (y != h_n) store<T>(y + o, hnew, n);
      }
    });
  }
}

// One time step straight from the unpacked weights, both equation forms, for a few sequences (B <= kDirectBatch)
// without a packed-weight cache: each gate row is one vectorised dot product with every sequence's row (the weight
// row read once for a block of rows), so the call packs nothing, folds no bias and makes no GEMM call (those cost
// more than the step itself at small B). Serves eval steps and the training forward of a single step (GRUCell).
constexpr int64_t kDirectBatch = 4;

// Lane k of a pairwise-sum level over vectors a, b of N lanes in blocks of s: the low half of each 2s-block takes
// a's two s-lane halves, the high half b's (first: the first addend's index; else the second's).
constexpr int sum_lane(int s, int n, bool first, int k) {
  const int base = k / (2 * s) * 2 * s, pos = k % (2 * s);
  return pos < s ? base + pos + (first ? 0 : s) : n + base + pos - (first ? s : 0);
}

template <typename T, int S, size_t... K>
GRUKIT_INLINE typename Simd<T>::V sum_level(typename Simd<T>::V a, typename Simd<T>::V b, std::index_sequence<K...>) {
  constexpr int N = Simd<T>::N;
  return __builtin_shufflevector(a, b, sum_lane(S, N, true, K)...) +
         __builtin_shufflevector(a, b, sum_lane(S, N, false, K)...);
}

// acc[0] lane r = the sum of acc[r]'s lanes (acc: N vectors, overwritten): log2(N) levels of shuffles and adds,
// each halving the vectors, instead of a horizontal sum per vector.
template <typename T, int S = 1>
GRUKIT_INLINE void sum_lanes(typename Simd<T>::V* acc) {
  constexpr int N = Simd<T>::N;
  if constexpr (S < N) {
#pragma GCC unroll 8
    for (int i = 0; i < N / (2 * S); ++i)
      acc[i] = sum_level<T, S>(acc[2 * i], acc[2 * i + 1], std::make_index_sequence<N>{});
    sum_lanes<T, 2 * S>(acc);
  }
}

// out[b] lane r = w_r . v_b for the n <= N rows w_r = w + r ld (K columns) and R rows v_b = v + b ldv, lanes from
// n on 0: each weight row read once, in order (two chains per v row), then each v row's N sums reduced together
// (sum_lanes) instead of a horizontal sum per row. (Reading the N weight rows side by side, each v chunk loaded once
// per N rows, ran 1.2-1.5x slower from K = 128: N streams at once.)
template <typename T, int R>
GRUKIT_INLINE void dot_block(const T* w /* (n, ld) */, int64_t ld, const T* v /* (R, ldv) */, int64_t ldv, int64_t K,
                             int n, typename Simd<T>::V (&out)[R]) {
  using V = typename Simd<T>::V;
  constexpr int N = Simd<T>::N;
  V acc[R][N];
  for (int b = 0; b < R; ++b)
    for (int r = 0; r < N; ++r) acc[b][r] = V{};
  for (int r = 0; r < n; ++r) {
    const T* row = w + r * ld;
    V a0[R] = {}, a1[R] = {};
    int64_t k = 0;
    for (; k + 2 * N <= K; k += 2 * N) {
      const V w0 = load<T>(row + k, N), w1 = load<T>(row + k + N, N);
#pragma GCC unroll 4
      for (int b = 0; b < R; ++b) {
        a0[b] += w0 * load<T>(v + b * ldv + k, N);
        a1[b] += w1 * load<T>(v + b * ldv + k + N, N);
      }
    }
    for (; k < K; k += N) {
      const int m = static_cast<int>(std::min<int64_t>(N, K - k));
      const V w0 = load<T>(row + k, m);
      for (int b = 0; b < R; ++b) a0[b] += w0 * load<T>(v + b * ldv + k, m);
    }
    for (int b = 0; b < R; ++b) acc[b][r] = a0[b] + a1[b];
  }
  for (int b = 0; b < R; ++b) {
    sum_lanes<T>(acc[b]);
    out[b] = acc[b][0];
  }
}

// The step for rows [0, B) and this thread's hidden units (its panels of N). pre (B, 4H) work: per row
// [r, z, n, hn] pre-activations (reset_before: r, z, n with W_hn (r * h) added, then r * h, which n's product reads
// after a barrier). gates: training's (B, 4H) [r, z, n, hn] or (B, 3H) [r, z, n] out, or null.
template <typename T>
void direct_step_kernel(const T* x /* (B, I) */, const T* h0 /* (B, H) */, const T* w_ih /* (3H, I) */,
                        const T* w_hh /* (3H, H) */, const T* b_ih /* (3H,) or null */,
                        const T* b_hh /* (3H,) or null */, bool reset_after, T* y /* (B, H) */,
                        T* h_n /* (B, H) */, T* gates, T* pre, int64_t B, int64_t I, int64_t H, const Part& part) {
  using V = typename Simd<T>::V;
  constexpr int N = Simd<T>::N;
  const int64_t P = (H + N - 1) / N;
  const int64_t j_begin = part.begin(P) * N, j_end = std::min(part.end(P) * N, H);
  const int64_t ld = 4 * H;
  auto biases = [](const T* b, int64_t j0, int n) { return b ? load<T>(b + j0, n) : V{}; };
  // N gate rows at a time, their sums reduced together (dot_block): the per-row horizontal sums cost the most
  for_row_blocks(B, [&](auto rows, int64_t b0) {
    constexpr int R = decltype(rows)::value;
    T* p = pre + b0 * ld;
    for (int64_t j0 = j_begin; j0 < j_end; j0 += N) {
      const int n = static_cast<int>(std::min<int64_t>(N, j_end - j0));
      for (int g = 0; g < 3; ++g) {
        const int64_t row = g * H + j0;
        V a[R], c[R];
        dot_block<T, R>(w_ih + row * I, I, x + b0 * I, I, I, n, a);
        if (g < 2 || reset_after) dot_block<T, R>(w_hh + row * H, H, h0 + b0 * H, H, H, n, c);
        const V bi = biases(b_ih, row, n), bh = biases(b_hh, row, n);
        for (int r = 0; r < R; ++r) {
          if (g < 2) {
            store<T>(p + r * ld + row, a[r] + c[r] + bi + bh, n);
          } else {
            store<T>(p + r * ld + row, a[r] + bi, n);
            if (reset_after) store<T>(p + r * ld + 3 * H + j0, c[r] + bh, n);
          }
        }
      }
    }
  });
  if (!reset_after) {  // r, and r * h for n's product, which reads every unit's
    for (int64_t b = 0; b < B; ++b) {
      T* p = pre + b * ld;
      for (int64_t j0 = j_begin; j0 < j_end; j0 += N) {
        const int n = static_cast<int>(std::min<int64_t>(N, j_end - j0));
        const V rg = sigmoid_v(load<T>(p + j0, n));
        store<T>(p + j0, rg, n);
        store<T>(p + 3 * H + j0, rg * load<T>(h0 + b * H + j0, n), n);
      }
    }
    part.sync();
    for_row_blocks(B, [&](auto rows, int64_t b0) {
      constexpr int R = decltype(rows)::value;
      T* p = pre + b0 * ld;
      for (int64_t j0 = j_begin; j0 < j_end; j0 += N) {
        const int n = static_cast<int>(std::min<int64_t>(N, j_end - j0));
        V c[R];
        dot_block<T, R>(w_hh + (2 * H + j0) * H, H, p + 3 * H, ld, H, n, c);
        const V bh = biases(b_hh, 2 * H + j0, n);
        for (int r = 0; r < R; ++r) {
          T* out = p + r * ld + 2 * H + j0;
          store<T>(out, load<T>(out, n) + (c[r] + bh), n);
        }
      }
    });
  }
  const int64_t gate_stride = reset_after ? 4 * H : 3 * H;
  for (int64_t b = 0; b < B; ++b) {
    const T* p = pre + b * ld;
    for (int64_t j0 = j_begin; j0 < j_end; j0 += N) {
      const int n = static_cast<int>(std::min<int64_t>(N, j_end - j0));
      const V rg = reset_after ? sigmoid_v(load<T>(p + j0, n)) : load<T>(p + j0, n);
      const V zg = sigmoid_v(load<T>(p + H + j0, n));
      const V hn = load<T>(p + 3 * H + j0, n);
      const V ng = reset_after ? tanh_v(load<T>(p + 2 * H + j0, n) + rg * hn) : tanh_v(load<T>(p + 2 * H + j0, n));
      const V hp = load<T>(h0 + b * H + j0, n);
      const V hnew = ng + zg * (hp - ng);
      store<T>(y + b * H + j0, hnew, n);
      store<T>(h_n + b * H + j0, hnew, n);
      if (gates) {
        T* gs = gates + b * gate_stride + j0;
        store<T>(gs, rg, n);
        store<T>(gs + H, zg, n);
        store<T>(gs + 2 * H, ng, n);
        if (reset_after) store<T>(gs + 3 * H, hn, n);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------ layer norm loop

// GRU(layer_norm=True): each gate's block of the recurrent product is layer-normalised over its H units before
// the gate math, so a step needs the whole product row before any gate: the loop writes the products, normalises
// each row, then applies the gates (the input side, normalised too, comes precomputed in gi).
// gamma, beta (3H,): the norm's gain, and its bias plus b_hh. Training saves xhat (T, B, 3H), the normalised
// products, and rstd (T, B, 3), 1 / sqrt(var + eps) per row and gate, for the backward.
template <typename T>
struct GateNorm {
  const T* gamma;
  const T* beta;
  T* xhat;  // training (T, B, 3H); else a (B, 3H) scratch
  T* rstd;  // training (T, B, 3); else a (B, 3) scratch
};

constexpr double kNormEps = 1e-5;  // F.layer_norm's default, which the reference uses

// The sum of the lanes of v.
template <typename T>
GRUKIT_INLINE T lane_sum(typename Simd<T>::V v) {
  T sum = 0;
  for (int i = 0; i < Simd<T>::N; ++i) sum += v[i];
  return sum;
}

// out = xhat * gamma + beta for one gate's H units, xhat = (prod - mean) * rstd (biased variance, as F.layer_norm;
// two passes, vector lanes accumulating in T).
template <typename T>
void normalise(const T* prod /* (H,) */, int64_t H, const T* gamma, const T* beta, T* xhat /* (H,) out */,
               T* rstd /* (1,) out */, T* out /* (H,) */) {
  using V = typename Simd<T>::V;
  constexpr int N = Simd<T>::N;
  V sum{};
  for (int64_t j = 0; j < H; j += N) sum += load<T>(prod + j, static_cast<int>(std::min<int64_t>(N, H - j)));
  const T mean = lane_sum<T>(sum) / static_cast<T>(H);
  const V m = splat<T>(mean);
  V sq{};
  int64_t j = 0;
  for (; j + N <= H; j += N) {
    const V d = load<T>(prod + j, N) - m;
    sq += d * d;
  }
  T var = lane_sum<T>(sq);
  for (; j < H; ++j) var += (prod[j] - mean) * (prod[j] - mean);  // the tail: padded lanes would add mean^2
  const T rs = static_cast<T>(1.0 / std::sqrt(static_cast<double>(var) / H + kNormEps));
  const V r = splat<T>(rs);
  for (int64_t j = 0; j < H; j += N) {
    const int n = static_cast<int>(std::min<int64_t>(N, H - j));
    const V xh = (load<T>(prod + j, n) - m) * r;
    store<T>(xhat + j, xh, n);
    store<T>(out + j, xh * load<T>(gamma + j, n) + load<T>(beta + j, n), n);
  }
  *rstd = rs;
}

// normalise() for batch rows [b_begin, b_end) and gates [g0, g1) of (B, 3H) products: xhat and out laid out as
// prod, rstd (B, 3); gamma, beta (3H,).
template <typename T>
void normalise_rows(const T* prod, const T* gamma, const T* beta, int64_t H, int64_t b_begin, int64_t b_end, int g0,
                    int g1, T* xhat, T* rstd, T* out) {
  for (int64_t b = b_begin; b < b_end; ++b)
    for (int g = g0; g < g1; ++g) {
      const int64_t o = b * 3 * H + g * H;
      normalise<T>(prod + o, H, gamma + g * H, beta + g * H, xhat + o, rstd + b * 3 + g, out + o);
    }
}

// The gradient of one gate's layer norm: dprod from dout (the gradient of its output), its xhat and rstd.
template <typename T>
void normalise_backward(const T* dout /* (H,) */, const T* xhat, T rstd, const T* gamma, int64_t H,
                        T* dprod /* (H,) out */) {
  using V = typename Simd<T>::V;
  constexpr int N = Simd<T>::N;
  V a{}, b{};
  for (int64_t j = 0; j < H; j += N) {
    const int n = static_cast<int>(std::min<int64_t>(N, H - j));
    const V g = load<T>(dout + j, n) * load<T>(gamma + j, n);  // zeros past H
    a += g;
    b += g * load<T>(xhat + j, n);
  }
  const V ma = splat<T>(lane_sum<T>(a) / static_cast<T>(H)), mb = splat<T>(lane_sum<T>(b) / static_cast<T>(H));
  const V r = splat<T>(rstd);
  for (int64_t j = 0; j < H; j += N) {
    const int n = static_cast<int>(std::min<int64_t>(N, H - j));
    const V g = load<T>(dout + j, n) * load<T>(gamma + j, n);
    store<T>(dprod + j, r * (g - ma - load<T>(xhat + j, n) * mb), n);
  }
}

// out[b][g*H + j] = src[b] W_g^T for G gates, from panels (P, K, G, N), panels [p_begin, p_end); out rows of
// stride ld.
template <typename T, int G>
void gate_products(const T* src /* (B, K) */, int64_t K, const T* wpack /* (P, K, G, N) */, int64_t B, int64_t H,
                   T* out /* (B, ld) */, int64_t ld, int64_t p_begin, int64_t p_end) {
  constexpr int N = Simd<T>::N;
  for (int64_t p = p_begin; p < p_end; ++p) {
    const int64_t j0 = p * N;
    const int n = static_cast<int>(std::min<int64_t>(N, H - j0));
    for_row_blocks(B, [&](auto rows, int64_t b0) {
      constexpr int R = decltype(rows)::value;
      typename Simd<T>::V acc[R][G];
      panel_product<T, R, G>(src + b0 * K, K, K, wpack + p * K * G * N, acc);
      for (int r = 0; r < R; ++r)
        for (int g = 0; g < G; ++g) store<T>(out + (b0 + r) * ld + g * H + j0, acc[r][g], n);
    });
  }
}

// The layer-norm loop (see GateNorm): gi (T, B, 3H) the normalised input side plus b_ih; wpack as forward_loop's;
// work (5 B H + 2 B 3H): the two states, the two states times the dropout mask, r * (h * drop), the products and
// the normed ones. Saves as forward_loop (reset_after's 4th gate slot holds the normed n product plus its biases).
// Split over a team as the products are by panels (the other steps by batch rows: a row's norm spans every unit),
// with a barrier between the two: two per step, four in the reset_before form.
template <typename T, bool kResetAfter, bool kTrain>
void forward_loop_norm(const T* gi, const T* wpack, const GateNorm<T>& norm, const T* h0 /* (B, H) */,
                       const int64_t* lengths /* (B,) or null */, T* y /* (T, B, H) out */, T* h_n /* (B, H) out */,
                       T* gates, T* hs, T* work, int64_t steps, int64_t B, int64_t H, bool reverse,
                       const Masks<T>& masks, const Part& part) {
  using V = typename Simd<T>::V;
  constexpr int N = Simd<T>::N;
  const int64_t P = (H + N - 1) / N;
  const int64_t G3 = 3 * H, gate_stride = kResetAfter ? 4 * H : 3 * H;
  const int64_t p_begin = part.begin(P), p_end = part.end(P), b_begin = part.begin(B), b_end = part.end(B);
  const T* drop = masks.drop;
  T* h_cur = work;
  T* h_next = work + B * H;
  T* src_cur = drop ? work + 2 * B * H : h_cur;  // what the products read: h, or h * drop
  T* src_next = drop ? work + 3 * B * H : h_next;
  T* rh = work + 4 * B * H;
  T* prod = work + 5 * B * H;
  T* normed = prod + B * G3;
  const T* wn = wpack + P * H * 2 * N;
  for (int64_t i = b_begin * H; i < b_end * H; ++i) {
    h_cur[i] = h0[i];
    if (drop) src_cur[i] = h0[i] * drop[i];
  }
  part.sync();
  auto norm_rows = [&](int64_t t, int g0, int g1) {
    normalise_rows<T>(prod, norm.gamma, norm.beta, H, b_begin, b_end, g0, g1,
                      kTrain ? norm.xhat + t * B * G3 : norm.xhat, kTrain ? norm.rstd + t * B * 3 : norm.rstd, normed);
  };
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = reverse ? steps - 1 - s : s;
    gate_products<T, kResetAfter ? 3 : 2>(src_cur, H, wpack, B, H, prod, G3, p_begin, p_end);
    part.sync();  // a row's norm reads every unit's product
    norm_rows(t, 0, kResetAfter ? 3 : 2);
    if constexpr (!kResetAfter) {  // r * (h * drop), then the n product over it
      for (int64_t b = b_begin; b < b_end; ++b)
        for (int64_t j0 = 0; j0 < H; j0 += N) {
          const int n = static_cast<int>(std::min<int64_t>(N, H - j0));
          const V r = sigmoid_v(load<T>(gi + (t * B + b) * G3 + j0, n) + load<T>(normed + b * G3 + j0, n));
          store<T>(rh + b * H + j0, r * load<T>(src_cur + b * H + j0, n), n);
        }
      part.sync();
      gate_products<T, 1>(rh, H, wn, B, H, prod + 2 * H, G3, p_begin, p_end);
      part.sync();
      norm_rows(t, 2, 3);
    }
    for (int64_t b = b_begin; b < b_end; ++b) {
      const T* in = gi + (t * B + b) * G3;
      const T* nb = normed + b * G3;
      T* gs = kTrain ? gates + (t * B + b) * gate_stride : nullptr;
      const bool valid = valid_step(lengths, b, t);
      for (int64_t j0 = 0; j0 < H; j0 += N) {
        const int n = static_cast<int>(std::min<int64_t>(N, H - j0));
        const V hp = load<T>(h_cur + b * H + j0, n);
        const V r = sigmoid_v(load<T>(in + j0, n) + load<T>(nb + j0, n));
        const V z = sigmoid_v(load<T>(in + H + j0, n) + load<T>(nb + H + j0, n));
        const V hn = load<T>(nb + 2 * H + j0, n);
        const V ng = tanh_v(load<T>(in + 2 * H + j0, n) + (kResetAfter ? r * hn : hn));
        V hnew = ng + z * (hp - ng);
        if (masks.zoneout()) hnew += masks.keep_at(t, B, H, b, j0, n) * (hp - hnew);
        const V state = valid ? hnew : hp;
        store<T>(h_next + b * H + j0, state, n);
        if (drop) store<T>(src_next + b * H + j0, state * load<T>(drop + b * H + j0, n), n);
        store<T>(y + (t * B + b) * H + j0, valid ? hnew : V{}, n);
        if constexpr (kTrain) {  // every row: the backward reads r of rows past their length too
          store<T>(gs + j0, r, n);
          store<T>(gs + H + j0, z, n);
          store<T>(gs + 2 * H + j0, ng, n);
          if constexpr (kResetAfter) store<T>(gs + 3 * H + j0, hn, n);
          store<T>(hs + (t * B + b) * H + j0, hp, n);
        }
      }
    }
    part.sync();  // the next step's products read every row of the new state
    std::swap(h_cur, h_next);
    std::swap(src_cur, src_next);
  }
  if (b_end > b_begin) std::memcpy(h_n + b_begin * H, h_cur + b_begin * H, sizeof(T) * (b_end - b_begin) * H);
}

// ------------------------------------------------------------------------------------------------ backward loop

// What the backward of the layer-norm loop adds (see GateNorm): the gradient of each step's recurrent products
// passes back through each gate's norm before it meets W_hh; dprod (T, B, 3H) receives it for dW_hh.
template <typename T>
struct NormGrad {
  const T* gamma;  // (3H,)
  const T* xhat;   // (T, B, 3H)
  const T* rstd;   // (T, B, 3)
  T* dprod;        // (T, B, 3H) out
  // dprod of gates [g0, g1) of step t, batch rows [b_begin, b_end), from the gradient of the norms' outputs
  // (rows of stride 3H).
  void backward(const T* dout, int64_t t, int64_t B, int64_t H, int g0, int g1, int64_t b_begin,
                int64_t b_end) const {
    for (int64_t b = b_begin; b < b_end; ++b)
      for (int g = g0; g < g1; ++g) {
        const int64_t o = (t * B + b) * 3 * H + g * H;
        normalise_backward<T>(dout + o, xhat + o, rstd[(t * B + b) * 3 + g], gamma + g * H, H, dprod + o);
      }
  }
};

template <typename T, bool kResetAfter>
void backward_loop(const T* dy /* (T, B, H) or null */, const T* dh_n /* (B, H) or null */,
                   const T* gates /* reset_after (T, B, 4H) [r, z, n, hn]; else (T, B, 3H) [r, z, n] */,
                   const T* hs /* (T, B, H) state entering each step */,
                   const T* wcols /* the columns of W_hh: packed (P, 3H, N) by pack_column_panels, or W_hh itself */,
                   int64_t row_stride /* N packed, H in place */, int64_t panel_stride /* 3H * N packed, N in place */,
                   const int64_t* lengths /* (B,) or null */,
                   T* dgi /* (T, B, 3H) out: gradient of the gate pre-activations on the input side */,
                   T* dgh /* reset_after: (T, B, 3H) out, gradient of W_hh h (+ b_hh); else null (equals dgi) */,
                   T* dh0 /* (B, H) out */, T* work /* (2, B, H) scratch */, int64_t steps, int64_t B, int64_t H,
                   bool reverse, const Masks<T>& masks /* the forward's */,
                   const NormGrad<T>* norm /* the layer-norm loop's, or null */,
                   const Part& part /* this thread's share of the hidden-unit panels */) {
  using V = typename Simd<T>::V;
  constexpr int N = Simd<T>::N;
  const int64_t P = (H + N - 1) / N;
  const int64_t G3 = 3 * H;
  const int64_t gate_stride = kResetAfter ? 4 * H : 3 * H;
  // Each thread owns the hidden units of its panels: their elementwise gradients in phase A, their share of
  // dh_prev in phase B (from all units' gate gradients: a barrier between the two).
  const int64_t p_begin = part.begin(P), p_end = part.end(P);
  const int64_t u_begin = p_begin * N, u_count = std::min(p_end * N, H) - u_begin;
  T* dh_cur = work;           // gradient w.r.t. the state after the step being processed
  T* dh_next = work + B * H;  // gradient w.r.t. the state before it
  for (int64_t b = 0; b < B && u_count > 0; ++b) {
    T* d = dh_cur + b * H + u_begin;
    if (dh_n) {
      std::memcpy(d, dh_n + b * H + u_begin, sizeof(T) * u_count);
    } else {
      std::memset(d, 0, sizeof(T) * u_count);
    }
  }
  const V one = splat<T>(T(1));
  const T* drop = masks.drop;
  const bool zoneout = masks.zoneout();
  // the gradient reaching the state entering the step through the recurrent products (they read h * drop)
  auto add_product_grad = [&](T* d, V g, int64_t b, int64_t j0, int n) {
    if (drop) g *= load<T>(drop + b * H + j0, n);
    store<T>(d, load<T>(d, n) + g, n);
  };

  for (int64_t s = steps - 1; s >= 0; --s) {
    const int64_t t = reverse ? steps - 1 - s : s;
    // Phase A: elementwise gate gradients (all but dr when reset_after is false).
    for (int64_t b = 0; b < B; ++b) {
      const bool valid = valid_step(lengths, b, t);
      const T* gs = gates + (t * B + b) * gate_stride;
      const T* hp_row = hs + (t * B + b) * H;
      T* dgi_row = dgi + (t * B + b) * G3;
      T* dgh_row = kResetAfter ? dgh + (t * B + b) * G3 : nullptr;
      for (int64_t j0 = u_begin; j0 < u_begin + u_count; j0 += N) {
        const int n = static_cast<int>(std::min<int64_t>(N, H - j0));
        V dh = load<T>(dh_cur + b * H + j0, n);
        if (!valid) {
          store<T>(dh_next + b * H + j0, dh, n);
          for (int g = 0; g < 3; ++g) {
            store<T>(dgi_row + g * H + j0, V{}, n);
            if constexpr (kResetAfter) store<T>(dgh_row + g * H + j0, V{}, n);
          }
          continue;
        }
        if (dy) dh += load<T>(dy + (t * B + b) * H + j0, n);
        V kept{};  // zoneout: the share of dh that reaches the previous state directly
        if (zoneout) {
          kept = dh * masks.keep_at(t, B, H, b, j0, n);
          dh -= kept;
        }
        const V r = load<T>(gs + j0, n), z = load<T>(gs + H + j0, n), nn = load<T>(gs + 2 * H + j0, n);
        const V hp = load<T>(hp_row + j0, n);
        const V dz = dh * (hp - nn);
        const V dnp = dh * (one - z) * (one - nn * nn);
        const V dzp = dz * z * (one - z);
        store<T>(dh_next + b * H + j0, dh * z + kept, n);
        store<T>(dgi_row + H + j0, dzp, n);
        store<T>(dgi_row + 2 * H + j0, dnp, n);
        if constexpr (kResetAfter) {
          const V hn = load<T>(gs + 3 * H + j0, n);
          const V drp = dnp * hn * r * (one - r);
          store<T>(dgi_row + j0, drp, n);
          store<T>(dgh_row + j0, drp, n);
          store<T>(dgh_row + H + j0, dzp, n);
          store<T>(dgh_row + 2 * H + j0, dnp * r, n);
        }
      }
    }
    if constexpr (kResetAfter) {
      // Phase B: dh_prev += dgh W_hh over all 3H rows (dgh through the norms first, with layer norm).
      part.sync();  // phase B reads the gate gradients of every unit
      if (norm) {  // by batch rows: a row's norm spans every unit
        norm->backward(dgh, t, B, H, 0, 3, part.begin(B), part.end(B));
        part.sync();
      }
      const T* dsrc = norm ? norm->dprod : dgh;
      for (int64_t p = p_begin; p < p_end; ++p) {
        const int64_t j0 = p * N;
        const int n = static_cast<int>(std::min<int64_t>(N, H - j0));
        const T* panel = wcols + p * panel_stride;
        for_row_blocks(B, [&](auto rows, int64_t b0) {
          constexpr int R = decltype(rows)::value;
          V acc[R][1];
          panel_product<T, R, 1>(dsrc + (t * B + b0) * G3, G3, G3, panel, acc, row_stride);
          for (int r = 0; r < R; ++r) add_product_grad(dh_next + (b0 + r) * H + j0, acc[r][0], b0 + r, j0, n);
        });
      }
    } else {
      // Phase B1: d(r*h) = dn_pre W_hn; dr_pre from it, and its direct share of dh_prev.
      part.sync();  // phase B1 reads dn_pre of every unit
      if (norm) {
        norm->backward(dgi, t, B, H, 2, 3, part.begin(B), part.end(B));
        part.sync();
      }
      const T* dsrc = norm ? norm->dprod : dgi;
      for (int64_t p = p_begin; p < p_end; ++p) {
        const int64_t j0 = p * N;
        const int n = static_cast<int>(std::min<int64_t>(N, H - j0));
        const T* panel = wcols + p * panel_stride + 2 * H * row_stride;
        for_row_blocks(B, [&](auto rows, int64_t b0) {
          constexpr int R = decltype(rows)::value;
          V acc[R][1];
          panel_product<T, R, 1>(dsrc + (t * B + b0) * G3 + 2 * H, G3, H, panel, acc, row_stride);
          for (int r = 0; r < R; ++r) {
            const int64_t b = b0 + r;
            const V rg = load<T>(gates + (t * B + b) * gate_stride + j0, n);
            V hp = load<T>(hs + (t * B + b) * H + j0, n);
            if (drop) hp *= load<T>(drop + b * H + j0, n);  // what the product read: r * h * drop
            const V drp = acc[r][0] * hp * rg * (one - rg);
            store<T>(dgi + (t * B + b) * G3 + j0, valid_step(lengths, b, t) ? drp : V{}, n);
            add_product_grad(dh_next + b * H + j0, acc[r][0] * rg, b, j0, n);
          }
        });
      }
      // Phase B2: dh_prev += [dr_pre, dz_pre] W_hrz.
      part.sync();  // phase B2 reads dr_pre and dz_pre of every unit
      if (norm) {
        norm->backward(dgi, t, B, H, 0, 2, part.begin(B), part.end(B));
        part.sync();
      }
      for (int64_t p = p_begin; p < p_end; ++p) {
        const int64_t j0 = p * N;
        const int n = static_cast<int>(std::min<int64_t>(N, H - j0));
        const T* panel = wcols + p * panel_stride;
        for_row_blocks(B, [&](auto rows, int64_t b0) {
          constexpr int R = decltype(rows)::value;
          V acc[R][1];
          panel_product<T, R, 1>(dsrc + (t * B + b0) * G3, G3, 2 * H, panel, acc, row_stride);
          for (int r = 0; r < R; ++r) add_product_grad(dh_next + (b0 + r) * H + j0, acc[r][0], b0 + r, j0, n);
        });
      }
    }
    std::swap(dh_cur, dh_next);
  }
  for (int64_t b = 0; b < B && u_count > 0; ++b)
    std::memcpy(dh0 + b * H + u_begin, dh_cur + b * H + u_begin, sizeof(T) * u_count);
}

// ------------------------------------------------------------------------------------------------ bindings

// A time step is split over two threads (hidden-unit panels, one barrier per step) when torch allows two threads
// (torch.set_num_threads / OMP_NUM_THREADS) and the step's estimated time is at least kSplitNs: below it the
// barrier's cost (a few µs per step: the cache lines of h cross cores, and the partner may arrive late) eats the
// gain. The estimate is the longer of the step's FLOPs at kStepFlopsPerNs and the weight bytes it streams at
// kStepBytesPerNs (one core, from the notes' ceilings): B = 1 at H = 256 streams 0.79 MB (8 µs, measured 1.7x on
// two threads), while B = 8 at H = 64 with the input fused has 0.39 MFLOP but only 4 µs (measured no gain).
constexpr double kSplitNs = 6000;
constexpr double kStepFlopsPerNs = 90;
constexpr double kStepBytesPerNs = 100;

// Threads for a loop whose step multiplies B rows by a (3H, H + I) matrix of `weight_bytes` per element.
int team_size(int64_t B, int64_t H, int64_t I, int64_t weight_bytes) {
  const double elements = 3.0 * H * (H + I);
  const double step_ns = std::max(2.0 * B * elements / kStepFlopsPerNs, elements * weight_bytes / kStepBytesPerNs);
  return at::get_num_threads() >= 2 && step_ns >= kSplitNs ? 2 : 1;
}

// The layer-norm loops split their norms by batch rows: one row runs on one thread, and the two extra barriers a
// step cost more than half a step's products save (B = 1, H = 256, T = 64 training: 0.89x on two threads).
int norm_team_size(int64_t B, int64_t H) { return B >= 2 ? team_size(B, H, 0, 4) : 1; }

// The forward loop computes the input product itself (InputSide with no gi) when each packed weight panel serves
// at least kFuseBatch rows, so the micro-kernel is compute-bound, and W_ih and W_hh together fit kFuseBytes (about
// the L2 cache: both are read once per step); otherwise one GEMM computes it for all steps first.
constexpr int64_t kFuseBatch = 8;
constexpr int64_t kFuseBytes = 2 << 20;

bool fuse_input(int64_t T, int64_t B, int64_t I, int64_t H, int64_t element_bytes) {
  return T >= 2 && B >= kFuseBatch && 3 * H * (I + H) * element_bytes <= kFuseBytes;
}

// forward_loop_ahead serves B = 1 (both forms) where W_ih and W_hh together fit kFuseBytes (beyond, W_ih
// streamed beside W_hh from L3 costs more than the GEMM it replaces: at H = 1024 on an AMD EPYC 2.4x slower), and
// only where its kAhead x 3 tile fits the vector registers (AVX-512).
bool loop_ahead(int64_t T, int64_t B, int64_t I, int64_t H, int64_t element_bytes) {
  return kMaxRows >= kAhead && T >= 2 && B == 1 && 3 * H * (I + H) * element_bytes <= kFuseBytes;
}

// Where the input side is a GEMM before the loop, the micro-kernel computes it (project_input) when W_ih is at most
// kProjectBytes: there it runs at MKL's rate or above (measured on an Intel Xeon, B in {1, 4}, T = 256: a few %
// faster up to H = I = 128, slower from 192), and it spares the call into MKL, whose fixed cost and cold-cache cost
// (its code and buffers evicted by whatever ran since the last call) reach 100 µs and more per call. On AMD CPUs it
// serves every size: on an AMD EPYC, interleaved in one process against the GEMM (bench/projection.py), H = 1024 at
// B = 1 / 8 / 64 ran 1.09x / 1.12x / 1.06x faster on one thread, 1.12x / 1.20x at B = 1 / 8 on two (each thread
// projects its own panels: no GEMM split to join), H = 512 at B = 8 1.13x. That was an AVX-512 build; on an AMD
// EPYC with AVX2 alone (Zen 3, 3-row tiles) the micro-kernel ran 0.87-0.93x the GEMM at H = 1024, B = 1 / 8 / 64,
// and 0.93x at H = 512, B = 8, so there the size rule holds as on other CPUs.
constexpr int64_t kProjectBytes = 256 << 10;

bool amd_cpu() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool amd = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid(0, &a, &b, &c, &d) != 0 && b == 0x68747541 && d == 0x69746e65 && c == 0x444d4163;  // AuthenticAMD
  }();
  return amd;
#else
  return false;
#endif
}

// 0: always the GEMM, 1: by size and CPU (the default, above), 2: always the micro-kernel (set_projection_mode).
std::atomic<int> projection_mode{1};

bool project_with_kernel(int64_t I, int64_t H, int64_t element_bytes) {
  const int mode = projection_mode.load(std::memory_order_relaxed);
  const bool wide_amd = kVecBytes == 64 && amd_cpu();
  return mode == 2 || (mode == 1 && (wide_amd || 3 * H * I * element_bytes <= kProjectBytes));
}

void check_inputs(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh) {
  TORCH_CHECK(x.device().is_cpu(), "grukit cpu backend: x must be a CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "grukit cpu backend: float32 or float64 only, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 3 && h0.dim() == 2 && w_ih.dim() == 2 && w_hh.dim() == 2, "grukit cpu backend: bad ranks");
  for (const auto* t : {&h0, &w_ih, &w_hh})
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device().is_cpu(),
                "grukit cpu backend: h0 and weights must match x's dtype and device");
  const int64_t H = h0.size(1);
  TORCH_CHECK(w_hh.size(0) == 3 * H && w_hh.size(1) == H && w_ih.size(0) == 3 * H && w_ih.size(1) == x.size(2) &&
                  h0.size(0) == x.size(1),
              "grukit cpu backend: inconsistent shapes");
}

// W_hh packed for the forward loop: reset_after (P, H, 3, N); else (P, H, 2, N) then (P, H, 1, N). Packing costs
// tens to hundreds of µs at H = 64..256, so the Python side caches the result across calls.
// The panels [p_begin, p_end) of a (3H, K) weight in one equation form's layout (that of pack_hh below for W_hh):
// reset_after (P, D, 3, N), else the r/z panels (P, D, 2, N) then the n panels (P, D, 1, N), D = panel_depth<W>(K).
// Each thread of a split loop packs the panels it reads (they land in its own core's cache).
template <typename T, typename W = T>
void pack_hh_panels(const T* w /* (3H, K) */, int64_t K, int64_t H, bool reset_after, W* wp, int64_t p_begin,
                    int64_t p_end) {
  constexpr int N = Simd<T>::N;
  const int64_t P = (H + N - 1) / N;
  if (reset_after) {
    pack_gate_panels<T, W>(w, K, H, 0, 3, wp, p_begin, p_end);
  } else {
    pack_gate_panels<T, W>(w, K, H, 0, 2, wp, p_begin, p_end);
    pack_gate_panels<T, W>(w, K, H, 2 * H, 1, wp + P * panel_depth<W>(K) * 2 * N, p_begin, p_end);
  }
}

at::Tensor pack_hh(const at::Tensor& w_hh_in /* (3H, H) */, bool reset_after) {
  TORCH_CHECK(w_hh_in.dim() == 2 && w_hh_in.size(0) == 3 * w_hh_in.size(1), "grukit cpu backend: w_hh must be (3H, H)");
  const at::Tensor w_hh = w_hh_in.contiguous();
  const int64_t H = w_hh.size(1);
  at::Tensor wpack;
  AT_DISPATCH_FLOATING_TYPES(w_hh.scalar_type(), "grukit_pack_hh", [&] {
    constexpr int N = Simd<scalar_t>::N;
    const int64_t P = (H + N - 1) / N;
    wpack = at::empty({P * H * 3 * N}, w_hh.options());
    pack_hh_panels<scalar_t>(w_hh.data_ptr<scalar_t>(), H, H, reset_after, wpack.data_ptr<scalar_t>(), 0, P);
  });
  return wpack;
}

// W_ih packed like W_hh in the reset_after form, (P, I, 3, N): the streaming step's input product.
at::Tensor pack_ih(const at::Tensor& w_ih_in /* (3H, I) */) {
  TORCH_CHECK(w_ih_in.dim() == 2 && w_ih_in.size(0) % 3 == 0, "grukit cpu backend: w_ih must be (3H, I)");
  const at::Tensor w_ih = w_ih_in.contiguous();
  const int64_t H = w_ih.size(0) / 3, I = w_ih.size(1);
  at::Tensor wpack;
  AT_DISPATCH_FLOATING_TYPES(w_ih.scalar_type(), "grukit_pack_ih", [&] {
    constexpr int N = Simd<scalar_t>::N;
    const int64_t P = (H + N - 1) / N;
    wpack = at::empty({P * I * 3 * N}, w_ih.options());
    pack_gate_panels<scalar_t>(w_ih.data_ptr<scalar_t>(), I, H, 0, 3, wpack.data_ptr<scalar_t>());
  });
  return wpack;
}

// The input-side bias with the recurrent biases folded in: reset_after b_ih + [b_hr, b_hz, 0] and b_hn apart;
// else b_ih + b_hh (and no b_hn). The same additions, in the same order, as the unfolded path of gru_forward.
// fold (3H,) = b_ih + b_hh, but for b_hn (b_hh's last H) in the reset_after form, which stays inside r; all three
// contiguous of one dtype. A plain loop: no ATen op (gru_forward folds on every call).
void fold_into(const at::Tensor& b_ih, const at::Tensor& b_hh, bool reset_after, at::Tensor& fold) {
  const int64_t H = b_ih.size(0) / 3;
  AT_DISPATCH_FLOATING_TYPES(fold.scalar_type(), "grukit_fold", [&] {
    const scalar_t *i = b_ih.data_ptr<scalar_t>(), *h = b_hh.data_ptr<scalar_t>();
    scalar_t* f = fold.data_ptr<scalar_t>();
    const int64_t folded = reset_after ? 2 * H : 3 * H;
    for (int64_t j = 0; j < folded; ++j) f[j] = i[j] + h[j];
    for (int64_t j = folded; j < 3 * H; ++j) f[j] = i[j];
  });
}

std::vector<at::Tensor> fold_bias(const at::Tensor& b_ih_in /* (3H,) */, const at::Tensor& b_hh_in /* (3H,) */,
                                  bool reset_after) {
  const at::Tensor b_ih = b_ih_in.contiguous(), b_hh = b_hh_in.contiguous().to(b_ih.scalar_type());
  const int64_t H = b_ih.size(0) / 3;
  at::Tensor fold = at::empty_like(b_ih);
  fold_into(b_ih, b_hh, reset_after, fold);
  at::Tensor b_hn;
  if (reset_after) b_hn = b_hh.narrow(0, 2 * H, H).clone();
  return {fold, b_hn};
}

void check_folded(const at::Tensor& fold, const std::optional<at::Tensor>& b_hn, const at::Tensor& x, int64_t H,
                  bool reset_after) {
  TORCH_CHECK(fold.dim() == 1 && fold.size(0) == 3 * H && fold.is_contiguous() &&
                  fold.scalar_type() == x.scalar_type(),
              "grukit cpu backend: fold must be a contiguous (3H,) tensor of x's dtype");
  if (reset_after) {
    TORCH_CHECK(b_hn.has_value() && b_hn->dim() == 1 && b_hn->size(0) == H && b_hn->is_contiguous() &&
                    b_hn->scalar_type() == x.scalar_type(),
                "grukit cpu backend: b_hn must be a contiguous (H,) tensor of x's dtype with reset_after");
  }
}

// One streaming step (reset_after, no lengths) from pre-packed weights: (y: (1, B, H), h_n: (B, H)).
std::vector<at::Tensor> gru_step(const at::Tensor& x_in /* (1, B, I) */, const at::Tensor& h0_in /* (B, H) */,
                                 const at::Tensor& wpack_ih /* from pack_ih */,
                                 const at::Tensor& wpack_hh /* from pack_hh(w_hh, true) */,
                                 const std::optional<at::Tensor>& fold /* (3H,) or none */,
                                 const std::optional<at::Tensor>& b_hn /* (H,) or none */) {
  TORCH_CHECK(x_in.dim() == 3 && x_in.size(0) == 1 && h0_in.dim() == 2 && x_in.size(1) == h0_in.size(0),
              "grukit cpu step: x must be (1, B, I) and h0 (B, H)");
  TORCH_CHECK(x_in.device().is_cpu() && h0_in.scalar_type() == x_in.scalar_type() &&
                  wpack_ih.scalar_type() == x_in.scalar_type() && wpack_hh.scalar_type() == x_in.scalar_type(),
              "grukit cpu step: x, h0 and the packed weights must share a CPU floating dtype");
  const at::Tensor x = x_in.contiguous(), h0 = h0_in.contiguous();
  const int64_t B = x.size(1), I = x.size(2), H = h0.size(1);
  if (fold.has_value()) check_folded(*fold, b_hn, x, H, true);
  at::Tensor y = at::empty({1, B, H}, x.options());
  at::Tensor h_n = at::empty({B, H}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grukit_gru_step", [&] {
    constexpr int N = Simd<scalar_t>::N;
    const int64_t P = (H + N - 1) / N;
    TORCH_CHECK(wpack_ih.is_contiguous() && wpack_ih.numel() == P * I * 3 * N && wpack_hh.is_contiguous() &&
                    wpack_hh.numel() == P * H * 3 * N,
                "grukit cpu step: packed weights do not match x and h0");
    grukit::Team::instance().run(team_size(B, H, I, x.element_size()), [&](const Part& part) {
      step_kernel<scalar_t>(x.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), wpack_ih.data_ptr<scalar_t>(),
                            wpack_hh.data_ptr<scalar_t>(), fold.has_value() ? fold->data_ptr<scalar_t>() : nullptr,
                            b_hn.has_value() ? b_hn->data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(),
                            h_n.data_ptr<scalar_t>(), B, I, H, part.begin(P), part.end(P));
    });
  });
  return {y, h_n};
}

// One step from the unpacked weights (direct_step_kernel): x (1, B, I) with B <= kDirectBatch, h0 (B, H), both
// biases or none -> (y (1, B, H), h_n (B, H), and with train the gates (1, B, 4H or 3H) and the state entering the
// step (1, B, H) as gru_forward saves them). Split over two threads like the loops (team_size).
std::vector<at::Tensor> direct_step(const at::Tensor& x_in, const at::Tensor& h0_in, const at::Tensor& w_ih_in,
                                    const at::Tensor& w_hh_in, const std::optional<at::Tensor>& b_ih_in,
                                    const std::optional<at::Tensor>& b_hh_in, bool reset_after, bool train) {
  check_inputs(x_in, h0_in, w_ih_in, w_hh_in);
  TORCH_CHECK(x_in.size(0) == 1 && x_in.size(1) <= kDirectBatch, "grukit cpu step_direct: x must be (1, B <= ",
              kDirectBatch, ", I)");
  TORCH_CHECK(b_ih_in.has_value() == b_hh_in.has_value(), "grukit cpu step_direct: both biases or none");
  const at::Tensor x = x_in.contiguous(), h0 = h0_in.contiguous(), w_ih = w_ih_in.contiguous();
  const at::Tensor w_hh = w_hh_in.contiguous();
  const at::Tensor b_ih = b_ih_in.has_value() ? b_ih_in->contiguous() : at::Tensor();
  const at::Tensor b_hh = b_hh_in.has_value() ? b_hh_in->contiguous() : at::Tensor();
  const int64_t B = x.size(1), I = x.size(2), H = h0.size(1);
  TORCH_CHECK(!b_ih.defined() || (b_ih.numel() == 3 * H && b_hh.numel() == 3 * H &&
                                  b_ih.scalar_type() == x.scalar_type() && b_hh.scalar_type() == x.scalar_type()),
              "grukit cpu step_direct: biases must be (3H,) of x's dtype");
  const auto dtype = x.scalar_type();
  at::Tensor y = at::detail::empty_cpu({1, B, H}, dtype, false);
  at::Tensor h_n = at::detail::empty_cpu({B, H}, dtype, false);
  at::Tensor pre = at::detail::empty_cpu({B, 4 * H}, dtype, false);
  at::Tensor gates = train ? at::empty({1, B, (reset_after ? 4 : 3) * H}, x.options()) : at::Tensor();
  at::Tensor hs = train ? h0.clone().view({1, B, H}) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(dtype, "grukit_gru_step_direct", [&] {
    grukit::Team::instance().run(team_size(B, H, I, x.element_size()), [&](const Part& part) {
      direct_step_kernel<scalar_t>(x.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), w_ih.data_ptr<scalar_t>(),
                                   w_hh.data_ptr<scalar_t>(), b_ih.defined() ? b_ih.data_ptr<scalar_t>() : nullptr,
                                   b_hh.defined() ? b_hh.data_ptr<scalar_t>() : nullptr, reset_after,
                                   y.data_ptr<scalar_t>(), h_n.data_ptr<scalar_t>(),
                                   train ? gates.data_ptr<scalar_t>() : nullptr, pre.data_ptr<scalar_t>(), B, I, H,
                                   part);
    });
  });
  return {y, h_n, gates, hs};
}

// The eval entry of direct_step: (y (1, B, H), h_n (B, H)).
std::vector<at::Tensor> gru_step_direct(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih,
                                        const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                                        const std::optional<at::Tensor>& b_hh, bool reset_after) {
  auto out = direct_step(x, h0, w_ih, w_hh, b_ih, b_hh, reset_after, false);
  return {out[0], out[1]};
}

// W (3H, K) of float32 packed like pack_ih / pack_hh(w, three_gates), rounded to bfloat16 in pairs along k: (P,
// ceil(K/2), 3, N) pairs, or the (P, ceil(K/2), 2, N) r/z panels then the (P, ceil(K/2), 1, N) n panels (an int32
// tensor).
at::Tensor pack_bf16(const at::Tensor& w_in /* (3H, K) */, bool three_gates) {
  TORCH_CHECK(w_in.scalar_type() == at::kFloat, "grukit stepper: bfloat16 weights need a float32 model, got ",
              w_in.scalar_type());
  const at::Tensor w = w_in.contiguous();
  const int64_t H = w.size(0) / 3, K = w.size(1);
  constexpr int N = Simd<float>::N;
  const int64_t P = (H + N - 1) / N;
  at::Tensor out = at::empty({P * panel_depth<bf16x2_t>(K) * 3 * N}, w.options().dtype(at::kInt));
  pack_hh_panels<float, bf16x2_t>(w.data_ptr<float>(), K, H, three_gates,
                                  reinterpret_cast<bf16x2_t*>(out.data_ptr<int32_t>()), 0, P);
  return out;
}

// The outputs a stepper handed out, kept (a reference to each Python object) so that a later call can write its
// result into one that nothing else can see any more, instead of allocating, wrapping and freeing two tensors per
// call (about 0.6 us of a 2.5 us step at H = 64). An object is reused only when this pool holds its only
// reference and nothing else reaches its memory or identity: Python reference count 1, no weak references, no
// instance attributes; its tensor referenced only by that object (no saved autograd tensor, no DLPack export), its
// storage only by the tensor (no view, no .numpy(), no untyped_storage()); no autograd metadata, the dispatch keys
// of a fresh tensor (no conj/neg bits), the expected shape, contiguous at offset 0. Then the caller sees a fresh
// result, as from a new tensor. Two slots per output (a state passed back in is busy during the next call, the one
// before it is free); outputs above kMaxBytes are always allocated (their allocation is small against the step).
class OutputPool {
 public:
  static constexpr int64_t kMaxBytes = 64 << 10;

  // A free kept tensor for output `role` (0: y, 1: h_n) of `shape`, its version bumped, else a fresh one.
  at::Tensor take(int role, at::IntArrayRef shape, at::ScalarType dtype) {
    const int64_t bytes = c10::multiply_integers(shape) * static_cast<int64_t>(c10::elementSize(dtype));
    if (bytes <= kMaxBytes && unobserved_supported()) {
      for (const py::object& slot : slots_[role]) {
        if (slot && unobserved(slot.ptr(), shape, dtype)) {
          at::Tensor t = THPVariable_Unpack(slot.ptr());
          t.unsafeGetTensorImpl()->bump_version();  // written in place: as a fresh tensor, nobody saved this one
          return t;
        }
      }
    }
    return at::detail::empty_cpu(shape, dtype, false);  // no dispatcher round trip
  }

  // Wraps `t` (the result of take) for Python and keeps the object unless it is kept already.
  PyObject* wrap(int role, at::Tensor t) {
    const bool small = t.nbytes() <= static_cast<size_t>(kMaxBytes);
    PyObject* obj = THPVariable_Wrap(std::move(t));
    if (obj == nullptr || !small) return obj;
    auto& slots = slots_[role];
    if (slots[0].ptr() != obj && slots[1].ptr() != obj) {
      slots[next_[role]] = py::reinterpret_borrow<py::object>(obj);
      next_[role] ^= 1;
    }
    return obj;
  }

 private:
  // The Python versions whose object layout these checks read: a weak-reference list at tp_weaklistoffset
  // (positive, or the managed offset of 3.12+, both relative to the object) and _PyObject_GetDictPtr.
  static bool unobserved_supported() {
    return reinterpret_cast<PyTypeObject*>(THPVariableClass)->tp_weaklistoffset != 0;
  }

  static bool unobserved(PyObject* obj, at::IntArrayRef shape, at::ScalarType dtype) {
    PyTypeObject* type = Py_TYPE(obj);
    if (Py_REFCNT(obj) != 1 || type != reinterpret_cast<PyTypeObject*>(THPVariableClass)) return false;
    if (*reinterpret_cast<PyObject**>(reinterpret_cast<char*>(obj) + type->tp_weaklistoffset) != nullptr) return false;
    PyObject** dict = _PyObject_GetDictPtr(obj);
    if (dict != nullptr && *dict != nullptr && PyDict_GET_SIZE(*dict) > 0) return false;
    const at::Tensor& t = THPVariable_Unpack(obj);
    static const c10::DispatchKeySet fresh = at::detail::empty_cpu({1}, at::kFloat, false).key_set();
    return t.use_count() == 1 && t.storage().use_count() == 1 && t.unsafeGetTensorImpl()->autograd_meta() == nullptr &&
           t.key_set() == fresh && t.scalar_type() == dtype && t.sizes() == shape && t.is_contiguous() &&
           t.storage_offset() == 0;
  }

  py::object slots_[2][2];
  int next_[2] = {0, 0};
};

// A streaming stepper bound to a stack of layers (either equation form): every layer's weights packed once (optionally
// as bfloat16, float32 models only: half the bytes per step, products and gates still in float32), and all layers
// of one time step in one call with no ATen call (its outputs come from an OutputPool). It keeps the tensors it was
// built from (`watched`) with their version counters and data pointers, and step() returns None instead of a result
// once one of them changed (the Python side raises, naming it).
class Stepper {
 public:
  // layers: per layer [w_ih (3H, I_l), w_hh (3H, H)] or [w_ih, w_hh, b_ih (3H,), b_hh (3H,)], all of one dtype;
  // a layer-norm layer adds its norms [ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias] (3H,) after both biases.
  // keep: zoneout's probability (eval: the expectation h = h_new + keep (h_prev - h_new)), 0 for none.
  Stepper(const std::vector<std::vector<at::Tensor>>& layers, const std::vector<at::Tensor>& watched, bool bf16,
          bool reset_after, double keep)
      : watched_(watched), bf16_(bf16), reset_after_(reset_after), keep_(keep) {
    at::NoGradGuard no_grad;
    TORCH_CHECK(!layers.empty(), "grukit stepper: no layers");
    TORCH_CHECK(keep >= 0 && keep < 1, "grukit stepper: zoneout must be in [0, 1), got ", keep);
    H_ = layers[0][1].size(1);
    dtype_ = layers[0][0].scalar_type();
    for (const auto& w : layers) {
      TORCH_CHECK((w.size() == 2 || w.size() == 4 || w.size() == 8) && w[1].dim() == 2 && w[1].size(0) == 3 * H_ &&
                      w[1].size(1) == H_ && w[0].dim() == 2 && w[0].size(0) == 3 * H_,
                  "grukit stepper: each layer needs w_ih (3H, I) and w_hh (3H, H) of one H, and optionally both biases "
                  "(then optionally the four layer-norm vectors)");
      for (const auto& t : w)
        TORCH_CHECK(t.scalar_type() == dtype_ && t.device().is_cpu(), "grukit stepper: CPU weights of one dtype");
      const bool norm = w.size() == 8;
      TORCH_CHECK(!(bf16 && norm), "grukit stepper: bfloat16 weights serve no layer-norm layer");
      Layer layer{bf16 ? pack_bf16(w[0], true) : pack_ih(w[0]),
                  bf16 ? pack_bf16(w[1], reset_after) : pack_hh(w[1], reset_after), at::Tensor(), at::Tensor(),
                  w[0].size(1)};
      if (norm) {  // the biases join the norms' biases: out = xhat * gain + (norm bias + layer bias)
        layer.norms = {w[4].contiguous(), (w[5] + w[2]).contiguous(), w[6].contiguous(), (w[7] + w[3]).contiguous()};
        has_norm_ = true;
      } else if (w.size() == 4) {
        auto folded = fold_bias(w[2], w[3], reset_after);
        layer.fold = folded[0];
        layer.b_hn = folded[1];
      }
      layers_.push_back(layer);
    }
    for (const auto& t : watched_) stamps_.emplace_back(t._version(), t.data_ptr());
  }

  // The index in `watched` of the first tensor changed since packing (version counter or storage), or -1.
  int64_t changed() const {
    for (size_t i = 0; i < watched_.size(); ++i)
      if (watched_[i]._version() != stamps_[i].first || watched_[i].data_ptr() != stamps_[i].second)
        return static_cast<int64_t>(i);
    return -1;
  }

  // x: (B, I) or unbatched (I,); h: (L, B, H) or (L, H) -> (y: (B, H) or (H,), h_n like h), or None when stale.
  py::object step(const at::Tensor& x_in, const at::Tensor& h_in) {
    PyObject* result = step_objects(x_in, h_in);
    if (result == nullptr) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(result);
  }

  // step() as a new Python reference: the tuple (y, h_n), fresh or recycled tensors (OutputPool), or None when
  // stale; null with the Python error set.
  PyObject* step_objects(const at::Tensor& x_in, const at::Tensor& h_in) {
    at::Tensor y, h_n;
    if (!run(x_in, h_in, y, h_n)) Py_RETURN_NONE;
    PyObject* out = PyTuple_New(2);
    if (out == nullptr) return nullptr;
    PyTuple_SET_ITEM(out, 0, pool_.wrap(0, std::move(y)));
    PyTuple_SET_ITEM(out, 1, pool_.wrap(1, std::move(h_n)));
    if (PyTuple_GET_ITEM(out, 0) == nullptr || PyTuple_GET_ITEM(out, 1) == nullptr) {
      Py_DECREF(out);
      return nullptr;
    }
    return out;
  }

  // One step into y and h_n: when undefined, new or recycled tensors from pool_, else written in place (checked:
  // shape, dtype, contiguous, no overlap with x, h or each other, no autograd). False, with nothing computed, when
  // stale.
  bool run(const at::Tensor& x_in, const at::Tensor& h_in, at::Tensor& y, at::Tensor& h_n) {
    if (changed() >= 0) return false;
    const int64_t L = static_cast<int64_t>(layers_.size());
    const bool batched = x_in.dim() == 2;
    TORCH_CHECK((x_in.dim() == 1 || batched) && h_in.dim() == x_in.dim() + 1,
                "grukit stepper: x must be (batch, input_size) with state (num_layers, batch, hidden_size), or "
                "unbatched (input_size,) with state (num_layers, hidden_size); got x ", x_in.sizes(), " and state ",
                h_in.sizes());
    const int64_t B = batched ? x_in.size(0) : 1;
    TORCH_CHECK(x_in.size(-1) == layers_[0].in && h_in.size(0) == L && h_in.size(-1) == H_ &&
                    (!batched || h_in.size(1) == B),
                "grukit stepper: expected x (..., ", layers_[0].in, ") and state (", L, ", ..., ", H_, ") for ", B,
                " sequences; got x ", x_in.sizes(), " and state ", h_in.sizes());
    TORCH_CHECK(x_in.scalar_type() == dtype_ && h_in.scalar_type() == dtype_ && x_in.device().is_cpu() &&
                    h_in.device().is_cpu(),
                "grukit stepper: x and state must be CPU tensors of the weights' dtype ", dtype_, "; got ",
                x_in.scalar_type(), " and ", h_in.scalar_type());
    TORCH_CHECK(!at::GradMode::is_enabled() || !(x_in.requires_grad() || h_in.requires_grad()),
                "grukit stepper: inference only (it records no autograd graph); use gru.step(x, state) to "
                "backpropagate through steps");
    const at::Tensor x = x_in.contiguous(), h = h_in.contiguous();
    if (y.defined()) {
      check_out(y, batched ? at::IntArrayRef{B, H_} : at::IntArrayRef{H_}, "y_out", {&x, &h});
      check_out(h_n, h.sizes(), "state_out", {&x, &h, &y});
      y.unsafeGetTensorImpl()->bump_version();
      h_n.unsafeGetTensorImpl()->bump_version();
    } else {
      y = pool_.take(0, batched ? at::IntArrayRef{B, H_} : at::IntArrayRef{H_}, dtype_);
      h_n = pool_.take(1, h.sizes(), dtype_);
    }
    int64_t inputs = 0;  // the input widths of all layers, for the FLOP count
    for (const auto& layer : layers_) inputs += layer.in;
    if (!reset_after_ && (!work_.defined() || work_.numel() < 3 * B * H_))  // grows with B, else no allocation
      work_ = at::detail::empty_cpu({3 * B * H_}, dtype_, false);
    const int64_t norm_elements = 5 * B * 3 * H_ + 3 * B + 5 * B * H_;  // see norm_step
    if (has_norm_ && (!norm_work_.defined() || norm_work_.numel() < norm_elements))
      norm_work_ = at::detail::empty_cpu({norm_elements}, dtype_, false);
    const bool back = calls_.fetch_add(1, std::memory_order_relaxed) % 2 == 1;  // snake order from call to call
    AT_DISPATCH_FLOATING_TYPES(dtype_, "grukit_stepper", [&] {
      constexpr int N = Simd<scalar_t>::N;
      const int64_t P = (H_ + N - 1) / N;
      // One layer with weights of scalar_t, or bfloat16 when `rounded` holds true (float32 only: the constructor
      // refuses bfloat16 for float64, so that combination compiles to the plain kernel and never runs).
      auto layer_step = [&](auto rounded, const Layer& w, const scalar_t* in, scalar_t* y_out, scalar_t* out,
                            const scalar_t* h_l, const Part& part) {
        using Wt = std::conditional_t<decltype(rounded)::value && std::is_same_v<scalar_t, float>, bf16x2_t, scalar_t>;
        const Wt* wih = static_cast<const Wt*>(w.wih.data_ptr());
        const Wt* whh = static_cast<const Wt*>(w.whh.data_ptr());
        const scalar_t* fold = w.fold.defined() ? w.fold.data_ptr<scalar_t>() : nullptr;
        const auto keep = static_cast<scalar_t>(keep_);
        if constexpr (std::is_same_v<Wt, scalar_t>) {
          if (!w.norms.empty()) return norm_step<scalar_t>(w, in, h_l, y_out, out, B, part);
        }
        if (reset_after_) {
          step_kernel<scalar_t, Wt>(in, h_l, wih, whh, fold, w.b_hn.defined() ? w.b_hn.data_ptr<scalar_t>() : nullptr,
                                    y_out, out, B, w.in, H_, part.begin(P), part.end(P), keep, back);
        } else {
          scalar_t* work = work_.data_ptr<scalar_t>();
          step_kernel_before_rz<scalar_t, Wt>(in, h_l, wih, whh, fold, work, B, w.in, H_, part.begin(P), part.end(P),
                                              back);
          part.sync();  // phase 2 reads r * h of every unit
          step_kernel_before_n<scalar_t, Wt>(h_l, whh, work, y_out, out, B, H_, part.begin(P), part.end(P), keep,
                                             !back);
        }
      };
      const int64_t weight_bytes = bf16_ ? 2 : static_cast<int64_t>(sizeof(scalar_t));
      const int threads = has_norm_ ? norm_team_size(B, H_) : team_size(B * L, H_, inputs / L, weight_bytes);
      grukit::Team::instance().run(threads, [&](const Part& part) {
        const scalar_t* in = x.data_ptr<scalar_t>();
        for (int64_t l = 0; l < L; ++l) {
          scalar_t* out = h_n.data_ptr<scalar_t>() + l * B * H_;
          scalar_t* y_out = l + 1 == L ? y.data_ptr<scalar_t>() : out;
          const scalar_t* h_l = h.data_ptr<scalar_t>() + l * B * H_;
          if (bf16_) {
            layer_step(std::true_type{}, layers_[l], in, y_out, out, h_l, part);
          } else {
            layer_step(std::false_type{}, layers_[l], in, y_out, out, h_l, part);
          }
          if (l + 1 < L) part.sync();  // the next layer reads every unit of this one's output
          in = out;
        }
      });
    });
    return true;
  }

 private:
  struct Layer {
    at::Tensor wih, whh, fold, b_hn;  // packed (P, I, 3, N), pack_hh's layout (bf16: pairs); folded biases or none
    int64_t in;                       // input width I of this layer
    std::vector<at::Tensor> norms;    // layer norm: gain_ih, bias_ih + b_ih, gain_hh, bias_hh + b_hh; else empty
  };

  // One layer-norm layer's step: the input product from the packed W_ih (this thread's panels), each gate's row
  // normalised (plus its biases; this thread's rows), then forward_loop_norm's single step over the packed W_hh,
  // zoneout's expectation included.
  // norm_work_: the raw input product, the normalised one, the norms' scratch (xhat (B, 3H), rstd (B, 3)) and the
  // loop's work (5 B H + 2 B 3H).
  template <typename T>
  void norm_step(const Layer& w, const T* x /* (B, I) */, const T* h /* (B, H) */, T* y /* (B, H) */,
                 T* h_n /* (B, H), may be y */, int64_t B, const Part& part) {
    const int64_t H = H_, G3 = 3 * H_;
    T* raw = norm_work_.data_ptr<T>();
    T* gi = raw + B * G3;
    T* xhat = gi + B * G3;
    T* rstd = xhat + B * G3;
    T* work = rstd + 3 * B;
    const int64_t P = (H + Simd<T>::N - 1) / Simd<T>::N;
    gate_products<T, 3>(x, w.in, w.wih.data_ptr<T>(), B, H, raw, G3, part.begin(P), part.end(P));
    part.sync();  // a row's norm reads every unit
    normalise_rows<T>(raw, w.norms[0].data_ptr<T>(), w.norms[1].data_ptr<T>(), H, part.begin(B), part.end(B), 0, 3,
                      xhat, rstd, gi);
    const GateNorm<T> norm{w.norms[2].data_ptr<T>(), w.norms[3].data_ptr<T>(), xhat, rstd};
    Masks<T> masks;
    masks.keep_p = static_cast<T>(keep_);
    auto loop = reset_after_ ? forward_loop_norm<T, true, false> : forward_loop_norm<T, false, false>;
    part.sync();  // the loop reads gi of every row
    loop(gi, w.whh.data_ptr<T>(), norm, h, nullptr, y, h_n, nullptr, nullptr, work, 1, B, H, false, masks, part);
  }

  // An output tensor written in place: the expected shape and the weights' dtype, contiguous CPU, outside autograd
  // and sharing no memory with `others` (the kernel reads every input unit while writing its panels).
  void check_out(const at::Tensor& out, at::IntArrayRef shape, const char* name,
                 std::initializer_list<const at::Tensor*> others) const {
    TORCH_CHECK(out.defined() && out.sizes() == shape && out.scalar_type() == dtype_ && out.device().is_cpu() &&
                    out.is_contiguous() && !out.requires_grad(),
                "grukit stepper: ", name, " must be a contiguous CPU tensor of shape ", shape, " and dtype ", dtype_,
                " that does not require grad");
    const char* begin = static_cast<const char*>(out.data_ptr());
    const char* end = begin + out.nbytes();
    for (const at::Tensor* other : others) {
      const char* o = static_cast<const char*>(other->data_ptr());
      TORCH_CHECK(end <= o || o + other->nbytes() <= begin, "grukit stepper: ", name,
                  " shares memory with an input or another output");
    }
  }

  std::vector<Layer> layers_;
  std::vector<at::Tensor> watched_;
  std::vector<std::pair<int64_t, const void*>> stamps_;
  bool bf16_ = false;
  bool reset_after_ = true;
  double keep_ = 0;         // zoneout's expectation
  bool has_norm_ = false;   // a layer-norm layer: norm_step's buffers
  at::Tensor work_;  // reset_before: r * h, z and the input side of n, (3, B, H), shared by the layers
  at::Tensor norm_work_;  // layer norm: see norm_step
  OutputPool pool_;       // the outputs of calls that give none
  std::atomic<uint64_t> calls_{0};  // steps run: odd ones visit the panels backward (see visit)
  int64_t H_ = 0;
  at::ScalarType dtype_ = at::kFloat;
};

// A buffer of this thread's, reused across calls, for what a call fills and drops (slot 0: packed W_ih, 1: packed
// W_hh, 2: the input projections gi), up to kMaxReusedBytes each (W_hh at H = 1024; gi up to B = 8 at T = 256, H =
// 1024), kept until the thread ends: a fresh allocation of several MiB page-faults on every 4 KiB page each call
// (packing W_hh at H = 1024 took 1200 faults and 9 ms a call on an AMD EPYC).
constexpr int64_t kMaxReusedBytes = 32 << 20;

// Slot 3: the folded biases. The view of the last size asked is kept too, so a call of the same shape as the one
// before costs no ATen op here. (The loops' small work buffer stays a fresh at::empty: from a kept buffer, the A/B
// of two builds in one process moved B = 1, T = 256 by -15 % to +5 % with the build order, alone it changed nothing.)
constexpr int kReusableSlots = 4;

at::Tensor reusable(int slot, int64_t numel, const at::TensorOptions& opts) {
  if (numel * static_cast<int64_t>(opts.dtype().itemsize()) > kMaxReusedBytes) return at::empty({numel}, opts);
  thread_local at::Tensor kept[kReusableSlots], views[kReusableSlots];
  at::Tensor& buffer = kept[slot];
  at::Tensor& view = views[slot];
  if (!buffer.defined() || buffer.dtype() != opts.dtype() || buffer.numel() < numel) {
    buffer = at::empty({numel}, opts);
    view = buffer;
  } else if (view.numel() != numel) {
    view = buffer.narrow(0, 0, numel);
  }
  return view;
}

// A mask argument of gru_forward / gru_backward: undefined for none, else contiguous, of x's dtype and `shape`.
at::Tensor mask_input(const std::optional<at::Tensor>& mask, const at::Tensor& x, at::IntArrayRef shape,
                      const char* name) {
  if (!mask.has_value()) return at::Tensor();
  TORCH_CHECK(mask->scalar_type() == x.scalar_type() && mask->device().is_cpu() && mask->sizes() == shape,
              "grukit cpu backend: ", name, " must be a CPU tensor of x's dtype and shape ", shape, ", got ",
              mask->scalar_type(), " ", mask->sizes());
  return mask->contiguous();
}

template <typename T>
Masks<T> make_masks(const at::Tensor& drop, const at::Tensor& keep, double keep_p) {
  TORCH_CHECK(keep_p >= 0 && keep_p < 1, "grukit cpu backend: keep_p must be in [0, 1), got ", keep_p);
  return {drop.defined() ? drop.data_ptr<T>() : nullptr, keep.defined() ? keep.data_ptr<T>() : nullptr,
          static_cast<T>(keep_p)};
}

// Returns (y, h_n, gates, hs); gates and hs are empty unless train.
std::vector<at::Tensor> gru_forward(const at::Tensor& x_in /* (T, B, I) */, const at::Tensor& h0_in /* (B, H) */,
                                    const at::Tensor& w_ih_in /* (3H, I) */, const at::Tensor& w_hh_in /* (3H, H) */,
                                    const std::optional<at::Tensor>& b_ih /* (3H,) */,
                                    const std::optional<at::Tensor>& b_hh /* (3H,) */,
                                    const std::optional<at::Tensor>& lengths_in /* (B,) */, bool reset_after,
                                    bool reverse, bool train,
                                    const std::optional<at::Tensor>& wpack_in /* from pack_hh, or none */,
                                    const std::optional<at::Tensor>& fold_in /* from fold_bias, or none */,
                                    const std::optional<at::Tensor>& b_hn_in /* from fold_bias, or none */,
                                    const std::optional<at::Tensor>& drop_in /* (B, H): see Masks */,
                                    const std::optional<at::Tensor>& keep_in /* (T, B, H): see Masks */,
                                    double keep_p) {
  check_inputs(x_in, h0_in, w_ih_in, w_hh_in);
  const at::Tensor x = x_in.contiguous(), h0 = h0_in.contiguous(), w_ih = w_ih_in.contiguous();
  const at::Tensor w_hh = w_hh_in.contiguous();
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1);
  const at::Tensor drop = mask_input(drop_in, x, {B, H}, "drop");
  const at::Tensor keep = mask_input(keep_in, x, {T, B, H}, "keep");
  const bool masked = drop.defined() || keep.defined() || keep_p != 0;
  if (T == 1 && B <= kDirectBatch && !masked && !lengths_in.has_value() && !wpack_in.has_value() &&
      b_ih.has_value() == b_hh.has_value())  // a single step: packing would cost more than the step
    return direct_step(x, h0, w_ih, w_hh, b_ih, b_hh, reset_after, train);
  at::Tensor fold, b_hn;  // b_hn: reset_after's n bias (H,), or folded here all of b_hh, read from b_hn_offset = 2H
  int64_t b_hn_offset = 0;
  if (fold_in.has_value()) {  // biases folded once by the caller's cache
    check_folded(*fold_in, b_hn_in, x, H, reset_after);
    fold = *fold_in;
    if (b_hn_in.has_value()) b_hn = *b_hn_in;
  } else if (b_ih.has_value() && b_hh.has_value()) {  // as fold_bias, into a reused buffer: no ATen op per call
    const at::Tensor bi = b_ih->contiguous(), bh = b_hh->contiguous();
    for (const auto* b : {&bi, &bh})
      TORCH_CHECK(b->dim() == 1 && b->size(0) == 3 * H && b->scalar_type() == x.scalar_type() && b->device().is_cpu(),
                  "grukit cpu backend: biases must be (3H,) CPU tensors of x's dtype");
    fold = reusable(3, 3 * H, x.options());
    fold_into(bi, bh, reset_after, fold);
    if (reset_after) {
      b_hn = bh;
      b_hn_offset = 2 * H;
    }
  }
  const bool fused = fuse_input(T, B, I, H, x.element_size());
  const bool ahead = !masked && loop_ahead(T, B, I, H, x.element_size());
  const bool projected = !fused && !ahead && project_with_kernel(I, H, x.element_size());
  at::Tensor gi, wih_pack;
  const int64_t lanes = kVecBytes / x.element_size(), panels = (H + lanes - 1) / lanes;
  if (fused || projected || ahead) wih_pack = reusable(0, panels * I * 3 * lanes, x.options());  // packed by each thread
  if (projected || (!fused && !ahead)) gi = reusable(2, T * B * 3 * H, x.options()).view({T, B, 3 * H});
  if (!projected && !fused && !ahead) {
    const at::Tensor x2 = x.reshape({T * B, I});
    at::Tensor gi2 = gi.view({T * B, 3 * H});
    if (fold.defined()) {
      at::addmm_out(gi2, fold, x2, w_ih.t());
    } else {
      at::mm_out(gi2, x2, w_ih.t());
    }
  }
  at::Tensor lengths;
  if (lengths_in.has_value()) lengths = lengths_in->to(at::kLong).contiguous();
  auto opts = x.options();
  at::Tensor y = at::empty({T, B, H}, opts);
  at::Tensor h_n = at::empty({B, H}, opts);
  at::Tensor gates = train ? at::empty({T, B, (reset_after ? 4 : 3) * H}, opts) : at::Tensor();
  at::Tensor hs = train ? at::empty({T, B, H}, opts) : at::Tensor();
  at::Tensor work = at::empty({ahead ? kAheadWork * H : (drop.defined() ? 6 : 4) * B * H}, opts);

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grukit_gru_forward", [&] {
    const Masks<scalar_t> masks = make_masks<scalar_t>(drop, keep, keep_p);
    constexpr int N = Simd<scalar_t>::N;
    const int64_t P = (H + N - 1) / N;
    at::Tensor wpack;
    if (wpack_in.has_value()) {
      wpack = *wpack_in;
      TORCH_CHECK(wpack.is_contiguous() && wpack.scalar_type() == x.scalar_type() && wpack.numel() == P * H * 3 * N,
                  "grukit cpu backend: wpack does not come from pack_hh for this w_hh");
    } else {
      wpack = reusable(1, P * H * 3 * N, x.options());  // packed by each thread, its own panels (see run)
    }
    const scalar_t* wp = wpack.data_ptr<scalar_t>();
    const scalar_t* bhn = b_hn.defined() ? b_hn.data_ptr<scalar_t>() + b_hn_offset : nullptr;
    const int64_t* len = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
    scalar_t* gp = train ? gates.data_ptr<scalar_t>() : nullptr;
    scalar_t* hp = train ? hs.data_ptr<scalar_t>() : nullptr;
    const InputSide<scalar_t> side{fused || ahead ? nullptr : gi.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                   fused ? wih_pack.data_ptr<scalar_t>() : nullptr,
                                   fused && fold.defined() ? fold.data_ptr<scalar_t>() : nullptr, I};
    auto run = [&](auto kernel) {
      grukit::Team::instance().run(team_size(B, H, fused || ahead ? I : 0, x.element_size()), [&](const Part& part) {
        // each thread packs (and then alone reads) its panels: no barrier needed, and they land in its own cache
        if (!wpack_in.has_value())
          pack_hh_panels<scalar_t>(w_hh.data_ptr<scalar_t>(), H, H, reset_after, wpack.data_ptr<scalar_t>(),
                                   part.begin(P), part.end(P));
        if (wih_pack.defined())
          pack_gate_panels<scalar_t>(w_ih.data_ptr<scalar_t>(), I, H, 0, 3, wih_pack.data_ptr<scalar_t>(),
                                     part.begin(P), part.end(P));
        if (projected)
          project_input<scalar_t>(x.data_ptr<scalar_t>(), wih_pack.data_ptr<scalar_t>(),
                                  fold.defined() ? fold.data_ptr<scalar_t>() : nullptr, gi.data_ptr<scalar_t>(),
                                  T * B, I, H, part.begin(P), part.end(P));
        if (ahead) {
          const scalar_t* fp = fold.defined() ? fold.data_ptr<scalar_t>() : nullptr;
          auto loop = reset_after ? (train ? forward_loop_ahead<scalar_t, true, true>
                                           : forward_loop_ahead<scalar_t, true, false>)
                                  : (train ? forward_loop_ahead<scalar_t, false, true>
                                           : forward_loop_ahead<scalar_t, false, false>);
          loop(
              x.data_ptr<scalar_t>(), wih_pack.data_ptr<scalar_t>(), fp, I, wp, bhn, h0.data_ptr<scalar_t>(), len,
              y.data_ptr<scalar_t>(), h_n.data_ptr<scalar_t>(), gp, hp, work.data_ptr<scalar_t>(), T, H, reverse,
              part);
          return;
        }
        kernel(side, wp, bhn, h0.data_ptr<scalar_t>(), len, y.data_ptr<scalar_t>(),
               h_n.data_ptr<scalar_t>(), gp, hp, work.data_ptr<scalar_t>(), T, B, H, reverse, masks, part);
      });
    };
    if (reset_after) {
      train ? run(forward_loop<scalar_t, true, true>) : run(forward_loop<scalar_t, true, false>);
    } else {
      train ? run(forward_loop<scalar_t, false, true>) : run(forward_loop<scalar_t, false, false>);
    }
  });
  return {y, h_n, gates, hs};
}

// A whole eval stack in one call (no autograd, nothing saved): (output (T, B, D*H), h_n (L*D, B, H)). x is (T, B, I);
// hx (L*D, B, H) or none for zeros; weights in torch.nn.GRU's _flat_weights order, per layer and direction
// [w_ih, w_hh] or [w_ih, w_hh, b_ih, b_hh]; directions 2 runs the second of each layer reversed, and `reverse`
// runs a single direction reversed. The layer loop, the zero state and h_n's assembly stay out of Python; a single
// step of at most kDirectBatch rows runs gru_step_direct (nothing packed), as the Python per-layer path does.
std::vector<at::Tensor> gru_stack(const at::Tensor& x, const std::optional<at::Tensor>& hx,
                                  const std::vector<at::Tensor>& weights, int64_t layers, int64_t directions,
                                  bool reset_after, bool reverse) {
  TORCH_CHECK(layers >= 1 && (directions == 1 || directions == 2), "grukit cpu backend: bad layers or directions");
  const int64_t per = static_cast<int64_t>(weights.size()) / (layers * directions);
  TORCH_CHECK((per == 2 || per == 4) && per * layers * directions == static_cast<int64_t>(weights.size()),
              "grukit cpu backend: weights must hold [w_ih, w_hh] or [w_ih, w_hh, b_ih, b_hh] per layer and direction");
  TORCH_CHECK(x.dim() == 3 && weights[1].dim() == 2, "grukit cpu backend: x must be (T, B, I)");
  const int64_t B = x.size(1), H = weights[1].size(1);
  if (hx.has_value())
    TORCH_CHECK(hx->dim() == 3 && hx->size(0) == layers * directions && hx->size(1) == B && hx->size(2) == H,
                "grukit cpu backend: hx must be (L*D, B, H)");
  const at::Tensor zeros = hx.has_value() ? at::Tensor() : at::zeros({B, H}, x.options());
  const std::optional<at::Tensor> none;
  const bool direct = x.size(0) == 1 && B <= kDirectBatch;  // a single step: no packing (see gru_step_direct)
  std::vector<at::Tensor> states;
  at::Tensor input = x;
  for (int64_t l = 0; l < layers; ++l) {
    std::vector<at::Tensor> outputs;
    for (int64_t d = 0; d < directions; ++d) {
      const int64_t i = l * directions + d;
      const at::Tensor* w = &weights[i * per];
      const std::optional<at::Tensor> b_ih = per == 4 ? std::optional<at::Tensor>(w[2]) : none;
      const std::optional<at::Tensor> b_hh = per == 4 ? std::optional<at::Tensor>(w[3]) : none;
      const at::Tensor h0 = hx.has_value() ? hx->select(0, i) : zeros;
      auto out = direct ? gru_step_direct(input, h0, w[0], w[1], b_ih, b_hh, reset_after)
                        : gru_forward(input, h0, w[0], w[1], b_ih, b_hh, none, reset_after, d == 1 || reverse, false,
                                      none, none, none, none, none, 0);
      outputs.push_back(out[0]);
      states.push_back(out[1]);
    }
    input = directions == 1 ? outputs[0] : at::cat(outputs, 2);
  }
  return {input, states.size() == 1 ? states[0].unsqueeze(0) : at::stack(states)};
}

// The backward through time shared by gru_backward and gru_backward_norm: (dgi, dgh, dh0), dgh the gradient of the
// recurrent side's pre-activations (dgi itself when reset_after is false). norm: the layer-norm loop's (gamma, xhat,
// rstd) with dprod (T, B, 3H) receiving the products' gradients, or empty.
std::vector<at::Tensor> backward_through_time(const std::optional<at::Tensor>& dy_in /* (T, B, H) */,
                                              const std::optional<at::Tensor>& dh_n_in /* (B, H) */,
                                              const at::Tensor& w_hh /* (3H, H) contiguous */,
                                              const at::Tensor& gates, const at::Tensor& hs /* (T, B, H) */,
                                              const std::optional<at::Tensor>& lengths_in, bool reset_after,
                                              bool reverse, const at::Tensor& drop, const at::Tensor& keep,
                                              double keep_p, const std::vector<at::Tensor>& norm) {
  const int64_t T = hs.size(0), B = hs.size(1), H = hs.size(2);
  const auto opts = hs.options();
  at::Tensor dy = dy_in.has_value() ? dy_in->contiguous() : at::Tensor();
  at::Tensor dh_n = dh_n_in.has_value() ? dh_n_in->contiguous() : at::Tensor();
  at::Tensor lengths;
  if (lengths_in.has_value()) lengths = lengths_in->to(at::kLong).contiguous();
  at::Tensor dgi = at::empty({T, B, 3 * H}, opts);
  at::Tensor dgh = reset_after ? at::empty({T, B, 3 * H}, opts) : dgi;
  at::Tensor dh0 = at::empty({B, H}, opts);
  at::Tensor work = at::empty({2 * B * H}, opts);
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "grukit_gru_backward", [&] {
    constexpr int N = Simd<scalar_t>::N;
    const int64_t P = (H + N - 1) / N;
    // W_hh's columns are read in place where each panel's rows are whole aligned vectors (H a multiple of N) and
    // the loop reads them once (T = 1): packing them would cost as much as the step
    const bool in_place = T == 1 && H % N == 0;
    at::Tensor wpack = in_place ? at::Tensor() : reusable(1, P * 3 * H * N, opts);
    const scalar_t* wcols = in_place ? w_hh.data_ptr<scalar_t>() : wpack.data_ptr<scalar_t>();
    const Masks<scalar_t> masks = make_masks<scalar_t>(drop, keep, keep_p);
    NormGrad<scalar_t> grad{};
    if (!norm.empty())
      grad = {norm[0].data_ptr<scalar_t>(), norm[1].data_ptr<scalar_t>(), norm[2].data_ptr<scalar_t>(),
              norm[3].data_ptr<scalar_t>()};
    auto loop = reset_after ? backward_loop<scalar_t, true> : backward_loop<scalar_t, false>;
    const int threads = norm.empty() ? team_size(B, H, 0, hs.element_size()) : norm_team_size(B, H);
    grukit::Team::instance().run(threads, [&](const Part& part) {
      // each thread packs the panels it alone reads (phase B's), so no barrier separates packing and loop
      if (!in_place)
        pack_column_panels<scalar_t>(w_hh.data_ptr<scalar_t>(), 3 * H, H, wpack.data_ptr<scalar_t>(), part.begin(P),
                                     part.end(P));
      loop(dy.defined() ? dy.data_ptr<scalar_t>() : nullptr, dh_n.defined() ? dh_n.data_ptr<scalar_t>() : nullptr,
           gates.data_ptr<scalar_t>(), hs.data_ptr<scalar_t>(), wcols, in_place ? H : N, in_place ? N : 3 * H * N,
           lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr, dgi.data_ptr<scalar_t>(),
           reset_after ? dgh.data_ptr<scalar_t>() : nullptr, dh0.data_ptr<scalar_t>(), work.data_ptr<scalar_t>(), T,
           B, H, reverse, masks, norm.empty() ? nullptr : &grad, part);
    });
  });
  return {dgi, dgh, dh0};
}

// out[r][:] = a[r][:Kd] . b for the rows [r_begin, r_end) of out (rows, K) and its columns [c_begin, c_end) (all by
// default; c_begin a multiple of N; the sums' order depends on the block a column falls in: split columns by groups
// of 3 vectors for the same bits). a[r][k] is a[r * lda + k * sk]: a's rows, or with lda = 1 the columns of a
// matrix (a transposed for free). b (Kd, K) row-major, read in place three vectors of columns at a time (the
// forward's register-blocked micro-kernel over row blocks), then one, then a masked tail.
template <typename T>
void matmul_rows(const T* a, int64_t lda, int64_t sk, int64_t Kd, const T* b, int64_t K, T* out, int64_t r_begin,
                 int64_t r_end, int64_t c_begin = 0, int64_t c_end = -1) {
  using V = typename Simd<T>::V;
  constexpr int N = Simd<T>::N;
  if (c_end < 0) c_end = K;
  int64_t c = c_begin;
  auto columns = [&](auto groups) {
    constexpr int G = decltype(groups)::value;
    for_row_blocks(r_end - r_begin, [&](auto rows, int64_t i0) {
      constexpr int R = decltype(rows)::value;
      const int64_t r0 = r_begin + i0;
      V acc[R][G];
      panel_product<T, R, G>(a + r0 * lda, lda, Kd, b + c, acc, K, sk);
      for (int r = 0; r < R; ++r)
        for (int g = 0; g < G; ++g) store<T>(out + (r0 + r) * K + c + g * N, acc[r][g], N);
    });
  };
  for (; c + 3 * N <= c_end; c += 3 * N) columns(Rows<3>{});
  for (; c + N <= c_end; c += N) columns(Rows<1>{});
  if (c < c_end) {
    const int n = static_cast<int>(c_end - c);
    for (int64_t r = r_begin; r < r_end; ++r) {
      V acc{};
      for (int64_t k = 0; k < Kd; ++k) acc += splat<T>(a[r * lda + k * sk]) * load<T>(b + k * K + c, n);
      store<T>(out + r * K + c, acc, n);
    }
  }
}

// The backward's products after the loop, split over two threads (team_size) by rows (dx: by columns): (dx or empty,
// dw_ih, dw_hh, db_ih, db_hh or empties), as gru_backward's GEMMs would give them: dgi2, dgh2 (M, 3H) (dgh2 is dgi2 for
// reset_before), x2 (M, I), hs2 (M, H) what the recurrent products read, rh (M, H) r times that (reset_before). A
// weight-gradient row r is column r of the gate gradients times x2 (or hs2): the micro-kernel reads it in place.
std::vector<at::Tensor> weight_grads(const at::Tensor& dgi2, const at::Tensor& dgh2, const at::Tensor& x2,
                                     const at::Tensor& hs2, const at::Tensor& rh, const at::Tensor& w_ih,
                                     bool reset_after, bool has_bias, bool need_dx) {
  const int64_t M = dgi2.size(0), G3 = dgi2.size(1), H = G3 / 3, I = x2.size(1);
  const auto opts = dgi2.options();
  at::Tensor dx = need_dx ? at::empty({M, I}, opts) : at::Tensor();
  at::Tensor dw_ih = at::empty({G3, I}, opts), dw_hh = at::empty({G3, H}, opts);
  at::Tensor db_ih = has_bias ? at::empty({G3}, opts) : at::Tensor();
  at::Tensor db_hh = has_bias ? at::empty({G3}, opts) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(dgi2.scalar_type(), "grukit_weight_grads", [&] {
    const scalar_t* gi = dgi2.data_ptr<scalar_t>();
    const scalar_t* gh = dgh2.data_ptr<scalar_t>();
    grukit::Team::instance().run(team_size(M, H, I, 0), [&](const Part& part) {
      // whole row blocks and column vectors per thread: each element gets the same arithmetic, split or not
      const bool last = part.tid == part.n - 1;
      const int64_t r0 = part.begin(G3 / kMaxRows) * kMaxRows, r1 = last ? G3 : part.end(G3 / kMaxRows) * kMaxRows;
      matmul_rows<scalar_t>(gi, 1, G3, M, x2.data_ptr<scalar_t>(), I, dw_ih.data_ptr<scalar_t>(), r0, r1);
      scalar_t* dwh = dw_hh.data_ptr<scalar_t>();
      if (reset_after) {
        matmul_rows<scalar_t>(gh, 1, G3, M, hs2.data_ptr<scalar_t>(), H, dwh, r0, r1);
      } else {  // r and z read h, n reads r * h
        matmul_rows<scalar_t>(gi, 1, G3, M, hs2.data_ptr<scalar_t>(), H, dwh, r0, std::min(r1, 2 * H));
        matmul_rows<scalar_t>(gi, 1, G3, M, rh.data_ptr<scalar_t>(), H, dwh, std::max(r0, 2 * H), r1);
      }
      if (has_bias) {  // column sums in double: as accurate as torch's pairwise sum, whatever the order of m
        auto column_sums = [&](const scalar_t* g, scalar_t* out) {
          std::vector<double> sums(r1 - r0);
          for (int64_t m = 0; m < M; ++m)
            for (int64_t r = r0; r < r1; ++r) sums[r - r0] += g[m * G3 + r];
          for (int64_t r = r0; r < r1; ++r) out[r] = static_cast<scalar_t>(sums[r - r0]);
        };
        scalar_t* bi = db_ih.data_ptr<scalar_t>();
        scalar_t* bh = db_hh.data_ptr<scalar_t>();
        column_sums(gi, bi);
        if (reset_after) {
          column_sums(gh, bh);
        } else {  // dgh2 is dgi2
          std::copy(bi + r0, bi + r1, bh + r0);
        }
      }
      if (need_dx) {  // by groups of 3 column vectors, matmul_rows' widest (the same groups split or not)
        constexpr int W = 3 * Simd<scalar_t>::N;
        matmul_rows<scalar_t>(gi, G3, 1, G3, w_ih.data_ptr<scalar_t>(), I, dx.data_ptr<scalar_t>(), 0, M,
                              part.begin(I / W) * W, last ? I : part.end(I / W) * W);
      }
    });
  });
  return {dx, dw_ih, dw_hh, db_ih, db_hh};
}

// Up to kOwnGradRows rows (T * B) the weight gradients, bias sums and dx are weight_grads' loops rather than GEMM
// calls: at M = 64 (B = 1, T = 64) as fast on one thread and about 1.5x faster on two (MKL runs such a GEMM on one
// thread, and at M = 1 its call costs more than the arithmetic); from M = 512 at H = 256 MKL's blocking wins.
constexpr int64_t kOwnGradRows = 128;

// Returns (dx, dh0, dw_ih, dw_hh, db_ih, db_hh); dx is empty unless need_dx, the biases unless has_bias.
std::vector<at::Tensor> gru_backward(const std::optional<at::Tensor>& dy_in /* (T, B, H) */,
                                     const std::optional<at::Tensor>& dh_n_in /* (B, H) */,
                                     const at::Tensor& x_in /* (T, B, I) */, const at::Tensor& w_ih_in /* (3H, I) */,
                                     const at::Tensor& w_hh_in /* (3H, H) */,
                                     const at::Tensor& gates /* (T, B, 4H) or (T, B, 3H) from gru_forward */,
                                     const at::Tensor& hs /* (T, B, H) from gru_forward */,
                                     const std::optional<at::Tensor>& lengths_in /* (B,) */, bool reset_after,
                                     bool reverse, bool has_bias, bool need_dx,
                                     const std::optional<at::Tensor>& drop_in /* the forward's masks */,
                                     const std::optional<at::Tensor>& keep_in, double keep_p) {
  const at::Tensor x = x_in.contiguous(), w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1);
  const at::Tensor drop = mask_input(drop_in, x, {B, H}, "drop");
  const at::Tensor keep = mask_input(keep_in, x, {T, B, H}, "keep");
  const auto res = backward_through_time(dy_in, dh_n_in, w_hh, gates, hs, lengths_in, reset_after, reverse, drop, keep,
                                         keep_p, {});
  const at::Tensor &dgi = res[0], &dgh = res[1], &dh0 = res[2];
  const at::Tensor dgi2 = dgi.view({T * B, 3 * H});
  // what the recurrent products read: the state entering each step, times the recurrent-dropout mask
  const at::Tensor hs2 = drop.defined() ? (hs * drop).view({T * B, H}) : hs.view({T * B, H});
  // reset_before: n's product read r * h entering each step
  const at::Tensor rh = reset_after ? at::Tensor() : gates.view({T * B, 3 * H}).narrow(1, 0, H) * hs2;
  if (T * B > 0 && T * B <= kOwnGradRows) {
    auto grads = weight_grads(dgi2, dgh.view({T * B, 3 * H}), x.view({T * B, I}), hs2, rh, w_ih, reset_after,
                              has_bias, need_dx);
    return {need_dx ? grads[0].view({T, B, I}) : grads[0], dh0, grads[1], grads[2], grads[3], grads[4]};
  }
  at::Tensor dx = need_dx ? at::mm(dgi2, w_ih).view({T, B, I}) : at::Tensor();
  at::Tensor dw_ih = at::mm(dgi2.t(), x.view({T * B, I}));
  at::Tensor dw_hh;
  at::Tensor db_ih, db_hh;
  if (reset_after) {
    const at::Tensor dgh2 = dgh.view({T * B, 3 * H});
    dw_hh = at::mm(dgh2.t(), hs2);
    if (has_bias) db_hh = dgh2.sum(0);
  } else {
    dw_hh = at::cat({at::mm(dgi2.narrow(1, 0, 2 * H).t(), hs2), at::mm(dgi2.narrow(1, 2 * H, H).t(), rh)});
  }
  if (has_bias) {
    db_ih = dgi2.sum(0);
    if (!reset_after) db_hh = db_ih.clone();
  }
  return {dx, dh0, dw_ih, dw_hh, db_ih, db_hh};
}

// GRU(layer_norm=True), one layer and direction: the recurrent side of gru_forward with each gate's recurrent
// product layer-normalised (forward_loop_norm). gi (T, B, 3H): the input side, already normalised and with b_ih
// added (the caller's GEMM and norm); gamma (3H,) the recurrent norm's gain; beta (3H,) its bias plus b_hh.
// Returns (y, h_n, gates, hs, xhat, rstd); the last four are empty unless train.
std::vector<at::Tensor> gru_forward_norm(const at::Tensor& gi_in, const at::Tensor& h0_in, const at::Tensor& w_hh_in,
                                         const at::Tensor& gamma_in, const at::Tensor& beta_in,
                                         const std::optional<at::Tensor>& lengths_in, bool reset_after, bool reverse,
                                         bool train, const std::optional<at::Tensor>& drop_in,
                                         const std::optional<at::Tensor>& keep_in, double keep_p) {
  TORCH_CHECK(gi_in.dim() == 3 && h0_in.dim() == 2 && gi_in.device().is_cpu(), "grukit cpu backend: bad ranks");
  TORCH_CHECK(gi_in.scalar_type() == at::kFloat || gi_in.scalar_type() == at::kDouble,
              "grukit cpu backend: float32 or float64 only, got ", gi_in.scalar_type());
  const int64_t T = gi_in.size(0), B = gi_in.size(1), H = h0_in.size(1);
  for (const auto* t : {&h0_in, &w_hh_in, &gamma_in, &beta_in})
    TORCH_CHECK(t->scalar_type() == gi_in.scalar_type() && t->device().is_cpu(),
                "grukit cpu backend: h0 and weights must match gi's dtype and device");
  TORCH_CHECK(gi_in.size(2) == 3 * H && h0_in.size(0) == B && w_hh_in.size(0) == 3 * H && w_hh_in.size(1) == H &&
                  gamma_in.numel() == 3 * H && beta_in.numel() == 3 * H,
              "grukit cpu backend: inconsistent shapes");
  const at::Tensor gi = gi_in.contiguous(), h0 = h0_in.contiguous(), w_hh = w_hh_in.contiguous();
  const at::Tensor gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  const at::Tensor drop = mask_input(drop_in, gi, {B, H}, "drop");
  const at::Tensor keep = mask_input(keep_in, gi, {T, B, H}, "keep");
  at::Tensor lengths;
  if (lengths_in.has_value()) lengths = lengths_in->to(at::kLong).contiguous();
  const auto opts = gi.options();
  at::Tensor y = at::empty({T, B, H}, opts), h_n = at::empty({B, H}, opts);
  at::Tensor gates = train ? at::empty({T, B, (reset_after ? 4 : 3) * H}, opts) : at::Tensor();
  at::Tensor hs = train ? at::empty({T, B, H}, opts) : at::Tensor();
  at::Tensor xhat = at::empty({train ? T : 1, B, 3 * H}, opts), rstd = at::empty({train ? T : 1, B, 3}, opts);
  at::Tensor work = at::empty({5 * B * H + 2 * B * 3 * H}, opts);
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "grukit_gru_forward_norm", [&] {
    const at::Tensor wpack = pack_hh(w_hh, reset_after);
    const GateNorm<scalar_t> norm{gamma.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(), xhat.data_ptr<scalar_t>(),
                                  rstd.data_ptr<scalar_t>()};
    const Masks<scalar_t> masks = make_masks<scalar_t>(drop, keep, keep_p);
    const int64_t* len = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
    scalar_t* gp = train ? gates.data_ptr<scalar_t>() : nullptr;
    scalar_t* hp = train ? hs.data_ptr<scalar_t>() : nullptr;
    auto loop = reset_after ? (train ? forward_loop_norm<scalar_t, true, true>
                                     : forward_loop_norm<scalar_t, true, false>)
                            : (train ? forward_loop_norm<scalar_t, false, true>
                                     : forward_loop_norm<scalar_t, false, false>);
    grukit::Team::instance().run(norm_team_size(B, H), [&](const Part& part) {
      loop(gi.data_ptr<scalar_t>(), wpack.data_ptr<scalar_t>(), norm, h0.data_ptr<scalar_t>(), len,
           y.data_ptr<scalar_t>(), h_n.data_ptr<scalar_t>(), gp, hp, work.data_ptr<scalar_t>(), T, B, H, reverse, masks,
           part);
    });
  });
  if (!train) xhat = rstd = at::Tensor();
  return {y, h_n, gates, hs, xhat, rstd};
}

// The backward of gru_forward_norm: (dgi, dh0, dw_hh, dgamma, dbeta), dbeta also the gradient of b_hh.
std::vector<at::Tensor> gru_backward_norm(const std::optional<at::Tensor>& dy_in,
                                          const std::optional<at::Tensor>& dh_n_in, const at::Tensor& w_hh_in,
                                          const at::Tensor& gamma_in, const at::Tensor& gates,
                                          const at::Tensor& hs, const at::Tensor& xhat, const at::Tensor& rstd,
                                          const std::optional<at::Tensor>& lengths_in, bool reset_after, bool reverse,
                                          const std::optional<at::Tensor>& drop_in,
                                          const std::optional<at::Tensor>& keep_in, double keep_p) {
  const at::Tensor w_hh = w_hh_in.contiguous(), gamma = gamma_in.contiguous();
  const int64_t T = hs.size(0), B = hs.size(1), H = hs.size(2);
  const at::Tensor drop = mask_input(drop_in, hs, {B, H}, "drop");
  const at::Tensor keep = mask_input(keep_in, hs, {T, B, H}, "keep");
  at::Tensor dprod = at::empty({T, B, 3 * H}, hs.options());
  const auto res = backward_through_time(dy_in, dh_n_in, w_hh, gates, hs, lengths_in, reset_after, reverse, drop, keep,
                                         keep_p, {gamma, xhat.contiguous(), rstd.contiguous(), dprod});
  const at::Tensor &dgi = res[0], &dgh = res[1], &dh0 = res[2];
  // what the recurrent products read: the state entering each step (times the dropout mask), r times it for n
  const at::Tensor src = (drop.defined() ? hs * drop : hs).view({T * B, H});
  const at::Tensor dprod2 = dprod.view({T * B, 3 * H});
  at::Tensor dw_hh;
  if (reset_after) {
    dw_hh = at::mm(dprod2.t(), src);
  } else {
    const at::Tensor rsrc = gates.view({T * B, 3 * H}).narrow(1, 0, H) * src;
    dw_hh = at::cat({at::mm(dprod2.narrow(1, 0, 2 * H).t(), src), at::mm(dprod2.narrow(1, 2 * H, H).t(), rsrc)});
  }
  const at::Tensor dgh2 = dgh.view({T * B, 3 * H});
  at::Tensor dgamma = (dgh2 * xhat.view({T * B, 3 * H})).sum(0);
  at::Tensor dbeta = dgh2.sum(0);
  return {dgi, dh0, dw_hh, dgamma, dbeta};
}

// One layer and direction in training as one autograd node written in C++ (ext.layer): the work of a Python
// autograd.Function without its per-call Python (about 10 us a call each way, more than a GRUCell step's kernels at
// small H). forward: gru_forward(train) saving the gates and states; backward: gru_backward. The backward is not
// itself differentiable: a graph of the gradient (create_graph, for a second derivative) raises instead of losing
// the terms through the saved activations.
struct GRULayerFunction : public torch::autograd::Function<GRULayerFunction> {
  static std::optional<at::Tensor> given(const at::Tensor& t) {
    return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
  }

  using Optional = std::optional<at::Tensor>;

  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                const Optional& b_ih, const Optional& b_hh, const Optional& lengths,
                                                bool reset_after, bool reverse, const Optional& drop,
                                                const Optional& keep, double keep_p) {
    auto out = gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reset_after, reverse, true, std::nullopt,
                           std::nullopt, std::nullopt, drop, keep, keep_p);
    const at::Tensor none;
    ctx->save_for_backward({x, w_ih, w_hh, out[2], out[3], lengths.value_or(none), drop.value_or(none),
                            keep.value_or(none)});
    ctx->saved_data["reset_after"] = reset_after;
    ctx->saved_data["reverse"] = reverse;
    ctx->saved_data["has_bias"] = b_ih.has_value();
    ctx->saved_data["keep_p"] = keep_p;
    ctx->set_materialize_grads(false);
    return {out[0], out[1]};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "grukit cpu backend: the fused GRU backward is not differentiable (create_graph=True asks for a "
                "second derivative); run that model on the pure-PyTorch backend: GRUKIT_BACKEND=reference");
    torch::autograd::variable_list out(12);  // one per forward argument; undefined: no gradient
    const at::Tensor &dy = grads[0], &dh_n = grads[1];
    if (!dy.defined() && !dh_n.defined()) return out;
    const auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    auto r = gru_backward(given(dy), given(dh_n), saved[0], saved[1], saved[2], saved[3], saved[4], given(saved[5]),
                          ctx->saved_data["reset_after"].toBool(), ctx->saved_data["reverse"].toBool(), has_bias,
                          ctx->needs_input_grad(0), given(saved[6]), given(saved[7]),
                          ctx->saved_data["keep_p"].toDouble());
    std::copy(r.begin(), r.begin() + (has_bias ? 6 : 4), out.begin());  // dx, dh0, dw_ih, dw_hh[, db_ih, db_hh]
    return out;
  }
};

// (y, h_n) as a new Python tuple of tensors, or null with the Python error set.
PyObject* wrap_pair(at::Tensor y, at::Tensor h_n) {
  PyObject* out = PyTuple_New(2);
  if (out == nullptr) return nullptr;
  PyTuple_SET_ITEM(out, 0, THPVariable_Wrap(std::move(y)));
  PyTuple_SET_ITEM(out, 1, THPVariable_Wrap(std::move(h_n)));
  return out;
}

// Stepper.step without pybind11's argument matching (about a microsecond per call), bound to a Stepper object
// `self` by Stepper.bind(): step(x, h) -> (y, h_n), or None when stale; step(x, h, y_out, h_out) writes into the
// given tensors and returns True, or None when stale.
PyObject* bound_step(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 2 && nargs != 4) {
    PyErr_SetString(PyExc_TypeError, "stepper step takes (x, h) or (x, h, y_out, h_out)");
    return nullptr;
  }
  for (Py_ssize_t i = 0; i < nargs; ++i) {
    if (!THPVariable_Check(args[i])) {
      PyErr_Format(PyExc_TypeError, "stepper step: argument %zd must be a tensor", i);
      return nullptr;
    }
  }
  Stepper& stepper = py::handle(self).cast<Stepper&>();
  if (nargs == 2) return stepper.step_objects(THPVariable_Unpack(args[0]), THPVariable_Unpack(args[1]));
  at::Tensor y = THPVariable_Unpack(args[2]), h_n = THPVariable_Unpack(args[3]);
  if (!stepper.run(THPVariable_Unpack(args[0]), THPVariable_Unpack(args[1]), y, h_n)) Py_RETURN_NONE;
  Py_RETURN_TRUE;
  END_HANDLE_TH_ERRORS
}

PyMethodDef bound_step_def = {"step", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(bound_step)),
                              METH_FASTCALL, "(x, h) -> (y, h_n) | None, or (x, h, y_out, h_out) -> True | None"};

// grukit.nn.Stepper.step as one builtin (Stepper.guard): the Python method's per-call checks done here, so a plain
// step(x, state) never enters Python. `self` is the tuple (stepper, fallback, module, params, values): the module
// must be in eval mode and its own parameter dict `params` must still hold exactly the objects `values` (nothing
// replaced); then the kernel runs as bound_step. Anything else (keywords, other argument counts, state None, a
// non-tensor, a replaced or modified weight, training mode) is handed to fallback(*args, **kwargs), the Python
// method, which serves it or raises the error that names the change.
PyObject* guarded_step(PyObject* self, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  HANDLE_TH_ERRORS
  PyObject* stepper_obj = PyTuple_GET_ITEM(self, 0);
  PyObject* fallback = PyTuple_GET_ITEM(self, 1);
  PyObject* module = PyTuple_GET_ITEM(self, 2);
  PyObject* params = PyTuple_GET_ITEM(self, 3);
  PyObject* values = PyTuple_GET_ITEM(self, 4);
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  auto fall_back = [&] { return PyObject_Vectorcall(fallback, args, nargsf, kwnames); };
  if (kwnames != nullptr || nargs != 2 || !THPVariable_Check(args[0]) || !THPVariable_Check(args[1])) return fall_back();
  static PyObject* training_name = PyUnicode_InternFromString("training");
  PyObject* training = PyObject_GetAttr(module, training_name);
  if (training == nullptr) return nullptr;
  const int is_training = PyObject_IsTrue(training);
  Py_DECREF(training);
  if (is_training != 0) return is_training < 0 ? nullptr : fall_back();
  if (PyDict_Size(params) != PyTuple_GET_SIZE(values)) return fall_back();
  Py_ssize_t pos = 0, i = 0;
  PyObject *key, *value;
  while (PyDict_Next(params, &pos, &key, &value)) {
    if (value != PyTuple_GET_ITEM(values, i++)) return fall_back();
  }
  Stepper& stepper = py::handle(stepper_obj).cast<Stepper&>();
  PyObject* result = stepper.step_objects(THPVariable_Unpack(args[0]), THPVariable_Unpack(args[1]));
  if (result != Py_None) return result;
  Py_DECREF(result);
  return fall_back();
  END_HANDLE_TH_ERRORS
}

PyMethodDef guarded_step_def = {"step",
                                reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(guarded_step)),
                                METH_FASTCALL | METH_KEYWORDS,
                                "step(x, state) -> (y, new state); anything else goes to the Python method"};

// grukit.GRU's eval forward as one builtin (built by stack_guard): guard(module, input, hx) -> (output, h_n), or None
// for every call it does not serve, which then takes the Python path (and its errors). `self` is the tuple
// (values, capacity_owner, generation, expected, layers, directions, input_size, hidden, reset_after, reverse,
// learn_init): it serves a module in eval mode whose own parameter dict still holds exactly `values` (its flat
// weights, then initial_state with learn_init), on the default dispatch (GRUKIT_BACKEND unset or cpu, dispatch's
// generation[0] still `expected`), with the opt-in pack cache off (capacity_owner.capacity == 0), no autocast, no
// autograd to record, and an input that needs none of the Python path's conversions: an exact CPU tensor of the
// weights' dtype, (T, B, I) ((B, T, I) with module.batch_first) or unbatched (T, I), and hx None or of the right shape.
PyObject* guarded_stack(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 3) {
    PyErr_SetString(PyExc_TypeError, "grukit stack guard takes (module, input, hx)");
    return nullptr;
  }
  PyObject* module = args[0];
  PyObject* input = args[1];
  PyObject* hx_obj = args[2];
  PyObject* values = PyTuple_GET_ITEM(self, 0);
  const int64_t layers = PyLong_AsLongLong(PyTuple_GET_ITEM(self, 4));
  const int64_t directions = PyLong_AsLongLong(PyTuple_GET_ITEM(self, 5));
  const int64_t input_size = PyLong_AsLongLong(PyTuple_GET_ITEM(self, 6));
  const int64_t hidden = PyLong_AsLongLong(PyTuple_GET_ITEM(self, 7));
  const bool reset_after = PyTuple_GET_ITEM(self, 8) == Py_True, reverse = PyTuple_GET_ITEM(self, 9) == Py_True;
  const bool learn_init = PyTuple_GET_ITEM(self, 10) == Py_True;
  if (!THPVariable_CheckExact(input) || (hx_obj != Py_None && !THPVariable_CheckExact(hx_obj))) Py_RETURN_NONE;
  if (PyList_GET_ITEM(PyTuple_GET_ITEM(self, 2), 0) != PyTuple_GET_ITEM(self, 3)) Py_RETURN_NONE;
  const char* forced = std::getenv("GRUKIT_BACKEND");
  if (forced != nullptr && forced[0] != '\0' && std::strcmp(forced, "cpu") != 0) Py_RETURN_NONE;
  // attributes: each lookup returns a new reference or null with the error set
  auto attribute = [](PyObject* obj, const char* name) -> PyObject* {
    PyObject* key = PyUnicode_InternFromString(name);
    if (key == nullptr) return nullptr;
    PyObject* value = PyObject_GetAttr(obj, key);
    Py_DECREF(key);
    return value;
  };
  auto truth = [&](PyObject* obj, const char* name) -> int {  // 1, 0, or -1 with the error set
    PyObject* value = attribute(obj, name);
    if (value == nullptr) return -1;
    const int result = PyObject_IsTrue(value);
    Py_DECREF(value);
    return result;
  };
  const int training = truth(module, "training");
  if (training != 0) {
    if (training < 0) return nullptr;
    Py_RETURN_NONE;
  }
  PyObject* capacity = attribute(PyTuple_GET_ITEM(self, 1), "capacity");
  if (capacity == nullptr) return nullptr;
  const long long cache_entries = PyLong_AsLongLong(capacity);
  Py_DECREF(capacity);
  if (cache_entries == -1 && PyErr_Occurred()) return nullptr;
  if (cache_entries > 0) Py_RETURN_NONE;
  PyObject* params = attribute(module, "_parameters");
  if (params == nullptr) return nullptr;
  bool same = PyDict_Check(params) && PyDict_Size(params) == PyTuple_GET_SIZE(values);
  Py_ssize_t pos = 0, i = 0;
  PyObject *key, *value;
  while (same && PyDict_Next(params, &pos, &key, &value)) same = value == PyTuple_GET_ITEM(values, i++);
  Py_DECREF(params);
  if (!same) Py_RETURN_NONE;
  const int batch_first = truth(module, "batch_first");
  if (batch_first < 0) return nullptr;
  if (at::autocast::is_autocast_enabled(at::kCPU)) Py_RETURN_NONE;

  const at::Tensor& x = THPVariable_Unpack(input);
  const Py_ssize_t flat = PyTuple_GET_SIZE(values) - (learn_init ? 1 : 0);
  std::vector<at::Tensor> weights;
  weights.reserve(flat);
  const bool grad = at::GradMode::is_enabled();
  bool needs_grad = grad && x.requires_grad();
  for (Py_ssize_t k = 0; k < flat; ++k) {
    weights.push_back(THPVariable_Unpack(PyTuple_GET_ITEM(values, k)));
    needs_grad = needs_grad || (grad && weights.back().requires_grad());
  }
  const auto dtype = weights[0].scalar_type();
  if (needs_grad || (dtype != at::kFloat && dtype != at::kDouble) || !x.device().is_cpu() || x.layout() != at::kStrided || x.scalar_type() != dtype ||
      (x.dim() != 2 && x.dim() != 3) || x.size(0) == 0 || x.size(-1) != input_size || x.numel() == 0)
    Py_RETURN_NONE;
  const bool batched = x.dim() == 3;
  const at::Tensor steps_first = !batched ? x.unsqueeze(1) : batch_first ? x.transpose(0, 1) : x;
  const int64_t B = steps_first.size(1);
  std::optional<at::Tensor> hx;
  if (hx_obj != Py_None) {
    const at::Tensor& h = THPVariable_Unpack(hx_obj);
    if ((grad && h.requires_grad()) || !h.device().is_cpu() || h.layout() != at::kStrided || h.scalar_type() != dtype ||
        h.dim() != (batched ? 3 : 2) || h.size(0) != layers * directions || h.size(-1) != hidden ||
        (batched && h.size(1) != B))
      Py_RETURN_NONE;
    hx = batched ? h : h.unsqueeze(1);
  } else if (learn_init) {
    const at::Tensor& init = THPVariable_Unpack(PyTuple_GET_ITEM(values, flat));
    if (grad && init.requires_grad()) Py_RETURN_NONE;
    hx = init.unsqueeze(1).expand({layers * directions, B, hidden});
  }
  std::vector<at::Tensor> out;
  {
    pybind11::gil_scoped_release no_gil;  // like torch's own kernels: other Python threads run meanwhile
    out = gru_stack(steps_first, hx, weights, layers, directions, reset_after, reverse);
  }
  if (!batched) return wrap_pair(out[0].squeeze(1), out[1].squeeze(1));
  return wrap_pair(batch_first ? out[0].transpose(0, 1) : out[0], std::move(out[1]));
  END_HANDLE_TH_ERRORS
}

PyMethodDef guarded_stack_def = {"forward",
                                 reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(guarded_stack)),
                                 METH_FASTCALL,
                                 "(module, input, hx) -> (output, h_n), or None for the Python path (guarded_stack)"};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "grukit fused CPU GRU kernels";
  m.def("forward", &gru_forward, "GRU layer forward: (y, h_n, gates, hs)", py::arg("x"), py::arg("h0"),
        py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("lengths"),
        py::arg("reset_after"), py::arg("reverse"), py::arg("train"), py::arg("wpack") = py::none(),
        py::arg("fold") = py::none(), py::arg("b_hn") = py::none(), py::arg("drop") = py::none(),
        py::arg("keep") = py::none(), py::arg("keep_p") = 0.0);
  m.def("stack", &gru_stack, "a whole eval stack: (output (T, B, D*H), h_n (L*D, B, H))", py::arg("x"), py::arg("hx"),
        py::arg("weights"), py::arg("layers"), py::arg("directions"), py::arg("reset_after"), py::arg("reverse"));
  m.def(
      "stack_guard",
      [](py::tuple context) {
        TORCH_CHECK(context.size() == 11, "grukit cpu backend: stack_guard takes an 11-tuple (see guarded_stack)");
        PyObject* fn = PyCFunction_New(&guarded_stack_def, context.ptr());
        if (fn == nullptr) throw py::error_already_set();
        return py::reinterpret_steal<py::object>(fn);
      },
      "grukit.GRU's eval forward as one builtin guarded by `context` (see guarded_stack)", py::arg("context"));
  m.def("pack_hh", &pack_hh, "W_hh packed for forward (cache it while the weight is unchanged)");
  m.def("pack_ih", &pack_ih, "W_ih packed for step (cache it while the weight is unchanged)");
  m.def("fold_bias", &fold_bias, "(b_ih with the recurrent r/z biases folded in, b_hn or an empty tensor)");
  m.def("step_direct", &gru_step_direct, "one eval step from unpacked weights, B <= direct_batch(): (y, h_n)");
  m.def("direct_batch", [] { return kDirectBatch; }, "the largest batch step_direct serves");
  m.def("step", &gru_step, "one streaming step, reset_after, no lengths: (y (1, B, H), h_n (B, H))");
  py::class_<Stepper>(m, "Stepper", "all layers of a streaming step from weights packed once (see Stepper)")
      .def(py::init<const std::vector<std::vector<at::Tensor>>&, const std::vector<at::Tensor>&, bool, bool, double>(),
           py::arg("layers"), py::arg("watched"), py::arg("bf16") = false, py::arg("reset_after") = true,
           py::arg("zoneout") = 0.0)
      .def("step", &Stepper::step, "(y, h_n), or None when a watched tensor changed", py::arg("x"), py::arg("h"))
      .def("changed", &Stepper::changed, "index of the first watched tensor changed since packing, or -1")
      .def(
          "bind",
          [](py::object self) {
            PyObject* fn = PyCFunction_New(&bound_step_def, self.ptr());
            if (fn == nullptr) throw py::error_already_set();
            return py::reinterpret_steal<py::object>(fn);
          },
          "step as a builtin bound to this stepper: the cheapest call, (x, h[, y_out, h_out]) as bound_step")
      .def(
          "guard",
          [](py::object self, py::object fallback, py::object module, py::dict params, py::tuple values) {
            py::tuple context = py::make_tuple(self, fallback, module, params, values);
            PyObject* fn = PyCFunction_New(&guarded_step_def, context.ptr());
            if (fn == nullptr) throw py::error_already_set();
            return py::reinterpret_steal<py::object>(fn);
          },
          "grukit.nn.Stepper.step as one builtin: checks eval mode and that `params` (a module's own parameter dict) "
          "still holds `values`, runs the step, and hands every other call to fallback (see guarded_step)",
          py::arg("fallback"), py::arg("module"), py::arg("params"), py::arg("values"));
  m.def("split_ns", [] { return kSplitNs; },
        "estimated ns per step (FLOPs at 90 GFLOP/s or weight bytes at 100 GB/s) from which a step is split over two "
        "threads");
  m.def(
      "split_stats",
      [] {
        auto& team = grukit::Team::instance();
        return py::dict(py::arg("split_jobs") = team.split_jobs(), py::arg("barriers") = team.barriers(),
                        py::arg("barrier_waits") = team.barrier_waits(),
                        py::arg("barrier_sleeps") = team.barrier_sleeps(), py::arg("backoffs") = team.backoffs(),
                        py::arg("work_ns") = team.work_ns(), py::arg("wait_ns") = team.wait_ns(),
                        py::arg("pool") = team.pool());
      },
      "counts so far: jobs split over two threads, barriers passed, of them waited at (timing: maybe none), of "
      "those slept at, back-offs to one thread; the two threads' ns of work and of waiting for each other in split "
      "jobs (what the back-off judges); and the pool the second thread comes from (set_split_pool)");
  m.def(
      "set_split_pool",
      [](int pool) {
        TORCH_CHECK_VALUE(grukit::Team::instance().set_pool(pool), "set_split_pool: ", pool,
                          " is not a pool this build has (0: grukit's own worker; 1: torch's OpenMP threads, in "
                          "builds with OpenMP)");
      },
      "the split's second thread: 0 grukit's own worker, 1 one of torch's OpenMP threads (the default unless "
      "OMP_WAIT_POLICY=PASSIVE; see team.h)",
      py::arg("pool"));
  m.def("set_split_mode", [](int mode) { grukit::Team::instance().set_mode(mode); },
        "0: never split a step over two threads; 1 (default): when it pays and the other core is free; 2: whenever "
        "torch allows two threads and the step is large enough", py::arg("mode"));
  m.def("set_projection_mode", [](int mode) { projection_mode.store(mode); },
        "how the forward's input side is computed where the loop does not fuse it: 0 one GEMM (MKL), 1 (default) by "
        "W_ih's size and the CPU (see project_with_kernel), 2 the micro-kernel", py::arg("mode"));
  m.def(
      "layer",
      [](const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
         const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
         const std::optional<at::Tensor>& lengths, bool reset_after, bool reverse, const std::optional<at::Tensor>& drop,
         const std::optional<at::Tensor>& keep, double keep_p) {
        auto out = GRULayerFunction::apply(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reset_after, reverse, drop, keep,
                                           keep_p);
        return std::make_tuple(out[0], out[1]);
      },
      "GRU layer forward recorded for autograd (GRULayerFunction): (y, h_n)", py::arg("x"), py::arg("h0"),
      py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("lengths"), py::arg("reset_after"),
      py::arg("reverse"), py::arg("drop"), py::arg("keep"), py::arg("keep_p"));
  m.def("backward", &gru_backward, "GRU layer backward: (dx, dh0, dw_ih, dw_hh, db_ih, db_hh)");
  m.def("forward_norm", &gru_forward_norm, "layer-norm GRU layer forward from gi: (y, h_n, gates, hs, xhat, rstd)");
  m.def("backward_norm", &gru_backward_norm, "layer-norm GRU layer backward: (dgi, dh0, dw_hh, dgamma, dbeta)");
  m.def("vector_bytes", [] { return kVecBytes; }, "SIMD vector width in bytes the extension was built for");
}
