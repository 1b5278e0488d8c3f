// Threads inside every process (-t): calls run in the process's TBB arena, several at once;
// tbb::parallel_for inside a call stays in that arena; the public API works from many threads
// and TBB tasks at once (the manual's feeder pattern, pmap and channels from several threads);
// distributed_for and pmap in threads mode. Run with -p 2 -t 3.
#include <doctest/doctest.h>

#include <tbb/enumerable_thread_specific.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <vscale/vscale.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <functional>
#include <mutex>
#include <numeric>
#include <set>
#include <thread>
#include <vector>

#include "test_util.hpp"

using test_util::w1;
using test_util::w2;

namespace {
constexpr int kThreads = 3;  // tests/test_threads.args

// Several calls blocked at once on one worker: each waits until `n` calls are in, or gives up
// after a few seconds. Returns {arena slot index, arena concurrency} of the call's thread.
std::atomic<int> g_inside{0};
std::vector<int> rendezvous(int n) {
  g_inside.fetch_add(1);
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (g_inside.load() < n && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  const int met = g_inside.load() >= n;
  return {tbb::this_task_arena::current_thread_index(), tbb::this_task_arena::max_concurrency(), met};
}
}  // namespace

TEST_CASE("threads.every_process_has_its_arena") {
  CHECK(vscale::nthreads() == kThreads);
  for (int w : vscale::workers()) {
    CHECK(vscale::remotecall_fetch(w, [] { return vscale::nthreads(); }) == kThreads);
    // A call runs inside the arena: a parallel_for there sees kThreads threads.
    CHECK(vscale::remotecall_fetch(w, [] { return tbb::this_task_arena::max_concurrency(); }) == kThreads);
  }
}

TEST_CASE("threads.one_worker_serves_several_calls_at_once_in_its_arena") {
  const int w = w1();
  vscale::remotecall_fetch(w, [] { g_inside = 0; });
  std::vector<vscale::Future<std::vector<int>>> calls;
  for (int k = 0; k < kThreads; ++k) calls.push_back(vscale::remotecall(w, rendezvous, kThreads));
  std::set<int> slots;
  for (auto& c : calls) {
    auto r = c.fetch();
    CHECK(r[2] == 1);            // all kThreads calls were running at the same time
    CHECK(r[0] >= 0);            // on a thread of the arena (not a helper grown outside it)
    CHECK(r[1] == kThreads);
    slots.insert(r[0]);
  }
  CHECK(slots.size() == static_cast<std::size_t>(kThreads));  // each in its own arena slot
  // One executor per thread of the arena, never more.
  CHECK(vscale::remotecall_fetch(w, [] { return vscale::detail::stats().arena_executors; }) == kThreads);
}

TEST_CASE("threads.parallel_for_inside_a_call_uses_the_arena") {
  // Items that sleep leave room for the arena's other threads to take some: more than one
  // thread must show up, and never more than the arena has.
  auto n = vscale::remotecall_fetch(w1(), [] {
    tbb::enumerable_thread_specific<int> seen(0);
    tbb::parallel_for(0, 60, [&](int) {
      seen.local() = 1;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    });
    return static_cast<int>(seen.size());
  });
  CHECK(n >= 2);
  CHECK(n <= kThreads);
}

TEST_CASE("threads.back_to_back_calls_each_get_every_thread") {
  // A call that arrives while the previous one is finishing must still get the whole arena:
  // an idle executor parked in an arena slot once kept a TBB worker out, and such a call ran
  // on kThreads - 1 threads (about one call in ten with -p 1 -t 2). Each item waits until
  // every thread of the arena has shown up (or 5 s pass): a TBB worker that is slow to wake
  // on a loaded machine still joins in time, and a slot kept out of reach still shows, as a
  // call that ran on fewer threads.
  int short_calls = 0;
  for (int k = 0; k < 30 && short_calls == 0; ++k) {
    auto n = vscale::remotecall_fetch(w1(), [] {
      tbb::enumerable_thread_specific<int> seen(0);
      std::atomic<int> joined{0};
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      tbb::parallel_for(0, 40, [&](int) {
        if (seen.local() == 0) {
          seen.local() = 1;
          joined.fetch_add(1);
        }
        while (joined.load() < kThreads && std::chrono::steady_clock::now() < until)
          std::this_thread::sleep_for(std::chrono::microseconds(200));
      }, tbb::simple_partitioner());
      return static_cast<int>(seen.size());
    });
    if (n != kThreads) ++short_calls;
  }
  CHECK(short_calls == 0);
}

TEST_CASE("threads.feeder_pattern_from_tbb_tasks") {
  // The manual's feeder: one local task per worker, each fetching the next index from a
  // shared counter and making a remote call for it, until all are done.
  const long n = 400;
  std::vector<long> out(static_cast<std::size_t>(n), -1);
  std::atomic<long> next{0};
  const auto ws = vscale::workers();
  tbb::parallel_for(std::size_t(0), ws.size() * 2, [&](std::size_t k) {
    const int w = ws[k % ws.size()];
    for (long i; (i = next.fetch_add(1)) < n;)
      out[static_cast<std::size_t>(i)] = vscale::remotecall_fetch(w, [](long x) { return x * x + vscale::myid() * 0; }, i);
  });
  for (long i = 0; i < n; ++i) CHECK(out[static_cast<std::size_t>(i)] == i * i);
}

TEST_CASE("threads.pmap_and_channels_from_several_threads") {
  vscale::RemoteChannel<long> ch(8, w2());
  std::atomic<long> sum_taken{0};
  std::vector<std::thread> ts;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      std::vector<long> xs(50);
      std::iota(xs.begin(), xs.end(), 100L * t);
      auto r = vscale::pmap([](long x) { return 2 * x; }, xs, {.batch_size = 3});
      for (std::size_t k = 0; k < xs.size(); ++k)
        if (r[k] != 2 * xs[k]) bad.fetch_add(1);
    });
  for (int t = 0; t < 3; ++t)
    ts.emplace_back([&] {
      for (long k = 1; k <= 100; ++k) ch.put(k);
    });
  for (int t = 0; t < 3; ++t)
    ts.emplace_back([&] {
      for (int k = 0; k < 100; ++k) sum_taken.fetch_add(ch.take());
    });
  for (auto& t : ts) t.join();
  CHECK(bad.load() == 0);
  CHECK(sum_taken.load() == 3 * 5050);
  CHECK(!ch.isready());
}

TEST_CASE("threads.distributed_for_threads_mode") {
  const long n = 10'000;
  vscale::SharedArray<long, 1> a(static_cast<std::size_t>(n));
  vscale::distributed_for(vscale::threaded, {0, n},
                          vscale::closure([](const vscale::SharedArray<long, 1>& s, long i) { s[static_cast<std::size_t>(i)] = 3 * i; }, a))
      .wait();
  for (long i = 0; i < n; ++i) REQUIRE(a[static_cast<std::size_t>(i)] == 3 * i);

  const long total = vscale::distributed_for(vscale::threaded, {0, n}, [](long i) { return i; }, std::plus<>{});
  CHECK(total == n * (n - 1) / 2);
  // Floating point: the same answer every time (deterministic grouping).
  auto f = [](long i) { return 1.0 / static_cast<double>(i + 1); };
  const double h1 = vscale::distributed_for(vscale::threaded, {0, n}, f, std::plus<>{});
  const double h2 = vscale::distributed_for(vscale::threaded, {0, n}, f, std::plus<>{});
  CHECK(h1 == h2);
  CHECK(std::abs(h1 - (std::log(static_cast<double>(n)) + 0.5772156649)) < 1e-3);
  // Empty and one-element ranges.
  CHECK(vscale::distributed_for(vscale::threaded, {5, 5}, [](long i) { return i; }, std::plus<>{}) == 0);
  CHECK(vscale::distributed_for(vscale::threaded, {7, 8}, [](long i) { return i; }, std::plus<>{}) == 7);
}

TEST_CASE("threads.pmap_threads_mode") {
  std::vector<long> xs(1000);
  std::iota(xs.begin(), xs.end(), 0L);
  auto r = vscale::pmap(vscale::threaded, [](long x) { return x + 1; }, xs);
  for (std::size_t k = 0; k < xs.size(); ++k) REQUIRE(r[k] == xs[k] + 1);
  // Batches really are split over a worker's threads: several threads show up per batch.
  auto who = vscale::pmap(
      vscale::threaded,
      [](long) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        return static_cast<long>(std::hash<std::thread::id>{}(std::this_thread::get_id()));
      },
      std::vector<long>(60, 0), {.batch_size = 30});
  std::set<long> distinct(who.begin(), who.end());
  CHECK(distinct.size() > vscale::workers().size());
}
