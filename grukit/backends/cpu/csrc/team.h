// A pair of threads for one kernel call: the calling thread and a second one, with a barrier that spins for a
// bounded time (50 µs, or a quarter of the waiter's step when that is longer, at most 200 µs) and then sleeps on a
// condition variable (so a busy second core costs a bounded spin and a futex wake, never a spinning thread that
// holds the core its partner needs for long).
//
// The second thread is one of torch's OpenMP threads (an `omp parallel` region of two) by default. Under OpenMP's
// default wait policy that thread spins for a while after each of torch's parallel calls (the input projection's
// GEMM before a loop, the weight-gradient GEMMs after a backward); a thread of grukit's own would then share its
// core with the spinner, and the split gained nothing (B = 8, H = 256, T = 256 inference: 1.00x). Under
// OMP_WAIT_POLICY=PASSIVE OpenMP's threads sleep between regions, and waking one for each streaming step costs
// more than half the step saves, so there the second thread is grukit's own persistent worker, which spins between
// jobs for up to a quarter of its last one (set_pool chooses; the build may lack OpenMP, then always the worker).
//
// Team::instance().run(n, job) calls job(Part) with tid 0 on the caller and tid 1 on the second thread. The job
// runs on one thread instead when n is 1, when the team is serving another caller (two Python threads calling
// kernels at once), after a fork (the child has neither thread: OpenMP's pool does not survive a fork either), in a
// region OpenMP gives one thread (nested in another), or while backing off. Both threads time their work and their
// waits (at barriers, and the caller's for the worker at a job's end); over a window (kJudgeJobs jobs, or kJudgeNs
// of the two threads' time), two threads took S = (work + waits) / 2 of wall time against about work on one, so
// the split pays while waits < work. When waits pass 3/4 of work (kBackoffShare; the other core is busy, its thread
// descheduled, or each call has to wake a sleeping worker), jobs run on one thread for kMinBackoffNs, then two
// threads are tried again; each back-off that follows a failed retry lasts twice as long (at most kMaxBackoffNs),
// and a retry that goes well resets it. A duration, not a count of jobs: a count would span seconds of long calls
// after one short burst on the other core, or no time at all for streaming steps. Time, not the number of waits
// that slept: a sleep and its wake (tens of µs on a VM) sink a 10 µs job but not a 500 µs one.
// set_mode() pins the choice (tests, benchmarks). Inside a job, part.sync() is a barrier of the job's threads.
// Results never depend on the thread count: the kernels give each hidden unit to one thread with the same arithmetic.

#pragma once

#include <pthread.h>
#include <strings.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GRUKIT_PAUSE() _mm_pause()
#else
#define GRUKIT_PAUSE() std::this_thread::yield()
#endif

namespace grukit {

// Nanoseconds on the steady clock (time stamps compared across threads).
inline int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A counter that threads wait on to change: a short spin, then a sleep (notified only when someone sleeps).
class Signal {
 public:
  using Clock = std::chrono::steady_clock;

  uint32_t get() const { return value_.load(std::memory_order_seq_cst); }

  void publish(uint32_t v) {
    published_.store(steady_ns(), std::memory_order_relaxed);
    value_.store(v, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      cv_.notify_all();
    }
  }

  // Returns once the value differs from `old`: spins up to spin_ns, then sleeps. Returns 0 if it did not sleep,
  // else how long the wake took: ns from the publish that changed the value to this thread running again (>= 1).
  int64_t wait_while(uint32_t old, int64_t spin_ns) {
    if (get() != old) return 0;
    const auto start = Clock::now();
    for (int i = 1;; ++i) {
      GRUKIT_PAUSE();
      if (get() != old) return 0;
      if ((i & 63) == 0 && Clock::now() - start > std::chrono::nanoseconds(spin_ns)) break;
    }
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [&] { return get() != old; });
    }
    sleepers_.fetch_sub(1, std::memory_order_seq_cst);
    return std::max<int64_t>(1, steady_ns() - published_.load(std::memory_order_relaxed));
  }

 private:
  std::atomic<uint32_t> value_{0};
  std::atomic<int64_t> published_{0};  // steady_ns() of the last publish
  std::atomic<int> sleepers_{0};
  std::mutex mutex_;
  std::condition_variable cv_;
};

class Team;

// One thread's share of a job: its id, the team size, and the barrier.
struct Part {
  int tid = 0;
  int n = 1;
  Team* team = nullptr;
  // [begin, end) of `count` items split evenly over the team.
  int64_t begin(int64_t count) const { return count * tid / n; }
  int64_t end(int64_t count) const { return count * (tid + 1) / n; }
  inline void sync() const;
};

class Team {
 public:
  static constexpr int64_t kBarrierSpinNs = 50000;     // the least: more than a futex wake takes (see sync)
  static constexpr int64_t kMaxBarrierSpinNs = 200000;  // the most (a step of about a millisecond)
  static constexpr int64_t kSpinShare = 4;              // spin up to a quarter of the waiter's own step
  static constexpr int64_t kIdleSpinNs = 30000;  // the least the worker spins for the next call (streaming)
  static constexpr int kJudgeJobs = 32;               // the window of a judgement: this many jobs,
  static constexpr int64_t kJudgeNs = 4'000'000;      // or this much of the two threads' time, whichever comes first
  static constexpr int64_t kBackoffShare = 4;         // back off when waits > 3/4 of work: 2 threads < 8/7x
  static constexpr int64_t kMinBackoffNs = 50'000'000;   // 50 ms
  static constexpr int64_t kMaxBackoffNs = 5'000'000'000;  // 5 s
  enum Mode { kNever = 0, kAuto = 1, kAlways = 2 };

  static Team& instance() {
    static Team* team = [] {
      pthread_atfork(nullptr, nullptr, [] { forked_ = true; });  // the worker thread does not survive a fork
      return new Team();  // never destroyed: the worker runs until the process exits
    }();
    return *team;
  }

  // Runs job(Part) on min(n, 2) threads; see the file comment.
  template <typename F>
  void run(int n, F&& job) {
    const int mode = mode_.load(std::memory_order_relaxed);
    if (n < 2 || mode == kNever || forked_ || (mode == kAuto && backing_off()) || !busy_.try_lock()) {
      job(Part{0, 1, this});
      return;
    }
    std::lock_guard<std::mutex> held(busy_, std::adopt_lock);
#ifdef _OPENMP
    if (pool_.load(std::memory_order_relaxed) == kOpenMP) {
      if (run_openmp(job)) judge();
      return;
    }
#endif
    split_jobs_.fetch_add(1, std::memory_order_relaxed);
    if (!worker_.joinable()) worker_ = std::thread([this, start = jobs_.get()] { loop(start); });
    call_ = [](void* ctx, Part part) { (*static_cast<std::remove_reference_t<F>*>(ctx))(part); };
    ctx_ = &job;
    const uint32_t done = done_.get();
    segment_start() = Clock::now();
    jobs_.publish(jobs_.get() + 1);
    job(Part{0, 2, this});
    // The job's end is its last barrier, with the worker's arrival published by done_.
    const auto arrive = Clock::now();
    Slot& mine = slots_[0];
    const int64_t worked = ns_between(segment_start(), arrive);
    add(mine.work_ns, worked);
    if (done_.get() == done) {
      done_.wait_while(done, spin_ns(worked));
      add(mine.wait_ns, ns_between(arrive, Clock::now()));
    }
    judge();  // the worker's slot is final: done_ was published after its job
  }

  // Counts a job of two and, at the end of a window, decides whether to back off (see the file comment).
  void judge() {
    ++jobs_judged_;
    const int64_t work = work_ns() - judged_work_, waits = wait_ns() - judged_wait_;
    if (jobs_judged_ >= kJudgeJobs || work + waits >= kJudgeNs) {
      judged_work_ += work;
      judged_wait_ += waits;
      jobs_judged_ = 0;
      if (kBackoffShare * waits > (kBackoffShare - 1) * work) {
        const int64_t wait = backoff_ns_;
        solo_until_ = steady_ns() + wait;
        backoff_ns_ = std::min(2 * wait, kMaxBackoffNs);
        backoffs_.fetch_add(1, std::memory_order_relaxed);
      } else {
        backoff_ns_ = kMinBackoffNs;
      }
    }
  }

#ifdef _OPENMP
  // Runs the job on torch's OpenMP pool, its region's closing barrier the job's end; false if the runtime gave the
  // region one thread (nested in another region), which then ran the whole job.
  template <typename F>
  bool run_openmp(F& job) {
    Clock::time_point caller_done{};
#pragma omp parallel num_threads(2)
    {
      if (omp_get_num_threads() < 2) {
        job(Part{0, 1, this});
      } else {
        const int tid = omp_get_thread_num();
        segment_start() = Clock::now();
        job(Part{tid, 2, this});
        const auto end = Clock::now();
        add(slots_[tid].work_ns, ns_between(segment_start(), end));
        if (tid == 0) caller_done = end;
      }
    }
    if (caller_done == Clock::time_point{}) return false;
    split_jobs_.fetch_add(1, std::memory_order_relaxed);
    add(slots_[0].wait_ns, ns_between(caller_done, Clock::now()));
    return true;
  }
#endif

  // Which thread joins the caller: kOpenMP (one of torch's OpenMP threads; the default, where the extension was
  // built with OpenMP and OMP_WAIT_POLICY is not PASSIVE) or kOwnWorker (grukit's own). Returns false for kOpenMP
  // in a build without OpenMP.
  enum Pool { kOwnWorker = 0, kOpenMP = 1 };
  bool set_pool(int pool) {
    if (pool != kOwnWorker && (pool != kOpenMP || !kHaveOpenMP)) return false;
    pool_ = pool;
    return true;
  }
  int pool() const { return pool_; }

  void set_mode(int mode) {
    mode_ = mode;
    solo_until_ = 0;
    backoff_ns_ = kMinBackoffNs;
  }

  // How many jobs ran on two threads (the tests' window on the split).
  uint64_t split_jobs() const { return split_jobs_.load(std::memory_order_relaxed); }
  // Barriers passed; of them waited at (the partner not there yet: timing, so possibly none), of those slept at;
  // back-offs to one thread; all so far (diagnostics).
  uint64_t barriers() const { return slots_[0].arrived.load(std::memory_order_relaxed); }
  uint64_t barrier_waits() const { return both(&Slot::waits); }
  uint64_t barrier_sleeps() const { return barrier_sleeps_.load(std::memory_order_relaxed); }
  uint64_t backoffs() const { return backoffs_.load(std::memory_order_relaxed); }
  int64_t work_ns() const { return both(&Slot::work_ns); }
  int64_t wait_ns() const { return both(&Slot::wait_ns); }

  // The barrier of a two-thread job. Each thread counts its arrivals in its own cache line and waits for its
  // partner's count to reach its own: one line crosses the cores each way, in parallel (a shared counter and a
  // published flag cost two or three such trips in a row, about a microsecond per step on this VM). The waiter spins
  // for spin_ns(its own work since its last barrier) before it sleeps. Both threads add their work and their wait
  // to their own slot (the back-off's judgement, in run).
  void sync(int tid) {
    const auto arrive = Clock::now();
    const int64_t worked_ns = ns_between(segment_start(), arrive);
    Slot& mine = slots_[tid];
    const Slot& other = slots_[1 - tid];
    const uint32_t gen = mine.arrived.load(std::memory_order_relaxed) + 1;
    mine.arrived.store(gen, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {  // the partner sleeps (rare): wake it
      published_.store(steady_ns(), std::memory_order_relaxed);
      std::lock_guard<std::mutex> lock(mutex_);
      cv_.notify_all();
    }
    auto partner_here = [&] {
      return static_cast<int32_t>(other.arrived.load(std::memory_order_acquire) - gen) >= 0;
    };
    add(mine.work_ns, worked_ns);
    if (!partner_here()) {
      mine.waits.store(mine.waits.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      const auto spin = std::chrono::nanoseconds(spin_ns(worked_ns));
      bool here = false;
      for (int i = 1; !(here = partner_here()); ++i) {
        GRUKIT_PAUSE();
        if ((i & 63) == 0 && Clock::now() - arrive > spin) break;
      }
      if (!here) {
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        {
          std::unique_lock<std::mutex> lock(mutex_);
          cv_.wait(lock, partner_here);
        }
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        wake_ns_.store(std::max<int64_t>(1, steady_ns() - published_.load(std::memory_order_relaxed)),
                       std::memory_order_relaxed);
        barrier_sleeps_.fetch_add(1, std::memory_order_relaxed);
      }
      segment_start() = Clock::now();
      add(mine.wait_ns, ns_between(arrive, segment_start()));
    } else {
      segment_start() = arrive;
    }
  }

 private:
  using Clock = std::chrono::steady_clock;

  // When this thread's work since its last barrier (or its job's start) began.
  static Clock::time_point& segment_start() {
    thread_local Clock::time_point start{};
    return start;
  }
  static int64_t ns_between(Clock::time_point from, Clock::time_point to) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(to - from).count();
  }
  // Adds to a counter only its own thread writes (no read-modify-write across cores).
  static void add(std::atomic<int64_t>& counter, int64_t ns) {
    counter.store(counter.load(std::memory_order_relaxed) + ns, std::memory_order_relaxed);
  }

  // How long a thread that worked worked_ns spins for its partner before it sleeps: max(kBarrierSpinNs,
  // worked_ns / kSpinShare, twice the last wake from a barrier sleep), at most kMaxBarrierSpinNs. Two halves of a
  // long step finish microseconds apart (a fixed few-µs spin would sleep at every step, and every sleep costs a
  // futex wake), while a partner descheduled by a busy core costs at most that share of a step before the wait
  // sleeps. The wake term breaks convoys: on a VM waking a sleeping vCPU can take longer (80 µs measured here) than
  // the base spin, so after one sleep the woken thread arrives late at every later barrier, the partner's spin runs
  // out, it sleeps in turn, and every step pays a wake.
  int64_t spin_ns(int64_t worked_ns) const {
    return bounded_spin(kBarrierSpinNs, std::max(worked_ns / kSpinShare, 2 * wake_ns_.load(std::memory_order_relaxed)));
  }
  // A wanted spin within [least, kMaxBarrierSpinNs].
  static int64_t bounded_spin(int64_t least, int64_t wanted) {
    return std::max(least, std::min(kMaxBarrierSpinNs, wanted));
  }

  struct Slot;  // below, with the members
  // A slot counter's sum over both threads.
  template <typename V>
  V both(std::atomic<V> Slot::*field) const {
    return (slots_[0].*field).load(std::memory_order_relaxed) + (slots_[1].*field).load(std::memory_order_relaxed);
  }

#ifdef _OPENMP
  static constexpr bool kHaveOpenMP = true;
#else
  static constexpr bool kHaveOpenMP = false;
#endif
  // kOpenMP unless OMP_WAIT_POLICY asks OpenMP's threads to sleep between regions (each job would wake one, tens of
  // µs on a VM: streaming steps lose the split) or the build lacks OpenMP.
  static int default_pool() {
    const char* policy = std::getenv("OMP_WAIT_POLICY");
    const bool passive = policy != nullptr && strcasecmp(policy, "passive") == 0;
    return kHaveOpenMP && !passive ? kOpenMP : kOwnWorker;
  }

  // Whether a back-off is running (the clock is read only while one was set).
  bool backing_off() {
    const int64_t until = solo_until_.load(std::memory_order_relaxed);
    if (until == 0) return false;
    if (steady_ns() < until) return true;
    solo_until_.store(0, std::memory_order_relaxed);
    return false;
  }

  // The worker: between jobs it spins up to a quarter of its last job's last segment (at least kIdleSpinNs, at most
  // kMaxBarrierSpinNs), so that streaming calls, each a job, find it awake though the caller's half ends later.
  void loop(uint32_t seen /* the job count before this thread's first job */) {
    int64_t spin = kIdleSpinNs;
    for (;;) {
      jobs_.wait_while(seen, spin);
      seen = jobs_.get();
      segment_start() = Clock::now();
      call_(ctx_, Part{1, 2, this});
      const int64_t worked = ns_between(segment_start(), Clock::now());
      add(slots_[1].work_ns, worked);
      spin = bounded_spin(kIdleSpinNs, worked / kSpinShare);
      done_.publish(done_.get() + 1);
    }
  }

  static inline std::atomic<bool> forked_{false};
  std::mutex busy_;  // held by the caller whose job the worker serves
  std::thread worker_;
  void (*call_)(void*, Part) = nullptr;
  void* ctx_ = nullptr;
  Signal jobs_, done_;
  struct alignas(64) Slot {  // written by one thread only: its barrier arrivals, how many of them waited, and ns
    std::atomic<uint32_t> arrived{0};
    std::atomic<uint64_t> waits{0};
    std::atomic<int64_t> work_ns{0}, wait_ns{0};  // of work and of waiting for the partner, in jobs of two
  };
  Slot slots_[2];
  alignas(64) std::atomic<int> sleepers_{0};  // threads asleep at the barrier (read at every barrier, rarely written)
  std::atomic<int64_t> published_{0};         // steady_ns() of the arrival that woke a sleeper
  std::mutex mutex_;
  std::condition_variable cv_;
  int64_t judged_work_ = 0, judged_wait_ = 0;  // the slots' sums at the last judgement (run)
  int jobs_judged_ = 0;                         // jobs since then
  std::atomic<uint64_t> split_jobs_{0};
  std::atomic<uint64_t> barrier_sleeps_{0}, backoffs_{0};
  std::atomic<int64_t> wake_ns_{0};  // how long the last wake from a barrier sleep took
  std::atomic<int> mode_{kAuto};
  std::atomic<int> pool_{default_pool()};
  std::atomic<int64_t> solo_until_{0};              // steady_ns() until which jobs run on one thread, or 0
  std::atomic<int64_t> backoff_ns_{kMinBackoffNs};  // the next back-off's length
};

inline void Part::sync() const {
  if (n > 1) team->sync(tid);
}

}  // namespace grukit
