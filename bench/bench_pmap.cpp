// bench_pmap: the cost per task of pmap, beside a 1-byte socketpair ping-pong measured in the
// same run (the cheapest round trip the kernel offers between two processes).
//
//   ./bench_pmap [-p N] [--json] [--reps R] [--n TASKS]
//
// Variants (seconds = median over R reps of the time per task):
//   socketpair_rtt     1-byte write/read ping-pong with a forked child, per round trip
//   remotecall_fetch_rtt  remotecall_fetch(first worker, x -> x + 1) round trips from the master,
//                      per call, while the other workers idle (the reference of issue 14's
//                      pmap target)
//   pmap_batch1        pmap(x -> x + 1, n longs, batch_size = 1); + tasks_per_s,
//                      ratio_to_socketpair (target on the 2-core machine: <= 1) and
//                      ratio_to_rtt: time per task / remotecall_fetch_rtt of this run (issue 14:
//                      <= 2 with as many workers as cores)
//   pmap_auto          pmap(x -> x + 1, 100 n longs, automatic batch size); + tasks_per_s
//   pmap_closure_1mb   pmap(closure(f, 1 MiB std::vector<char>), n longs, batch_size = 1);
//                      + per_task_1kb_s: the same with a 1 KiB vector, measured in the same run,
//                      and ratio_to_1kb (the captured data travels once per worker, so the
//                      per-task cost should not grow with its size: ratio near 1)
//   channel_rate       items per second through a RemoteChannel<long> (capacity 1024) owned by
//                      the master, put by a worker in a loop and taken by the master; seconds
//                      = per item; + tasks_per_s (items per second)
//   pmap_batch1_xnode, pmap_batch1 and pmap_auto with the same number of workers W split over
//   pmap_auto_xnode    two "nodes" of this machine: this program started again as an MPI job of
//                      two ranks (`mpirun --bind-to none --oversubscribe -n 1 <this program> -p
//                      W-W/2 --xnode-child ... : -n 1 <this program> -p W/2 --xnode-child ...`),
//                      which takes only these two figures; + ratio_to_one_node: tasks/s across
//                      nodes / tasks/s of the one-node variant of this run (issue 12's target for
//                      pmap_auto: >= 0.5). Skipped, with a line on stderr, with fewer than 2
//                      workers or where mpirun or MPI support is missing.
// Targets (issue 4): on the 16-core bench host, pmap_batch1 >= 1M tasks/s with 16 workers and
// pmap_auto >= 20M tasks/s.
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <vscale/vscale.hpp>
#include <vscale/pmap.hpp>

#include "bench_util.hpp"

namespace {

using bench_util::Clock;
using bench_util::human_time;
using bench_util::median;
using bench_util::seconds_since;

struct Result {
  std::string variant;
  int procs = 0;
  long n = 0;
  double seconds = 0;  // median per task
  std::optional<double> tasks_per_s;
  std::optional<double> ratio_to_socketpair;
  std::optional<double> per_task_1kb_s;
  std::optional<double> ratio_to_1kb;
  std::optional<double> ratio_to_one_node;
  std::optional<double> ratio_to_rtt;
};

void print_json(const Result& r) {
  bench_util::JsonLine j;
  j.add(R"("bench":"pmap","variant":"{}","procs":{},"threads":1,"n":{},"seconds":{:.9g})", r.variant, r.procs, r.n,
        r.seconds);
  if (r.tasks_per_s) j.add(R"(,"tasks_per_s":{:.6g})", *r.tasks_per_s);
  if (r.ratio_to_socketpair) j.add(R"(,"ratio_to_socketpair":{:.4g})", *r.ratio_to_socketpair);
  if (r.per_task_1kb_s) j.add(R"(,"per_task_1kb_s":{:.9g})", *r.per_task_1kb_s);
  if (r.ratio_to_1kb) j.add(R"(,"ratio_to_1kb":{:.4g})", *r.ratio_to_1kb);
  if (r.ratio_to_one_node) j.add(R"(,"ratio_to_one_node":{:.4g})", *r.ratio_to_one_node);
  if (r.ratio_to_rtt) j.add(R"(,"ratio_to_rtt":{:.4g})", *r.ratio_to_rtt);
  j.print();
}

[[noreturn]] void die(const std::string& what) { bench_util::fail("bench_pmap", what); }

double socketpair_rtt(int reps, long calls) { return bench_util::socketpair_rtt("bench_pmap", reps, calls); }

long plus_one(long x) { return x + 1; }

std::vector<long> inputs(long n) {
  std::vector<long> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0L);
  return v;
}

// Median time per task of pmap(f, xs, opt) over `reps` runs (after one warm-up run); checks
// every result with `check`.
template <class F, class Check>
double time_pmap(const F& f, const std::vector<long>& xs, const vscale::PmapOptions& opt, int reps, Check check, const char* what) {
  auto run = [&] {
    auto r = vscale::pmap(f, xs, opt);
    if (r.size() != xs.size()) die(fmt::format("{}: wrong number of results", what));
    for (std::size_t i = 0; i < r.size(); ++i)
      if (!check(xs[i], r[i])) die(fmt::format("{}: wrong result at {}", what, i));
  };
  run();
  std::vector<double> per;
  for (int k = 0; k < reps; ++k) {
    auto t0 = Clock::now();
    run();
    per.push_back(seconds_since(t0) / static_cast<double>(xs.size()));
  }
  return median(per);
}

// Median per call of remotecall_fetch(w, plus_one, i) over `reps` runs of `calls` calls.
double fetch_rtt(int w, int reps, long calls) {
  for (long i = 0; i < 1000; ++i)
    if (vscale::remotecall_fetch(w, plus_one, i) != i + 1) die("remotecall_fetch_rtt: wrong result");
  std::vector<double> per;
  long sum = 0;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    for (long i = 0; i < calls; ++i) sum += vscale::remotecall_fetch(w, plus_one, i);
    per.push_back(seconds_since(t0) / static_cast<double>(calls));
  }
  if (sum != static_cast<long>(reps) * (calls * (calls + 1) / 2)) die("remotecall_fetch_rtt: wrong results");
  return median(per);
}

// pmap_batch1 and pmap_auto over every worker of the job, with `suffix` on their names.
std::vector<Result> pmap_pair(long n, int reps, const std::string& suffix) {
  const auto xs = inputs(n);
  const auto big = inputs(100 * n);
  auto ok_plus = [](long x, long r) { return r == x + 1; };
  const int procs = vscale::nprocs();
  const double b1 = time_pmap(plus_one, xs, {.batch_size = 1}, reps, ok_plus, "pmap_batch1");
  const double au = time_pmap(plus_one, big, {}, reps, ok_plus, "pmap_auto");
  return {Result{"pmap_batch1" + suffix, procs, n, b1, 1.0 / b1, {}, {}, {}, {}, {}},
          Result{"pmap_auto" + suffix, procs, 100 * n, au, 1.0 / au, {}, {}, {}, {}, {}}};
}

}  // namespace

int main(int argc, char** argv) {
  vscale::Session session(argc, argv);
  bool json = false, xnode_child = false;
  int reps = 5;
  long n = 20000;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&] { return bench_util::positive_arg("bench_pmap", argc, argv, i); };
    if (a == "--json")
      json = true;
    else if (a == "--reps")
      reps = static_cast<int>(value());
    else if (a == "--n")
      n = value();
    else if (a == "--xnode-child")
      xnode_child = true;
    else
      die("unknown option '" + a + "'\nusage: bench_pmap [-p N] [--json] [--reps R] [--n TASKS]");
  }
  if (xnode_child) {
    // Started by the parent run under mpirun: pmap over the workers of both nodes only.
    if (vscale::nhosts() < 2 || vscale::procs_on(1).empty())
      die("--xnode-child: no worker on node 1 (run under mpirun -n 2 with -p 1 or more)");
    for (const auto& r : pmap_pair(n, reps, "_xnode")) print_json(r);
    return 0;
  }
  if (vscale::nworkers() == 0) vscale::addprocs(1);
  const int procs = vscale::nprocs();

  std::vector<Result> results;
  const double ref = socketpair_rtt(reps, std::max(1000L, n));
  results.push_back({"socketpair_rtt", 2, std::max(1000L, n), ref, 1.0 / ref, 1.0, {}, {}, {}, {}});

  const long rtt_calls = std::max(1000L, n);
  const double rtt = fetch_rtt(vscale::workers().front(), reps, rtt_calls);
  results.push_back({"remotecall_fetch_rtt", procs, rtt_calls, rtt, 1.0 / rtt, {}, {}, {}, {}, {}});
  const auto one_node = pmap_pair(n, reps, "");
  for (Result r : one_node) {
    if (r.variant == "pmap_batch1") {
      r.ratio_to_socketpair = r.seconds / ref;
      r.ratio_to_rtt = r.seconds / rtt;
    }
    results.push_back(r);
  }
  {
    auto lookup = [](const std::vector<char>& data, long i) { return static_cast<long>(data[static_cast<std::size_t>(i) % data.size()]); };
    auto ok_byte = [](long, long r) { return r == 7; };
    const std::vector<char> mb(std::size_t{1} << 20, 7), kb(std::size_t{1} << 10, 7);
    const long m = std::max(100L, n / 10);
    const auto few = inputs(m);
    double s_kb = time_pmap(vscale::closure(lookup, kb), few, {.batch_size = 1}, reps, ok_byte, "pmap_closure_1kb");
    double s_mb = time_pmap(vscale::closure(lookup, mb), few, {.batch_size = 1}, reps, ok_byte, "pmap_closure_1mb");
    Result r{"pmap_closure_1mb", procs, m, s_mb, 1.0 / s_mb, {}, s_kb, s_mb / s_kb, {}, {}};
    results.push_back(r);
  }

  {
    // A worker puts m items into a master-owned channel while the master takes them.
    const long m = std::max(1000L, n);
    vscale::RemoteChannel<long> ch(1024, 1);
    std::vector<double> per;
    for (int rep = 0; rep < reps; ++rep) {
      auto t0 = Clock::now();
      auto producer = vscale::remotecall(vscale::workers().front(), [](vscale::RemoteChannel<long> c, long count) {
        for (long i = 0; i < count; ++i) c.put(i);
      }, ch, m);
      long sum = 0;
      for (long i = 0; i < m; ++i) sum += ch.take();
      producer.wait();
      per.push_back(seconds_since(t0) / static_cast<double>(m));
      if (sum != m * (m - 1) / 2) die("channel_rate: wrong items received");
    }
    ch.close();
    double s = median(per);
    results.push_back({"channel_rate", 2, m, s, 1.0 / s, {}, {}, {}, {}, {}});
  }

  // The same pmaps with the same workers on two nodes.
  const int w = vscale::nworkers();
  if (w < 2) {
    fmt::print(stderr, "bench_pmap: pmap_*_xnode skipped: it needs 2 workers or more (-p 2) to split over two nodes\n");
  } else {
    const std::string common = fmt::format("--xnode-child --reps {} --n {}", reps, n);
    const auto run = bench_util::run_under_mpirun(
        "", {fmt::format("-p {} {}", w - w / 2, common), fmt::format("-p {} {}", w / 2, common)});
    for (const Result& one : one_node) {
      const std::string line = bench_util::line_of(run, one.variant + "_xnode");
      const auto s = bench_util::json_number(line, "seconds");
      if (!run.why.empty() || !s || !(*s > 0)) {
        fmt::print(stderr, "bench_pmap: {}_xnode was skipped: {}\n", one.variant,
                   run.why.empty() ? "`" + run.command + "` printed no such line" : run.why);
        continue;
      }
      Result r{one.variant + "_xnode", static_cast<int>(bench_util::json_number(line, "procs").value_or(0)), one.n, *s,
               1.0 / *s, {}, {}, {}, {}, {}};
      r.ratio_to_one_node = one.seconds / *s;
      results.push_back(r);
    }
  }

  if (json) {
    for (const auto& r : results) print_json(r);
  } else {
    fmt::print("bench_pmap: {} process(es), median of {} reps\n\n", procs, reps);
    fmt::print("{:<20} {:>6} {:>10} {:>14} {:>14} {}\n", "variant", "procs", "n", "time/task", "tasks/s", "notes");
    for (const auto& r : results) {
      std::string notes;
      if (r.ratio_to_socketpair && r.variant != "socketpair_rtt") notes = fmt::format("x{:f} socketpair", *r.ratio_to_socketpair);
      if (r.ratio_to_rtt) notes += fmt::format(", x{:.2f} remotecall_fetch_rtt", *r.ratio_to_rtt);
      if (r.ratio_to_one_node) notes = fmt::format("x{:.3f} the tasks/s on one node", *r.ratio_to_one_node);
      if (r.per_task_1kb_s)
        notes = fmt::format("1 KiB capture: {} (x{:f})", human_time(*r.per_task_1kb_s), r.ratio_to_1kb.value_or(0));
      fmt::print("{:<20} {:>6} {:>10} {:>14} {:>14.4g} {}\n", r.variant, r.procs, r.n, human_time(r.seconds),
                 r.tasks_per_s.value_or(0), notes);
    }
  }
  return 0;
}
