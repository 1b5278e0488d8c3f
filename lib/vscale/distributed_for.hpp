// distributed_for: Julia's `@distributed for` (waitable) and `@distributed (op) for`.
#pragma once

#include <algorithm>
#include <exception>
#include <optional>
#include <utility>
#include <type_traits>
#include <vector>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/parallel_reduce.h>

#include "vscale/cluster.hpp"
#include "vscale/future.hpp"
#include "vscale/range.hpp"
#include "vscale/remotecall.hpp"
#include "vscale/threaded.hpp"

namespace vscale {

/// What distributed_for without a reducer returns: wait() blocks until every chunk is done
/// (rethrowing the first failure, after all have finished).
class Waitable {
 public:
  Waitable() = default;
  explicit Waitable(std::vector<Future<void>> parts) : parts_(std::move(parts)) {}
  void wait() const { wait_all(parts_); }
  bool isready() const {
    for (const auto& f : parts_)
      if (!f.isready()) return false;
    return true;
  }

 private:
  std::vector<Future<void>> parts_;
};

namespace detail {
/// Julia's splitrange: `np` contiguous chunks [first, second), the first `rem` one longer;
/// fewer chunks than `np` when the range is shorter.
inline std::vector<std::pair<long, long>> splitrange(long first, long last, long np) {
  std::vector<std::pair<long, long>> out;
  const long len = last > first ? last - first : 0;
  if (np <= 0) return out;
  long each = len / np, extras = len % np;
  const long nchunks = each > 0 ? np : extras;
  long lo = first;
  for (long k = 0; k < nchunks; ++k) {
    long hi = lo + each + (extras > 0 ? 1 : 0);
    if (extras > 0) --extras;
    out.push_back({lo, hi});
    lo = hi;
  }
  return out;
}

/// The chunks of `r` for `nworkers` workers (body indices are longs).
inline std::vector<std::pair<long, long>> chunks_of(IndexRange r, std::size_t nworkers) {
  return splitrange(static_cast<long>(r.first), static_cast<long>(r.last), static_cast<long>(nworkers));
}

// One worker's chunk, in order (one thread) or over the process's arena.
template <class Body>
void run_chunk(const Body& b, long lo, long hi, bool threaded) {
  if (!threaded) {
    for (long i = lo; i < hi; ++i) b(i);
    return;
  }
  tbb::parallel_for(tbb::blocked_range<long>(lo, hi), [&](const tbb::blocked_range<long>& br) {
    for (long i = br.begin(); i != br.end(); ++i) b(i);
  });
}

// One worker's reduction. With threads, parallel_deterministic_reduce over a grain fixed by
// the chunk and the arena size, so that a run gives the same floating-point result every time.
template <class R, class Body, class Reducer>
R reduce_chunk(const Body& b, const Reducer& red, long lo, long hi, bool threaded) {
  if (!threaded || hi - lo < 2) {
    R acc = b(lo);
    for (long i = lo + 1; i < hi; ++i) acc = red(std::move(acc), b(i));
    return acc;
  }
  const long grain = std::max(1L, (hi - lo) / (8L * tbb::this_task_arena::max_concurrency()));
  std::optional<R> acc = tbb::parallel_deterministic_reduce(
      tbb::blocked_range<long>(lo, hi, static_cast<std::size_t>(grain)), std::optional<R>{},
      [&](const tbb::blocked_range<long>& br, std::optional<R> a) {
        for (long i = br.begin(); i != br.end(); ++i) a = a ? red(std::move(*a), b(i)) : b(i);
        return a;
      },
      [&](std::optional<R> x, std::optional<R> y) -> std::optional<R> {
        if (!x) return y;
        if (!y) return x;
        return red(std::move(*x), std::move(*y));
      });
  return std::move(*acc);
}

template <class Body>
Waitable distributed_for_impl(IndexRange r, Body body, bool threaded) {
  static_assert(std::is_invocable_v<const Body&, long>, "vscale: distributed_for's body must be callable as body(long i)");
  const auto ws = workers();
  std::vector<Future<void>> parts;
  for (const auto& [lo, hi] : chunks_of(r, ws.size()))
    parts.push_back(remotecall_push(ws[parts.size()], [](const Body& b, long first, long last, bool th) {
      run_chunk(b, first, last, th);
    }, body, lo, hi, threaded));
  return Waitable(std::move(parts));
}

// One worker's chunk reduced there (a stateless lambda: shipped by code address).
template <class R, class Body, class Reducer>
Future<R> push_reduce_chunk(int w, const Body& body, const Reducer& reducer, long lo, long hi, bool threaded) {
  return remotecall_push(w, [](const Body& b, const Reducer& red, long first, long last, bool th) {
    return reduce_chunk<R>(b, red, first, last, th);
  }, body, reducer, lo, hi, threaded);
}

// A run of consecutive chunks whose workers share a host other than the caller's: one call to
// the run's first worker, which hands the other chunks to its node's workers, reduces its own
// meanwhile, and folds theirs in chunk order. So the body crosses between nodes once per node,
// and one value per node comes back (issue 12: reduce on each node first).
template <class R, class Body, class Reducer>
Future<R> push_reduce_run(const std::vector<int>& ids, const std::vector<long>& bounds, const Body& body,
                          const Reducer& reducer, bool threaded) {
  return remotecall_push(ids.front(), [](const Body& b, const Reducer& red, const std::vector<int>& ws,
                                         const std::vector<long>& at, bool th) {
    std::vector<Future<R>> rest;
    for (std::size_t k = 1; k < ws.size(); ++k) rest.push_back(push_reduce_chunk<R>(ws[k], b, red, at[k], at[k + 1], th));
    R acc = reduce_chunk<R>(b, red, at[0], at[1], th);
    for (auto& f : rest) acc = red(std::move(acc), f.fetch());
    return acc;
  }, body, reducer, ids, bounds, threaded);
}

template <class Body, class Reducer>
auto distributed_reduce_impl(IndexRange r, Body body, Reducer reducer, bool threaded) {
  static_assert(std::is_invocable_v<const Body&, long>, "vscale: distributed_for's body must be callable as body(long i)");
  using R = std::decay_t<std::invoke_result_t<const Body&, long>>;
  static_assert(!std::is_void_v<R>, "vscale: a distributed_for with a reducer needs a body that returns a value");
  const auto ws = workers();
  const auto chunks = chunks_of(r, ws.size());
  const int here = host_of(myid());
  std::vector<Future<R>> parts;
  for (std::size_t k = 0; k < chunks.size();) {
    // The run of chunks k..e-1 on one host (one host for all, without MPI).
    const int h = host_of(ws[k]);
    std::size_t e = k + 1;
    while (e < chunks.size() && host_of(ws[e]) == h) ++e;
    if (h == here || e - k == 1) {
      for (; k < e; ++k) parts.push_back(push_reduce_chunk<R>(ws[k], body, reducer, chunks[k].first, chunks[k].second, threaded));
      continue;
    }
    std::vector<int> ids(ws.begin() + static_cast<long>(k), ws.begin() + static_cast<long>(e));
    std::vector<long> bounds;
    for (std::size_t j = k; j < e; ++j) bounds.push_back(chunks[j].first);
    bounds.push_back(chunks[e - 1].second);
    parts.push_back(push_reduce_run<R>(ids, bounds, body, reducer, threaded));
    k = e;
  }
  if (parts.empty()) return R{};
  R acc = parts[0].fetch();
  for (std::size_t k = 1; k < parts.size(); ++k) acc = reducer(std::move(acc), parts[k].fetch());
  return acc;
}
}  // namespace detail

/// Run body(i) for every i in `r`, one contiguous chunk per worker (the master alone when
/// there are none). Returns at once; wait() on the result. `body` must be shippable: a lambda
/// with trivially copyable captures, or vscale::closure(f, shared_arrays...) to use arrays.
/// Example: distributed_for({0, n}, closure([](const SharedArray<double, 1>& a, long i) { a[i] = i; }, a)).wait();
template <class Body>
Waitable distributed_for(IndexRange r, Body body) {
  return detail::distributed_for_impl(r, std::move(body), false);
}

/// The same, each worker splitting its chunk over its threads (-t).
template <class Body>
Waitable distributed_for(Threaded, IndexRange r, Body body) {
  return detail::distributed_for_impl(r, std::move(body), true);
}

/// Reduce body(i) over every i in `r` with `reducer` (e.g. std::plus<>{}): each worker reduces
/// its chunk, then the caller reduces the workers' results in chunk order (Julia's
/// `@distributed (+) for`). Under mpirun the workers of another node reduce their chunks
/// there first, so one value per node crosses between nodes (operands in the same order, grouped
/// per node: the reducer must be associative, as Julia's). An empty range gives a value-initialized result.
template <class Body, class Reducer>
auto distributed_for(IndexRange r, Body body, Reducer reducer) {
  return detail::distributed_reduce_impl(r, std::move(body), std::move(reducer), false);
}

/// The same, each worker reducing its chunk over its threads (-t); `reducer` must be
/// associative (the grouping differs from the one-thread form).
template <class Body, class Reducer>
auto distributed_for(Threaded, IndexRange r, Body body, Reducer reducer) {
  return detail::distributed_reduce_impl(r, std::move(body), std::move(reducer), true);
}

}  // namespace vscale
