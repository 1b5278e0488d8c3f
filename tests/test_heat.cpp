// The heat stencil kernel (kernels/heat.hpp): per_step and persistent on SharedArrays equal
// serial on plain memory bit for bit (even and odd grid sizes and step counts, 1 and 2 threads
// per process), the split of planes follows localindices, and the physics: a hot centre
// spreads symmetrically inside its light cone, total heat is conserved until it reaches the
// cold boundary and decreases after, no value leaves [0, 1]. Run with 2 workers
// (tests/test_heat.args).
#include <doctest/doctest.h>

#include <heat.hpp>
#include <vscale/barrier.hpp>
#include <vscale/vscale.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

namespace kn = vscale::kernels;
using Array = vscale::SharedArray<double, 3>;
using View = kn::Grid3<double>;

// Two plain n^3 arrays and views on them: the serial reference.
struct Plain {
  std::vector<double> a, b;
  View va, vb;
  explicit Plain(std::size_t n) : a(n * n * n), b(n * n * n), va{a.data(), n, n, n}, vb{b.data(), n, n, n} {}
};

// Values with no short binary expansion (so every rounding is exercised), the same on every
// process; the boundary is not zero either.
double rough(std::size_t i, std::size_t j, std::size_t k) {
  const std::uint64_t h = (i * 73856093u) ^ (j * 19349663u) ^ (k * 83492791u);
  return static_cast<double>(h % 1000) / 997.0;
}

template <class A, class B>
double max_abs_diff(const A& x, const B& y) {
  double worst = 0;
  for (std::size_t k = 0; k < x.size(2); ++k)
    for (std::size_t j = 0; j < x.size(1); ++j)
      for (std::size_t i = 0; i < x.size(0); ++i) {
        const double d = std::fabs(x(i, j, k) - y(i, j, k));
        if (!(d <= worst)) worst = std::isnan(d) ? HUGE_VAL : d;
      }
  return worst;
}

// Serial on plain memory from rough(); the result.
std::vector<double> serial_result(std::size_t n, std::size_t steps) {
  Plain p(n);
  kn::heat_fill(p.va, {0, n}, rough);
  kn::heat_fill(p.vb, {0, n}, [](std::size_t, std::size_t, std::size_t) { return -1.0; });  // overwritten
  kn::heat_serial(p.va, p.vb, steps);
  return steps % 2 ? p.b : p.a;
}

// SharedArrays a (from rough()) and b (garbage that the first step must overwrite everywhere).
std::pair<Array, Array> shared_inputs(std::size_t n) {
  Array a({n, n, n}), b({n, n, n});
  kn::heat_fill(a, {0, n}, rough);
  kn::heat_fill(b, {0, n}, [](std::size_t, std::size_t, std::size_t) { return -1.0; });
  return {a, b};
}

double diff_to(const Array& x, std::vector<double>& ref) {
  View v{ref.data(), x.size(0), x.size(1), x.size(2)};
  return max_abs_diff(x, v);
}

}  // namespace

TEST_CASE("heat.planes_of_part.tile_and_follow_localindices") {
  for (std::size_t plane : {1u, 7u, 24u * 24u})
    for (std::size_t nplanes : {1u, 2u, 17u, 24u, 100u})
      for (std::size_t parts : {1u, 2u, 3u, 5u, 16u}) {
        CAPTURE(plane);
        CAPTURE(nplanes);
        CAPTURE(parts);
        std::size_t next = 0;
        for (std::size_t idx = 1; idx <= parts; ++idx) {
          const vscale::IndexRange r = kn::heat_planes_of_part(plane, nplanes, parts, idx);
          const vscale::IndexRange cells = vscale::detail::split_1dim(plane * nplanes, parts, idx - 1);
          if (r.empty()) continue;  // (more parts than cells, or than planes)
          REQUIRE(r.first == next);  // contiguous, in order
          for (std::size_t k : r) {  // each plane's first cell is in this part's localindices
            CHECK(k * plane >= cells.first);
            CHECK(k * plane < cells.last);
          }
          next = r.last;
        }
        CHECK(next == nplanes);  // every plane once
      }
  CHECK(kn::heat_planes_of_part(0, 5, 2, 1).empty());
  CHECK(kn::heat_planes_of_part(10, 5, 2, 0).empty());
}

TEST_CASE("heat.my_planes_on_workers") {
  const std::size_t n = 17;
  Array a({n, n, n});
  std::size_t next = 0;
  for (int p : vscale::procs(a)) {
    auto r = vscale::remotecall_fetch(p, [](const Array& s) { return kn::heat_my_planes(s); }, a);
    CHECK(r.first == next);
    next = r.last;
  }
  CHECK(next == n);
  CHECK(kn::heat_my_planes(a).empty());  // the master does not take part
}

TEST_CASE("heat.serial_shared_equals_plain") {
  // The same loop on SharedArrays (on the master) and on plain memory.
  for (std::size_t n : {17u, 24u}) {
    CAPTURE(n);
    auto ref = serial_result(n, 5);
    auto [a, b] = shared_inputs(n);
    kn::heat_serial(a, b, 5);
    CHECK(diff_to(kn::heat_result(a, b, 5), ref) == 0.0);
  }
}

TEST_CASE("heat.per_step_equals_serial") {
  for (int threads : {1, 2})
    for (std::size_t n : {17u, 24u})
      for (std::size_t steps : {1u, 4u, 7u}) {
        CAPTURE(threads);
        CAPTURE(n);
        CAPTURE(steps);
        auto ref = serial_result(n, steps);
        auto [a, b] = shared_inputs(n);
        kn::heat_per_step(a, b, steps, threads);
        CHECK(diff_to(kn::heat_result(a, b, steps), ref) == 0.0);
      }
}

TEST_CASE("heat.persistent_equals_serial") {
  for (int threads : {1, 2})
    for (std::size_t n : {17u, 24u})
      for (std::size_t steps : {1u, 4u, 7u}) {
        CAPTURE(threads);
        CAPTURE(n);
        CAPTURE(steps);
        auto ref = serial_result(n, steps);
        auto [a, b] = shared_inputs(n);
        vscale::Barrier bar(a);
        kn::heat_persistent(a, b, steps, bar, threads);
        CHECK(diff_to(kn::heat_result(a, b, steps), ref) == 0.0);
        // The barrier is reusable: a second run from the same start gives the same result.
        kn::heat_fill(a, {0, n}, rough);
        kn::heat_persistent(a, b, steps, bar, threads);
        CHECK(diff_to(kn::heat_result(a, b, steps), ref) == 0.0);
      }
}

TEST_CASE("heat.persistent_three_participants") {
  // More processes than the default: a barrier over 3 (one of them the master) and planes
  // split three ways.
  const std::size_t n = 24, steps = 6;
  std::vector<int> who = {1};
  for (int w : vscale::workers()) who.push_back(w);
  Array a({n, n, n}, vscale::pids(who)), b({n, n, n}, vscale::pids(who));
  kn::heat_fill(a, {0, n}, rough);
  vscale::Barrier bar(a);
  kn::heat_persistent(a, b, steps, bar);
  auto ref = serial_result(n, steps);
  CHECK(diff_to(kn::heat_result(a, b, steps), ref) == 0.0);
}

TEST_CASE("heat.bad_arguments") {
  Array a({8, 8, 8}), b({8, 8, 9});
  CHECK_THROWS_AS(kn::heat_per_step(a, b, 1), vscale::UsageError);
  Array c({8, 8, 8});
  vscale::Barrier other(std::vector<int>{1});
  CHECK_THROWS_WITH_AS(kn::heat_persistent(a, c, 1, other), doctest::Contains("procs(a)"), vscale::UsageError);
}

TEST_CASE("heat.physics.hot_centre") {
  // 17^3, a unit of heat in the centre (8,8,8), everything else (boundary included) at 0.
  // Values after s steps are multiples of 8^-s, so for these few steps every sum is exact and
  // the checks can ask for equality.
  const std::size_t n = 17, c = 8, steps = 12;
  Plain p(n);
  Array a({n, n, n}), b({n, n, n});
  auto hot = [&](std::size_t i, std::size_t j, std::size_t k) { return i == c && j == c && k == c ? 1.0 : 0.0; };
  kn::heat_fill(p.va, {0, n}, hot);
  kn::heat_fill(a, {0, n}, hot);
  vscale::Barrier bar(a);
  double previous_total = 1.0;
  for (std::size_t s = 1; s <= steps; ++s) {
    CAPTURE(s);
    kn::heat_fill(p.va, {0, n}, hot);
    kn::heat_serial(p.va, p.vb, s);
    const View& u = kn::heat_result(p.va, p.vb, s);
    // The persistent variant agrees at every step count.
    kn::heat_fill(a, {0, n}, hot);
    kn::heat_persistent(a, b, s, bar);
    CHECK(max_abs_diff(kn::heat_result(a, b, s), u) == 0.0);

    double total = 0, lo = 1, hi = 0;
    bool symmetric = true, in_cone = true;
    for (std::size_t k = 0; k < n; ++k)
      for (std::size_t j = 0; j < n; ++j)
        for (std::size_t i = 0; i < n; ++i) {
          const double v = u(i, j, k);
          total += v;
          lo = std::min(lo, v);
          hi = std::max(hi, v);
          // Mirror images and axis swaps of the cube hold the same value.
          symmetric &= v == u(n - 1 - i, j, k) && v == u(i, n - 1 - j, k) && v == u(i, j, n - 1 - k) &&
                       v == u(j, i, k) && v == u(k, j, i) && v == u(i, k, j);
          // Heat travels one cell per step: nonzero exactly within Manhattan distance s of the
          // centre (c0 > 0 keeps what a cell had), and never on the boundary.
          const std::size_t dist = static_cast<std::size_t>(std::abs(long(i) - long(c)) + std::abs(long(j) - long(c)) +
                                                            std::abs(long(k) - long(c)));
          const bool interior = i > 0 && j > 0 && k > 0 && i < n - 1 && j < n - 1 && k < n - 1;
          if (!interior || dist > s) in_cone &= v == 0.0;
          if (interior && dist <= s) in_cone &= v > 0.0;
        }
    CHECK(symmetric);
    CHECK(in_cone);
    CHECK(lo >= 0.0);  // the maximum principle
    CHECK(hi <= 1.0);
    // The heat reaches the cells next to the boundary (index 1, distance 7) at step 7 and
    // leaks into the cold boundary from step 8 on.
    if (s <= 7)
      CHECK(total == 1.0);
    else
      CHECK(total < previous_total);
    previous_total = total;
  }
}
