// The 3-D heat equation, explicit (Jacobi) 7-point stencil, on column-major n1 x n2 x n3 arrays
// (i fastest), written once for every variant:
//
//   heat_chunk(cur, next, planes)    next = one step of cur on the z planes `planes`
//   heat_my_planes(S)                this process's planes: those whose first cell lies in
//                                    localindices(S), so a process computes the pages it
//                                    first-touched
//   heat_serial(a, b, steps)         everything, in this process
//   heat_per_step(a, b, steps, threads)
//                                    one round of remote calls per time step (one per
//                                    process in procs(a), over its planes), waited for
//   heat_persistent(a, b, steps, bar, threads)
//                                    one call per process in procs(a) for all steps, a
//                                    Barrier crossing between steps
//
// In both, `threads` > 1 splits a process's planes over that many TBB threads.
//
// The update, for interior cells (0 < i < n1-1, 0 < j < n2-1, 0 < k < n3-1):
//
//   next(i,j,k) = c0*cur(i,j,k) + c1*(((((cur(i-1,j,k) + cur(i+1,j,k)) + cur(i,j-1,k))
//                                       + cur(i,j+1,k)) + cur(i,j,k-1)) + cur(i,j,k+1))
//
// with c1 = 1/8 and c0 = 1 - 6*c1 = 1/4: forward Euler with alpha*dt/h^2 = 1/8, inside the
// stability limit 1/6, and c0 >= 0 makes every new value a convex combination of old ones
// (no new extrema: a maximum principle). Both are powers of two, so a product is exact and
// dyadic inputs stay exact for many steps (the tests rely on it). Boundary cells (Dirichlet)
// are copied from cur to next. Two arrays take turns: step s reads a and writes b when s is
// even, the other way round when it is odd; heat_result says which holds the answer.
//
// Every variant performs the same operations in the same order on every cell, so all of them
// give bit-identical results. The array type is a template parameter: a vscale::SharedArray<T,
// 3>, or a Grid3 view over memory you own (the serial and OpenMP references).
#pragma once

#include <cstddef>
#include <cstring>
#include <exception>
#include <string>
#include <type_traits>
#include <vector>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>
#include <tbb/task_arena.h>

#include <vscale/barrier.hpp>
#include <vscale/vscale.hpp>

#include "advection.hpp"  // Grid3

namespace vscale::kernels {

/// The stencil's weight of each of the 6 neighbours.
inline constexpr double heat_c1 = 0.125;
/// The stencil's weight of the cell itself (the weights sum to 1).
inline constexpr double heat_c0 = 1.0 - 6.0 * heat_c1;

/// Part `idx` (1-based) of `nplanes` planes of `plane_size` cells among `nparts` processes: the
/// planes whose first cell lies in the part's localindices (Julia's split of the linear
/// indices). The parts are contiguous and cover every plane once.
inline IndexRange heat_planes_of_part(std::size_t plane_size, std::size_t nplanes, std::size_t nparts, std::size_t idx) {
  if (plane_size == 0 || idx == 0 || idx > nparts) return {};
  const IndexRange cells = vscale::detail::split_1dim(plane_size * nplanes, nparts, idx - 1);
  auto first_plane_from = [&](std::size_t cell) { return (cell + plane_size - 1) / plane_size; };
  return {first_plane_from(cells.first), first_plane_from(cells.last)};
}

/// This process's z planes of `s` (empty where it does not take part).
template <class A>
IndexRange heat_my_planes(const A& s) {
  const int idx = indexpids(s);
  if (idx == 0) return {};
  return heat_planes_of_part(s.size(0) * s.size(1), s.size(2), procs(s).size(), static_cast<std::size_t>(idx));
}

/// The array that holds the result after `steps` steps started from `a`.
template <class A>
const A& heat_result(const A& a, const A& b, std::size_t steps) {
  return steps % 2 ? b : a;
}

namespace detail {

// One row (fixed j, k) of an interior plane. Raw pointers with __restrict let the compiler
// vectorise without run-time alias checks (`out` is the other array; the five inputs are only
// read). The sum's order is part of the contract: it is what makes variants bit-identical.
template <class T>
inline void heat_row(T* __restrict out, const T* __restrict c, const T* __restrict jm, const T* __restrict jp,
                     const T* __restrict km, const T* __restrict kp, std::size_t n1) {
  const T c0 = static_cast<T>(heat_c0), c1 = static_cast<T>(heat_c1);
  out[0] = c[0];
  for (std::size_t i = 1; i + 1 < n1; ++i)
    out[i] = c0 * c[i] + c1 * (((((c[i - 1] + c[i + 1]) + jm[i]) + jp[i]) + km[i]) + kp[i]);
  out[n1 - 1] = c[n1 - 1];
}

template <class A>
using elem_t = std::remove_reference_t<decltype(std::declval<const A&>()(0, 0, 0))>;

}  // namespace detail

/// One time step on the z planes `planes` of cur into next (same dimensions): interior cells
/// get the stencil, boundary cells are copied.
template <class Cur, class Next>
void heat_chunk(const Cur& cur, const Next& next, IndexRange planes) {
  using T = detail::elem_t<Cur>;
  const std::size_t n1 = cur.size(0), n2 = cur.size(1), n3 = cur.size(2);
  if (n1 == 0 || n2 == 0) return;
  for (std::size_t k : planes) {
    if (k == 0 || k + 1 >= n3 || n2 < 3) {  // a boundary plane (or no interior rows)
      std::memcpy(&next(0, 0, k), &cur(0, 0, k), n1 * n2 * sizeof(T));
      continue;
    }
    std::memcpy(&next(0, 0, k), &cur(0, 0, k), n1 * sizeof(T));
    for (std::size_t j = 1; j + 1 < n2; ++j)
      detail::heat_row<T>(&next(0, j, k), &cur(0, j, k), &cur(0, j - 1, k), &cur(0, j + 1, k), &cur(0, j, k - 1),
                          &cur(0, j, k + 1), n1);
    std::memcpy(&next(0, n2 - 1, k), &cur(0, n2 - 1, k), n1 * sizeof(T));
  }
}

/// heat_chunk with the planes split over the TBB threads of the calling thread's arena when
/// `threads` > 1: one contiguous block per thread (static_partitioner), the same blocks at
/// every step, so that a thread tends to find its planes in its cache.
template <class Cur, class Next>
void heat_chunk_threads(const Cur& cur, const Next& next, IndexRange planes, int threads) {
  if (threads <= 1 || planes.size() <= 1) {
    heat_chunk(cur, next, planes);
    return;
  }
  tbb::parallel_for(
      tbb::blocked_range<std::size_t>(planes.first, planes.last),
      [&](const tbb::blocked_range<std::size_t>& r) { heat_chunk(cur, next, IndexRange{r.begin(), r.end()}); },
      tbb::static_partitioner{});
}

/// `steps` steps on everything, in this process, starting from a (b is the other buffer).
template <class A, class B>
void heat_serial(const A& a, const B& b, std::size_t steps) {
  for (std::size_t s = 0; s < steps; ++s) {
    if (s % 2 == 0)
      heat_chunk(a, b, IndexRange{0, a.size(2)});
    else
      heat_chunk(b, a, IndexRange{0, a.size(2)});
  }
}

/// Set a(i,j,k) = f(i,j,k) on the z planes `planes` (initial conditions, per process).
template <class A, class F>
void heat_fill(const A& a, IndexRange planes, F f) {
  for (std::size_t k : planes)
    for (std::size_t j = 0; j < a.size(1); ++j)
      for (std::size_t i = 0; i < a.size(0); ++i) a(i, j, k) = f(i, j, k);
}

namespace detail {
template <class T>
void check_pair(const SharedArray<T, 3>& a, const SharedArray<T, 3>& b, const char* who) {
  if (a.dims() != b.dims() || procs(a) != procs(b))
    throw UsageError(std::string("vscale: ") + who +
                     ": the two arrays need the same dimensions and the same processes (procs)");
}

// Run f() with `threads` TBB threads at hand: in the calling thread's arena when it has that
// many (the runtime's per-process arena), else in an arena made for the call.
template <class F>
void with_threads(int threads, F&& f) {
  if (threads > 1 && tbb::this_task_arena::max_concurrency() != threads) {
    tbb::task_arena arena(threads);
    arena.execute(f);
  } else {
    f();
  }
}
}  // namespace detail

/// One process's share of one heat_per_step step: its planes (heat_my_planes) of cur into next.
template <class T>
void heat_step_part(const SharedArray<T, 3>& cur, const SharedArray<T, 3>& next, int threads) {
  const IndexRange mine = heat_my_planes(cur);
  detail::with_threads(threads, [&] { heat_chunk_threads(cur, next, mine, threads); });
}

/// per_step: `steps` steps, each one round of remote calls (one per process in procs(a), each
/// over its own planes, as heat_persistent splits them), all waited for on the caller, then the
/// arrays swap roles. The cost of synchronising through the caller at every step is what this
/// variant shows against heat_persistent.
template <class T>
void heat_per_step(const SharedArray<T, 3>& a, const SharedArray<T, 3>& b, std::size_t steps, int threads = 1) {
  detail::check_pair(a, b, "heat_per_step");
  std::vector<Future<void>> calls;
  for (std::size_t s = 0; s < steps; ++s) {
    calls.clear();
    for (int p : procs(a))
      calls.push_back(remotecall(p, &heat_step_part<T>, s % 2 ? b : a, s % 2 ? a : b, threads));
    vscale::wait_all(calls);
  }
}

/// One process's share of heat_persistent: its planes (heat_my_planes) for every step, with a
/// crossing of `bar` between steps, on `threads` TBB threads (see detail::with_threads).
template <class T>
void heat_persistent_part(const SharedArray<T, 3>& a, const SharedArray<T, 3>& b, const Barrier& bar,
                          std::size_t steps, int threads) {
  const IndexRange mine = heat_my_planes(a);
  detail::with_threads(threads, [&] {
    for (std::size_t s = 0; s < steps; ++s) {
      if (s % 2 == 0)
        heat_chunk_threads(a, b, mine, threads);
      else
        heat_chunk_threads(b, a, mine, threads);
      // The next step reads the neighbours' boundary planes of this one. After the last step
      // the caller's wait on every call is the synchronisation.
      if (s + 1 < steps) bar.wait();
    }
  });
}

/// persistent: one call per process in procs(a), each running every step on its own planes
/// with a Barrier crossing between steps (`bar` must be over procs(a); make it once, e.g.
/// Barrier(a), and reuse it). `threads` TBB threads per process (see heat_persistent_part).
template <class T>
void heat_persistent(const SharedArray<T, 3>& a, const SharedArray<T, 3>& b, std::size_t steps, const Barrier& bar,
                     int threads = 1) {
  detail::check_pair(a, b, "heat_persistent");
  if (bar.pids() != procs(a))
    throw UsageError("vscale: heat_persistent: the Barrier must be over procs(a), the processes that share the arrays");
  std::vector<Future<void>> calls;
  for (int p : procs(a)) calls.push_back(remotecall(p, &heat_persistent_part<T>, a, b, bar, steps, threads));
  vscale::wait_all(calls);
}

}  // namespace vscale::kernels
