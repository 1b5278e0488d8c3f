// Puts on credit (lib/vscale/detail/channel_credits.hpp): a put to a buffered channel owned by
// another process does not wait for a round trip while the owner has reserved room for it,
// and order per producer and "nothing lost, nothing twice" hold under close, interrupt, a
// full channel with credits held elsewhere, and the death of a producer or of the owner.
#include <doctest/doctest.h>

#include <vscale/remote_channel.hpp>
#include <vscale/vscale.hpp>

#include "test_util.hpp"

#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

using namespace std::chrono_literals;
using test_util::eventually;
using test_util::w1;
using test_util::w2;

int os_pid_of(int w) { return vscale::remotecall_fetch(w, [] { return static_cast<int>(::getpid()); }); }

// Everything left in `ch` (owned here), by producer: value = producer * 1e9 + its count.
std::map<long, std::vector<long>> drain_by_producer(const vscale::RemoteChannel<long>& ch) {
  std::map<long, std::vector<long>> got;
  while (ch.isready()) {
    const long v = ch.take();
    got[v / 1'000'000'000L].push_back(v % 1'000'000'000L);
  }
  return got;
}

bool counts_up_from_zero(const std::vector<long>& v) {
  for (std::size_t i = 0; i < v.size(); ++i)
    if (v[i] != static_cast<long>(i)) return false;
  return true;
}

}  // namespace

TEST_CASE("channel_credits.puts_stream_without_a_round_trip_each") {
  // Room for everything: each round trip grants half of the room left, so n puts take about
  // log2(n) round trips, where each put used to be one (n answers from here).
  constexpr long n = 20000;
  vscale::RemoteChannel<long> ch(n + 1);
  const auto sent0 = vscale::detail::stats().messages_sent;
  vscale::remotecall_wait(w1(), [](vscale::RemoteChannel<long> c, long k) {
    for (long i = 0; i < k; ++i) c.put(i);
  }, ch, n);
  const auto answers = vscale::detail::stats().messages_sent - sent0;
  MESSAGE(n << " puts from worker " << w1() << ": " << answers << " messages from the owner");
  CHECK(answers <= 64);
  CHECK(ch.length() == static_cast<std::size_t>(n));  // all in: the call's answer came after them
  bool in_order = true;
  for (long i = 0; i < n; ++i) in_order = in_order && ch.take() == i;
  CHECK(in_order);
  ch.close();
}

TEST_CASE("channel_credits.a_stream_while_the_owner_takes") {
  // The owner takes while a worker puts: a capacity much smaller than the stream.
  constexpr long n = 50000;
  vscale::RemoteChannel<long> ch(256);
  auto prod = vscale::remotecall(w1(), [](vscale::RemoteChannel<long> c, long k) {
    for (long i = 0; i < k; ++i) c.put(i);
  }, ch, n);
  bool in_order = true;
  for (long i = 0; i < n; ++i) in_order = in_order && ch.take() == i;
  CHECK(in_order);
  prod.wait();
  CHECK(!ch.isready());
  ch.close();
}

TEST_CASE("channel_credits.close_with_puts_on_their_way_loses_nothing") {
  // Producers put as fast as they can until the channel is closed under them. Every put that
  // returned is in the channel once close() has returned, once each and in each producer's
  // order; none that threw is.
  vscale::RemoteChannel<long> ch(1 << 22);
  std::vector<std::pair<int, vscale::Future<long>>> prods;
  for (int w : vscale::workers())
    prods.emplace_back(w, vscale::remotecall(w, [](vscale::RemoteChannel<long> c, int me) {
      long k = 0;
      try {
        for (;; ++k) c.put(me * 1'000'000'000L + k);
      } catch (const vscale::ChannelClosedError&) {
      }
      return k;
    }, ch, w));
  std::this_thread::sleep_for(100ms);
  ch.close();
  auto got = drain_by_producer(ch);
  CHECK(!ch.isready());
  long total = 0;
  for (auto& [w, f] : prods) {
    const long k = f.fetch();
    total += k;
    INFO("worker " << w << " returned from " << k << " puts");
    CHECK(got[w].size() == static_cast<std::size_t>(k));
    CHECK(counts_up_from_zero(got[w]));
  }
  MESSAGE(total << " puts before the close");
  CHECK(total > 0);
  CHECK_THROWS_AS((void)ch.take(), vscale::ChannelClosedError);
}

TEST_CASE("channel_credits.credits_held_elsewhere_do_not_block_a_put") {
  // Worker 1 puts once and is granted the slot after it; worker 2 then fills the channel:
  // its last put finds it full with worker 1's slot reserved, and the owner takes that back.
  vscale::RemoteChannel<long> ch(4);
  auto put_as = [](vscale::RemoteChannel<long> c, long me, long from, long count) {
    for (long i = from; i < from + count; ++i) c.put(1'000'000'000L * me + i);
  };
  vscale::remotecall_wait(w1(), put_as, ch, long{w1()}, 0L, 1L);
  auto fill = vscale::remotecall(w2(), put_as, ch, long{w2()}, 0L, 3L);
  REQUIRE(fill.wait_for(20s));
  fill.fetch();
  CHECK(ch.length() == 4);
  auto got = drain_by_producer(ch);
  CHECK(got[w1()] == std::vector<long>{0});
  CHECK(got[w2()] == std::vector<long>{0, 1, 2});
  // Worker 1 may put again: its credit went back, so this one is a round trip.
  vscale::remotecall_wait(w1(), put_as, ch, long{w1()}, 1L, 1L);
  CHECK(ch.take() == 1'000'000'000L * w1() + 1);
  ch.close();
}

TEST_CASE("channel_credits.an_interrupted_producer_leaves_its_puts_in_order") {
  vscale::RemoteChannel<long> ch(8);
  auto prod = vscale::remotecall(w1(), [](vscale::RemoteChannel<long> c) {
    long k = 0;
    try {
      for (;; ++k) c.put(k);
    } catch (const vscale::InterruptedException&) {
    }
    return k;
  }, ch);
  REQUIRE(eventually([&] { return ch.length() == 8; }));  // full: the next put waits
  vscale::interrupt(w1());
  const long k = prod.fetch();
  CHECK(k == 8);  // the waiting put was withdrawn, the 8 before it are in
  auto got = drain_by_producer(ch);
  CHECK(got[0].size() == 8);
  CHECK(counts_up_from_zero(got[0]));
  ch.close();
}

TEST_CASE("channel_credits.a_producer_that_dies_holding_credits") {
  // Its credits are dropped: close() does not wait for them, and what it put is there.
  const int n0 = vscale::nworkers();
  const int w = vscale::addprocs(1).at(0);
  vscale::RemoteChannel<long> ch(100);
  vscale::remotecall_wait(w, [](vscale::RemoteChannel<long> c) {
    c.put(7);
    c.put(8);  // on credit
  }, ch);
  REQUIRE(::kill(os_pid_of(w), SIGKILL) == 0);
  REQUIRE(eventually([&] { return vscale::nworkers() == n0; }));
  const auto t0 = std::chrono::steady_clock::now();
  ch.close();
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  CHECK(ch.take() == 7);
  CHECK(ch.take() == 8);
  CHECK(!ch.try_take());
}

TEST_CASE("channel_credits.the_owner_dies_under_a_producer_with_credits") {
  const int n0 = vscale::nworkers();
  const int w = vscale::addprocs(1).at(0);
  vscale::RemoteChannel<long> ch(100, w);
  ch.put(1);  // a round trip: credits come back with it
  ch.put(2);  // on credit
  CHECK(ch.length() == 2);
  REQUIRE(::kill(os_pid_of(w), SIGKILL) == 0);
  REQUIRE(eventually([&] { return vscale::nworkers() == n0; }));
  try {
    ch.put(3);
    FAIL("expected ProcessExitedException");
  } catch (const vscale::ProcessExitedException& e) {
    CHECK(e.pid() == w);
  }
}

namespace {
// A value whose serialization fails on demand.
struct Bomb {
  bool boom = false;
  long v = 0;
  std::string pad;
  template <class A>
  void save(A& a) const {
    if (boom) throw std::runtime_error("this value does not serialize");
    a(boom, v, pad);
  }
  template <class A>
  void load(A& a) {
    a(boom, v, pad);
  }
};
}  // namespace

TEST_CASE("channel_credits.a_put_that_cannot_be_sent_keeps_its_credit") {
  // The second put is on credit and throws before anything is sent: the credit is not lost,
  // so close() still returns and the channel has exactly the first value.
  vscale::RemoteChannel<Bomb> ch(100);
  const bool threw = vscale::remotecall_fetch(w1(), [](vscale::RemoteChannel<Bomb> c) {
    c.put(Bomb{false, 1, {}});  // a round trip: credits come back
    try {
      c.put(Bomb{true, 2, {}});
    } catch (const std::exception&) {
      return true;
    }
    return false;
  }, ch);
  CHECK(threw);
  const auto t0 = std::chrono::steady_clock::now();
  ch.close();
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  CHECK(ch.take().v == 1);
  CHECK(!ch.try_take());
}

TEST_CASE("channel_credits.a_third_process_sees_a_put_that_returned") {
  // Owned by worker 1, filled on credit by worker 2; once worker 2's call has returned, the
  // master's length and isready see every put, though they took another way than the puts.
  const int owner = w1(), producer = w2();
  vscale::RemoteChannel<long> ch(100000, owner);
  for (int round = 0; round < 20; ++round) {
    vscale::remotecall_wait(producer, [](vscale::RemoteChannel<long> c, long k) {
      for (long i = 0; i < k; ++i) c.put(i);
    }, ch, 200L);
    REQUIRE(ch.length() == 200);
    bool in_order = true;
    for (long i = 0; i < 200; ++i) in_order = in_order && ch.take() == i;
    CHECK(in_order);
    CHECK(!ch.isready());
  }
  ch.close();
}

TEST_CASE("channel_credits.no_leaked_state") {
  CHECK(eventually([] {
    for (int p : vscale::procs())
      if (vscale::remotecall_fetch(p, [] { return vscale::detail::live_remote_objects(); }) != 0) return false;
    return true;
  }));
}
