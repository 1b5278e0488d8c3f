// pmap and WorkerPool: input order, batch sizes, empty input, no workers, on_error, failures
// naming the element, retries, pools, progress output; WorkerPool take/put/length/isready and
// remotecall on a pool.
#include <doctest/doctest.h>

#include <unistd.h>

#include <vscale/vscale.hpp>
#include <vscale/pmap.hpp>
#include <vscale/worker_pool.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "test_util.hpp"

namespace {

using Counts = vscale::SharedArray<int, 1>;

// At least two workers for these tests (ctest runs with -p 2).
void ensure_two_workers() {
  if (vscale::nworkers() < 2) vscale::addprocs(2 - vscale::nworkers());
}

std::vector<long> iota_vec(long n) {
  std::vector<long> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0L);
  return v;
}

// Redirects fd 2 into a temporary file for one scope (as tests/test_output.cpp does).

}  // namespace

TEST_CASE("pmap.order_and_batch_sizes") {
  ensure_two_workers();
  const auto xs = iota_vec(1000);
  for (std::size_t bs : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{5000}}) {
    CAPTURE(bs);
    auto r = vscale::pmap([](long x) { return x * x + 1; }, xs, {.batch_size = bs});
    REQUIRE(r.size() == xs.size());
    for (std::size_t i = 0; i < xs.size(); ++i) CHECK(r[i] == xs[i] * xs[i] + 1);
  }
}

TEST_CASE("pmap.work_is_spread_over_workers") {
  ensure_two_workers();
  auto who = vscale::pmap([](long) { return vscale::myid(); }, iota_vec(400), {.batch_size = 1});
  std::set<int> seen(who.begin(), who.end());
  for (int p : seen) CHECK(p >= 2);
  CHECK(seen.size() >= 1);
}

TEST_CASE("pmap.strings_structs_and_closures") {
  ensure_two_workers();
  struct P {
    int a;
    double b;
  };
  std::vector<P> ps;
  for (int i = 0; i < 50; ++i) ps.push_back({i, i * 0.5});
  auto sums = vscale::pmap([](const P& p) { return p.a + p.b; }, ps);
  for (int i = 0; i < 50; ++i) CHECK(sums[static_cast<std::size_t>(i)] == doctest::Approx(i * 1.5));

  std::vector<std::string> words{"a", "bb", "ccc", "", "eeeee"};
  auto lens = vscale::pmap([](const std::string& s) { return s + "!"; }, words, {.batch_size = 2});
  CHECK(lens == std::vector<std::string>{"a!", "bb!", "ccc!", "!", "eeeee!"});

  // A closure with captured data (shipped once per worker and cached there).
  std::vector<double> table(1000);
  for (std::size_t i = 0; i < table.size(); ++i) table[i] = static_cast<double>(i) * 2;
  auto looked = vscale::pmap(vscale::closure([](const std::vector<double>& t, long i) { return t[static_cast<std::size_t>(i)]; }, table),
                             iota_vec(1000), {.batch_size = 3});
  for (std::size_t i = 0; i < looked.size(); ++i) CHECK(looked[i] == table[i]);
}

TEST_CASE("pmap.empty_collection") {
  ensure_two_workers();
  auto r = vscale::pmap([](long x) { return x; }, std::vector<long>{});
  CHECK(r.empty());
}

TEST_CASE("pmap.no_workers_runs_on_master") {
  ensure_two_workers();
  const int before = vscale::nworkers();
  vscale::rmprocs(vscale::workers());
  REQUIRE(vscale::nworkers() == 0);
  auto who = vscale::pmap([](long x) { return x * 10 + vscale::myid(); }, iota_vec(20), {.batch_size = 3});
  for (std::size_t i = 0; i < who.size(); ++i) CHECK(who[i] == static_cast<long>(i) * 10 + 1);
  vscale::addprocs(before);
  CHECK(vscale::nworkers() == before);
  auto again = vscale::pmap([](long x) { return vscale::myid() + 0 * x; }, iota_vec(20), {.batch_size = 1});
  for (int p : again) CHECK(p >= 2);
}

TEST_CASE("pmap.on_error_replaces_failed_elements") {
  ensure_two_workers();
  for (std::size_t bs : {std::size_t{1}, std::size_t{4}, std::size_t{0}}) {
    CAPTURE(bs);
    int calls = 0;
    auto r = vscale::pmap(
        [](long x) {
          if (x % 10 == 3) throw std::runtime_error("bad element " + std::to_string(x));
          return x;
        },
        iota_vec(50),
        {.batch_size = bs, .on_error = [&calls](const std::exception& e) {
           ++calls;
           const auto* re = dynamic_cast<const vscale::RemoteException*>(&e);
           CHECK(re != nullptr);
           if (re) CHECK(re->message().find("bad element") != std::string::npos);
           return -1L;
         }});
    CHECK(calls == 5);
    for (long i = 0; i < 50; ++i) CHECK(r[static_cast<std::size_t>(i)] == (i % 10 == 3 ? -1 : i));
  }
}

TEST_CASE("pmap.typed_on_error_returns_minus_one_for_long_results") {
  // Issue 13: on_error returning -1 (an int) for a pmap of longs was a PmapError listing every
  // failed element at run time; on_error is typed now: its result converts to R (a result that
  // does not convert is a compile error: tests/compile_fail/pmap_on_error_wrong_type.cpp).
  ensure_two_workers();
  const auto xs = iota_vec(300);
  auto f = [](long x) {
    if (x % 7 == 0) throw std::runtime_error("multiple of seven");
    return 10 * x;
  };
  auto r = vscale::pmap(f, xs, {.batch_size = 4, .on_error = [](const std::exception&) { return -1; }});
  REQUIRE(r.size() == xs.size());
  for (long i = 0; i < 300; ++i) CHECK(r[static_cast<std::size_t>(i)] == (i % 7 == 0 ? -1L : 10 * i));
  // A named typed options variable, and an untyped one (no on_error: PmapError).
  vscale::PmapOptionsFor<long> typed;
  typed.on_error = [](const std::exception& e) { return std::string(e.what()).find("seven") != std::string::npos ? -2L : 0L; };
  auto r2 = vscale::pmap(f, xs, typed);
  CHECK(r2[14] == -2);
  CHECK(r2[15] == 150);
  vscale::PmapOptions untyped;
  untyped.batch_size = 10;
  CHECK_THROWS_AS((void)vscale::pmap(f, xs, untyped), vscale::PmapError);
  auto ok = vscale::pmap([](long x) { return x + 1; }, xs, untyped);
  CHECK(ok[299] == 300);
}

TEST_CASE("pmap.failure_propagates_and_names_the_index") {
  ensure_two_workers();
  try {
    (void)vscale::pmap(
        [](long x) {
          if (x == 37) throw std::invalid_argument("thirty-seven");
          return x;
        },
        iota_vec(100), {.batch_size = 5});
    FAIL("pmap should have thrown");
  } catch (const vscale::PmapError& e) {
    CHECK(e.index() == 37);
    CHECK(std::string(e.what()).find("element 37") != std::string::npos);
    CHECK(std::string(e.what()).find("thirty-seven") != std::string::npos);
    CHECK_THROWS_AS(std::rethrow_exception(e.cause()), vscale::RemoteException);
  }
}

TEST_CASE("pmap.without_retry_a_dead_worker_names_the_lost_elements") {
  ensure_two_workers();
  const int before = vscale::nworkers();
  Counts attempts(40);
  // Element 5 kills its worker: it is lost, and so is whatever was queued on that worker
  // with it; the error lists exactly those, and nothing is retried.
  auto f = vscale::closure(
      [](const Counts& a, long i) {
        __atomic_fetch_add(&a[static_cast<std::size_t>(i)], 1, __ATOMIC_SEQ_CST);
        if (i == 5) std::_Exit(3);
        return i;
      },
      attempts);
  std::vector<std::size_t> lost;
  try {
    (void)vscale::pmap(f, iota_vec(40), {.batch_size = 1});
    FAIL("pmap should have thrown");
  } catch (const vscale::PmapError& e) {
    const std::string what = e.what();
    CAPTURE(what);
    lost = e.indices();
    CHECK(e.index() == 5);
    CHECK(what.find("element 5") != std::string::npos);
    CHECK(what.find("exited with code 3") != std::string::npos);
    CHECK(std::is_sorted(lost.begin(), lost.end()));
    CHECK_THROWS_AS(std::rethrow_exception(e.cause()), vscale::ProcessExitedException);
  }
  REQUIRE(!lost.empty());
  CHECK(attempts[5] == 1);  // no retry asked for, none made
  for (std::size_t i = 0; i < 40; ++i) {
    const bool was_lost = std::find(lost.begin(), lost.end(), i) != lost.end();
    if (was_lost) CHECK(attempts[i] <= 1);
    else CHECK(attempts[i] == 1);  // every other element ran exactly once and has its result
  }
  vscale::addprocs(before - vscale::nworkers());
}

TEST_CASE("pmap.several_failures_are_all_named") {
  ensure_two_workers();
  try {
    (void)vscale::pmap(
        [](long x) {
          if (x % 10 == 3) throw std::invalid_argument("ends in three");
          return x;
        },
        iota_vec(40), {.batch_size = 4});
    FAIL("pmap should have thrown");
  } catch (const vscale::PmapError& e) {
    CHECK(e.indices() == std::vector<std::size_t>{3, 13, 23, 33});
    CHECK(e.index() == 3);
    CHECK(std::string(e.what()).find("4 elements failed (3, 13, 23, 33)") != std::string::npos);
  }
}

TEST_CASE("pmap.retry_succeeds") {
  ensure_two_workers();
  Counts attempts(30);
  auto f = vscale::closure(
      [](const Counts& a, long i) {
        // Elements divisible by 4 fail on their first attempt only.
        int k = __atomic_fetch_add(&a[static_cast<std::size_t>(i)], 1, __ATOMIC_SEQ_CST);
        if (i % 4 == 0 && k == 0) throw std::runtime_error("first attempt fails");
        return i * 3;
      },
      attempts);
  using namespace std::chrono_literals;
  auto r = vscale::pmap(f, iota_vec(30), {.batch_size = 1, .retry_delays = {1ms, 1ms}});
  for (long i = 0; i < 30; ++i) CHECK(r[static_cast<std::size_t>(i)] == i * 3);
  for (long i = 0; i < 30; ++i) CHECK(attempts[static_cast<std::size_t>(i)] == (i % 4 == 0 ? 2 : 1));

  // A retry_check that refuses: the failure goes to on_error without retrying.
  Counts attempts2(8);
  auto g = vscale::closure(
      [](const Counts& a, long i) {
        __atomic_fetch_add(&a[static_cast<std::size_t>(i)], 1, __ATOMIC_SEQ_CST);
        if (i == 5) throw std::runtime_error("always");
        return i;
      },
      attempts2);
  auto r2 = vscale::pmap(g, iota_vec(8),
                         {.batch_size = 1,
                          .on_error = [](const std::exception&) { return -7L; },
                          .retry_delays = {1ms, 1ms, 1ms},
                          .retry_check = [](std::exception_ptr) { return false; }});
  CHECK(r2[5] == -7);
  CHECK(attempts2[5] == 1);
}

TEST_CASE("pmap.retry_on_another_worker") {
  ensure_two_workers();
  const int bad = vscale::workers().front();
  auto r = vscale::pmap(
      [bad](long x) {
        if (vscale::myid() == bad) throw std::runtime_error("bad worker");
        return vscale::myid() + 0 * x;
      },
      iota_vec(20), {.batch_size = 1, .retry_delays = std::vector<std::chrono::duration<double>>(10, std::chrono::milliseconds(1))});
  for (int p : r) CHECK(p != bad);
}

TEST_CASE("pmap.pool_restricts_workers") {
  ensure_two_workers();
  const int only = vscale::workers().back();
  vscale::WorkerPool pool({only});
  auto who = vscale::pmap([](long) { return vscale::myid(); }, iota_vec(100), {.batch_size = 1, .pool = &pool});
  for (int p : who) CHECK(p == only);
  CHECK(pool.isready());  // the worker went back
  CHECK(pool.length() == 1);
}

TEST_CASE("pmap.progress_prints_when_not_a_terminal") {
  ensure_two_workers();
  test_util::StderrCapture cap;
  auto r = vscale::pmap([](long x) { return x; }, iota_vec(100), {.batch_size = 10, .progress = true});
  std::string out = cap.contents();
  cap.restore();
  CHECK(r.size() == 100);
  CHECK(out.find("pmap: 100/100") != std::string::npos);
  CHECK(out.find('\r') == std::string::npos);

  test_util::StderrCapture quiet;
  (void)vscale::pmap([](long x) { return x; }, iota_vec(100), {.batch_size = 10});
  CHECK(quiet.contents().empty());
}

TEST_CASE("worker_pool.take_put_length_isready") {
  ensure_two_workers();
  auto ws = vscale::workers();
  vscale::WorkerPool pool({ws[0], ws[1]});
  CHECK(pool.length() == 2);
  CHECK(pool.isready());
  int a = pool.take();
  int b = pool.take();
  CHECK(a != b);
  CHECK(!pool.isready());
  CHECK(pool.length() == 2);  // taken workers are still members
  CHECK(!pool.try_take());
  pool.put(a);
  CHECK(pool.isready());
  CHECK(pool.take() == a);
  pool.put(a);
  pool.put(b);
  CHECK(pool.workers() == std::vector<int>{std::min(a, b), std::max(a, b)});

  // take waits until another thread puts a worker back.
  int x = pool.take(), y = pool.take();
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    pool.put(x);
  });
  CHECK(pool.take() == x);
  t.join();
  pool.put(x);
  pool.put(y);

  vscale::WorkerPool empty;
  CHECK(empty.length() == 0);
  CHECK_THROWS_AS(empty.take(), vscale::UsageError);
}

TEST_CASE("worker_pool.remotecall_on_a_pool") {
  ensure_two_workers();
  const int only = vscale::workers().front();
  vscale::WorkerPool pool({only});
  CHECK(vscale::remotecall_fetch(pool, [](int v) { return v * 2 + vscale::myid() * 0; }, 21) == 42);
  CHECK(vscale::remotecall_fetch(pool, [] { return vscale::myid(); }) == only);
  CHECK(pool.isready());
  auto fut = vscale::remotecall(pool, [] { return vscale::myid(); });
  CHECK(fut.fetch() == only);
  // The worker goes back once the call has finished.
  CHECK(pool.take() == only);
  pool.put(only);
  CHECK_THROWS_AS(vscale::remotecall_fetch(pool, [] { return 1 / (vscale::myid() < 0 ? 1 : throw std::runtime_error("x")); }),
                  vscale::RemoteException);
  CHECK(pool.isready());

  auto& def = vscale::default_worker_pool();
  CHECK(def.workers() == vscale::workers());
}

TEST_CASE("worker_pool.shared_across_processes") {
  ensure_two_workers();
  auto ws = vscale::workers();
  vscale::WorkerPool pool({ws[0], ws[1]});
  // A worker takes from the master's pool: the master sees the id taken.
  const int taken = vscale::remotecall_fetch(ws[0], [](const vscale::WorkerPool& p) { return p.take(); }, pool);
  CHECK(pool.length() == 2);
  const int other = pool.take();
  CHECK(other != taken);
  CHECK(!pool.isready());
  // A take on a worker waits there until the master puts one back.
  auto waiting = vscale::remotecall(ws[1], [](const vscale::WorkerPool& p) { return p.take(); }, pool);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(!waiting.isready());
  pool.put(other);
  CHECK(waiting.fetch() == other);
  // Give everything back from the workers, then the pool is whole again on the master.
  vscale::remotecall_fetch(ws[1], [](const vscale::WorkerPool& p, int a, int b) { p.put(a); p.put(b); return 0; }, pool,
                           taken, other);
  CHECK(pool.isready());
  CHECK(pool.try_take().has_value());
  CHECK(pool.try_take().has_value());
  CHECK(!pool.try_take());
  for (int w : ws) pool.put(w);
  // Copies name the same pool.
  vscale::WorkerPool copy = pool;
  CHECK(copy == pool);
  copy.remove(ws[1]);
  CHECK(pool.workers() == std::vector<int>{ws[0]});
}

TEST_CASE("worker_pool.a_process_that_dies_holding_a_worker_gives_it_back") {
  ensure_two_workers();
  auto ws = vscale::workers();
  vscale::WorkerPool pool({ws[0], ws[1]});
  const int taker = vscale::addprocs(1).at(0);
  // The new process takes one and dies without putting it back.
  const int held = vscale::remotecall_fetch(taker, [](const vscale::WorkerPool& p) { return p.take(); }, pool);
  vscale::rmprocs({taker});
  // Both come out again: the held one was given back when its taker was found gone.
  std::set<int> got{pool.take(), pool.take()};
  CHECK(got == std::set<int>{ws[0], ws[1]});
  CHECK(got.count(held) == 1);
  pool.put(ws[0]);
  pool.put(ws[1]);
}

TEST_CASE("worker_pool.a_taken_worker_that_dies_leaves_the_pool") {
  ensure_two_workers();
  const int doomed = vscale::addprocs(1).at(0);
  vscale::WorkerPool pool({doomed});
  CHECK(pool.take() == doomed);
  vscale::rmprocs({doomed});
  CHECK(pool.length() == 0);
  // Its last member gone, take says so instead of waiting forever.
  CHECK_THROWS_AS((void)pool.take(), vscale::UsageError);
  // Likewise for a take already waiting when the member dies.
  const int doomed2 = vscale::addprocs(1).at(0);
  vscale::WorkerPool pool2({doomed2});
  CHECK(pool2.take() == doomed2);
  std::thread killer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    vscale::rmprocs({doomed2});
  });
  CHECK_THROWS_AS((void)pool2.take(), vscale::UsageError);
  killer.join();
}

TEST_CASE("worker_pool.a_waiting_take_is_interruptible") {
  ensure_two_workers();
  auto ws = vscale::workers();
  vscale::WorkerPool pool({ws[0]});
  const int held = pool.take();
  // Worker 2 waits in take on the master's pool; interrupting it abandons the take there.
  auto waiting = vscale::remotecall(ws[1], [](const vscale::WorkerPool& p) { return p.take(); }, pool);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(!waiting.isready());
  // (Again until it ends: an interrupt that lands before the take reaches the master's pool
  // is one the take started after, and does not count for it.)
  CHECK(test_util::eventually([&] {
    vscale::interrupt(ws[1]);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return waiting.isready();
  }));
  try {
    (void)waiting.fetch();
    FAIL("the take was not interrupted");
  } catch (const vscale::RemoteException& e) {
    CHECK(e.type() == "vscale::InterruptedException");
    CHECK(std::string(e.what()).find("WorkerPool take") != std::string::npos);
  }
  // Nothing was handed out to the abandoned take: the worker put back is free again.
  pool.put(held);
  CHECK(pool.try_take() == std::optional<int>(held));
  pool.put(held);
  CHECK(vscale::remotecall_fetch(ws[1], [] { return 7; }) == 7);  // and the interrupted worker still works
}

TEST_CASE("worker_pool.default_pool_on_a_worker_is_the_masters") {
  ensure_two_workers();
  const int w = vscale::workers().front();
  auto seen = vscale::remotecall_fetch(w, [] {
    const auto& def = vscale::default_worker_pool();
    return std::vector<int>{def.owner(), static_cast<int>(def.length())};
  });
  CHECK(seen == std::vector<int>{1, vscale::nworkers()});
  // pmap on a worker runs on the master's default pool.
  auto r = vscale::remotecall_fetch(w, [] {
    return vscale::pmap([](long x) { return x * 3; }, std::vector<long>{1, 2, 3, 4}, {.batch_size = 1});
  });
  CHECK(r == std::vector<long>{3, 6, 9, 12});
  CHECK(vscale::default_worker_pool().length() == static_cast<std::size_t>(vscale::nworkers()));
}

TEST_CASE("worker_pool.state_lives_with_the_owners_copies") {
  ensure_two_workers();
  const int w = vscale::workers().front();
  const auto before = vscale::detail::live_remote_objects();
  auto remote = std::make_unique<vscale::WorkerPool>(std::vector<int>{w});
  CHECK(vscale::detail::live_remote_objects() == before + 1);
  // The worker keeps a copy, which does not keep the state alive.
  vscale::RemoteChannel<int> done(1);
  auto holder = vscale::remotecall(
      w,
      [](const vscale::WorkerPool& p, vscale::RemoteChannel<int> d) {
        d.take();  // until the master has dropped its copy
        try {
          (void)p.length();
        } catch (const vscale::Error& e) {
          return std::string(e.what());
        }
        return std::string("no error");
      },
      *remote, done);
  remote.reset();
  CHECK(vscale::detail::live_remote_objects() == before + 1);  // the channel
  done.put(1);
  const std::string msg = holder.fetch();
  CHECK(msg.find("no longer exists") != std::string::npos);
  CHECK(msg.find("owned by process 1") != std::string::npos);
}

TEST_CASE("pmap.retry_after_a_worker_dies") {
  ensure_two_workers();
  const int before = vscale::nworkers();
  Counts attempts(40);
  auto f = vscale::closure(
      [](const Counts& a, long i) {
        int k = __atomic_fetch_add(&a[static_cast<std::size_t>(i)], 1, __ATOMIC_SEQ_CST);
        if (i == 5 && k == 0) std::_Exit(3);  // the worker dies in the middle of the pmap
        return i + 100;
      },
      attempts);
  using namespace std::chrono_literals;
  auto r = vscale::pmap(f, iota_vec(40), {.batch_size = 1, .retry_delays = {1ms, 10ms}});
  for (long i = 0; i < 40; ++i) CHECK(r[static_cast<std::size_t>(i)] == i + 100);
  CHECK(attempts[5] == 2);
  CHECK(vscale::nworkers() == before - 1);
  vscale::addprocs(1);
  auto again = vscale::pmap([](long x) { return x; }, iota_vec(10));
  CHECK(again.size() == 10);
}

TEST_CASE("pmap.threaded_tag_takes_both_kinds_of_options") {
  // pmap(vscale::threaded, ...) is the threads mode of distributed_for's spelling; it takes a
  // braced PmapOptionsFor<R> (typed on_error) and a named PmapOptions alike.
  std::vector<long> xs(200);
  std::iota(xs.begin(), xs.end(), 0L);
  auto a = vscale::pmap(vscale::threaded, [](long x) { return 2 * x; }, xs, {.batch_size = 16});
  vscale::PmapOptions named;
  named.batch_size = 7;
  auto b = vscale::pmap(vscale::threaded, [](long x) { return 2 * x; }, xs, named);
  auto c = vscale::pmap(
      vscale::threaded,
      [](long x) {
        if (x == 13) throw std::runtime_error("thirteen");
        return x;
      },
      xs, {.batch_size = 10, .on_error = [](const std::exception&) { return -1L; }});
  REQUIRE(a.size() == xs.size());
  REQUIRE(b.size() == xs.size());
  REQUIRE(c.size() == xs.size());
  for (std::size_t k = 0; k < xs.size(); ++k) {
    CHECK(a[k] == 2 * xs[k]);
    CHECK(b[k] == 2 * xs[k]);
    CHECK(c[k] == (xs[k] == 13 ? -1 : xs[k]));
  }
}
