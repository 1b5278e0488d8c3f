// The extension tier (vscale/ext.hpp): membership queries, the spin budget, the shared futex
// and post, as code built on the runtime uses them.
#include <doctest/doctest.h>

#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include <vscale/ext.hpp>
#include <vscale/vscale.hpp>

#include "test_util.hpp"

namespace {
std::atomic<int> g_posted{0};
void note_posted(int v) { g_posted.fetch_add(v); }
}  // namespace

TEST_CASE("ext.membership") {
  CHECK(vscale::ext::is_master());
  const int w = test_util::w1();
  CHECK(vscale::ext::alive(1));
  CHECK(vscale::ext::alive(w));
  CHECK_FALSE(vscale::remotecall_fetch(w, [] { return vscale::ext::is_master(); }));
  CHECK_FALSE(vscale::ext::alive(100000));
  CHECK(vscale::ext::dead_reason(100000).find("does not exist") != std::string::npos);
  const int gone = vscale::addprocs(1).at(0);
  vscale::rmprocs(gone);
  CHECK_FALSE(vscale::ext::alive(gone));
  CHECK(vscale::ext::dead_reason(gone).find("removed") != std::string::npos);
}

TEST_CASE("ext.spin_places_are_bounded_and_come_back") {
  // The budget is one spinner more than the job's CPUs, shared with every idle thread of the
  // job (which spin for a moment, then sleep): never more places than that at once, and a
  // place comes back when its holder ends.
  const int budget = vscale::usable_cpus() + 1;
  {
    std::vector<std::unique_ptr<vscale::ext::SpinPlace>> places;
    int held = 0;
    for (int i = 0; i < 2 * budget + 4; ++i) {
      places.push_back(std::make_unique<vscale::ext::SpinPlace>());
      held += bool(*places.back());
    }
    CHECK(held <= budget);
  }
  CHECK(test_util::eventually([] { return bool(vscale::ext::SpinPlace{}); }, 10));
}

TEST_CASE("ext.futex_across_processes") {
  // A word in memory that the worker shares (a SharedArray), waited on here, woken there.
  vscale::SharedArray<std::uint32_t, 1> s(16);
  auto* word = reinterpret_cast<std::atomic<std::uint32_t>*>(s.data());
  word->store(0);
  CHECK(vscale::ext::futex_wait(*word, 1, 1'000'000) == -1);  // not 1: returns at once
  CHECK(errno == EAGAIN);
  CHECK(vscale::ext::futex_wait(*word, 0, 1'000'000) == -1);  // nobody wakes: times out
  CHECK(errno == ETIMEDOUT);
  const int w = test_util::w1();
  auto waker = vscale::remotecall(w, [](vscale::SharedArray<std::uint32_t, 1> a) {
    auto* wd = reinterpret_cast<std::atomic<std::uint32_t>*>(a.data());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    wd->store(1);
    return vscale::ext::futex_wake(*wd, 1);
  }, s);
  while (word->load() == 0) vscale::ext::futex_wait(*word, 0, 100'000'000);
  CHECK(word->load() == 1);
  CHECK(waker.fetch() >= 0);
}

TEST_CASE("ext.post_runs_without_an_answer") {
  const int w = test_util::w1();
  vscale::ext::post(w, [] { note_posted(5); });
  CHECK(test_util::eventually([&] { return vscale::remotecall_fetch(w, [] { return g_posted.load(); }) == 5; }));
  vscale::ext::post(1, &note_posted, 3);  // to itself: runs on this process's executor
  CHECK(test_util::eventually([] { return g_posted.load() == 3; }));
  vscale::ext::post(100000, &note_posted, 1);  // nowhere: dropped, no exception
}
