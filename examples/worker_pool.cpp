// worker_pool: Julia's WorkerPool. A pool is a set of worker ids handed out one at a time;
// remotecall on a pool runs the call on whichever member is free, and pmap can be kept to one:
//
//   julia> pool = WorkerPool([2, 3])              vscale::WorkerPool pool({2, 3});
//   julia> r = remotecall(myid, pool)             auto r = vscale::remotecall(pool, whoami);
//   julia> fetch(r)                               r.fetch()   (2 or 3)
//   julia> pmap(x -> (x^2, myid()), pool, 1:20)   vscale::pmap(square_where, xs, {.pool = &pool});
//   julia> default_worker_pool()                  vscale::default_worker_pool()   (all workers)
//
// Worker 4 is left out of the pool, so nothing below may run there.
// Run: ./worker_pool -p 3. It checks its answers and exits non-zero on a wrong one.
#include <cstdlib>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include <vscale/vscale.hpp>

int whoami() { return vscale::myid(); }

std::pair<int, int> square_where(int x) { return {x * x, vscale::myid()}; }

int main(int argc, char** argv) {
  vscale::Session session(argc, argv);
  if (vscale::nworkers() < 3) vscale::addprocs(3 - vscale::nworkers());  // like `julia -p 3`
  const std::vector<int> ws = vscale::workers();
  int failures = 0;
  auto check = [&](bool ok, const char* what) {
    std::cout << (ok ? "  ok: " : "  WRONG: ") << what << '\n';
    if (!ok) ++failures;
  };
  auto in_pool = [&](int p) { return p == ws[0] || p == ws[1]; };

  vscale::WorkerPool pool({ws[0], ws[1]});
  std::cout << pool.name() << " has " << pool.length() << " workers; the default pool has "
            << vscale::default_worker_pool().length() << '\n';

  // remotecall(pool, f) takes a free member, runs f there and puts the worker back after.
  auto r = vscale::remotecall(pool, whoami);
  std::cout << "remotecall(pool, myid) ran on process " << r.fetch() << '\n';
  check(in_pool(r.fetch()), "remotecall(pool, ...) ran on a member of the pool");
  check(in_pool(vscale::remotecall_fetch(pool, whoami)), "so did remotecall_fetch(pool, ...)");

  // pmap over the pool: only its two workers take elements.
  std::vector<int> xs;
  for (int i = 1; i <= 20; ++i) xs.push_back(i);
  auto out = vscale::pmap(square_where, xs, {.batch_size = 2, .pool = &pool});
  bool squares = out.size() == xs.size(), where = true;
  for (std::size_t i = 0; i < out.size(); ++i) {
    squares = squares && out[i].first == xs[i] * xs[i];
    where = where && in_pool(out[i].second);
  }
  check(squares, "pmap(square_where, 1..20, pool) squared every element, in order");
  check(where, "and only the pool's workers ran them");
  check(pool.length() == 2 && pool.isready(), "afterwards both workers are back in the pool");
  check(vscale::default_worker_pool().workers() == ws, "default_worker_pool() holds every worker");

  std::cout << (failures ? std::to_string(failures) + " check(s) FAILED\n" : "all checks passed\n");
  return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
