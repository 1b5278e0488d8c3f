// barrier_stencil: a persistent 1-D heat (Jacobi) stencil. Every worker gets its part of the
// rod once (localindices of a SharedArray), then runs all the steps on it in one remote call;
// between steps the workers meet at a vscale::Barrier instead of returning to the master, as
// one `@sync @distributed` loop per step would (Julia's Distributed has no such barrier):
//
//   Rod a(n), b(n);                        a = SharedArray{Float64}(n); b = SharedArray{Float64}(n)
//   vscale::Barrier bar(a);                (the processes of procs(a))
//   for (int p : vscale::procs(a))         @sync for p in procs(a)
//     calls.push_back(remotecall(p, relax, a, b, bar, steps));   @spawnat p relax(a, b, steps)
//
// Two arrays take turns as "from" and "to", so one barrier per step is enough: nobody writes
// an array before everyone has stopped reading it. The result equals a serial loop to the bit.
// Run: ./barrier_stencil -p 2. It checks its answer and exits non-zero on a wrong one.
#include <cstdlib>
#include <iostream>
#include <utility>
#include <vector>

#include <vscale/barrier.hpp>
#include <vscale/vscale.hpp>

using Rod = vscale::SharedArray<double, 1>;

constexpr double kR = 0.25;  // diffusion number: stable for <= 0.5
double step(double l, double c, double r) { return c + kR * (l - 2.0 * c + r); }

// One worker's part of `steps` steps; both ends stay at 0. Returns the points it updated.
long relax(const Rod& a, const Rod& b, const vscale::Barrier& bar, int steps) {
  const std::size_t n = a.size();
  const Rod* from = &a;
  const Rod* to = &b;
  long updated = 0;
  for (int s = 0; s < steps; ++s) {
    for (std::size_t i : vscale::localindices(a)) {  // the same part every step
      if (i == 0 || i + 1 == n) continue;
      (*to)[i] = step((*from)[i - 1], (*from)[i], (*from)[i + 1]);
      ++updated;
    }
    bar.wait();  // every part of `to` is written before anyone reads it
    std::swap(from, to);
  }
  return updated;
}

int main(int argc, char** argv) {
  vscale::Session session(argc, argv);
  if (vscale::nworkers() < 2) vscale::addprocs(2 - vscale::nworkers());  // like `julia -p 2`
  const std::size_t n = 1000;
  const int steps = 500;

  Rod a(n), b(n);  // zero-filled, shared by all workers
  std::vector<double> serial(n, 0.0);
  for (std::size_t i = n / 2 - 50; i < n / 2 + 50; ++i) a[i] = serial[i] = 1.0;  // a hot middle

  vscale::Barrier bar(a);
  std::vector<vscale::Future<long>> calls;
  for (int p : vscale::procs(a)) calls.push_back(vscale::remotecall(p, relax, a, b, bar, steps));
  long updated = 0;
  for (auto& c : calls) updated += c.fetch();

  std::vector<double> next(n, 0.0);
  for (int s = 0; s < steps; ++s) {
    for (std::size_t i = 1; i + 1 < n; ++i) next[i] = step(serial[i - 1], serial[i], serial[i + 1]);
    std::swap(serial, next);
  }
  const Rod& result = steps % 2 == 0 ? a : b;
  std::size_t differ = 0;
  double heat = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    differ += result[i] != serial[i];
    heat += result[i];
  }
  std::cout << vscale::procs(a).size() << " workers ran " << steps << " steps over " << n << " points; heat left "
            << heat << " of 100, middle " << result[n / 2] << '\n';

  if (updated != static_cast<long>(n - 2) * steps || differ != 0) {
    std::cout << "WRONG: " << updated << " updates (want " << (n - 2) * steps << "), " << differ
              << " points differ from the serial loop\n";
    return EXIT_FAILURE;
  }
  std::cout << "ok: equal to the serial loop at every point\n";
  return EXIT_SUCCESS;
}
