// advection: the Julia manual's SharedArray walk-through (advection_serial!, advection_parallel!,
// advection_shared!) in C++, on a small 12 x 10 x 4 problem so that it runs in a blink:
//
//   julia> q = SharedArray{Float64,3}((500,500,500))    Array q({12, 10, 4}, vscale::init(fill_q));
//   julia> advection_serial!(q, u)                      shared_chunk_verbose(q, u) on the master
//   julia> advection_parallel!(q, u)                    one distributed_for over the columns per time step
//   julia> advection_shared!(q, u)                      remotecall(p, shared_chunk_verbose, q, u) for p in procs(q)
//          From worker 2: (irange,jrange,trange) = (1:500,1:125,1:499)
//
// The kernels come from kernels/advection.hpp (the benchmark runs the very same code). Each
// call prints its (irange, jrange, trange) like the manual's @show, from the process that runs
// it: the workers' lines arrive as "From worker N:". Ranges are 0-based and half-open; the
// columns are split over procs(q) with the manual's myrange (10 columns over 3 workers:
// [0,3) [3,7) [7,10), Julia's round). Run: ./advection -p 3 (it starts 3 workers by itself
// otherwise). It checks that the three versions give identical arrays, and the values
// themselves, and exits non-zero on any difference.
#include <array>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include <advection.hpp>
#include <vscale/vscale.hpp>

namespace {

using Array = vscale::SharedArray<double, 3>;
namespace kn = vscale::kernels;

int failures = 0;

void check(bool ok, const std::string& what) {
  std::cout << (ok ? "  ok: " : "  WRONG: ") << what << '\n';
  if (!ok) ++failures;
}

// The inputs: a velocity u everywhere and an initial state q(:, :, 0); the later time slices
// of q start at zero. Both are exact binary fractions, so the expected values are exact too.
double u_at(std::size_t i, std::size_t j, std::size_t t) { return static_cast<double>((i + 2 * j + 3 * t) % 4 + 1) * 0.25; }
double q0_at(std::size_t i, std::size_t j) { return static_cast<double>(i + 10 * j); }

// Like the manual's `init = S -> S[localindices(S)] = ...`: each process fills its own part.
void fill_u(const Array& u) {
  for (std::size_t k : vscale::localindices(u)) {
    const std::size_t i = k % u.size(0), j = k / u.size(0) % u.size(1), t = k / (u.size(0) * u.size(1));
    u[k] = u_at(i, j, t);
  }
}
void fill_q(const Array& q) {
  for (std::size_t k : vscale::localindices(q)) {
    const std::size_t i = k % q.size(0), j = k / q.size(0) % q.size(1), t = k / (q.size(0) * q.size(1));
    q[k] = t == 0 ? q0_at(i, j) : 0.0;
  }
}

// The manual's advection_shared_chunk! with its @show. Returns the ranges, so that the master
// can check that the chunks tile the columns.
std::array<std::size_t, 6> shared_chunk_verbose(const Array& q, const Array& u) {
  auto [irange, jrange] = kn::myrange(q);
  vscale::IndexRange trange = kn::time_steps(q);
  std::printf("(irange, jrange, trange) = ([%zu, %zu), [%zu, %zu), [%zu, %zu))\n", irange.first, irange.last,
              jrange.first, jrange.last, trange.first, trange.last);
  std::fflush(stdout);
  kn::advection_chunk(q, u, irange, jrange, trange);
  return {irange.first, irange.last, jrange.first, jrange.last, trange.first, trange.last};
}

// Julia's advection_serial!: the master does it all (it maps q and u too; its myrange would
// be empty, since it is not in procs(q), so the ranges are spelled out).
void serial_verbose(const Array& q, const Array& u) {
  vscale::IndexRange irange{0, q.size(0)}, jrange{0, q.size(1)}, trange = kn::time_steps(q);
  std::printf("(irange, jrange, trange) = ([%zu, %zu), [%zu, %zu), [%zu, %zu))\n", irange.first, irange.last,
              jrange.first, jrange.last, trange.first, trange.last);
  std::fflush(stdout);
  kn::advection_chunk(q, u, irange, jrange, trange);
}

// Julia's advection_parallel!: one @sync @distributed loop over the columns per time step.
void advection_parallel(const Array& q, const Array& u) {
  for (long t = 0; t + 1 < static_cast<long>(q.size(2)); ++t) {
    vscale::distributed_for(vscale::IndexRange{0, static_cast<long>(q.size(1))},
                            vscale::closure(
                                [](const Array& qq, const Array& uu, long tt, long j) {
                                  kn::advection_column(qq, uu, static_cast<std::size_t>(j), static_cast<std::size_t>(tt));
                                },
                                q, u, t))
        .wait();
  }
}

// Julia's advection_shared!: one call per participating process, all waited for.
std::vector<std::array<std::size_t, 6>> advection_shared(const Array& q, const Array& u) {
  std::vector<vscale::Future<std::array<std::size_t, 6>>> calls;
  for (int p : vscale::procs(q)) calls.push_back(vscale::remotecall(p, shared_chunk_verbose, q, u));
  std::vector<std::array<std::size_t, 6>> ranges;
  for (auto& c : calls) ranges.push_back(c.fetch());
  return ranges;
}

// Zero the computed time slices (q(:, :, 1:end)) so that the next version starts afresh.
void reset(const Array& q) {
  const std::size_t slice = q.size(0) * q.size(1);
  std::memset(q.data() + slice, 0, (q.size() - slice) * sizeof(double));
}

}  // namespace

int main(int argc, char** argv) {
  vscale::Session session(argc, argv);
  if (vscale::nworkers() < 3) vscale::addprocs(3 - vscale::nworkers());  // like `julia -p 3`

  const std::size_t n1 = 12, n2 = 10, nt = 4;
  Array q({n1, n2, nt}, vscale::init(fill_q));
  Array u({n1, n2, nt}, vscale::init(fill_u));
  std::cout << "q and u: " << n1 << " x " << n2 << " x " << nt << " SharedArrays on processes";
  for (int p : vscale::procs(q)) std::cout << ' ' << p;
  std::cout << " (the third dimension is time)\n";

  // The expected answer: q(i,j,t) = q(i,j,0) + u(i,j,0) + ... + u(i,j,t-1).
  std::vector<double> expected(q.size());
  for (std::size_t t = 0; t < nt; ++t)
    for (std::size_t j = 0; j < n2; ++j)
      for (std::size_t i = 0; i < n1; ++i)
        expected[i + n1 * (j + n2 * t)] =
            t == 0 ? q0_at(i, j) : expected[i + n1 * (j + n2 * (t - 1))] + u_at(i, j, t - 1);

  std::cout << "\nadvection_serial (the master alone):\n" << std::flush;
  serial_verbose(q, u);
  const std::vector<double> serial(q.data(), q.data() + q.size());
  check(serial == expected, "serial: q(i,j,t) = q(i,j,0) + u(i,j,0) + ... + u(i,j,t-1) everywhere");

  std::cout << "\nadvection_parallel (one distributed_for per time step):\n" << std::flush;
  reset(q);
  advection_parallel(q, u);
  const std::vector<double> per_step(q.data(), q.data() + q.size());
  check(per_step == serial, "distributed_per_step gives the same array as serial, bit for bit");

  std::cout << "\nadvection_shared (one call per process in procs(q), each over its own columns):\n" << std::flush;
  reset(q);
  const auto ranges = advection_shared(q, u);
  const std::vector<double> shared(q.data(), q.data() + q.size());
  check(shared == serial, "shared_chunks gives the same array as serial, bit for bit");

  // The chunks must tile the columns in procs(q) order, each over all rows and time steps.
  bool tiled = ranges.size() == vscale::procs(q).size();
  std::size_t next = 0;
  for (const auto& r : ranges) {
    tiled = tiled && r[0] == 0 && r[1] == n1 && r[2] == next && r[3] >= r[2] && r[4] == 0 && r[5] == nt - 1;
    next = r[3];
  }
  check(tiled && next == n2, "the workers' column ranges tile [0, " + std::to_string(n2) + ") in order (myrange)");
  check(kn::split_columns(n2, 3, 1).last == 3 && kn::split_columns(n2, 3, 2).last == 7,
        "10 columns over 3 processes split at 3 and 7, like Julia's round.(range(0, 10, length = 4))");

  std::cout << (failures ? "\nadvection: FAILED\n" : "\nadvection: all three versions agree\n");
  return failures ? 1 : 0;
}
