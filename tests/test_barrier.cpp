// Barrier: thousands of phases across 3 workers (every process sees every other's write of
// the phase after each crossing), reuse across calls, a barrier over procs(S), the master as
// a participant, a barrier made on a worker, bad arguments, and a participant that dies (the
// others' wait() fails within a bounded time, naming it). Run with 3 workers
// (tests/test_barrier.args).
#include <doctest/doctest.h>

#include <vscale/barrier.hpp>
#include <vscale/vscale.hpp>

#include "test_util.hpp"

#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

using Slots = vscale::SharedArray<long, 1>;

// Slots are a cache line apart, so that the writes of one phase do not share a line.
constexpr std::size_t kStride = 8;

void ensure_three_workers() {
  if (vscale::nworkers() < 3) vscale::addprocs(3 - vscale::nworkers());
  REQUIRE(vscale::nworkers() == 3);
}

// One participant's part of `phases` phases: write the phase into its own slot, cross, check
// that every participant's slot holds it, cross again (so nobody writes the next phase while
// another still checks this one). Returns the number of wrong slots seen.
long run_phases(const Slots& slots, const vscale::Barrier& bar, long phases) {
  const auto& who = bar.pids();
  std::size_t mine = 0;
  while (who[mine] != vscale::myid()) ++mine;
  long wrong = 0;
  for (long ph = 1; ph <= phases; ++ph) {
    slots[mine * kStride] = ph;
    bar.wait();
    for (std::size_t k = 0; k < who.size(); ++k) wrong += slots[k * kStride] != ph;
    bar.wait();
  }
  return wrong;
}

// run_phases on every participant but the master (the caller takes the master's part).
std::vector<vscale::Future<long>> start_phases(const Slots& slots, const vscale::Barrier& bar, long phases) {
  std::vector<vscale::Future<long>> calls;
  for (int p : bar.pids())
    if (p != vscale::myid()) calls.push_back(vscale::remotecall(p, &run_phases, slots, bar, phases));
  return calls;
}

long total_wrong(std::vector<vscale::Future<long>>& calls) {
  long wrong = 0;
  for (auto& c : calls) wrong += c.fetch();
  return wrong;
}

}  // namespace

TEST_CASE("barrier.size_and_pids") {
  ensure_three_workers();
  const auto ws = vscale::workers();
  vscale::Barrier b(ws);
  CHECK(b.valid());
  CHECK(b.size() == 3);
  CHECK(b.pids() == ws);
  CHECK_FALSE(vscale::Barrier().valid());
}

TEST_CASE("barrier.phases.3workers") {
  ensure_three_workers();
  vscale::Barrier bar(vscale::workers());
  Slots slots(3 * kStride);
  auto calls = start_phases(slots, bar, 5000);
  CHECK(total_wrong(calls) == 0);
  for (std::size_t k = 0; k < 3; ++k) CHECK(slots[k * kStride] == 5000);
}

TEST_CASE("barrier.reuse_across_calls") {
  // The state carries over between rounds: the count is back at zero after every phase, and
  // the generation goes on from where it stopped.
  ensure_three_workers();
  vscale::Barrier bar(vscale::workers());
  Slots slots(3 * kStride);
  for (int round = 0; round < 5; ++round) {
    auto calls = start_phases(slots, bar, 200 + round);
    CHECK(total_wrong(calls) == 0);
  }
  CHECK(bar.size() == 3);
}

TEST_CASE("barrier.from_shared_array") {
  ensure_three_workers();
  const std::vector<int> two = {test_util::w1(), test_util::w2()};
  vscale::SharedArray<double, 2> a({4, 4}, vscale::pids(two));
  vscale::Barrier bar(a);
  CHECK(bar.size() == 2);
  CHECK(bar.pids() == two);
  Slots slots(2 * kStride);
  auto calls = start_phases(slots, bar, 1000);
  CHECK(total_wrong(calls) == 0);
}

TEST_CASE("barrier.master_takes_part") {
  ensure_three_workers();
  std::vector<int> all = {1};
  for (int w : vscale::workers()) all.push_back(w);
  vscale::Barrier bar(all);
  CHECK(bar.size() == 4);
  Slots slots(4 * kStride);
  auto calls = start_phases(slots, bar, 1000);
  const long mine = run_phases(slots, bar, 1000);
  CHECK(mine == 0);
  CHECK(total_wrong(calls) == 0);
}

TEST_CASE("barrier.single_participant") {
  vscale::Barrier solo(std::vector<int>{1});
  for (int k = 0; k < 100; ++k) solo.wait();
  solo.arrive_and_wait();
  CHECK(solo.size() == 1);
}

TEST_CASE("barrier.made_on_a_worker") {
  // A worker cannot create SharedArrays; its Barrier asks the master for the state. The handle
  // it returns works on the master's side too.
  ensure_three_workers();
  const int w1 = test_util::w1(), w2 = test_util::w2();
  vscale::Barrier bar = vscale::remotecall_fetch(w1, [](int a, int b) { return vscale::Barrier(std::vector<int>{a, b}); },
                                                 w1, w2);
  REQUIRE(bar.valid());
  CHECK(bar.pids() == std::vector<int>{w1, w2});
  Slots slots(2 * kStride);
  auto calls = start_phases(slots, bar, 500);
  CHECK(total_wrong(calls) == 0);
}

TEST_CASE("barrier.bad_arguments") {
  ensure_three_workers();
  CHECK_THROWS_AS(vscale::Barrier(std::vector<int>{}), vscale::UsageError);
  const int w1 = test_util::w1();
  CHECK_THROWS_WITH_AS(vscale::Barrier(std::vector<int>{w1, w1}), doctest::Contains("listed twice"), vscale::UsageError);
  CHECK_THROWS_WITH_AS(vscale::Barrier(std::vector<int>{w1, 999}), doctest::Contains("999"), vscale::UsageError);
  // The master does not take part in a barrier over the workers: its wait() would corrupt
  // the count, so it is refused.
  vscale::Barrier workers_only(vscale::workers());
  CHECK_THROWS_WITH_AS(workers_only.wait(), doctest::Contains("does not take part"), vscale::UsageError);
  CHECK_THROWS_AS(vscale::Barrier().wait(), vscale::UsageError);
}

TEST_CASE("barrier.participant_dies") {
  ensure_three_workers();
  const auto ws = vscale::workers();
  const int victim = ws[2];
  vscale::Barrier bar(ws);
  using namespace std::chrono;
  const auto t0 = steady_clock::now();
  std::vector<vscale::Future<long>> calls;
  for (int p : ws)
    calls.push_back(vscale::remotecall(p, [](const vscale::Barrier& b, int v) {
      long crossed = 0;
      for (int ph = 0; ph < 1000; ++ph) {
        if (ph == 10 && vscale::myid() == v) std::_Exit(3);  // dies between two phases
        b.wait();
        ++crossed;
      }
      return crossed;
    }, bar, victim));
  for (std::size_t k = 0; k < 2; ++k) {
    // The survivors' wait() throws ProcessExitedException naming the dead process and the
    // barrier (it arrives here as itself, with its pid and reason).
    try {
      calls[k].fetch();
      FAIL("worker " << ws[k] << " crossed every phase although process " << victim << " died");
    } catch (const vscale::ProcessExitedException& e) {
      CHECK(e.pid() == victim);
      CHECK(e.reason().find("vscale::Barrier over processes") != std::string::npos);
      CHECK(e.reason().find("can no longer complete") != std::string::npos);
      CHECK(std::string(e.what()).find("process " + std::to_string(victim)) != std::string::npos);
    }
  }
  CHECK_THROWS_AS(calls[2].fetch(), vscale::ProcessExitedException);
  // Detection takes one sleep period (100 ms) after the master notices the exit; allow for a
  // loaded machine.
  CHECK(steady_clock::now() - t0 < seconds(10));
  // A broken barrier fails at once for everyone who still uses it.
  const bool fails_at_once = vscale::remotecall_fetch(ws[0], [](const vscale::Barrier& b) {
    try {
      b.wait();
      return false;
    } catch (const vscale::ProcessExitedException&) {
      return true;
    }
  }, bar);
  CHECK(fails_at_once);
  // Back to 3 workers for whatever runs next.
  vscale::addprocs(1);
  CHECK(vscale::nworkers() == 3);
  vscale::Barrier fresh(vscale::workers());
  Slots slots(3 * kStride);
  auto again = start_phases(slots, fresh, 100);
  CHECK(total_wrong(again) == 0);
}
