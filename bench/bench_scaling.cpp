// bench_scaling: how three workloads scale over 1, 2, 4, ... cores used as processes only, as
// threads only, and as both (hybrid); a table per workload, one JSON line per measurement, and
// optionally an SVG chart of the speed-ups.
//
//   ./bench_scaling [--json] [--cores 1,2,4] [--quick] [--svg FILE] [--reps R]
//                   [--workloads advection,stencil,monte_carlo_pi] [--advection-n N]
//                   [--stencil-n N] [--stencil-steps S] [--mc-samples N]
//
// Why child processes: a vscale process's thread count is fixed for the whole run (the -t of
// its Session), so every (processes, threads) point is a run of its own. Each measurement is
// one child, run to completion before the next starts (nothing else competes for the cores):
//   advection       <dir>/bench_advection --json -t T --procs P --n N --reps R --variants V
//   stencil         <dir>/bench_stencil --json -t T --procs P --threads T --n N --steps S --reps R
//                   --variants V
//   monte_carlo_pi  this program again, in a hidden mode:
//                   bench_scaling --mc-child --mc-samples N --reps R -p P -t T
// where <dir> is this program's directory (all benches are built side by side in build/bench/).
// The child mode makes a Session and times distributed_for(threaded, {0, N}, sample, plus)
// (median of R runs after a warm-up of N/10 samples) and checks every run's estimate is within
// 6 standard errors of pi (it exits 1 otherwise).
//
// Modes, for each core count k (default 1, 2, 4, ... up to and with vscale::usable_cpus(); 1 is
// always measured, it is the baseline):
//   processes  k workers x 1 thread (advection: shared_chunks; stencil: persistent). That run
//              also measures openmp_reference with k threads, the yardstick, for advection and
//              stencil.
//   threads    one process with k threads. Monte Carlo: the master alone (-p 0 -t k; its
//              distributed_for runs on the master's own arena, since workers() is {1}).
//              Advection and stencil: 1 worker x k threads (advection's hybrid variant,
//              stencil's persistent with --threads k), because their --procs lists take
//              positive worker counts only; the master only waits, so this is one computing
//              process all the same.
//   hybrid     k/2 processes x 2 threads, for even k >= 4 only: at k = 2 it would be 1 x 2, the
//              very run the threads mode makes. Skipped where k exceeds the usable CPUs
//              (bench_advection refuses to oversubscribe hybrid runs).
//   processes_3nodes  Monte Carlo only, once: k processes as an MPI job of 3 ranks on this
//              machine (`env [OMPI_ALLOW_RUN_AS_ROOT...] mpirun --bind-to none --oversubscribe -n
//              3 bench_scaling --mc-child ... -p k/3 -t 1`), k the largest multiple of 3 up to the
//              largest count (at least 3), beside processes at k on one node (measured too if k is
//              not in the list); + ratio_to_one_node (issue 12's target: >= 0.9). Skipped, with a
//              note, without mpirun.
// Speed-up = the time of the same workload in processes mode at k = 1 (1 worker x 1 thread) /
// the time at k; openmp_reference's speed-up uses the same baseline, so every line of a panel is
// comparable (an OpenMP line above the others means OpenMP is faster, not that it scales
// better). "vs OpenMP" = time / openmp_reference time with k threads.
//
// --quick uses small sizes and 3 reps (seconds on a 2-core machine: a check that it works, not a
// measurement). A child that fails (or a missing bench program) is reported with its command
// and exit status and the driver goes on; the exit status is then 1. Children's stderr passes
// through; their non-JSON stdout lines are copied to stderr.
//
// JSON (one line per measurement): {"bench":"scaling","workload":W,"variant":MODE,"procs":P,
// "threads":T,"n":N,"seconds":S,"cores":k,"speedup":X,...} with MODE one of processes, threads,
// hybrid, openmp_reference; plus steps (advection, stencil), reps, ratio_to_openmp where the
// reference ran, and for Monte Carlo pi (the estimate over all timed runs) and max_stderrs.
// procs counts the processes that compute (1 for the master alone), speedup is left out when
// the baseline run failed.
// Targets (issue text): Monte Carlo pi >= 15 x speed-up at 16 processes; advection hybrid with
// 16 cores <= 1.05 x OpenMP with 16 threads. Printed beside the measured values.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <numbers>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <vscale/vscale.hpp>

#include "bench_util.hpp"

extern char** environ;

namespace {

using bench_util::Clock;
using bench_util::human_time;
using bench_util::median;
using bench_util::seconds_since;
using bench_util::split_commas;
using bench_util::time_reps;
long parse_positive(const std::string& opt, const std::string& v) { return bench_util::parse_positive("bench_scaling", opt, v); }

[[noreturn]] void die(const std::string& what) {
  fmt::print(stderr, "bench_scaling: {}\n", what);
  std::exit(2);
}

// --- the Monte Carlo child ------------------------------------------------------------------

// One generator per thread of each process, seeded from random_device and myid(): workers are
// copies of one program, so a fixed seed would give every process the same samples.
std::mt19937_64& generator() {
  thread_local std::mt19937_64 gen = [] {
    std::random_device rd;
    std::seed_seq seed{rd(), rd(), rd(), rd(), static_cast<unsigned>(vscale::myid())};
    return std::mt19937_64(seed);
  }();
  return gen;
}

// 1 when a random point of the unit square falls inside the quarter circle.
long sample(long /*i*/) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  auto& g = generator();
  const double x = u(g), y = u(g);
  return x * x + y * y <= 1.0 ? 1 : 0;
}

int mc_child(long n, int reps) {
  // A plain function: it ships as a code address.
  auto run = [](long m) { return vscale::distributed_for(vscale::threaded, vscale::IndexRange{0, m}, &sample, std::plus<>{}); };
  run(std::max(1L, n / 10));  // warm-up: starts the arenas' threads, seeds their generators
  const double p = std::numbers::pi / 4;
  const double se = 4.0 * std::sqrt(p * (1 - p) / static_cast<double>(n));  // of one run's estimate
  std::vector<double> times;
  double worst = 0;
  long double inside_all = 0;
  bool ok = true;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    const long inside = run(n);
    times.push_back(seconds_since(t0));
    const double est = 4.0 * static_cast<double>(inside) / static_cast<double>(n);
    const double z = std::fabs(est - std::numbers::pi) / se;
    worst = std::max(worst, z);
    inside_all += inside;
    if (!(z < 6)) {
      fmt::print(stderr, "bench_scaling --mc-child: WRONG: run {} estimates pi as {:.9f}, {:.1f} standard errors away\n",
                 r + 1, est, z);
      ok = false;
    }
  }
  const double pi_all = static_cast<double>(4.0L * inside_all / (static_cast<long double>(n) * reps));
  bench_util::JsonLine()
      .add(R"("bench":"monte_carlo_pi","variant":"distributed_for_threaded","procs":{},"threads":{},)"
           R"("n":{},"seconds":{:.9g},"reps":{},"pi":{:.9f},"max_stderrs":{:.3g})",
           std::max(1, vscale::nworkers()), vscale::nthreads(), n, median(times), reps, pi_all, worst)
      .print();
  return ok ? 0 : 1;
}

// --- running children -----------------------------------------------------------------------

std::string quote_for_shell(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=+,./:") ==
                        std::string::npos)
    return s;
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string command_text(const std::vector<std::string>& argv) {
  std::vector<std::string> words;
  for (const auto& a : argv) words.push_back(quote_for_shell(a));
  return fmt::format("{}", fmt::join(words, " "));
}

std::string status_text(int status) {
  if (WIFEXITED(status)) return fmt::format("exit status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* name = sigabbrev_np(WTERMSIG(status));
    return name ? fmt::format("killed by signal SIG{}", name) : fmt::format("killed by signal {}", WTERMSIG(status));
  }
  return fmt::format("status {}", status);
}

std::string cores_text(int k) { return fmt::format("{} {}", k, k == 1 ? "core" : "cores"); }

struct ChildRun {
  bool ok = false;                  // started, and exited with status 0
  std::string why;                  // when not ok
  std::vector<std::string> json;    // its stdout lines that are JSON objects
};

// posix_spawn, not fork: this process has a Session, hence threads. The child's stdout comes
// through a pipe; stderr is inherited, so its messages appear as they happen.
ChildRun run_child(const std::vector<std::string>& args) {
  ChildRun res;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    res.why = std::string("pipe2: ") + std::strerror(errno);
    return res;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);  // dup2 clears O_CLOEXEC
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::fflush(nullptr);  // nothing of ours buffered twice
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, args[0].c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    res.why = std::string("cannot start it: ") + std::strerror(rc);
    return res;
  }
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t k = read(fds[0], buf, sizeof buf);
    if (k > 0) {
      out.append(buf, static_cast<std::size_t>(k));
    } else if (k == 0 || errno != EINTR) {
      break;
    }
  }
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) {
      res.why = std::string("waitpid: ") + std::strerror(errno);
      return res;
    }
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line.front() == '{')
      res.json.push_back(line);
    else if (!line.empty())
      fmt::print(stderr, "{}\n", line);  // e.g. output forwarded from its workers
  }
  res.ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (!res.ok) res.why = status_text(status);
  return res;
}

using bench_util::json_field;
using bench_util::json_number;

// --- measurements ---------------------------------------------------------------------------

const std::vector<std::string> kWorkloads = {"advection", "stencil", "monte_carlo_pi"};
const std::vector<std::string> kModes = {"processes", "threads", "hybrid", "openmp_reference"};

struct Point {
  std::string workload, mode;
  int cores = 0, procs = 0, threads = 0;
  double seconds = 0;
  std::optional<double> speedup, ratio;  // ratio: seconds / openmp_reference seconds at k
  double pi = 0, max_stderrs = 0;        // Monte Carlo only
};

struct Config {
  bool json = false, quick = false;
  int reps = 5;
  std::vector<int> cores;
  std::vector<std::string> workloads = kWorkloads;
  std::string svg;
  long advection_n = 500;
  long stencil_n = 256, stencil_steps = 100;
  long mc_samples = 100'000'000;
};

std::string size_text(const Config& c, const std::string& w) {
  if (w == "advection") return fmt::format("{0} x {0} x {0} doubles (q and u)", c.advection_n);
  if (w == "stencil") return fmt::format("{}^3 doubles x 2 arrays, {} steps", c.stencil_n, c.stencil_steps);
  return fmt::format("{} samples, distributed_for(threaded, +)", c.mc_samples);
}

long workload_n(const Config& c, const std::string& w) {
  return w == "advection" ? c.advection_n : w == "stencil" ? c.stencil_n : c.mc_samples;
}

class Driver {
 public:
  Driver(Config c, std::string dir, std::string self) : c_(std::move(c)), dir_(std::move(dir)), self_(std::move(self)) {}

  void run_workload(const std::string& w) {
    std::string program = w == "advection" ? dir_ + "/bench_advection" : w == "stencil" ? dir_ + "/bench_stencil" : self_;
    if (access(program.c_str(), X_OK) != 0) {
      fail(fmt::format("{0}: {1} is missing ({2}); build that target. Skipped {0}.", w, program, std::strerror(errno)));
      return;
    }
    for (int k : c_.cores) {
      measure(w, program, "processes", k, k, 1);
      measure(w, program, "threads", k, w == "monte_carlo_pi" ? 0 : 1, k);
      if (k >= 4 && k % 2 == 0) {
        if (k <= vscale::usable_cpus())
          measure(w, program, "hybrid", k, k / 2, 2);
        else
          notes_.push_back(
              fmt::format("{}: no hybrid run at {} cores (more than the {} usable CPUs)", w, k, vscale::usable_cpus()));
      }
    }
    if (w == "monte_carlo_pi") three_nodes(program);
  }

  // Monte Carlo pi over three "nodes" of this machine (issue 12): k processes as an MPI job of 3
  // ranks, k/3 workers each, beside k processes on one node, k the largest multiple of 3 up to
  // the largest count asked for (at least 3).
  void three_nodes(const std::string& program) {
    std::string why;
    std::vector<std::string> prefix = bench_util::mpirun_prefix(why);
    if (prefix.empty()) {
      notes_.push_back("monte_carlo_pi: no run over 3 nodes: " + why);
      return;
    }
    const int k = std::max(3, c_.cores.back() / 3 * 3);
    if (!find("monte_carlo_pi", "processes", k)) measure("monte_carlo_pi", program, "processes", k, k, 1);
    prefix.insert(prefix.end(), {"-n", "3"});
    measure("monte_carlo_pi", program, "processes_3nodes", k, k, 1, prefix, 3);
  }

  const std::vector<Point>& points() const { return points_; }
  const std::vector<std::string>& failures() const { return failures_; }
  const std::vector<std::string>& notes() const { return notes_; }

  const Point* find(const std::string& w, const std::string& mode, int k) const {
    for (const auto& p : points_)
      if (p.workload == w && p.mode == mode && p.cores == k) return &p;
    return nullptr;
  }

 private:
  // One child: `workers` processes (0: the master alone, Monte Carlo only) x `threads`.
  // `mpi_prefix`: the command that starts the child as `ranks` MPI ranks (Monte Carlo only),
  // each with its share of the workers.
  void measure(const std::string& w, const std::string& program, const std::string& mode, int k, int workers,
               int threads, const std::vector<std::string>& mpi_prefix = {}, int ranks = 1) {
    const std::string R = std::to_string(c_.reps), T = std::to_string(threads), P = std::to_string(workers / ranks);
    std::vector<std::string> args = mpi_prefix;
    args.push_back(program);
    std::string variant;  // of the bench's lines that make this mode's point
    const bool with_openmp = mode == "processes" && w != "monte_carlo_pi";
    if (w == "advection") {
      variant = mode == "processes" ? "shared_chunks" : "hybrid";
      args.insert(args.end(), {"--json", "-t", T, "--procs", P, "--n", std::to_string(c_.advection_n), "--reps", R,
                               "--variants", variant + (with_openmp ? ",openmp_reference" : "")});
    } else if (w == "stencil") {
      variant = "persistent";
      args.insert(args.end(), {"--json", "-t", T, "--procs", P, "--threads", T, "--n", std::to_string(c_.stencil_n),
                               "--steps", std::to_string(c_.stencil_steps), "--reps", R, "--variants",
                               variant + (with_openmp ? ",openmp_reference" : "")});
    } else {
      variant = "distributed_for_threaded";
      args.insert(args.end(), {"--mc-child", "--mc-samples", std::to_string(c_.mc_samples), "--reps", R, "-p", P, "-t", T});
    }
    const std::string cmd = command_text(args);
    const ChildRun run = run_child(args);
    if (!run.ok) {
      fail(fmt::format("{}, {} at {}: `{}` failed: {}", w, mode, cores_text(k), cmd, run.why));
      return;
    }
    auto take = [&](const std::string& want, const std::string& as) -> std::optional<Point> {
      for (const auto& line : run.json) {
        if (json_field(line, "variant") != want) continue;
        const auto s = json_number(line, "seconds");
        if (!s || !(*s > 0)) break;
        Point p{w, as, k, std::max(1, workers), threads, *s, {}, {}, 0, 0};
        if (ranks > 1 && json_number(line, "procs").value_or(0) != workers) {
          fail(fmt::format("{}, {} at {}: `{}` ran {} workers, not {} over {} nodes (is the program built without MPI?)",
                           w, mode, cores_text(k), cmd, json_number(line, "procs").value_or(0), workers, ranks));
          return std::nullopt;
        }
        if (as == "openmp_reference") {  // one process with k threads
          p.procs = 1;
          p.threads = k;
        }
        p.pi = json_number(line, "pi").value_or(0);
        p.max_stderrs = json_number(line, "max_stderrs").value_or(0);
        return p;
      }
      fail(fmt::format("{}, {} at {}: `{}` printed no '{}' line with seconds > 0", w, mode, cores_text(k), cmd, want));
      return std::nullopt;
    };
    // The mode's point first: at k = 1 it is the baseline that the reference's speed-up needs.
    std::optional<Point> point = take(variant, mode), omp;
    if (with_openmp) omp = take("openmp_reference", "openmp_reference");
    if (point) add(std::move(*point), omp ? std::optional<double>(omp->seconds) : std::nullopt);
    if (omp) add(std::move(*omp), std::nullopt);
  }

  // `omp_seconds`: the reference measured by the same child, not yet added.
  void add(Point p, std::optional<double> omp_seconds) {
    if (const Point* base = find(p.workload, "processes", 1); base)
      p.speedup = base->seconds / p.seconds;
    else if (p.mode == "processes" && p.cores == 1)
      p.speedup = 1.0;
    if (p.mode == "openmp_reference")
      p.ratio = 1.0;
    else if (omp_seconds)
      p.ratio = p.seconds / *omp_seconds;
    else if (const Point* omp = find(p.workload, "openmp_reference", p.cores))
      p.ratio = p.seconds / omp->seconds;
    if (c_.json) print_json(p);
    if (!c_.json)
      fmt::print(stderr, "bench_scaling: {}, {}, {} ({} x {}): {}\n", p.workload, cores_text(p.cores), p.mode, p.procs,
                 p.threads, human_time(p.seconds));
    points_.push_back(std::move(p));
  }

  void print_json(const Point& p) const {
    bench_util::JsonLine j;
    j.add(R"("bench":"scaling","workload":"{}","variant":"{}","procs":{},"threads":{},"n":{},"seconds":{:.9g},"cores":{})",
          p.workload, p.mode, p.procs, p.threads, workload_n(c_, p.workload), p.seconds, p.cores);
    if (p.speedup) j.add(R"(,"speedup":{:.4g})", *p.speedup);
    if (p.workload == "advection") j.add(R"(,"steps":{})", c_.advection_n);
    if (p.workload == "stencil") j.add(R"(,"steps":{})", c_.stencil_steps);
    j.add(R"(,"reps":{})", c_.reps);
    if (p.ratio) j.add(R"(,"ratio_to_openmp":{:.4g})", *p.ratio);
    if (p.workload == "monte_carlo_pi") j.add(R"(,"pi":{:.9f},"max_stderrs":{:.3g})", p.pi, p.max_stderrs);
    if (p.mode == "processes_3nodes")
      if (const Point* one = find(p.workload, "processes", p.cores))
        j.add(R"(,"nodes":3,"ratio_to_one_node":{:.4g})", one->seconds / p.seconds);
    j.print();
  }

  // Records a failure (reported again at the end) and says it now.
  void fail(std::string what) {
    fmt::print(stderr, "bench_scaling: {}\n", what);
    failures_.push_back(std::move(what));
  }

  Config c_;
  std::string dir_, self_;
  std::vector<Point> points_;
  std::vector<std::string> failures_, notes_;
};

// --- the table and the targets --------------------------------------------------------------

void print_table(const Config& c, const Driver& d, const std::string& w) {
  if (std::none_of(d.points().begin(), d.points().end(), [&](const Point& p) { return p.workload == w; })) {
    fmt::print("\n{}: no measurements (see the failures below)\n", w);
    return;
  }
  fmt::print("\n{}: {}, median of {} reps\n", w, size_text(c, w), c.reps);
  const bool omp = w != "monte_carlo_pi";  // it has no OpenMP reference: the ideal is its yardstick
  constexpr auto row = "{:>6}  {:<17} {:>6} {:>8} {:>12} {:>9} {:>10}\n";
  fmt::print(row, "cores", "mode", "procs", "threads", "time", "speed-up", omp ? "vs OpenMP" : "");
  for (int k : c.cores)
    for (const auto& mode : kModes)
      if (const Point* p = d.find(w, mode, k)) {
        const std::string su = p->speedup ? fmt::format("{:.2f}", *p->speedup) : "-";
        const std::string ratio = !omp ? "" : p->ratio ? fmt::format("{:.2f}x", *p->ratio) : "-";
        fmt::print(row, k, mode, p->procs, p->threads, human_time(p->seconds), su, ratio);
      }
  // Points at counts outside the list (the 3-node comparison), in the order measured.
  for (const auto& p : d.points())
    if (p.workload == w && (std::find(c.cores.begin(), c.cores.end(), p.cores) == c.cores.end() ||
                            std::find(kModes.begin(), kModes.end(), p.mode) == kModes.end()))
      fmt::print(row, p.cores, p.mode, p.procs, p.threads, human_time(p.seconds),
                 p.speedup ? fmt::format("{:.2f}", *p.speedup) : "-", "");
}

// The issue's two targets, beside what this run measured (at 16 cores, else at the largest
// count measured, marked as such).
void print_targets(std::FILE* out, const Config& c, const Driver& d) {
  auto wanted = [&](const std::string& w) { return std::find(c.workloads.begin(), c.workloads.end(), w) != c.workloads.end(); };
  const int kmax = c.cores.back();
  if (!wanted("monte_carlo_pi") && !wanted("advection")) return;
  fmt::print(out, "\ntargets:\n");
  if (wanted("monte_carlo_pi")) {
    if (const Point* p = d.find("monte_carlo_pi", "processes", 16); p && p->speedup)
      fmt::print(out, "  Monte Carlo pi, 16 processes vs 1: {:.2f} x speed-up (target >= 15)\n", *p->speedup);
    else if (const Point* q = d.find("monte_carlo_pi", "processes", kmax); q && q->speedup)
      fmt::print(out, "  Monte Carlo pi: target >= 15 x speed-up at 16 processes; not measured here (largest: {0} "
                      "processes, {1:.2f} x, ideal {0})\n", kmax, *q->speedup);
    else
      fmt::print(out, "  Monte Carlo pi: target >= 15 x speed-up at 16 processes; not measured\n");
    for (const auto& p : d.points())
      if (p.workload == "monte_carlo_pi" && p.mode == "processes_3nodes")
        if (const Point* one = d.find("monte_carlo_pi", "processes", p.cores); one && one->speedup && p.speedup)
          fmt::print(out, "  Monte Carlo pi, {} processes over 3 nodes: {:.2f} x speed-up, {:.2f} x on one node "
                          "(ratio {:.3f}; target >= 0.9)\n", p.cores, *p.speedup, *one->speedup, one->seconds / p.seconds);
  }
  if (wanted("advection")) {
    if (const Point* p = d.find("advection", "hybrid", 16); p && p->ratio)
      fmt::print(out, "  advection hybrid, 8 processes x 2 threads / openmp_reference, 16 threads: {:.3f} (target <= 1.05)\n",
                 *p->ratio);
    else {
      const Point* best = nullptr;  // the largest k with a hybrid (else threads) ratio
      for (int k : c.cores)
        for (const char* m : {"threads", "hybrid"})
          if (const Point* q = d.find("advection", m, k); q && q->ratio) best = q;
      if (best)
        fmt::print(out, "  advection hybrid / openmp_reference at 16 cores: target <= 1.05; not measured here "
                        "(largest: {}, {} x {} at {} cores, {:.3f})\n", best->mode, best->procs, best->threads,
                   best->cores, *best->ratio);
      else
        fmt::print(out, "  advection hybrid / openmp_reference at 16 cores: target <= 1.05; not measured\n");
    }
  }
}

// --- the chart ------------------------------------------------------------------------------

// One panel per workload: speed-up (linear) against cores (log2: the counts double), a line per
// mode, the ideal y = x dashed; a legend under the panels. Plain SVG text, no dependencies;
// coordinates with one decimal.
void write_svg(const std::string& path, const Config& c, const Driver& d) {
  const std::vector<std::pair<std::string, std::string>> modes = {
      {"processes", "#1f77b4"}, {"threads", "#ff7f0e"}, {"hybrid", "#2ca02c"}, {"openmp_reference", "#7f7f7f"}};
  std::vector<std::string> panels;
  for (const auto& w : c.workloads)
    for (const auto& p : d.points())
      if (p.workload == w && p.speedup) {
        panels.push_back(w);
        break;
      }
  const double pw = 360, ph = 280, left = 60, gap = 70, top = 70, bottom = 60, legend_h = 40;
  const double W = left + static_cast<double>(std::max<std::size_t>(1, panels.size())) * (pw + gap), H = top + ph + bottom + legend_h;
  bench_util::Text svg;
  bench_util::svg_begin(svg, W, H);
  svg.line(R"(<text x="{:.1f}" y="24" text-anchor="middle" font-size="15">)"
           "vscale scaling: speed-up over 1 process x 1 thread (median of {} reps; higher is better)</text>",
           W / 2, c.reps);
  if (panels.empty())
    svg.line(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle">no measurements</text>)", W / 2, top + ph / 2);

  const int kmin = c.cores.front(), kmax = c.cores.back();
  const double xlo = std::log2(static_cast<double>(kmin)),
               xhi = std::max(xlo + 1, std::log2(static_cast<double>(kmax)));
  for (std::size_t i = 0; i < panels.size(); ++i) {
    const std::string& w = panels[i];
    const double x0 = left + static_cast<double>(i) * (pw + gap), y0 = top;
    double ymax = kmax;
    for (const auto& p : d.points())
      if (p.workload == w && p.speedup) ymax = std::max(ymax, *p.speedup);
    const auto axis = bench_util::linear_axis(ymax);  // ymax >= kmax >= 1
    const double step = axis.step, yhi = axis.top;
    auto X = [&](double k) { return x0 + pw * (std::log2(k) - xlo) / (xhi - xlo); };
    auto Y = [&](double v) { return y0 + ph - ph * std::min(v, yhi) / yhi; };

    svg.line(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle" font-size="14">{}</text>)", x0 + pw / 2, y0 - 24, w);
    svg.line(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle" font-size="10">{}</text>)", x0 + pw / 2, y0 - 8,
             size_text(c, w));
    for (int k = 0; k * step <= yhi * 1.0001; ++k) bench_util::svg_tick(svg, x0, x0 + pw, Y(k * step), k * step);
    for (int k : c.cores) {
      const double x = X(k);
      svg.line(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="#eee"/>)", x, y0, x, y0 + ph);
      svg.line(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle">{}</text>)", x, y0 + ph + 16, k);
    }
    bench_util::svg_axes(svg, x0, y0, pw, ph);
    svg.line(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle">cores</text>)", x0 + pw / 2, y0 + ph + 36);
    svg.line(R"svg(<text transform="translate({:.1f},{:.1f}) rotate(-90)" text-anchor="middle">speed-up</text>)svg",
             x0 - 40, y0 + ph / 2);
    // The ideal: speed-up = cores, clipped at the top of the panel.
    std::vector<std::pair<double, double>> ideal;
    for (int k : c.cores) ideal.emplace_back(X(k), Y(k));
    bench_util::svg_ideal(svg, ideal);
    for (const auto& [mode, colour] : modes) {
      std::vector<bench_util::SvgPoint> pts;
      for (int k : c.cores)
        if (const Point* p = d.find(w, mode, k); p && p->speedup)
          pts.push_back({X(p->cores), Y(*p->speedup),
                         fmt::format("{}, {} process(es) x {} thread(s): {}, speed-up {:.3g}", mode, p->procs,
                                     p->threads, human_time(p->seconds), *p->speedup)});
      if (!pts.empty()) bench_util::svg_series(svg, colour, pts);
    }
  }
  // The legend, in one row under the panels.
  double lx = left;
  const double ly = top + ph + bottom + 10;
  for (const auto& [mode, colour] : modes) {
    const std::string label = mode == "processes" ? "processes (k x 1)"
                              : mode == "threads" ? "threads (1 x k)"
                              : mode == "hybrid"  ? "hybrid (k/2 x 2)"
                                                  : "OpenMP, k threads";
    bench_util::svg_legend(svg, lx, ly, colour, label);
    lx += 170;
  }
  bench_util::svg_legend(svg, lx, ly, "black", "ideal", true);
  if (!bench_util::svg_end(svg, path)) die(fmt::format("cannot write the chart to '{}'", path));
}

// --- options ------------------------------------------------------------------------------



const char* kUsage =
    "usage: bench_scaling [--json] [--cores 1,2,4] [--quick] [--svg FILE] [--reps R] [--workloads a,b]\n"
    "                     [--advection-n N] [--stencil-n N] [--stencil-steps S] [--mc-samples N]\n"
    "  --cores L        core counts (default 1, 2, 4, ... up to and with the usable CPUs; 1 is always added)\n"
    "  --quick          small sizes and 3 reps: a check that everything runs, in seconds\n"
    "  --svg FILE       also write the speed-ups as an SVG chart\n"
    "  --reps R         timed runs per measurement; the median is reported (default 5)\n"
    "  --workloads L    advection, stencil, monte_carlo_pi (default all)\n"
    "  --advection-n N  advection on N x N x N doubles (default 500; --quick 160)\n"
    "  --stencil-n N    stencil on N^3 doubles (default 256; --quick 96)\n"
    "  --stencil-steps S  stencil time steps (default 100; --quick 20)\n"
    "  --mc-samples N   Monte Carlo samples per run (default 1e8; --quick 1e7)\n"
    "The driver picks each run's processes and threads itself: no -p or -t.\n";

}  // namespace

int main(int argc, char** argv) {
  // First thing, as in every vscale program: in a worker (of a --mc-child run) this never
  // returns. The driver itself runs with 0 workers and 1 thread: it only waits on children.
  vscale::Session session(argc, argv);

  bool mc = false;
  for (int i = 1; i < argc; ++i) mc = mc || std::string(argv[i]) == "--mc-child";
  if (mc) {
    long n = 100'000'000;
    int reps = 5;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--mc-child") continue;
      if ((a == "--mc-samples" || a == "--reps") && i + 1 < argc) {
        const long v = parse_positive(a, argv[++i]);
        if (a == "--reps") reps = static_cast<int>(v);
        else n = v;
      } else {
        die("--mc-child: unknown option '" + a + "'");
      }
    }
    return mc_child(n, reps);
  }

  if (vscale::nworkers() > 0 || vscale::nthreads() > 1) {
    fmt::print(stderr,
               "bench_scaling: the driver starts every run with its own processes and threads; give it no -p/-t "
               "(nor VSCALE_PROCS/VSCALE_THREADS)\n{}",
               kUsage);
    return 2;
  }

  Config c;
  std::optional<long> adv_n, st_n, st_steps, mc_n;
  std::optional<int> reps;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) die(a + " needs a value\n" + kUsage);
      return argv[++i];
    };
    if (a == "--json") {
      c.json = true;
    } else if (a == "--quick") {
      c.quick = true;
    } else if (a == "--cores") {
      c.cores.clear();
      for (const auto& k : split_commas(value())) c.cores.push_back(static_cast<int>(parse_positive(a, k)));
      if (c.cores.empty()) die("--cores needs at least one core count");
    } else if (a == "--svg") {
      c.svg = value();
    } else if (a == "--reps") {
      reps = static_cast<int>(parse_positive(a, value()));
    } else if (a == "--workloads") {
      c.workloads = split_commas(value());
      for (const auto& w : c.workloads)
        if (std::find(kWorkloads.begin(), kWorkloads.end(), w) == kWorkloads.end())
          die("unknown workload '" + w + "'\n" + kUsage);
    } else if (a == "--advection-n") {
      adv_n = parse_positive(a, value());
    } else if (a == "--stencil-n") {
      st_n = parse_positive(a, value());
    } else if (a == "--stencil-steps") {
      st_steps = parse_positive(a, value());
    } else if (a == "--mc-samples") {
      mc_n = parse_positive(a, value());
    } else if (a == "-h" || a == "--help") {
      fmt::print("{}", kUsage);
      return 0;
    } else {
      die("unknown option '" + a + "'\n" + kUsage);
    }
  }
  if (c.quick) {
    c.reps = 3;
    c.advection_n = 160;
    c.stencil_n = 96;
    c.stencil_steps = 20;
    c.mc_samples = 10'000'000;
  }
  if (reps) c.reps = *reps;
  if (adv_n) c.advection_n = *adv_n;
  if (st_n) c.stencil_n = *st_n;
  if (st_steps) c.stencil_steps = *st_steps;
  if (mc_n) c.mc_samples = *mc_n;
  if (c.advection_n < 2) die("--advection-n must be at least 2 (the time dimension is N)");
  const int usable = vscale::usable_cpus();
  if (c.cores.empty())
    for (int k = 1;; k *= 2) {
      c.cores.push_back(std::min(k, usable));
      if (k >= usable) break;
    }
  c.cores.push_back(1);  // the baseline of every speed-up
  std::sort(c.cores.begin(), c.cores.end());
  c.cores.erase(std::unique(c.cores.begin(), c.cores.end()), c.cores.end());
  {  // keep the given order of workloads, once each
    std::vector<std::string> once;
    for (const auto& w : c.workloads)
      if (std::find(once.begin(), once.end(), w) == once.end()) once.push_back(w);
    c.workloads = once;
  }

  // The benches live beside this program; the Monte Carlo child is this very binary.
  char exe[4096];
  const ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len <= 0) die(std::string("cannot read /proc/self/exe: ") + std::strerror(errno));
  exe[len] = '\0';
  const std::string self = exe;
  const std::string dir = self.substr(0, self.rfind('/'));

  if (!c.json) {
    fmt::print("bench_scaling: {} usable CPUs; cores: {}; median of {} reps{}\n", usable, fmt::join(c.cores, " "), c.reps,
               c.quick ? " (--quick: small sizes, not a measurement)" : "");
    fmt::print("modes: processes = k workers x 1 thread; threads = one process x k threads (advection, stencil: 1 "
               "worker x k,\n       the master only waits; Monte Carlo: the master alone, -p 0 -t k); hybrid = k/2 "
               "processes x 2 threads\n       (even k >= 4); speed-up = time of processes at k = 1 / time\n");
    for (int k : c.cores)
      if (k > usable) fmt::print("note: {} cores is more than the {} usable CPUs: oversubscribed\n", k, usable);
    // Timings on a shared machine mean little under load: say what the load was.
    if (std::ifstream la("/proc/loadavg"); la) {
      double l1 = 0;
      if (la >> l1 && l1 > 0.5 * usable)
        fmt::print("note: load average {:.2f} at start on {} usable CPUs: expect noisy timings\n", l1, usable);
    }
    std::fflush(stdout);
  }

  Driver d(c, dir, self);
  for (const auto& w : c.workloads) {
    d.run_workload(w);
    if (!c.json) print_table(c, d, w);
    std::fflush(stdout);
  }
  std::FILE* info = c.json ? stderr : stdout;  // with --json, stdout carries JSON lines only
  if (!c.json && std::any_of(c.workloads.begin(), c.workloads.end(), [](const std::string& w) { return w != "monte_carlo_pi"; }))
    fmt::print("(vs OpenMP: time / openmp_reference time with k threads in one process)\n");
  print_targets(info, c, d);
  for (const auto& n : d.notes()) fmt::print(info, "note: {}\n", n);
  if (!c.svg.empty()) {
    write_svg(c.svg, c, d);
    fmt::print(info, "chart: {}\n", c.svg);
  }
  if (!d.failures().empty()) {
    fmt::print(stderr, "\nbench_scaling: {} failure(s):\n", d.failures().size());
    for (const auto& f : d.failures()) fmt::print(stderr, "  {}\n", f);
    return 1;
  }
  return 0;
}
