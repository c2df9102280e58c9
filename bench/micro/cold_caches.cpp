// What a few milliseconds of other work leave in this machine's caches: the time to read a buffer of 24 KiB (L1),
// 48 KiB (W_hh at H = 64), 512 KiB (L2) and 4 MiB (L3) once it was just read (warm), after 5 ms of a scalar spin
// that touches almost no memory, and after 5 ms of sleep. On a quiet dedicated core the spin leaves every level
// warm; on the shared 2-core VM something outside the process (other tenants on the same caches, or the
// hypervisor) empties L2 and L3 within it.
//
//     g++ -O2 -march=native -o /tmp/cold_caches bench/micro/cold_caches.cpp && /tmp/cold_caches
//
// Prints medians of 201 timed reads (each read repeated to about 768 KiB of loads below L2's size).
#include <immintrin.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

namespace {
double now_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Sums n floats (a multiple of 64) `reps` times with 512-bit loads.
__attribute__((noinline)) float sweep(const float* p, size_t n, int reps) {
  __m512 a = _mm512_setzero_ps(), b = a, c = a, d = a;
  for (int r = 0; r < reps; ++r)
    for (size_t i = 0; i < n; i += 64) {
      a = _mm512_add_ps(a, _mm512_loadu_ps(p + i));
      b = _mm512_add_ps(b, _mm512_loadu_ps(p + i + 16));
      c = _mm512_add_ps(c, _mm512_loadu_ps(p + i + 32));
      d = _mm512_add_ps(d, _mm512_loadu_ps(p + i + 48));
    }
  float lanes[16];
  _mm512_storeu_ps(lanes, _mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, d)));
  float sum = 0;
  for (float v : lanes) sum += v;
  return sum;
}

volatile float sink_f;
volatile long sink_l;

void spin(double us) {
  const double start = now_us();
  long count = 0;
  while (now_us() - start < us) ++count;
  sink_l = count;
}

void doze(double us) {
  const double start = now_us();
  const timespec tick{0, 100000};
  while (now_us() - start < us) nanosleep(&tick, nullptr);
}
}  // namespace

int main() {
  std::vector<float> buffer(1 << 20, 1.0f);  // 4 MiB
  for (size_t kib : {24, 48, 512, 4096}) {
    const size_t n = kib * 256;
    const int reps = static_cast<int>(std::max<size_t>(1, 768 * 256 / n));
    for (int mode = 0; mode < 3; ++mode) {
      std::vector<double> times;
      for (int r = 0; r < 201; ++r) {
        if (mode == 1) spin(5000);
        if (mode == 2) doze(5000);
        const double start = now_us();
        sink_f = sweep(buffer.data(), n, reps);
        times.push_back(now_us() - start);
      }
      std::nth_element(times.begin(), times.begin() + 100, times.end());
      std::printf("%5zu KiB x %2d: %-22s %8.2f us\n", kib, reps,
                  mode == 0 ? "warm" : mode == 1 ? "after a 5 ms spin" : "after a 5 ms sleep", times[100]);
    }
  }
}
