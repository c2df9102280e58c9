// The B = 1, H = 64 loop's bounds, outside grukit: one time step's recurrent product over W_hh packed as the cpu
// backend packs it ((P, H, 3, N): 4 panels of 16 hidden units, 48 KiB, more than a 32 KiB L1), alone and with the
// next block's input projection interleaved as forward_loop_ahead does (8 rows x 3 gates, 8 k per step); and the
// same product over half the panels twice (24 KiB: L1-resident), to tell the L2 stream from the FMA chains.
//
//     g++ -O2 -march=native -o /tmp/b1_loop bench/micro/b1_loop.cpp && /tmp/b1_loop
//
// Prints µs per step for each (medians of 5 runs of 200,000 steps); weights are zeros (timing only).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

namespace {
constexpr int N = 16, H = 64, P = 4, G = 3, R = 8;
typedef float V __attribute__((vector_size(64)));

V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

V splat(float s) { return V{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s}; }

// acc = h W_hh^T for `panels` panels; kProject: the tile (R rows x 3 gates per panel) += x[m][ki] W_ih[ki] for the
// step's 8 k, one projection k per R recurrent k (the cpu backend's panel_product_ahead).
template <bool kProject>
__attribute__((noinline)) void step(const float* h, const float* whh, int panels, const float* wih, const float* x,
                                    float* tile, float* out, int s) {
  for (int p = 0; p < panels; ++p) {
    const float* wp = whh + p * H * G * N;
    V acc[G] = {}, g[R][G];
    if (kProject)
      for (int m = 0; m < R; ++m)
        for (int q = 0; q < G; ++q) g[m][q] = load(tile + (p * R + m) * G * N + q * N);
    int ki = (s % R) * (H / R);
    for (int kh = 0; kh < H; kh += R, ++ki) {
      V w[G];
      if (kProject)
        for (int q = 0; q < G; ++q) w[q] = load(wih + (p * H + ki) * G * N + q * N);
#pragma GCC unroll 8
      for (int m = 0; m < R; ++m) {
        if (kProject) {
          const V sx = splat(x[m * H + ki]);
#pragma GCC unroll 3
          for (int q = 0; q < G; ++q) g[m][q] += sx * w[q];
        }
        const V sh = splat(h[kh + m]);
#pragma GCC unroll 3
        for (int q = 0; q < G; ++q) acc[q] += sh * load(wp + (kh + m) * G * N + q * N);
      }
    }
    if (kProject)
      for (int m = 0; m < R; ++m)
        for (int q = 0; q < G; ++q) std::memcpy(tile + (p * R + m) * G * N + q * N, &g[m][q], sizeof(V));
    for (int q = 0; q < G; ++q) std::memcpy(out + p * G * N + q * N, &acc[q], sizeof(V));
  }
}
}  // namespace

int main() {
  // 64-byte aligned, as the backend's buffers (ATen's allocator): a vector load never straddles two cache lines
  auto buffer = [](size_t n) { return std::vector<V>((n + N - 1) / N); };
  std::vector<V> whh_v = buffer(P * H * G * N), wih_v = buffer(P * H * G * N), x_v = buffer(R * H),
                 tile_v = buffer(P * R * G * N), h_v = buffer(H), out_v = buffer(P * G * N);
  auto floats = [](std::vector<V>& v) { return reinterpret_cast<float*>(v.data()); };
  float *whh = floats(whh_v), *wih = floats(wih_v), *x = floats(x_v), *tile = floats(tile_v), *h = floats(h_v),
        *out = floats(out_v);
  const int steps = 200000;
  const char* names[] = {"recurrent, W_hh 48 KiB (L2)", "recurrent + projection (forward_loop_ahead)",
                         "recurrent, 24 KiB twice (L1)"};
  for (int mode = 0; mode < 3; ++mode) {
    std::vector<double> runs;
    for (int run = 0; run < 5; ++run) {
      const auto start = std::chrono::steady_clock::now();
      for (int s = 0; s < steps; ++s) {
        if (mode == 1) {
          step<true>(h, whh, P, wih, x, tile, out, s);
        } else {
          const int panels = mode == 0 ? P : P / 2;
          for (int rep = 0; rep < P / panels; ++rep)
            step<false>(h, whh, panels, wih, x, tile, out, s);
        }
      }
      runs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / steps * 1e6);
    }
    std::sort(runs.begin(), runs.end());
    std::printf("%-45s %.3f us/step\n", names[mode], runs[2]);
  }
}
