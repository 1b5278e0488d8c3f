// bench_stencil: the 3-D heat equation, 7-point Jacobi stencil on n x n x n doubles
// (kernels/heat.hpp), in each variant, process count and thread count, beside its reference
// measured in the same run (hand-written OpenMP with as many threads in all); and the crossing
// time of vscale::Barrier beside OpenMP's barrier.
//
//   ./bench_stencil [--json] [--n N] [--steps S] [--procs 1,2,4] [--threads 1,2] [--reps R]
//                   [--variants a,b,...]
//
// Variants (seconds = median over R reps, after one untimed warm-up run; the first array is
// re-initialised before every run, outside the timed region):
//   serial            heat_serial on plain memory in the master (procs=1, threads=1); its
//                     result is the reference every other variant is compared with
//   per_step          heat_per_step: one remote call per process per step, waited for by the
//                     master, then the arrays swap roles
//   persistent        heat_persistent: one call per process for all steps, a Barrier crossing
//                     between steps
//   openmp_reference  the yardstick: arrays of its own, first-touched plane by plane by the
//                     thread that computes them; one parallel region, an `omp for
//                     schedule(static)` over the z planes per step (its implicit barrier is the
//                     step's synchronisation); P*T threads in one process (procs=1)
//   barrier           Barrier::wait() in a loop on each of P workers: seconds per crossing
//                     (the slowest worker's time / crossings)
//   openmp_barrier    `#pragma omp barrier` in a loop with P threads (the barrier's reference)
// For each process count P the bench adds or removes workers to have exactly P, and makes two
// SharedArray<double, 3>s whose pids are those P workers, each worker initialising the planes
// it computes (heat_my_planes), so first touch matches. With --threads T each process splits its
// planes over T TBB threads (the runtime's arena when it has T threads, else an arena made for
// the call).
//
// JSON fields: bench, variant, procs, threads, n, seconds, steps, reps, gb_per_s (16 bytes per
// cell update: read the cell, write it; the neighbours come from cache), max_abs_diff (against
// serial; must be 0) and, where the reference ran on as many cores, ratio_to_openmp. The barrier
// lines carry seconds per crossing, steps = crossings per timed run, gb_per_s = 0, and
// us_per_crossing. The exit status is 1 if any variant's result differs from serial.
// Targets: persistent <= 1.15 x openmp_reference on 2 cores (as advection's shared_chunks);
// on the 16-core bench host a Barrier crossing with 16 processes <= 2 us.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <fmt/format.h>
#include <tbb/task_arena.h>

#include <heat.hpp>
#include <vscale/barrier.hpp>
#include <vscale/vscale.hpp>

#include "bench_util.hpp"

namespace {

using bench_util::Clock;
using bench_util::human_time;
using bench_util::median;
using bench_util::seconds_since;
using bench_util::split_commas;
using bench_util::time_reps;
long parse_positive(const std::string& opt, const std::string& v) { return bench_util::parse_positive("bench_stencil", opt, v); }
using Array = vscale::SharedArray<double, 3>;
using View = vscale::kernels::Grid3<double>;
namespace kn = vscale::kernels;

[[noreturn]] void die(const std::string& what) {
  fmt::print(stderr, "bench_stencil: {}\n", what);
  std::exit(2);
}

// --- the problem ------------------------------------------------------------------------------

// A hot bottom face (k = 0) at 1, the other faces at 0, and an interior of multiples of 1/64
// (any values would do: every variant is compared with serial bit for bit).
inline double initial(std::size_t i, std::size_t j, std::size_t k) {
  return k == 0 ? 1.0 : static_cast<double>((i * 7 + j * 13 + k * 5) % 16) * (1.0 / 64);
}

// Both arrays get the initial values: the second's are overwritten by the first step, but
// writing them is the first touch.
template <class A>
void init_planes(const A& a, const A& b, vscale::IndexRange planes) {
  kn::heat_fill(a, planes, initial);
  kn::heat_fill(b, planes, initial);
}

// The largest |x - ref| on the planes `planes`; infinity for a NaN.
template <class A>
double diff_planes(const A& x, const View& ref, vscale::IndexRange planes) {
  const std::size_t plane = x.size(0) * x.size(1);
  double worst = 0;
  for (std::size_t k : planes) {
    const double* p = &x(0, 0, k);
    const double* r = &ref(0, 0, k);
    for (std::size_t c = 0; c < plane; ++c) {
      const double d = std::fabs(p[c] - r[c]);
      if (!(d <= worst)) worst = std::isnan(d) ? std::numeric_limits<double>::infinity() : d;
    }
  }
  return worst;
}

// On each worker, over the planes it computes (calls of the SharedArray variants).
void init_here(const Array& a) { kn::heat_fill(a, kn::heat_my_planes(a), initial); }
void init_both_here(const Array& a, const Array& b) { init_planes(a, b, kn::heat_my_planes(a)); }
void reset_all(const Array& a) {
  std::vector<vscale::Future<void>> calls;
  for (int p : vscale::procs(a)) calls.push_back(vscale::remotecall(p, &init_here, a));
  for (auto& c : calls) c.wait();
}

// --- results ------------------------------------------------------------------------------

struct Result {
  std::string variant;
  int procs = 1;
  int threads = 1;
  std::size_t n = 0, steps = 0;
  int reps = 0;
  double seconds = 0;
  double gb_per_s = 0;
  double max_abs_diff = 0;
  std::optional<double> ratio;            // seconds / openmp_reference seconds on as many cores
  std::optional<double> us_per_crossing;  // barrier variants
  int cores() const { return procs * threads; }
  bool is_barrier() const { return us_per_crossing.has_value(); }
};

const std::vector<std::string> kVariants = {"serial",  "per_step",      "persistent", "openmp_reference",
                                            "barrier", "openmp_barrier"};

double gb_per_s(std::size_t n, std::size_t steps, double seconds) {
  const double cells = static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
  return 16.0 * cells * static_cast<double>(steps) / seconds / 1e9;
}

void print_json(const Result& r) {
  bench_util::JsonLine j;
  j.add(R"("bench":"stencil","variant":"{}","procs":{},"threads":{},"n":{},"seconds":{:.9g},)"
        R"("steps":{},"reps":{},"gb_per_s":{:.6g},"max_abs_diff":{:.17g})",
        r.variant, r.procs, r.threads, r.n, r.seconds, r.steps, r.reps, r.gb_per_s, r.max_abs_diff);
  if (r.ratio) j.add(R"(,"ratio_to_openmp":{:.4g})", *r.ratio);
  if (r.us_per_crossing) j.add(R"(,"us_per_crossing":{:.6g})", *r.us_per_crossing);
  j.print();
}


// Memory for an n^3 array, untouched (the first touch is the caller's).
std::unique_ptr<double[]> raw_array(std::size_t n, const char* who) {
  try {
    return std::unique_ptr<double[]>(new double[n * n * n]);
  } catch (const std::bad_alloc&) {
    die(fmt::format("{}: cannot allocate {} MiB", who, (n * n * n * sizeof(double)) >> 20));
  }
}

// --- serial (and the reference result) -----------------------------------------------------

// Times heat_serial on plain memory (when `timed`), and leaves its result in `ref`.
std::optional<Result> run_serial(std::size_t n, std::size_t steps, int reps, bool timed, std::unique_ptr<double[]>& ref) {
  auto am = raw_array(n, "serial"), bm = raw_array(n, "serial");
  const View a{am.get(), n, n, n}, b{bm.get(), n, n, n};
  init_planes(a, b, {0, n});
  std::optional<Result> r;
  if (timed) {
    r = Result{"serial", 1, 1, n, steps, reps, 0, 0, 0, {}, {}};
    r->seconds = time_reps(reps, [&] { kn::heat_fill(a, {0, n}, initial); }, [&] { kn::heat_serial(a, b, steps); });
    r->gb_per_s = gb_per_s(n, steps, r->seconds);
  } else {
    kn::heat_serial(a, b, steps);
  }
  ref = steps % 2 ? std::move(bm) : std::move(am);
  return r;
}

// --- the OpenMP references ------------------------------------------------------------------

#ifdef _OPENMP
Result measure_openmp(std::size_t n, std::size_t steps, int threads, int reps, const View& ref) {
  auto am = raw_array(n, "openmp_reference"), bm = raw_array(n, "openmp_reference");
  const View a{am.get(), n, n, n}, b{bm.get(), n, n, n};
  omp_set_num_threads(threads);
  const long nplanes = static_cast<long>(n);
  auto plane = [](long k) { return vscale::IndexRange{static_cast<std::size_t>(k), static_cast<std::size_t>(k) + 1}; };
  // Each thread first-touches the planes it computes (same static schedule, same count).
#pragma omp parallel for schedule(static)
  for (long k = 0; k < nplanes; ++k) init_planes(a, b, plane(k));
  auto reset = [&] {
#pragma omp parallel for schedule(static)
    for (long k = 0; k < nplanes; ++k) kn::heat_fill(a, plane(k), initial);
  };
  auto run = [&] {
#pragma omp parallel
    for (std::size_t s = 0; s < steps; ++s) {
      const View& cur = s % 2 ? b : a;
      const View& next = s % 2 ? a : b;
#pragma omp for schedule(static)
      for (long k = 0; k < nplanes; ++k) kn::heat_chunk(cur, next, plane(k));
    }
  };
  Result r{"openmp_reference", 1, threads, n, steps, reps, 0, 0, 0, {}, {}};
  r.seconds = time_reps(reps, reset, run);
  const View& out = kn::heat_result(a, b, steps);
  double worst = 0;
#pragma omp parallel for schedule(static) reduction(max : worst)
  for (long k = 0; k < nplanes; ++k) worst = std::max(worst, diff_planes(out, ref, plane(k)));
  r.max_abs_diff = worst;
  r.gb_per_s = gb_per_s(n, steps, r.seconds);
  return r;
}

// Seconds per `#pragma omp barrier` crossing with `threads` threads.
double openmp_barrier_once(int threads, long crossings) {
  double seconds = 0;
#pragma omp parallel num_threads(threads)
  {
#pragma omp barrier
    const auto t0 = Clock::now();
    for (long c = 0; c < crossings; ++c) {
#pragma omp barrier
    }
#pragma omp master
    seconds = seconds_since(t0);
  }
  return seconds / static_cast<double>(crossings);
}
#endif

// --- the barrier ----------------------------------------------------------------------------

// On each participant: line up, then `crossings` crossings; the time of the loop.
double barrier_loop(const vscale::Barrier& bar, long crossings) {
  bar.wait();
  const auto t0 = Clock::now();
  for (long c = 0; c < crossings; ++c) bar.wait();
  return seconds_since(t0);
}

// Seconds per crossing of `bar` (the slowest participant's loop / crossings), one run.
double barrier_once(const vscale::Barrier& bar, long crossings) {
  std::vector<vscale::Future<double>> calls;
  for (int p : bar.pids()) calls.push_back(vscale::remotecall(p, &barrier_loop, bar, crossings));
  double worst = 0;
  for (auto& c : calls) worst = std::max(worst, c.fetch());
  return worst / static_cast<double>(crossings);
}

// Crossings per timed run: about 0.2 s worth, from a trial of 1000 (between 1000 and 10^6).
template <class Once>
long calibrate(Once once) {
  const double per = once(1000);
  return static_cast<long>(std::clamp(0.2 / std::max(per, 1e-9), 1000.0, 1e6));
}

template <class Once>
Result measure_barrier(const std::string& variant, int procs, std::size_t n, int reps, Once once) {
  const long crossings = calibrate(once);
  std::vector<double> per;
  for (int r = 0; r < reps; ++r) per.push_back(once(crossings));
  Result r{variant, procs, 1, n, static_cast<std::size_t>(crossings), reps, median(per), 0, 0, {}, {}};
  r.us_per_crossing = r.seconds * 1e6;
  return r;
}

// --- workers ------------------------------------------------------------------------------

// Exactly `p` workers: keeps the oldest, adds or removes the rest (ids are never reused).
std::vector<int> set_workers(int p) {
  std::vector<int> have = vscale::nworkers() ? vscale::workers() : std::vector<int>{};
  if (static_cast<int>(have.size()) > p) vscale::rmprocs(std::vector<int>(have.begin() + p, have.end()));
  if (static_cast<int>(have.size()) < p) {
    auto got = vscale::addprocs(p - static_cast<int>(have.size()));
    if (static_cast<int>(got.size() + have.size()) != p)
      die(fmt::format("addprocs started {} of {} workers", got.size(), p - have.size()));
  }
  std::vector<int> w = vscale::workers();
  if (static_cast<int>(w.size()) != p) die(fmt::format("have {} workers, wanted {}", w.size(), p));
  return w;
}

// --- options ------------------------------------------------------------------------------



std::vector<int> parse_counts(const std::string& opt, const std::string& list) {
  std::vector<int> out;
  for (const auto& p : split_commas(list)) {
    const int v = static_cast<int>(parse_positive(opt, p));
    if (std::find(out.begin(), out.end(), v) == out.end()) out.push_back(v);  // dedupe, keep order
  }
  if (out.empty()) die(opt + " needs at least one count");
  return out;
}

const char* kUsage =
    "usage: bench_stencil [--json] [--n N] [--steps S] [--procs 1,2,4] [--threads 1,2] [--reps R] [--variants a,b]\n"
    "  --n N        the grid is N x N x N doubles, two arrays (default 256)\n"
    "  --steps S    time steps (default 100)\n"
    "  --procs L    process counts (default 1, 2, 4, ... up to and with the usable CPUs)\n"
    "  --threads L  threads per process (OpenMP: processes x threads in one process; default 1)\n"
    "  --reps R     timed runs per variant; the median is reported (default 5)\n"
    "  --variants L serial, per_step, persistent, openmp_reference, barrier, openmp_barrier (default all)\n";

// Takes `--procs LIST` and `--threads LIST` (and their `=` forms) out of argv before the
// Session sees them: there they would mean "start N workers" and "T threads per process";
// here they are the lists of counts to measure. (Workers are started with argv = {program,
// worker flag}, so this never touches theirs.)
std::map<std::string, std::string> take_lists(int& argc, char** argv) {
  std::map<std::string, std::string> lists;
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    bool taken = false;
    for (const char* opt : {"--procs", "--threads"}) {
      const std::string o = opt;
      if (a == o) {
        if (i + 1 >= argc) die(o + " needs a value\n" + kUsage);
        lists[o] = argv[++i];
        taken = true;
      } else if (a.rfind(o + "=", 0) == 0) {
        lists[o] = a.substr(o.size() + 1);
        taken = true;
      }
    }
    if (!taken) argv[out++] = argv[i];
  }
  argc = out;
  argv[out] = nullptr;
  return lists;
}

}  // namespace

int main(int argc, char** argv) {
  const auto lists = take_lists(argc, argv);
  vscale::Session session(argc, argv);  // -p N still starts N workers; the bench then sets its own counts

  bool json = false;
  std::size_t n = 256, steps = 100;
  int reps = 5;
  std::vector<std::string> variants = kVariants;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) die(a + " needs a value\n" + kUsage);
      return argv[++i];
    };
    if (a == "--json") {
      json = true;
    } else if (a == "--n") {
      n = static_cast<std::size_t>(parse_positive(a, value()));
    } else if (a == "--steps") {
      steps = static_cast<std::size_t>(parse_positive(a, value()));
    } else if (a == "--reps") {
      reps = static_cast<int>(parse_positive(a, value()));
    } else if (a == "--variants") {
      variants = split_commas(value());
      for (const auto& v : variants)
        if (std::find(kVariants.begin(), kVariants.end(), v) == kVariants.end())
          die("unknown variant '" + v + "'\n" + kUsage);
    } else if (a == "-h" || a == "--help") {
      fmt::print("{}", kUsage);
      return 0;
    } else {
      die("unknown option '" + a + "'\n" + kUsage);
    }
  }
  std::vector<int> proc_counts, thread_counts = {1};
  if (auto it = lists.find("--procs"); it != lists.end()) proc_counts = parse_counts("--procs", it->second);
  if (auto it = lists.find("--threads"); it != lists.end()) thread_counts = parse_counts("--threads", it->second);
  if (proc_counts.empty()) {
    const int k = vscale::usable_cpus();
    for (int p = 1; p < k; p *= 2) proc_counts.push_back(p);
    proc_counts.push_back(k);
  }
  auto wants = [&](const std::string& v) { return std::find(variants.begin(), variants.end(), v) != variants.end(); };
#ifndef _OPENMP
  for (const char* v : {"openmp_reference", "openmp_barrier"})
    if (wants(v)) {
      fmt::print(stderr, "bench_stencil: built without OpenMP: no {} (and no ratios to it)\n", v);
      variants.erase(std::find(variants.begin(), variants.end(), v));
    }
#endif

  std::vector<Result> results;
  std::map<int, double> openmp_seconds;  // by thread count
  auto emit = [&](Result r) {
    if (r.variant == "openmp_reference")
      r.ratio = 1.0;
    else if (auto it = openmp_seconds.find(r.cores()); it != openmp_seconds.end() && !r.is_barrier())
      r.ratio = r.seconds / it->second;
    if (json) print_json(r);
    results.push_back(std::move(r));
  };
  const bool stencil = wants("serial") || wants("per_step") || wants("persistent") || wants("openmp_reference");
  if (!json)
    fmt::print("bench_stencil: 7-point heat stencil on {}^3 doubles (2 arrays of {} MiB), {} steps, median of {} "
               "reps, {} usable CPUs, TBB arena of {} threads on the master\n",
               n, (n * n * n * sizeof(double)) >> 20, steps, reps, vscale::usable_cpus(),
               tbb::this_task_arena::max_concurrency());

  // The serial result is the reference for every other variant (computed even when serial is
  // not measured).
  std::unique_ptr<double[]> ref_mem;
  if (stencil)
    if (auto r = run_serial(n, steps, reps, wants("serial"), ref_mem)) emit(std::move(*r));
  const View ref{ref_mem.get(), n, n, n};

  for (int p : proc_counts) {
    for (int t : thread_counts) {
#ifdef _OPENMP
      // Its own arrays, freed before the SharedArrays exist.
      if (wants("openmp_reference") && !openmp_seconds.count(p * t)) {
        Result r = measure_openmp(n, steps, p * t, reps, ref);
        openmp_seconds[p * t] = r.seconds;
        emit(std::move(r));
      }
#endif
    }
    const bool need_arrays = wants("per_step") || wants("persistent");
    if (need_arrays || wants("barrier")) set_workers(p);
    if (need_arrays) {
      const std::vector<int> w = vscale::workers();
      Array a, b;
      try {
        a = Array({n, n, n}, vscale::pids(w));
        b = Array({n, n, n}, vscale::pids(w));
        std::vector<vscale::Future<void>> calls;
        for (int q : w) calls.push_back(vscale::remotecall(q, &init_both_here, a, b));
        for (auto& c : calls) c.wait();
      } catch (const std::exception& e) {
        die(std::string("cannot make the SharedArrays: ") + e.what());
      }
      const vscale::Barrier bar(a);  // made once: a Barrier costs a SharedArray
      for (int t : thread_counts) {
        auto measure = [&](const std::string& variant, auto run) {
          Result r{variant, p, t, n, steps, reps, 0, 0, 0, {}, {}};
          r.seconds = time_reps(reps, [&] { reset_all(a); }, run);
          const Array& out = kn::heat_result(a, b, steps);
          r.max_abs_diff = diff_planes(out, ref, {0, n});  // on the master: it maps the arrays
          r.gb_per_s = gb_per_s(n, steps, r.seconds);
          emit(std::move(r));
        };
        if (wants("per_step")) measure("per_step", [&] { kn::heat_per_step(a, b, steps, t); });
        if (wants("persistent")) measure("persistent", [&] { kn::heat_persistent(a, b, steps, bar, t); });
      }
    }
    if (wants("barrier")) {
      const vscale::Barrier bar(vscale::workers());
      emit(measure_barrier("barrier", p, n, reps, [&](long c) { return barrier_once(bar, c); }));
    }
#ifdef _OPENMP
    if (wants("openmp_barrier"))
      emit(measure_barrier("openmp_barrier", p, n, reps, [&](long c) { return openmp_barrier_once(p, c); }));
#endif
  }

  if (!json) {
    fmt::print("\n{:<18} {:>9} {:>8} {:>14} {:>9} {:>11} {:>10}\n", "variant", "processes", "threads", "time", "GB/s",
               "vs OpenMP", "max diff");
    for (const Result& r : results) {
      const std::string time = human_time(r.seconds) + (r.is_barrier() ? "/cross" : "");
      fmt::print("{:<18} {:>9} {:>8} {:>14} {:>9} {:>11} {:>10.3g}\n", r.variant, r.procs, r.threads, time,
                 r.is_barrier() ? "-" : fmt::format("{:.2f}", r.gb_per_s), r.ratio ? fmt::format("{:.2f}x", *r.ratio) : "-",
                 r.max_abs_diff);
    }
    fmt::print("(vs OpenMP: time / openmp_reference time with as many threads as the variant uses cores; the\n"
               " barrier lines give the time per crossing, measured over many crossings in a loop on every participant)\n");
    auto find = [&](const std::string& v, int p, int t) -> const Result* {
      for (const auto& r : results)
        if (r.variant == v && r.procs == p && r.threads == t) return &r;
      return nullptr;
    };
    for (int p : proc_counts) {
      for (int t : thread_counts) {
        const Result *pe = find("persistent", p, t), *ps = find("per_step", p, t);
        if (pe && pe->ratio)
          fmt::print("{:>2} processes x {} threads: persistent / openmp_reference = {:.2f} (target <= 1.15 on 2 cores)\n",
                     p, t, *pe->ratio);
        if (pe && ps)
          fmt::print("{:>2} processes x {} threads: per_step / persistent = {:.2f}\n", p, t, ps->seconds / pe->seconds);
      }
      const Result *vb = find("barrier", p, 1), *ob = find("openmp_barrier", p, 1);
      if (vb && ob)
        fmt::print("{:>2} processes: Barrier crossing {}, OpenMP barrier ({} threads) {}: ratio {:.2f}\n", p,
                   human_time(vb->seconds), p, human_time(ob->seconds), vb->seconds / ob->seconds);
    }
  }

  bool ok = true;
  for (const auto& r : results)
    if (r.max_abs_diff != 0) {
      fmt::print(stderr, "bench_stencil: {} with {} process(es) x {} thread(s) differs from serial by {:g}\n", r.variant,
                 r.procs, r.threads, r.max_abs_diff);
      ok = false;
    }
  return ok ? 0 : 1;
}
