// RemoteChannel and RemoteValue: FIFO order, blocking put/take, fetch/isready/wait, close
// waking blocked operations, iteration, handles passed to remote calls, many producers and
// consumers, owner death, and that closed, drained channels are freed on their owner.
#include <doctest/doctest.h>

#include <vscale/remote_channel.hpp>
#include <vscale/vscale.hpp>

#include "test_util.hpp"

#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace {

using test_util::eventually;

using namespace std::chrono_literals;

using test_util::w1;
using test_util::w2;

std::size_t live_on(int pid) {
  return vscale::remotecall_fetch(pid, [] { return vscale::detail::live_remote_objects(); });
}

bool all_freed() {
  for (int p : vscale::procs())
    if (live_on(p) != 0) return false;
  return true;
}

}  // namespace

TEST_CASE("remote_channel.fifo_local_owner") {
  vscale::RemoteChannel<int> ch(10);
  CHECK(ch.owner() == 1);
  CHECK(ch.capacity() == 10);
  for (int i = 0; i < 10; ++i) ch.put(i);
  CHECK(ch.size() == 10);
  for (int i = 0; i < 10; ++i) CHECK(ch.take() == i);
  CHECK(!ch.isready());
  ch.close();
  CHECK(vscale::detail::live_remote_objects() == 0);
}

TEST_CASE("remote_channel.fifo_across_processes") {
  // Owned by worker 1, filled by the master, drained by worker 2.
  vscale::RemoteChannel<int> ch(10, w1());
  CHECK(ch.owner() == w1());
  CHECK(live_on(w1()) == 1);
  for (int i = 0; i < 10; ++i) ch.put(i * i);
  auto got = vscale::remotecall_fetch(w2(), [ch] {
    std::vector<int> v;
    for (int i = 0; i < 10; ++i) v.push_back(ch.take());
    return v;
  });
  for (int i = 0; i < 10; ++i) CHECK(got[static_cast<std::size_t>(i)] == i * i);
  ch.close();
  CHECK(live_on(w1()) == 0);
}

TEST_CASE("remote_channel.non_trivial_values") {
  vscale::RemoteChannel<std::string> s(4, w1());
  s.put("hello");
  s.put(std::string(100000, 'x'));
  CHECK(s.fetch() == "hello");
  CHECK(s.take() == "hello");
  CHECK(s.take().size() == 100000);
  s.close();

  using Rec = std::tuple<int, double, int>;
  vscale::RemoteChannel<Rec> r(2);
  vscale::remotecall_fetch(w2(), [r] { r.put(Rec{7, 0.5, vscale::myid()}); });
  auto [a, b, c] = r.take();
  CHECK(a == 7);
  CHECK(b == 0.5);
  CHECK(c == w2());
  r.close();
}

TEST_CASE("remote_channel.blocking_put_when_full") {
  // Master-owned channel of capacity 2; a producer on a worker puts 5 values and blocks.
  vscale::RemoteChannel<int> ch(2);
  auto producer = vscale::remotecall(w1(), [ch] {
    for (int i = 0; i < 5; ++i) ch.put(i);
    return 5;
  });
  CHECK(eventually([&] { return ch.size() == 2; }));
  std::this_thread::sleep_for(200ms);
  CHECK(ch.size() == 2);
  CHECK(!producer.isready());
  for (int i = 0; i < 5; ++i) CHECK(ch.take() == i);
  CHECK(producer.fetch() == 5);
  CHECK(!ch.isready());
  ch.close();
}

TEST_CASE("remote_channel.blocking_take") {
  vscale::RemoteChannel<int> ch(1, w1());
  auto taker = vscale::remotecall(w2(), [ch] { return ch.take(); });
  std::this_thread::sleep_for(200ms);
  CHECK(!taker.isready());
  ch.put(42);
  CHECK(taker.fetch() == 42);
  // A master thread blocked on a master-owned channel, woken by a worker's put.
  vscale::RemoteChannel<int> local(1);
  std::atomic<int> got{-1};
  std::thread t([&] { got = local.take(); });
  std::this_thread::sleep_for(100ms);
  CHECK(got.load() == -1);
  vscale::remotecall_fetch(w1(), [local] { local.put(9); });
  t.join();
  CHECK(got.load() == 9);
  ch.close();
  local.close();
}

TEST_CASE("remote_channel.fetch_isready_wait") {
  vscale::RemoteChannel<int> ch(3, w1());
  CHECK(!ch.isready());
  auto waiter = vscale::remotecall(w2(), [ch] {
    ch.wait();
    return ch.fetch();
  });
  std::this_thread::sleep_for(100ms);
  CHECK(!waiter.isready());
  ch.put(7);
  CHECK(waiter.fetch() == 7);
  CHECK(ch.isready());
  CHECK(ch.fetch() == 7);
  CHECK(ch.fetch() == 7);
  CHECK(ch.size() == 1);
  CHECK(ch.take() == 7);
  CHECK(!ch.isready());
  CHECK(ch.is_open());
  ch.close();
  CHECK(!ch.is_open());
}

TEST_CASE("remote_channel.close_wakes_blocked_take") {
  vscale::RemoteChannel<int> ch(1, w1());
  auto remote_taker = vscale::remotecall(w2(), [ch] { return ch.take(); });
  std::atomic<int> local_state{0};  // 1: woke with ChannelClosedError
  std::string local_msg;
  std::thread t([&] {
    try {
      (void)ch.take();
      local_state = 2;
    } catch (const vscale::ChannelClosedError& e) {
      local_msg = e.what();
      local_state = 1;
    }
  });
  std::this_thread::sleep_for(200ms);
  CHECK(!remote_taker.isready());
  CHECK(local_state.load() == 0);
  ch.close();
  t.join();
  CHECK(local_state.load() == 1);
  CHECK(local_msg.find(ch.name()) != std::string::npos);
  CHECK(local_msg.find("owned by process " + std::to_string(w1())) != std::string::npos);
  CHECK(local_msg.find("closed") != std::string::npos);
  try {
    (void)remote_taker.fetch();
    FAIL("expected an exception");
  } catch (const vscale::RemoteException& e) {
    CHECK(e.pid() == w2());
    CHECK(e.type().find("ChannelClosedError") != std::string::npos);
    CHECK(e.message().find(ch.name()) != std::string::npos);
  }
  CHECK(live_on(w1()) == 0);
}

TEST_CASE("remote_channel.close_wakes_blocked_put") {
  vscale::RemoteChannel<int> ch(1, w1());
  ch.put(1);
  std::atomic<int> state{0};
  std::thread t([&] {
    try {
      ch.put(2);
      state = 2;
    } catch (const vscale::ChannelClosedError&) {
      state = 1;
    }
  });
  auto remote_putter = vscale::remotecall(w2(), [ch] { ch.put(3); });
  std::this_thread::sleep_for(200ms);
  CHECK(state.load() == 0);
  CHECK(!remote_putter.isready());
  ch.close();
  t.join();
  CHECK(state.load() == 1);
  CHECK_THROWS_AS(remote_putter.fetch(), vscale::RemoteException);
  // The value put before close can still be taken; then the channel is drained and freed.
  CHECK(ch.isready());
  CHECK(ch.take() == 1);
  CHECK(live_on(w1()) == 0);
}

TEST_CASE("remote_channel.closed_channel_errors") {
  vscale::RemoteChannel<int> ch(2, w1());
  ch.close();
  CHECK(!ch.is_open());
  CHECK(!ch.isready());
  try {
    (void)ch.take();
    FAIL("expected ChannelClosedError");
  } catch (const vscale::ChannelClosedError& e) {
    const std::string m = e.what();
    CHECK(m.find("take") != std::string::npos);
    CHECK(m.find("RemoteChannel") != std::string::npos);
    CHECK(m.find("owned by process " + std::to_string(w1())) != std::string::npos);
    CHECK(m.find("closed and empty") != std::string::npos);
  }
  CHECK_THROWS_AS(ch.put(1), vscale::ChannelClosedError);
  CHECK_THROWS_AS((void)ch.fetch(), vscale::ChannelClosedError);
  CHECK_THROWS_AS(ch.wait(), vscale::ChannelClosedError);
  CHECK_THROWS_AS(ch.put(1), vscale::Error);  // it is a vscale::Error
  CHECK(!ch.try_take().has_value());
  ch.close();  // closing twice is harmless
  vscale::RemoteChannel<int> empty;
  CHECK(!empty.valid());
  CHECK_THROWS_AS(empty.put(1), vscale::UsageError);
  CHECK_THROWS_AS(vscale::RemoteChannel<int>(4, 999), vscale::ProcessExitedException);  // no such process
}

TEST_CASE("remote_channel.iteration_until_closed") {
  vscale::RemoteChannel<int> ch(4, w1());
  auto producer = vscale::remotecall(w2(), [ch] {
    for (int i = 0; i < 100; ++i) ch.put(i);
    ch.close();
  });
  int expect = 0;
  for (int v : ch) {
    CHECK(v == expect);
    ++expect;
  }
  CHECK(expect == 100);
  producer.wait();
  CHECK(live_on(w1()) == 0);
  // Iterating on a worker, over a master-owned channel.
  vscale::RemoteChannel<int> m(3);
  auto sum = vscale::remotecall(w1(), [m] {
    long s = 0;
    for (int v : m) s += v;
    return s;
  });
  for (int i = 1; i <= 50; ++i) m.put(i);
  m.close();
  CHECK(sum.fetch() == 1275);
}

TEST_CASE("remote_channel.handles_in_remote_calls") {
  vscale::RemoteChannel<int> ch(8, w2());
  auto back = vscale::remotecall_fetch(w1(), [](vscale::RemoteChannel<int> c) { return c; }, ch);
  CHECK(back == ch);
  CHECK(back.name() == ch.name());
  // A handle made on a worker names the same channel on the master.
  auto made = vscale::remotecall_fetch(w1(), [] {
    vscale::RemoteChannel<int> c(4);  // owned by w1
    c.put(vscale::myid());
    return c;
  });
  CHECK(made.owner() == w1());
  CHECK(made.take() == w1());
  made.close();
  // Arguments and captures.
  vscale::remotecall_fetch(w1(), [](vscale::RemoteChannel<int> c, int v) { c.put(v); }, ch, 5);
  vscale::remotecall_fetch(w1(), [ch] { ch.put(6); });
  CHECK(ch.take() == 5);
  CHECK(ch.take() == 6);
  ch.close();
  CHECK(all_freed());
}

TEST_CASE("remote_channel.many_producers_and_consumers") {
  constexpr int per_producer = 400;
  for (int owner : {1, w1()}) {
    CAPTURE(owner);
    vscale::RemoteChannel<int> ch(8, owner);
    std::vector<vscale::Future<int>> producers;
    for (int p : {w1(), w2()})
      producers.push_back(vscale::remotecall(p, [ch] {
        for (int i = 0; i < per_producer; ++i) ch.put(vscale::myid() * 100000 + i);
        return per_producer;
      }));
    std::mutex m;
    std::vector<int> seen;
    std::vector<std::thread> consumers;
    for (int c = 0; c < 3; ++c)
      consumers.emplace_back([&] {
        std::vector<int> mine;
        for (int v : ch) mine.push_back(v);
        std::lock_guard lk(m);
        seen.insert(seen.end(), mine.begin(), mine.end());
      });
    for (auto& f : producers) CHECK(f.fetch() == per_producer);
    ch.close();
    for (auto& t : consumers) t.join();
    std::vector<int> expect;
    for (int p : {w1(), w2()})
      for (int i = 0; i < per_producer; ++i) expect.push_back(p * 100000 + i);
    std::sort(seen.begin(), seen.end());
    std::sort(expect.begin(), expect.end());
    CHECK(seen == expect);  // every item exactly once
  }
  CHECK(all_freed());
}

TEST_CASE("remote_channel.owner_killed") {
  const int n0 = vscale::nworkers();
  const int w = vscale::addprocs(1).at(0);
  vscale::RemoteChannel<int> ch(1, w);
  ch.put(1);
  std::atomic<int> state{0};  // 1: ProcessExitedException naming w
  std::thread t([&] {
    try {
      ch.put(2);  // blocks: full
      state = 2;
    } catch (const vscale::ProcessExitedException& e) {
      state = e.pid() == w ? 1 : 3;
    } catch (...) {
      state = 4;
    }
  });
  std::this_thread::sleep_for(200ms);
  CHECK(state.load() == 0);
  const int os_pid = vscale::remotecall_fetch(w, [] { return static_cast<int>(getpid()); });
  REQUIRE(::kill(os_pid, SIGKILL) == 0);
  t.join();
  CHECK(state.load() == 1);
  CHECK(eventually([&] { return vscale::nworkers() == n0; }));
  try {
    (void)ch.take();
    FAIL("expected ProcessExitedException");
  } catch (const vscale::ProcessExitedException& e) {
    CHECK(e.pid() == w);
    CHECK(!e.reason().empty());
    MESSAGE("after SIGKILL: " << std::string(e.what()));
  }
  CHECK_THROWS_AS(ch.close(), vscale::ProcessExitedException);
  CHECK_THROWS_AS((void)ch.isready(), vscale::ProcessExitedException);
}

TEST_CASE("remote_channel.owner_removed") {
  const int n0 = vscale::nworkers();
  const int w = vscale::addprocs(1).at(0);
  vscale::RemoteChannel<int> ch(1, w);
  std::atomic<int> state{0};
  std::thread t([&] {
    try {
      (void)ch.take();  // blocks: empty
      state = 2;
    } catch (const vscale::ProcessExitedException& e) {
      state = e.pid() == w ? 1 : 3;
    } catch (...) {
      state = 4;
    }
  });
  std::this_thread::sleep_for(200ms);
  CHECK(state.load() == 0);
  vscale::rmprocs(w, std::chrono::seconds(5));
  t.join();
  CHECK(state.load() == 1);
  CHECK(vscale::nworkers() == n0);
  CHECK_THROWS_AS(ch.put(1), vscale::ProcessExitedException);
}

namespace {
struct Counter {
  explicit Counter(int start) : n(start) {}
  std::mutex m;
  int n;
  int add(int k) {
    std::lock_guard lk(m);
    return n += k;
  }
};
}  // namespace

TEST_CASE("remote_channel.remote_value") {
  auto c = vscale::remote_object<Counter>(w1(), 10);
  CHECK(c.owner() == w1());
  CHECK(c.call([](Counter& k, int d) { return k.add(d); }, 5) == 15);
  // From another worker through a passed handle, and from the owner itself.
  CHECK(vscale::remotecall_fetch(w2(), [c] { return c.call([](Counter& k) { return k.add(1); }); }) == 16);
  CHECK(vscale::remotecall_fetch(w1(), [c] { return c.call([](Counter& k) { return k.add(1); }); }) == 17);
  CHECK(live_on(w1()) == 1);
  CHECK(c.free());
  CHECK(!c.free());
  CHECK_THROWS_AS(c.call([](Counter& k) { return k.n; }), vscale::RemoteException);
  auto local = vscale::remote_object<Counter>(1, 0);
  CHECK(local.call([](Counter& k) { return k.add(2); }) == 2);
  CHECK(local.free());
}

TEST_CASE("remote_channel.unbuffered") {
  // Julia's Channel(0): a put returns once a take has its value.
  vscale::RemoteChannel<int> ch(0);
  CHECK(ch.capacity() == 0);
  auto put = vscale::remotecall(w1(), [ch] { ch.put(7); return vscale::myid(); });
  CHECK(eventually([&] { return ch.isready(); }));  // the put waits, its value visible
  std::this_thread::sleep_for(50ms);
  CHECK(!put.isready());
  CHECK(ch.size() == 1);
  CHECK_THROWS_AS((void)ch.fetch(), vscale::UsageError);  // as in Julia
  CHECK(ch.take() == 7);
  CHECK(put.fetch() == w1());
  CHECK(!ch.isready());

  // A take waits for a put, on a channel owned by a worker.
  vscale::RemoteChannel<long> wch(0, w2());
  auto taker = vscale::remotecall(w1(), [wch] { return wch.take(); });
  std::this_thread::sleep_for(50ms);
  CHECK(!taker.isready());
  wch.put(42);  // returns once the taker has it
  CHECK(taker.fetch() == 42);

  // Two producers, one consumer: every value arrives once, each producer's in its order.
  auto producer = [](vscale::RemoteChannel<long> c, long base) {
    for (long i = 0; i < 100; ++i) c.put(base + i);
    return 0;
  };
  auto p1 = vscale::remotecall(w1(), producer, wch, 0L);
  auto p2 = vscale::remotecall(w2(), producer, wch, 1000L);
  std::vector<long> got;
  for (int k = 0; k < 200; ++k) got.push_back(wch.take());
  CHECK(p1.fetch() == 0);
  CHECK(p2.fetch() == 0);
  std::vector<long> a, b;
  for (long v : got) (v < 1000 ? a : b).push_back(v);
  REQUIRE(a.size() == 100);
  REQUIRE(b.size() == 100);
  for (long i = 0; i < 100; ++i) {
    CHECK(a[static_cast<std::size_t>(i)] == i);
    CHECK(b[static_cast<std::size_t>(i)] == 1000 + i);
  }

  // A put interrupted while it waits withdraws its value: nothing is left behind.
  auto waiting = vscale::remotecall(w1(), [wch] { wch.put(5); return 0; });
  CHECK(eventually([&] { return wch.isready(); }));
  vscale::interrupt(w1());
  CHECK_THROWS_AS((void)waiting.fetch(), vscale::RemoteException);
  CHECK(eventually([&] { return !wch.isready(); }));
  CHECK(wch.size() == 0);

  // close() fails a waiting put (its value was not taken) and frees the channel.
  auto late = vscale::remotecall(w1(), [wch] {
    try {
      wch.put(9);
      return 0;
    } catch (const vscale::ChannelClosedError&) {
      return 1;
    }
  });
  CHECK(eventually([&] { return wch.isready(); }));
  wch.close();
  CHECK(late.fetch() == 1);
  CHECK(!wch.try_take().has_value());
  ch.close();
  CHECK(eventually([&] { return live_on(w2()) == 0; }));
}

TEST_CASE("remote_channel.no_leaked_state") {
  CHECK(all_freed());
}

// Last in the file on purpose: a worker stays blocked in a take on a master-owned channel that
// is never closed. The master's executor thread serving that take must give up once the worker
// is stopped, or the end of the session (which joins executors) would hang.
TEST_CASE("remote_channel.zz_unclosed_channel_at_session_end") {
  vscale::RemoteChannel<int> never(1);
  auto blocked = vscale::remotecall(w1(), [never] { return never.take(); });
  std::this_thread::sleep_for(100ms);
  CHECK(!blocked.isready());
  CHECK(vscale::detail::live_remote_objects() == 1);  // lives until the session ends
}
