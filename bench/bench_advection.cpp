// bench_advection: the Julia manual's advection, q(i,j,t+1) = q(i,j,t) + u(i,j,t) on
// n x n x steps doubles (the third dimension is time), in each variant and process count,
// beside its reference measured in the same run (hand-written OpenMP with as many threads).
//
//   ./bench_advection [--json] [--n N] [--steps S] [--procs 1,2,4] [--reps R]
//                     [--variants a,b,...] [--svg FILE]
//
// Variants (seconds = median over R reps, after one untimed warm-up run; q's computed slices
// are zeroed before every run, outside the timed region):
//   serial                one loop nest on the master over the SharedArrays (the manual's
//                         advection_serial!); run once, with the first process count
//   distributed_per_step  one distributed_for over the columns per time step (advection_parallel!)
//   shared_chunks         one remotecall per process in procs(q), each over its own columns
//                         (myrange) for all time steps, then wait all (advection_shared!)
//   openmp_reference      the yardstick: arrays of its own, first-touched column by column by the
//                         thread that computes them; `omp for schedule(static) nowait` over j
//                         inside the t loop, i.e. the same t, j, i order as the other variants;
//                         P threads in one process (its line says procs=1, threads=P)
//   hybrid                like shared_chunks, each process splitting its columns over the T
//                         threads of its arena (run the bench with -t T; T = 1 makes it
//                         shared_chunks); measured where P x T fits in the usable CPUs, beside
//                         openmp_reference with P x T threads
// For each process count P the bench adds or removes workers to have exactly P, and makes q
// and u SharedArray<double, 3>s whose pids are those P workers.
//
// Extra fields: steps, reps, gb_per_s (24 bytes per cell update: read q and u, write q;
// n*n*(steps-1) updates), max_abs_diff (against the serial result; must be 0) and, where the
// OpenMP reference ran on as many cores, ratio_to_openmp. The serial result is not kept as a
// third array: every element obeys q(i,j,t) = q(i,j,0) + u(i,j,0) + ... + u(i,j,t-1), summed
// in that order, so the check recomputes it column by column from the inputs (exactly the
// serial loop's additions) and compares. The inputs are exact binary fractions.
// The exit status is 1 if any variant's result differs.
// Targets (issue 3): on 2 cores with 2 processes, shared_chunks <= 1.15 x openmp_reference
// and distributed_per_step <= 2 x shared_chunks; at n = 500 on the 16-core bench host,
// shared_chunks with 16 processes <= 1.05 x openmp_reference with 16 threads.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <fmt/format.h>

#include <advection.hpp>
#include <vscale/vscale.hpp>

#include "bench_util.hpp"

namespace {

using bench_util::Clock;
using Array = vscale::SharedArray<double, 3>;
namespace kn = vscale::kernels;

using bench_util::human_time;
using bench_util::median;
using bench_util::seconds_since;
using bench_util::split_commas;
using bench_util::time_reps;
long parse_positive(const std::string& opt, const std::string& v) { return bench_util::parse_positive("bench_advection", opt, v); }

[[noreturn]] void die(const std::string& what) {
  fmt::print(stderr, "bench_advection: {}\n", what);
  std::exit(2);
}

// --- inputs and the check -------------------------------------------------------------------

// Multiples of 1/16 of modest size, so every partial sum is exact too (the check would find
// any wrong or missing update all the same).
inline double u_at(std::size_t i, std::size_t j, std::size_t t) {
  return static_cast<double>((i * 7 + j * 13 + t * 5) % 16 + 1) * 0.0625;
}
inline double q0_at(std::size_t i, std::size_t j) { return static_cast<double>((i * 3 + j * 11) % 8) * 0.5; }

// Fill the columns `jr`: u at every time step, q's first time slice (zero after it).
template <class A>
void fill_u_columns(const A& u, vscale::IndexRange jr) {
  for (std::size_t t = 0; t < u.size(2); ++t)
    for (std::size_t j : jr) {
      double* c = &u(0, j, t);
      for (std::size_t i = 0; i < u.size(0); ++i) c[i] = u_at(i, j, t);
    }
}
template <class A>
void fill_q_columns(const A& q, vscale::IndexRange jr) {
  for (std::size_t t = 0; t < q.size(2); ++t)
    for (std::size_t j : jr) {
      double* c = &q(0, j, t);
      for (std::size_t i = 0; i < q.size(0); ++i) c[i] = t == 0 ? q0_at(i, j) : 0.0;
    }
}

// Zero q's computed time slices (t >= 1) in the columns `jr`.
template <class A>
void reset_columns(const A& q, vscale::IndexRange jr) {
  for (std::size_t t = 1; t < q.size(2); ++t)
    for (std::size_t j : jr) std::memset(&q(0, j, t), 0, q.size(0) * sizeof(double));
}

// The largest |q - serial| over the columns `jr`; infinity for a NaN.
template <class A>
double diff_columns(const A& q, vscale::IndexRange jr) {
  const std::size_t n1 = q.size(0), nt = q.size(2);
  std::vector<double> ref(n1);
  double worst = 0;
  for (std::size_t j : jr) {
    for (std::size_t i = 0; i < n1; ++i) ref[i] = q0_at(i, j);
    for (std::size_t t = 0; t < nt; ++t) {
      if (t > 0)
        for (std::size_t i = 0; i < n1; ++i) ref[i] = ref[i] + u_at(i, j, t - 1);
      const double* qc = &q(0, j, t);
      for (std::size_t i = 0; i < n1; ++i) {
        const double d = std::fabs(qc[i] - ref[i]);
        if (!(d <= worst)) worst = std::isnan(d) ? std::numeric_limits<double>::infinity() : d;
      }
    }
  }
  return worst;
}

// The same, as SharedArray init functions and calls on its workers: each over its own columns
// (myrange), the columns shared_chunks gives it.
void init_u_here(const Array& u) { fill_u_columns(u, kn::myrange(u).second); }
void init_q_here(const Array& q) { fill_q_columns(q, kn::myrange(q).second); }
void reset_here(const Array& q) { reset_columns(q, kn::myrange(q).second); }
double diff_here(const Array& q) { return diff_columns(q, kn::myrange(q).second); }

template <class F>
std::vector<vscale::Future<std::invoke_result_t<F&, const Array&>>> on_each(const Array& q, F f) {
  std::vector<vscale::Future<std::invoke_result_t<F&, const Array&>>> calls;
  for (int p : vscale::procs(q)) calls.push_back(vscale::remotecall(p, f, q));
  return calls;
}
void reset_all(const Array& q) {
  for (auto& c : on_each(q, reset_here)) c.wait();
}
double diff_all(const Array& q) {
  double worst = 0;
  for (auto& c : on_each(q, diff_here)) worst = std::max(worst, c.fetch());
  return worst;
}

// --- the variants -----------------------------------------------------------------------

void shared_chunk(const Array& q, const Array& u) { kn::advection_shared_chunk(q, u); }

void run_shared_chunks(const Array& q, const Array& u) {
  std::vector<vscale::Future<void>> calls;
  for (int p : vscale::procs(q)) calls.push_back(vscale::remotecall(p, shared_chunk, q, u));
  for (auto& c : calls) c.wait();
}

void run_distributed_per_step(const Array& q, const Array& u) {
  const long ncols = static_cast<long>(q.size(1));
  for (std::size_t t : kn::time_steps(q)) {
    vscale::distributed_for(vscale::IndexRange{0, ncols},
                            vscale::closure(
                                [](const Array& qq, const Array& uu, std::size_t tt, long j) {
                                  kn::advection_column(qq, uu, static_cast<std::size_t>(j), tt);
                                },
                                q, u, t))
        .wait();
  }
}

void run_serial(const Array& q, const Array& u) { kn::advection_serial(q, u); }

void hybrid_chunk(const Array& q, const Array& u) { kn::advection_hybrid_chunk(q, u); }

void run_hybrid(const Array& q, const Array& u) {
  std::vector<vscale::Future<void>> calls;
  for (int p : vscale::procs(q)) calls.push_back(vscale::remotecall(p, hybrid_chunk, q, u));
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
  std::optional<double> ratio;  // seconds / openmp_reference seconds on as many cores
  int cores() const { return procs * threads; }
};

const std::vector<std::string> kVariants = {"serial", "distributed_per_step", "shared_chunks", "hybrid",
                                            "openmp_reference"};

double gb_per_s(std::size_t n, std::size_t steps, double seconds) {
  return 24.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(steps - 1) / seconds / 1e9;
}


void print_json(const Result& r) {
  bench_util::JsonLine j;
  j.add(R"("bench":"advection","variant":"{}","procs":{},"threads":{},"n":{},"seconds":{:.9g},)"
        R"("steps":{},"reps":{},"gb_per_s":{:.6g},"max_abs_diff":{:.17g})",
        r.variant, r.procs, r.threads, r.n, r.seconds, r.steps, r.reps, r.gb_per_s, r.max_abs_diff);
  if (r.ratio) j.add(R"(,"ratio_to_openmp":{:.4g})", *r.ratio);
  j.print();
}


// --- the OpenMP reference -------------------------------------------------------------------

#ifdef _OPENMP
Result measure_openmp(std::size_t n, std::size_t steps, int threads, int reps) {
  const std::size_t count = n * n * steps;
  // new double[] leaves the memory untouched: the first touch is the parallel fill below.
  std::unique_ptr<double[]> qm, um;
  try {
    qm.reset(new double[count]);
    um.reset(new double[count]);
  } catch (const std::bad_alloc&) {
    die(fmt::format("openmp_reference: cannot allocate 2 x {} MiB", count * sizeof(double) >> 20));
  }
  const kn::Grid3<double> q{qm.get(), n, n, steps}, u{um.get(), n, n, steps};
  omp_set_num_threads(threads);
  const long ncols = static_cast<long>(n);
  // Each thread first-touches the columns it computes (same static schedule, same count).
#pragma omp parallel for schedule(static)
  for (long j = 0; j < ncols; ++j) {
    fill_q_columns(q, {static_cast<std::size_t>(j), static_cast<std::size_t>(j) + 1});
    fill_u_columns(u, {static_cast<std::size_t>(j), static_cast<std::size_t>(j) + 1});
  }

  auto reset = [&] {
#pragma omp parallel for schedule(static)
    for (long j = 0; j < ncols; ++j) reset_columns(q, {static_cast<std::size_t>(j), static_cast<std::size_t>(j) + 1});
  };
  auto run = [&] {
    const long nsteps = static_cast<long>(steps) - 1;
    // The manual's loop order (t, then j, then i). With a static schedule every thread gets the
    // same columns at every t, and column j at t + 1 only needs column j at t: no barrier.
#pragma omp parallel
    for (long t = 0; t < nsteps; ++t) {
#pragma omp for schedule(static) nowait
      for (long j = 0; j < ncols; ++j)
        kn::advection_chunk(q, u, vscale::IndexRange{0, n}, vscale::IndexRange{std::size_t(j), std::size_t(j) + 1},
                            vscale::IndexRange{std::size_t(t), std::size_t(t) + 1});
    }
  };
  Result r{"openmp_reference", 1, threads, n, steps, reps, 0, 0, 0, {}};
  r.seconds = time_reps(reps, reset, run);
  double worst = 0;
#pragma omp parallel for schedule(static) reduction(max : worst)
  for (long j = 0; j < ncols; ++j)
    worst = std::max(worst, diff_columns(q, {static_cast<std::size_t>(j), static_cast<std::size_t>(j) + 1}));
  r.max_abs_diff = worst;
  r.gb_per_s = gb_per_s(n, steps, r.seconds);
  return r;
}
#endif

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

// --- the chart ------------------------------------------------------------------------------

// A grouped bar chart: one group per core count (processes, or OpenMP threads), one bar per
// variant, the time (ms) on the y axis, each bar labelled with its value. The axis is linear,
// or logarithmic when the times span more than a factor of 30 (else the fast bars vanish).
// Plain SVG text, no dependencies; coordinates with one decimal.
void write_svg(const std::string& path, const std::vector<Result>& results, std::size_t n, std::size_t steps, int reps) {
  const std::vector<std::pair<std::string, const char*>> palette = {{"openmp_reference", "#4c72b0"},
                                                                     {"shared_chunks", "#55a868"},
                                                                     {"hybrid", "#dd8452"},
                                                                     {"distributed_per_step", "#c44e52"},
                                                                     {"serial", "#8172b2"}};
  std::vector<std::pair<std::string, const char*>> variants;  // palette order, those present
  for (const auto& v : palette)
    if (std::any_of(results.begin(), results.end(), [&](const Result& r) { return r.variant == v.first; }))
      variants.push_back(v);
  std::set<int> cores;
  double tmax = 0, tmin = std::numeric_limits<double>::infinity();
  for (const auto& r : results) {
    cores.insert(r.cores());
    tmax = std::max(tmax, r.seconds * 1e3);
    tmin = std::min(tmin, r.seconds * 1e3);
  }
  if (results.empty()) tmax = tmin = 1;
  tmin = std::max(tmin, 1e-6);
  tmax = std::max(tmax, tmin);

  const bool log_scale = tmax / tmin > 30;
  std::vector<double> ticks;
  double ylo = 0, yhi = 0;
  if (log_scale) {  // decades
    ylo = std::pow(10.0, std::floor(std::log10(tmin)));
    yhi = std::pow(10.0, std::ceil(std::log10(tmax)));
    for (double v = ylo; v <= yhi * 1.001; v *= 10) ticks.push_back(v);
  } else {  // 1, 2 or 5 times a power of ten, about five ticks
    const auto axis = bench_util::linear_axis(tmax);
    yhi = axis.top;
    for (int k = 0; k * axis.step <= yhi * 1.0001; ++k) ticks.push_back(k * axis.step);
  }

  const double W = 820, H = 460, left = 80, right = 200, top = 50, bottom = 60;
  const double pw = W - left - right, ph = H - top - bottom;
  const double group_w = pw / static_cast<double>(std::max<std::size_t>(1, cores.size()));
  const double bar_w = group_w * 0.8 / static_cast<double>(std::max<std::size_t>(1, variants.size()));
  auto y_of = [&](double ms) {
    if (log_scale) return top + ph * (std::log10(yhi) - std::log10(std::max(ms, ylo))) / (std::log10(yhi) - std::log10(ylo));
    return top + ph - ph * ms / yhi;
  };

  bench_util::Text svg;
  bench_util::svg_begin(svg, W, H);
  svg.line(R"(<text x="{:.1f}" y="24" text-anchor="middle" font-size="15">)"
           "advection {} x {} x {} doubles: median time of {} reps (lower is better)</text>",
           W / 2, n, n, steps, reps);
  for (double v : ticks) bench_util::svg_tick(svg, left, left + pw, y_of(v), v);
  bench_util::svg_axes(svg, left, top, pw, ph);
  svg.line(R"svg(<text transform="translate(22,{:.1f}) rotate(-90)" text-anchor="middle">time (ms{})</text>)svg",
           top + ph / 2, log_scale ? ", log scale" : "");
  svg.line(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle">)"
           "cores used: processes (openmp_reference: threads)</text>",
           left + pw / 2, H - 15);
  std::size_t g = 0;
  for (int c : cores) {
    const double gx = left + group_w * static_cast<double>(g) + group_w * 0.1;
    svg.line(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle">{}</text>)",
             left + group_w * (static_cast<double>(g) + 0.5), top + ph + 18, c);
    for (std::size_t v = 0; v < variants.size(); ++v)
      for (const auto& r : results)
        if (r.variant == variants[v].first && r.cores() == c) {
          const double ms = r.seconds * 1e3, x = gx + bar_w * static_cast<double>(v), y = y_of(ms);
          svg.line(R"(<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" fill="{}">)"
                   "<title>{}, {} process(es) x {} thread(s): {}, {:.3g} GB/s</title></rect>",
                   x, y, bar_w * 0.92, top + ph - y, variants[v].second, r.variant, r.procs, r.threads,
                   human_time(r.seconds), r.gb_per_s);
          svg.line(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle" font-size="10">{:.3g}</text>)", x + bar_w * 0.46,
                   y - 4, ms);
        }
    ++g;
  }
  double ly = top + 10;
  for (const auto& v : variants) {
    svg.line(R"(<rect x="{:.1f}" y="{:.1f}" width="14" height="14" fill="{}"/>)", left + pw + 20, ly, v.second);
    svg.line(R"(<text x="{:.1f}" y="{:.1f}">{}</text>)", left + pw + 40, ly + 11, v.first);
    ly += 22;
  }
  if (!bench_util::svg_end(svg, path)) die(fmt::format("cannot write the chart to '{}'", path));
}

// --- options ------------------------------------------------------------------------------



const char* kUsage =
    "usage: bench_advection [--json] [--n N] [--steps S] [--procs 1,2,4] [--reps R] [--variants a,b] [--svg FILE]\n"
    "  --n N        the grid is N x N x S doubles (default 500)\n"
    "  --steps S    time slices, the third dimension (default N)\n"
    "  --procs L    process counts (default 1, 2, 4, ... up to and with the usable CPUs)\n"
    "  --reps R     timed runs per variant; the median is reported (default 5)\n"
    "  --variants L serial, distributed_per_step, shared_chunks, hybrid, openmp_reference (default all;\n"
    "               hybrid only with -t T > 1)\n"
    "  -t T         threads per process (the session's flag): hybrid runs P processes x T threads\n"
    "  --svg FILE   also write the figures as an SVG bar chart\n";

// Takes `--procs LIST` / `--procs=LIST` out of argv before the Session sees it: there
// `--procs N` would mean "start N workers", here it is the list of process counts to measure.
// (Workers are started with argv = {program, worker flag}, so this never touches theirs.)
std::optional<std::string> take_procs_list(int& argc, char** argv) {
  std::optional<std::string> list;
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--procs") {
      if (i + 1 >= argc) die(std::string("--procs needs a value\n") + kUsage);
      list = argv[++i];
    } else if (a.rfind("--procs=", 0) == 0) {
      list = a.substr(8);
    } else {
      argv[out++] = argv[i];
    }
  }
  argc = out;
  argv[out] = nullptr;
  return list;
}

}  // namespace

int main(int argc, char** argv) {
  const std::optional<std::string> procs_list = take_procs_list(argc, argv);
  vscale::Session session(argc, argv);  // -p N still starts N workers; the bench then sets its own counts

  bool json = false;
  std::size_t n = 500, steps = 0;
  int reps = 5;
  std::vector<int> proc_counts;
  std::vector<std::string> variants = kVariants;
  bool procs_list_variants_default = true;  // hybrid is left out by default when -t is 1
  std::string svg;
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
      procs_list_variants_default = false;
      for (const auto& v : variants) {
        if (std::find(kVariants.begin(), kVariants.end(), v) == kVariants.end())
          die("unknown variant '" + v + "'\n" + kUsage);
      }
    } else if (a == "--svg") {
      svg = value();
    } else if (a == "-h" || a == "--help") {
      fmt::print("{}", kUsage);
      return 0;
    } else {
      die("unknown option '" + a + "'\n" + kUsage);
    }
  }
  if (procs_list) {
    for (const auto& p : split_commas(*procs_list)) proc_counts.push_back(static_cast<int>(parse_positive("--procs", p)));
    if (proc_counts.empty()) die("--procs needs at least one process count");
  }
  if (steps == 0) steps = n;
  if (steps < 2) die("--steps must be at least 2 (one time step)");
  if (proc_counts.empty()) {
    const int k = vscale::usable_cpus();
    for (int p = 1; p < k; p *= 2) proc_counts.push_back(p);
    proc_counts.push_back(k);
  }
  {  // dedupe, keep the order given
    std::vector<int> seen;
    for (int p : proc_counts)
      if (std::find(seen.begin(), seen.end(), p) == seen.end()) seen.push_back(p);
    proc_counts = seen;
  }
  const int threads = vscale::nthreads();
  if (threads == 1 && procs_list_variants_default) variants.erase(std::find(variants.begin(), variants.end(), "hybrid"));
  auto wants = [&](const std::string& v) { return std::find(variants.begin(), variants.end(), v) != variants.end(); };
#ifndef _OPENMP
  if (wants("openmp_reference")) {
    fmt::print(stderr, "bench_advection: built without OpenMP: no openmp_reference (and no ratios)\n");
    variants.erase(std::find(variants.begin(), variants.end(), "openmp_reference"));
  }
#endif

  std::vector<Result> results;
  std::map<int, double> openmp_seconds;  // by thread count
  auto emit = [&](Result r) {
    if (auto it = openmp_seconds.find(r.cores()); it != openmp_seconds.end() && r.variant != "openmp_reference")
      r.ratio = r.seconds / it->second;
    else if (r.variant == "openmp_reference")
      r.ratio = 1.0;
    if (json) print_json(r);
    results.push_back(std::move(r));
  };
  auto mib = [](std::size_t bytes) {
    return bytes >= (1u << 20) ? fmt::format("{} MiB", bytes >> 20) : fmt::format("{} KiB", (bytes + 1023) >> 10);
  };
  const std::size_t array_bytes = n * n * steps * sizeof(double);
  if (!json)
    fmt::print("bench_advection: q(i,j,t+1) = q(i,j,t) + u(i,j,t) on {} x {} x {} doubles (2 arrays of {}), "
               "median of {} reps, {} usable CPUs\n",
               n, n, steps, mib(array_bytes), reps, vscale::usable_cpus());

  bool serial_done = false;
  for (int p : proc_counts) {
#ifdef _OPENMP
    // Its own arrays, freed before the SharedArrays exist: never more than two big arrays.
    if (wants("openmp_reference")) {
      for (int cores : {p, p * threads}) {
        if (openmp_seconds.count(cores) || (cores != p && !(wants("hybrid") && cores <= vscale::usable_cpus()))) continue;
        Result r = measure_openmp(n, steps, cores, reps);
        openmp_seconds[cores] = r.seconds;
        emit(std::move(r));
      }
    }
#endif
    const bool hybrid_fits = wants("hybrid") && p * threads <= std::max(vscale::usable_cpus(), threads);
    const bool need_arrays = wants("distributed_per_step") || wants("shared_chunks") || hybrid_fits ||
                             (wants("serial") && !serial_done);
    if (!need_arrays) continue;
    const std::vector<int> w = set_workers(p);
    Array q, u;
    try {
      q = Array({n, n, steps}, vscale::init(init_q_here), vscale::pids(w));
      u = Array({n, n, steps}, vscale::init(init_u_here), vscale::pids(w));
    } catch (const std::exception& e) {
      die(std::string("cannot make the SharedArrays: ") + e.what());
    }
    auto reset = [&] { reset_all(q); };
    auto measure = [&](const std::string& variant, int procs, auto run, int nthreads = 1) {
      Result r{variant, procs, nthreads, n, steps, reps, 0, 0, 0, {}};
      r.seconds = time_reps(reps, reset, [&] { run(q, u); });
      r.max_abs_diff = diff_all(q);
      r.gb_per_s = gb_per_s(n, steps, r.seconds);
      emit(std::move(r));
    };
    if (wants("serial") && !serial_done) {
      measure("serial", 1, run_serial);
      serial_done = true;
    }
    if (wants("distributed_per_step")) measure("distributed_per_step", p, run_distributed_per_step);
    if (wants("shared_chunks")) measure("shared_chunks", p, run_shared_chunks);
    if (hybrid_fits) measure("hybrid", p, run_hybrid, threads);
  }

  if (!json) {
    fmt::print("\n{:<22} {:>9} {:>8} {:>12} {:>9} {:>14} {:>10}\n", "variant", "processes", "threads", "time", "GB/s",
               "vs OpenMP", "max diff");
    for (const Result& r : results)
      fmt::print("{:<22} {:>9} {:>8} {:>12} {:>9.2f} {:>14} {:>10.3g}\n", r.variant, r.procs, r.threads,
                 human_time(r.seconds), r.gb_per_s, r.ratio ? fmt::format("{:.2f}x", *r.ratio) : "-", r.max_abs_diff);
    fmt::print("(vs OpenMP: time / openmp_reference time with as many threads as the variant uses cores)\n");
    for (int p : proc_counts) {
      const Result *sc = nullptr, *ps = nullptr, *hy = nullptr;
      for (const auto& r : results) {
        if (r.variant == "shared_chunks" && r.procs == p) sc = &r;
        if (r.variant == "distributed_per_step" && r.procs == p) ps = &r;
        if (r.variant == "hybrid" && r.procs == p) hy = &r;
      }
      auto threads = [](int k) { return fmt::format("{} thread{}", k, k == 1 ? "" : "s"); };
      if (hy && hy->ratio)
        fmt::print("{:>2} processes x {} threads: hybrid took {:.2f}x the time of OpenMP with {}\n", p, hy->threads,
                   *hy->ratio, threads(hy->cores()));
      if (sc && sc->ratio)
        fmt::print("{:>2} processes: shared_chunks took {:.2f}x the time of OpenMP with {}\n", p, *sc->ratio,
                   threads(sc->cores()));
      if (sc && ps)
        fmt::print("{:>2} processes: distributed_per_step took {:.2f}x the time of shared_chunks\n", p,
                   ps->seconds / sc->seconds);
    }
  }
  if (!svg.empty()) {
    write_svg(svg, results, n, steps, reps);
    if (!json) fmt::print("chart: {}\n", svg);
  }

  bool ok = true;
  for (const auto& r : results)
    if (r.max_abs_diff != 0) {
      fmt::print(stderr, "bench_advection: {} with {} process(es) differs from serial by {:g}\n", r.variant, r.procs,
                 r.max_abs_diff);
      ok = false;
    }
  return ok ? 0 : 1;
}
