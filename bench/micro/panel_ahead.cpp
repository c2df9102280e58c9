// The recurrent product's multi-row tile at B = 64, H = 1024 on 256-bit vectors, outside grukit: 4 rows x 3 gate
// vectors (12 accumulators, the cpu backend's AVX2 tile) over 128 panels of 1024 k x 24 floats (W_hh packed as the
// backend packs it, 12 MiB: past L2), each panel serving 16 row blocks of h (64 x 1024 floats, L2-resident), with and
// without fetching the next panel ahead as gru_cpu.cpp's PanelAhead does (one line every 8 k, with each prefetch
// hint); and over 16 panels (1.5 MiB) for comparison. Tells how much of the loop's FLOP rate is lost waiting on L3
// for a panel's first row block.
//
//     g++ -O3 -march=native -ffp-contract=fast -o /tmp/panel_ahead bench/micro/panel_ahead.cpp && /tmp/panel_ahead
//
// Prints GFLOP/s, medians of 21 interleaved rounds (each the median of 5 timed passes of 3 steps).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

namespace {
constexpr int N = 8, G = 3, R = 4, K = 1024, kRows = 64, kPanels = 128;
typedef float V __attribute__((vector_size(32)));

V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

V splat(float s) { return V{s, s, s, s, s, s, s, s}; }

// As gru_cpu.cpp's in_register: keeps GCC from folding the weight loads into each FMA.
V in_register(V v) {
  asm("" : "+x"(v));
  return v;
}

// One row block: acc[r][g] = sum_k src[r][k] panel[k][g]; kHint < 0: no fetch ahead, else __builtin_prefetch's
// locality (3: T0, 2: T1, 1: T2) for a line of the next panel every 8 k while [next, end) lasts.
template <int kHint>
__attribute__((noinline)) void tile(const float* src, const float* panel, float* out, const char*& next,
                                    const char* end) {
  V acc[R][G] = {};
  for (int k = 0; k < K; ++k) {
    if (kHint >= 0 && (k & 7) == 0 && next < end) {
      __builtin_prefetch(next, 0, kHint);
      next += 64;
    }
    V w[G];
    for (int g = 0; g < G; ++g) w[g] = in_register(load(panel + (k * G + g) * N));
    for (int r = 0; r < R; ++r) {
      const V s = splat(src[r * K + k]);
      for (int g = 0; g < G; ++g) acc[r][g] += s * w[g];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < G; ++g) std::memcpy(out + (r * G + g) * N, &acc[r][g], sizeof(V));
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// GFLOP/s of 3 steps over `panels` panels, the median of 5 passes.
template <int kHint>
double rate(int panels, const std::vector<float>& w, const std::vector<float>& h, std::vector<float>& out) {
  const int64_t panel_floats = int64_t{K} * G * N;
  std::vector<double> times;
  for (int pass = 0; pass < 5; ++pass) {
    const double start = now_s();
    for (int step = 0; step < 3; ++step)
      for (int p = 0; p < panels; ++p) {
        const char* next = reinterpret_cast<const char*>(w.data() + (p + 1) * panel_floats);
        const char* end = next + (p + 1 < panels ? panel_floats * sizeof(float) : 0);
        const float* panel = w.data() + p * panel_floats;
        for (int b = 0; b < kRows; b += R) tile<kHint>(h.data() + b * K, panel, out.data(), next, end);
      }
    times.push_back(now_s() - start);
  }
  std::sort(times.begin(), times.end());
  return 2.0 * kRows * K * G * N * panels * 3 / times[2] / 1e9;
}
}  // namespace

int main() {
  std::vector<float> w(int64_t{kPanels + 1} * K * G * N, 1e-3f), h(kRows * K, 0.5f), out(R * G * N);
  std::vector<double> rates[5];
  for (int round = 0; round < 21; ++round) {
    rates[0].push_back(rate<-1>(kPanels, w, h, out));
    rates[1].push_back(rate<3>(kPanels, w, h, out));
    rates[2].push_back(rate<2>(kPanels, w, h, out));
    rates[3].push_back(rate<1>(kPanels, w, h, out));
    rates[4].push_back(rate<-1>(16, w, h, out));
  }
  const char* names[5] = {"128 panels, no fetch ahead", "128 panels, ahead T0", "128 panels, ahead T1",
                          "128 panels, ahead T2", "16 panels, no fetch ahead"};
  for (int i = 0; i < 5; ++i) {
    std::sort(rates[i].begin(), rates[i].end());
    std::printf("%-28s %6.1f GFLOP/s\n", names[i], rates[i][10]);
  }
}
