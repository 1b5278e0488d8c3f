// distributed_for: Julia's `@distributed for` (waitable) and `@distributed (op) for`: every
// index once, one contiguous chunk per worker in splitrange order, reductions, empty ranges,
// exceptions, and splitrange itself.
#include <doctest/doctest.h>

#include <vscale/vscale.hpp>

#include "test_util.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using test_util::eventually;

using Counts = vscale::SharedArray<int, 1>;

// Which worker ran each index of [0, n), as a vector (0 where none did).
std::vector<int> owners_of(long n) {
  Counts owner(static_cast<std::size_t>(n));
  vscale::distributed_for({0, n}, vscale::closure([](const Counts& o, long i) {
                            o[static_cast<std::size_t>(i)] = vscale::myid();
                          }, owner))
      .wait();
  return {owner.data(), owner.data() + n};
}

// The chunks [lo, hi) that the owners form, each with its owner, in index order.
struct Block {
  int pid;
  long lo, hi;
};
std::vector<Block> blocks_of(const std::vector<int>& owner) {
  std::vector<Block> out;
  for (long i = 0; i < static_cast<long>(owner.size()); ++i) {
    int p = owner[static_cast<std::size_t>(i)];
    if (out.empty() || out.back().pid != p)
      out.push_back({p, i, i + 1});
    else
      out.back().hi = i + 1;
  }
  return out;
}

// Julia's splitrange blocks of n over the current workers.
void check_julia_split(long n) {
  CAPTURE(n);
  auto ws = vscale::workers();
  const long np = static_cast<long>(ws.size());
  auto owner = owners_of(n);
  auto blocks = blocks_of(owner);
  const long each = n / np, extras = n % np;
  const long nchunks = each > 0 ? np : extras;
  REQUIRE(static_cast<long>(blocks.size()) == nchunks);
  long lo = 0;
  for (long k = 0; k < nchunks; ++k) {
    const long len = each + (k < extras ? 1 : 0);
    CHECK(blocks[static_cast<std::size_t>(k)].pid == ws[static_cast<std::size_t>(k)]);
    CHECK(blocks[static_cast<std::size_t>(k)].lo == lo);
    CHECK(blocks[static_cast<std::size_t>(k)].hi == lo + len);
    lo += len;
  }
  CHECK(lo == n);
  // Each worker appears in at most one block: its indices are one contiguous chunk.
  std::vector<int> seen;
  for (const auto& b : blocks) {
    CHECK(std::find(seen.begin(), seen.end(), b.pid) == seen.end());
    seen.push_back(b.pid);
  }
}

long square_mod(long i) { return (i * i) % 1009; }

}  // namespace

TEST_CASE("distributed_for.splitrange") {
  using vscale::detail::splitrange;
  auto eq = [](const std::vector<std::pair<long, long>>& got, const std::vector<std::pair<long, long>>& want) {
    if (got.size() != want.size()) return false;
    for (std::size_t k = 0; k < got.size(); ++k)
      if (got[k].first != want[k].first || got[k].second != want[k].second) return false;
    return true;
  };
  CHECK(eq(splitrange(0, 10, 3), {{0, 4}, {4, 7}, {7, 10}}));
  CHECK(eq(splitrange(0, 2, 3), {{0, 1}, {1, 2}}));
  CHECK(eq(splitrange(0, 9, 3), {{0, 3}, {3, 6}, {6, 9}}));
  CHECK(eq(splitrange(0, 11, 3), {{0, 4}, {4, 8}, {8, 11}}));
  CHECK(eq(splitrange(5, 15, 3), {{5, 9}, {9, 12}, {12, 15}}));
  CHECK(eq(splitrange(-3, 3, 2), {{-3, 0}, {0, 3}}));
  CHECK(eq(splitrange(0, 5, 1), {{0, 5}}));
  CHECK(eq(splitrange(0, 1, 4), {{0, 1}}));
  CHECK(splitrange(0, 0, 3).empty());
  CHECK(splitrange(7, 3, 3).empty());  // reversed: empty
  CHECK(splitrange(0, 10, 0).empty());
}

TEST_CASE("distributed_for.every_index_once") {
  for (long n : {1L, 2L, 7L, 1000L, 10007L}) {
    CAPTURE(n);
    Counts visits(static_cast<std::size_t>(n));
    auto done = vscale::distributed_for({0, n}, vscale::closure([](const Counts& v, long i) {
                                          v[static_cast<std::size_t>(i)] += 1;
                                        }, visits));
    done.wait();
    CHECK(done.isready());
    long wrong = 0;
    for (int x : vscale::sdata(visits)) wrong += x != 1;
    CHECK(wrong == 0);
  }
}

TEST_CASE("distributed_for.offset_range") {
  // A range that does not start at 0: body(i) sees the range's own indices.
  Counts visits(30);
  vscale::distributed_for({10, 25}, vscale::closure([](const Counts& v, long i) {
                            v[static_cast<std::size_t>(i)] += 1;
                          }, visits))
      .wait();
  for (std::size_t i = 0; i < 30; ++i) CHECK(visits[i] == (i >= 10 && i < 25 ? 1 : 0));
}

TEST_CASE("distributed_for.chunks.divisible") {
  const long np = vscale::nworkers();
  check_julia_split(4 * np);
}

TEST_CASE("distributed_for.chunks.remainder") {
  const long np = vscale::nworkers();
  check_julia_split(4 * np + 1);
  if (np > 2) check_julia_split(4 * np + np - 1);
  check_julia_split(1001);
}

TEST_CASE("distributed_for.chunks.fewer_than_workers") {
  const long np = vscale::nworkers();
  check_julia_split(1);
  if (np > 1) check_julia_split(np - 1);
  check_julia_split(np);
}

TEST_CASE("distributed_for.reduce.plus") {
  CHECK(vscale::distributed_for({0, 1000}, [](long i) { return i; }, std::plus<>{}) == 499500);
  CHECK(vscale::distributed_for({1, 2}, [](long i) { return i; }, std::plus<>{}) == 1);
  // A double result, and a function pointer as the body.
  CHECK(vscale::distributed_for({0, 100}, [](long i) { return 0.5 * static_cast<double>(i); }, std::plus<>{}) ==
        doctest::Approx(2475.0));
  long want = 0;
  for (long i = 0; i < 5000; ++i) want += square_mod(i);
  CHECK(vscale::distributed_for({0, 5000}, &square_mod, std::plus<>{}) == want);
}

TEST_CASE("distributed_for.reduce.max") {
  auto mx = [](long a, long b) { return std::max(a, b); };
  long want = 0;
  for (long i = 0; i < 777; ++i) want = std::max(want, (i * 7919) % 1000);
  CHECK(vscale::distributed_for({0, 777}, [](long i) { return (i * 7919) % 1000; }, mx) == want);
  // The maximum lies in the first chunk.
  CHECK(vscale::distributed_for({0, 300}, [](long i) { return -i; }, mx) == 0);
}

TEST_CASE("distributed_for.reduce.order") {
  // Non-commutative reducer (concatenation): the caller reduces the chunks in order, so the
  // result is the sequential one.
  auto cat = [](std::string a, std::string b) { return a + b; };
  auto r = vscale::distributed_for({0, 26}, [](long i) { return std::string(1, static_cast<char>('a' + i)); }, cat);
  CHECK(r == "abcdefghijklmnopqrstuvwxyz");
}

TEST_CASE("distributed_for.reduce.count_heads") {
  // The manual: nheads = @distributed (+) for i = 1:200000000 Int(rand(Bool)) end (smaller here).
  const long n = 200000;
  int heads = vscale::distributed_for({0, n}, [](long) {
    thread_local std::mt19937_64 g(std::random_device{}());
    return static_cast<int>(g() & 1);
  }, std::plus<>{});
  const double sigma = std::sqrt(n * 0.25);
  CHECK(std::abs(heads - n / 2.0) <= 6 * sigma);
}

TEST_CASE("distributed_for.empty_range") {
  auto w = vscale::distributed_for({0, 0}, [](long) { throw std::logic_error("body ran on an empty range"); });
  CHECK_NOTHROW(w.wait());
  CHECK(w.isready());
  CHECK_NOTHROW(vscale::distributed_for({5, 2}, [](long) { throw std::logic_error("body ran"); }).wait());
  CHECK(vscale::distributed_for({3, 3}, [](long i) { return i + 1; }, std::plus<>{}) == 0L);
  CHECK(vscale::distributed_for({9, 0}, [](long) { return 2.5; }, std::plus<>{}) == 0.0);
  CHECK(vscale::distributed_for({0, 0}, [](long) { return std::string("x"); },
                                [](std::string a, std::string b) { return a + b; }) == std::string());
  // A default-constructed Waitable is ready.
  vscale::Waitable none;
  CHECK(none.isready());
  CHECK_NOTHROW(none.wait());
}

TEST_CASE("distributed_for.exception.wait") {
  auto ws = vscale::workers();
  auto w = vscale::distributed_for({0, 100}, [](long i) {
    if (i == 0) throw std::runtime_error("index zero refused");
  });
  try {
    w.wait();
    FAIL("wait() did not throw");
  } catch (const vscale::RemoteException& e) {
    CHECK(e.pid() == ws.front());
    CHECK(e.message().find("index zero refused") != std::string::npos);
    CHECK(e.type().find("runtime_error") != std::string::npos);
  }
  // Waiting again throws again (the failure is kept), and the other chunks did finish.
  CHECK_THROWS_AS(w.wait(), vscale::RemoteException);
  CHECK(w.isready());
}

TEST_CASE("distributed_for.exception.reducer") {
  auto ws = vscale::workers();
  try {
    vscale::distributed_for({0, 100}, [](long i) -> long {
      if (i == 99) throw std::out_of_range("last index refused");
      return i;
    }, std::plus<>{});
    FAIL("the reducing distributed_for did not throw");
  } catch (const vscale::RemoteException& e) {
    CHECK(e.pid() == ws.back());
    CHECK(e.message().find("last index refused") != std::string::npos);
  }
  // A reducer that throws (on the worker, inside a chunk).
  CHECK_THROWS_AS(vscale::distributed_for({0, 100}, [](long i) { return i; },
                                          [](long, long) -> long { throw std::runtime_error("bad reducer"); }),
                  vscale::RemoteException);
  // Still usable afterwards.
  CHECK(vscale::distributed_for({0, 10}, [](long i) { return i; }, std::plus<>{}) == 45);
}

TEST_CASE("distributed_for.shared_array_body") {
  // The manual's shared-array loop: a = SharedArray{Float64}(10); @distributed for i = 1:10 a[i] = i end
  vscale::SharedArray<double, 1> a(10);
  vscale::distributed_for({0, 10}, vscale::closure([](const vscale::SharedArray<double, 1>& s, long i) {
                            s[static_cast<std::size_t>(i)] = static_cast<double>(i + 1);
                          }, a))
      .wait();
  for (std::size_t i = 0; i < 10; ++i) CHECK(a[i] == static_cast<double>(i + 1));
  // And a reduction that reads it.
  double sum = vscale::distributed_for({0, 10}, vscale::closure([](const vscale::SharedArray<double, 1>& s, long i) {
                                         return s[static_cast<std::size_t>(i)];
                                       }, a), std::plus<>{});
  CHECK(sum == 55.0);
}

TEST_CASE("distributed_for.no_workers_runs_on_master") {
  // With no workers, workers() == {1} and the loop runs on the master (as in Julia).
  const int had = vscale::nworkers();
  if (had > 0) vscale::rmprocs(vscale::workers());
  REQUIRE(vscale::nworkers() == 0);
  CHECK(vscale::workers() == std::vector<int>{1});
  {
    Counts owner(5);
    vscale::distributed_for({0, 5}, vscale::closure([](const Counts& o, long i) {
                              o[static_cast<std::size_t>(i)] = vscale::myid();
                            }, owner))
        .wait();
    for (std::size_t i = 0; i < 5; ++i) CHECK(owner[i] == 1);
    CHECK(vscale::distributed_for({0, 1000}, [](long i) { return i; }, std::plus<>{}) == 499500);
    CHECK_THROWS_AS(vscale::distributed_for({0, 3}, [](long) { throw std::runtime_error("x"); }).wait(),
                    vscale::RemoteException);
  }
  if (had > 0) {
    auto added = vscale::addprocs(had);
    CHECK(static_cast<int>(added.size()) == had);
  }
  CHECK(vscale::nworkers() == had);
}

TEST_CASE("distributed_for.index_range_from_any_integer") {
  // {0, n} takes an int, a long or a size_t n alike; indices start at 0, so a negative bound is
  // refused at once (UsageError), before anything runs.
  const int n = 10;
  const long m = 20;
  CHECK(vscale::distributed_for({0, n}, [](long i) { return i; }, std::plus<>{}) == 45);
  CHECK(vscale::distributed_for({std::size_t(5), m}, [](long i) { return i; }, std::plus<>{}) == 180);
  CHECK(vscale::IndexRange{3, 7}.size() == 4);
  CHECK(vscale::IndexRange{7, 3}.empty());
  CHECK(vscale::IndexRange{7, 3}.size() == 0);
  const long neg = -1;
  CHECK_THROWS_AS(vscale::distributed_for({neg, 5}, [](long) {}).wait(), vscale::UsageError);
}
