// threads: processes x threads. Every process (master and workers) runs a TBB arena of -t T
// threads; incoming remote calls run in it, several at once, and tbb::parallel_for inside a
// call uses the process's threads.
//
//   ./threads -p 2 -t 2            2 workers x 2 threads
//   ./threads -p auto -t auto      sized from the machine (cgroup quota, cpuset, NUMA/L3)
//   ./threads -p 2 -t 2 --vscale-info   also print what was detected and the placement
//
// It shows: vscale::describe(); the manual's feeder pattern (one local task per worker, each
// fetching the next index and making a remote call, here from TBB tasks on the master);
// distributed_for in threads mode with a reducer; pmap in threads mode. Each result is checked.
#include <atomic>
#include <cmath>
#include <cstdio>
#include <functional>
#include <numeric>
#include <vector>

#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <vscale/vscale.hpp>

int main(int argc, char** argv) {
  vscale::Session session(argc, argv);
  std::printf("%s", vscale::describe().c_str());
  std::printf("this process: %d threads; workers: %d\n", vscale::nthreads(), vscale::nworkers());

  // Inside a call, TBB sees the worker's arena.
  for (int w : vscale::workers())
    std::printf("worker %d: tbb::this_task_arena::max_concurrency() = %d\n", w,
                vscale::remotecall_fetch(w, [] { return tbb::this_task_arena::max_concurrency(); }));

  // The feeder pattern: tasks on the master share one index counter and call the workers.
  const long n = 200;
  std::vector<long> squares(n);
  std::atomic<long> next{0};
  const auto ws = vscale::workers();
  tbb::parallel_for(std::size_t(0), ws.size(), [&](std::size_t k) {
    for (long i; (i = next.fetch_add(1)) < n;)
      squares[static_cast<std::size_t>(i)] = vscale::remotecall_fetch(ws[k], [](long x) { return x * x; }, i);
  });
  bool ok = true;
  for (long i = 0; i < n; ++i) ok = ok && squares[static_cast<std::size_t>(i)] == i * i;
  std::printf("feeder: %ld squares computed from %zu tasks: %s\n", n, ws.size(), ok ? "ok" : "WRONG");

  // distributed_for in threads mode: each worker reduces its chunk over its threads.
  const long m = 1'000'000;
  const double h = vscale::distributed_for(
      vscale::threaded, {1, m + 1}, [](long i) { return 1.0 / static_cast<double>(i); }, std::plus<>{});
  const double expect = std::log(static_cast<double>(m)) + 0.5772156649015329 + 0.5 / static_cast<double>(m);
  const bool h_ok = std::abs(h - expect) < 1e-9;
  std::printf("harmonic number H(%ld) = %.9f (expected about %.9f): %s\n", m, h, expect, h_ok ? "ok" : "WRONG");

  // pmap in threads mode: the elements of a batch run on a worker's threads.
  std::vector<int> xs(1000);
  std::iota(xs.begin(), xs.end(), 0);
  auto ys = vscale::pmap(vscale::threaded, [](int x) { return 3 * x + 1; }, xs);
  bool p_ok = true;
  for (std::size_t k = 0; k < xs.size(); ++k) p_ok = p_ok && ys[k] == 3 * xs[k] + 1;
  std::printf("pmap with threads: %zu results in order: %s\n", ys.size(), p_ok ? "ok" : "WRONG");
  return ok && h_ok && p_ok ? 0 : 1;
}
