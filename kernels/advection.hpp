// The Julia manual's advection kernel, q(i,j,t+1) = q(i,j,t) + u(i,j,t), on column-major
// N1 x N2 x T arrays (the third dimension is time), written once for every variant:
//
//   julia> advection_chunk!(q, u, irange, jrange, trange)   advection_chunk(q, u, irange, jrange, trange)
//   julia> myrange(q)                                       auto [irange, jrange] = myrange(q);
//   julia> advection_shared_chunk!(q, u)                    advection_shared_chunk(q, u)
//   julia> advection_serial!(q, u)                          advection_serial(q, u)
//   (the body of advection_parallel!'s @distributed loop)   advection_column(q, u, j, t)
//   (hybrid: advection_shared_chunk! over the threads)      advection_hybrid_chunk(q, u)
//
// The array type is a template parameter: a vscale::SharedArray<T, 3>, or a Grid3 view over
// memory you own (the serial and OpenMP references). Ranges are 0-based and half-open.
// Every variant performs the same floating-point operation on every element, so all of them
// give bit-identical results.
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>

#include <vscale/vscale.hpp>

namespace vscale::kernels {

/// A column-major 3-D view over memory owned elsewhere: what the serial and OpenMP
/// references index, with the same interface the kernel uses on a SharedArray.
template <class T>
struct Grid3 {
  T* p = nullptr;
  std::size_t n1 = 0, n2 = 0, n3 = 0;
  T& operator()(std::size_t i, std::size_t j, std::size_t k) const { return p[i + n1 * (j + n2 * k)]; }
  std::size_t size(std::size_t dim) const { return dim == 0 ? n1 : dim == 1 ? n2 : n3; }
  std::size_t size() const { return n1 * n2 * n3; }
};

/// Part `idx` (1-based, as indexpids returns) of the columns [0, ncols) cut into `nchunks`
/// pieces the way the manual's myrange does: splits = round.(range(0, ncols, nchunks + 1)),
/// with Julia's round (ties to even), computed exactly in integers.
inline IndexRange split_columns(std::size_t ncols, std::size_t nchunks, std::size_t idx) {
  if (nchunks == 0 || idx == 0 || idx > nchunks) return {};
  auto split = [&](std::size_t k) {
    const std::size_t num = ncols * k, q = num / nchunks, r = num % nchunks;
    if (2 * r > nchunks || (2 * r == nchunks && q % 2 == 1)) return q + 1;
    return q;
  };
  return {split(idx - 1), split(idx)};
}

/// The manual's myrange(q): all rows, and this process's share of the columns of q among
/// procs(q); two empty ranges on a process that does not take part (indexpids(q) == 0).
template <class A>
std::pair<IndexRange, IndexRange> myrange(const A& q) {
  const int idx = indexpids(q);
  if (idx == 0) return {IndexRange{}, IndexRange{}};
  return {IndexRange{0, q.size(0)}, split_columns(q.size(1), procs(q).size(), static_cast<std::size_t>(idx))};
}

namespace detail {
// One column of one time step. Raw pointers with __restrict let the compiler vectorise the
// i loop without run-time alias checks (q and u never overlap); the arithmetic is the same.
template <class T>
inline void advect_column(T* __restrict next, const T* __restrict cur, const T* __restrict vel, std::size_t len) {
  for (std::size_t i = 0; i < len; ++i) next[i] = cur[i] + vel[i];
}
}  // namespace detail

/// The manual's advection_chunk!: for t in trange, j in jrange, i in irange (i fastest):
/// q(i,j,t+1) = q(i,j,t) + u(i,j,t). Requires trange.last < q.size(2).
template <class Q, class U>
void advection_chunk(const Q& q, const U& u, IndexRange irange, IndexRange jrange, IndexRange trange) {
  if (irange.empty() || jrange.empty()) return;
  const std::size_t len = irange.size();
  for (std::size_t t : trange)
    for (std::size_t j : jrange)
      detail::advect_column(&q(irange.first, j, t + 1), &q(irange.first, j, t), &u(irange.first, j, t), len);
}

/// The time steps the kernel runs on an array whose third dimension is time: [0, T - 1).
template <class A>
IndexRange time_steps(const A& q) {
  return {0, q.size(2) > 0 ? q.size(2) - 1 : 0};
}

/// One column j at one time step t (the body of the per-step distributed loop).
template <class Q, class U>
void advection_column(const Q& q, const U& u, std::size_t j, std::size_t t) {
  advection_chunk(q, u, IndexRange{0, q.size(0)}, IndexRange{j, j + 1}, IndexRange{t, t + 1});
}

/// The manual's advection_shared_chunk!: this process's columns, all time steps.
template <class Q, class U>
void advection_shared_chunk(const Q& q, const U& u) {
  auto [irange, jrange] = myrange(q);
  advection_chunk(q, u, irange, jrange, time_steps(q));
}

/// The hybrid variant's per-process work: this process's columns (myrange), split over the
/// threads of its arena (-t), each thread taking one contiguous block of columns for all time
/// steps (static partition: the same columns every run, so the pages stay where they were
/// first touched).
template <class Q, class U>
void advection_hybrid_chunk(const Q& q, const U& u) {
  auto [irange, jrange] = myrange(q);
  if (jrange.empty()) return;
  tbb::parallel_for(
      tbb::blocked_range<std::size_t>(jrange.first, jrange.last),
      [&, irange = irange](const tbb::blocked_range<std::size_t>& r) {
        advection_chunk(q, u, irange, IndexRange{r.begin(), r.end()}, time_steps(q));
      },
      tbb::static_partitioner{});
}

/// The manual's advection_serial!: everything, in this process.
template <class Q, class U>
void advection_serial(const Q& q, const U& u) {
  advection_chunk(q, u, IndexRange{0, q.size(0)}, IndexRange{0, q.size(1)}, time_steps(q));
}

}  // namespace vscale::kernels
