// Scale-out over MPI, run by ctest as `mpirun -n 3 test_mpi -p 2` on one machine: every rank
// is its own "node" (its own control segment; only MPI between them). Remote calls between
// nodes and back, a call from a worker to a worker on another node while the master waits,
// pmap and distributed_for over every node, a channel owned on one node, fed from another and
// drained on the master, SharedArray kept to one node, a worker killed on another node under
// pmap with retries, rmprocs and addprocs across nodes, and output forwarded from a node.
#include <doctest/doctest.h>

#include <signal.h>
#include <unistd.h>

#include <vscale/ext.hpp>
#include <vscale/vscale.hpp>

#include "../test_util.hpp"

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using test_util::eventually;

namespace {

// The workers on `host`, ascending.
std::vector<int> workers_on(int host) {
  std::vector<int> out;
  for (int id : vscale::procs_on(host))
    if (id != 1) out.push_back(id);
  return out;
}

long square(long x) { return x * x; }

}  // namespace

TEST_CASE("mpi.layout") {
  REQUIRE(vscale::nhosts() == 3);
  CHECK(vscale::host_of(1) == 0);
  for (int h = 0; h < 3; ++h) CHECK(workers_on(h).size() == 2);
  CHECK(vscale::nworkers() == 6);
  // Every worker knows where it is and sees the whole job.
  for (int w : vscale::workers()) {
    CAPTURE(w);
    CHECK(vscale::remotecall_fetch(w, [] { return vscale::host_of(vscale::myid()); }) == vscale::host_of(w));
    CHECK(vscale::remotecall_fetch(w, [] { return vscale::nprocs(); }) == 7);
  }
}

TEST_CASE("mpi.calls_between_nodes") {
  const int a = workers_on(1).at(0), b = workers_on(2).at(0);
  CHECK(vscale::remotecall_fetch(a, &square, 12L) == 144);
  // A worker on node 1 calls a worker on node 2 while the master waits on it.
  auto via = vscale::remotecall_fetch(a, [](int other) {
    return vscale::remotecall_fetch(other, [] { return vscale::myid() * 10; }) + vscale::myid();
  }, b);
  CHECK(via == b * 10 + a);
  // A Future made on node 2, fetched on node 1 (its weight crosses nodes twice).
  auto f = vscale::remotecall(b, [] { return std::string("made on ") + std::to_string(vscale::myid()); });
  auto got = vscale::remotecall_fetch(a, [](vscale::Future<std::string> g) { return g.fetch(); }, f);
  CHECK(got == "made on " + std::to_string(b));
  CHECK(f.fetch() == got);
  // A large body crosses nodes (each ring's bulk area, MPI between them), both ways.
  std::vector<double> big(300'000);
  std::iota(big.begin(), big.end(), 0.0);
  auto back = vscale::remotecall_fetch(b, [](std::vector<double> v) {
    for (auto& x : v) x += 1;
    return v;
  }, big);
  REQUIRE(back.size() == big.size());
  CHECK(back.front() == 1.0);
  CHECK(back.back() == double(big.size()));
  // Everywhere: every process of every node runs it.
  vscale::RemoteChannel<int> ids(16);
  vscale::everywhere(vscale::closure([](const vscale::RemoteChannel<int>& c) { c.put(vscale::myid()); }, ids));
  std::vector<int> seen;
  while (ids.isready()) seen.push_back(ids.take());
  CHECK(seen.size() == 7);
}

TEST_CASE("mpi.pmap_and_reduce") {
  std::vector<long> xs(10'000);
  std::iota(xs.begin(), xs.end(), 0L);
  auto ys = vscale::pmap(&square, xs);
  REQUIRE(ys.size() == xs.size());
  long wrong = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) wrong += ys[i] != xs[i] * xs[i];
  CHECK(wrong == 0);
  // Batch 1: every element its own call, spread over the nodes.
  auto hosts = vscale::pmap([](long) { return vscale::host_of(vscale::myid()); }, std::vector<long>(300, 0),
                            {.batch_size = 1});
  for (int h = 0; h < 3; ++h) CHECK(std::count(hosts.begin(), hosts.end(), h) > 0);
  const long n = 1'000'000;
  const long sum = vscale::distributed_for({0, n}, [](long i) { return i; }, std::plus<>{});
  CHECK(sum == n * (n - 1) / 2);
}

TEST_CASE("mpi.reduce_per_node_first") {
  // Each operand says where it was made (i >= 0) and each reduction appends the id of the
  // process that ran it, negated: then the master's own reductions can be counted.
  auto body = [](long i) { return std::vector<long>{i}; };
  auto cat = [](std::vector<long> a, const std::vector<long>& b) {
    a.insert(a.end(), b.begin(), b.end());
    a.push_back(-vscale::myid());
    return a;
  };
  const long n = 600;
  const auto r = vscale::distributed_for({0, n}, body, cat);
  std::vector<long> items, by_master, elsewhere_remote;
  for (long x : r) {
    if (x >= 0) items.push_back(x);
    else if (x == -1) by_master.push_back(x);
    else if (vscale::host_of(static_cast<int>(-x)) != 0) elsewhere_remote.push_back(x);
  }
  std::vector<long> expect(n);
  std::iota(expect.begin(), expect.end(), 0L);
  CHECK(items == expect);  // every element once, in order
  // The master folds its node's 2 chunks and one value per other node: 3 reductions, not 5.
  CHECK(by_master.size() == workers_on(0).size() + 2 - 1);
  // Each other node's first worker folded its node's second chunk into its own.
  for (int h = 1; h < 3; ++h) {
    CAPTURE(h);
    const long first = -workers_on(h).at(0);
    const auto folds = std::count(elsewhere_remote.begin(), elsewhere_remote.end(), first);
    CHECK(folds == static_cast<long>(n / 6 - 1 + 1));  // its chunk's own n/6 - 1, then one more
  }
  // With threads too.
  const long sum = vscale::distributed_for(vscale::threaded, {0, n}, [](long i) { return i; }, std::plus<>{});
  CHECK(sum == n * (n - 1) / 2);
}

TEST_CASE("mpi.channel_across_nodes") {
  const int owner = workers_on(1).at(1), feeder = workers_on(2).at(1);
  vscale::RemoteChannel<long> ch(16, owner);
  auto fed = vscale::remotecall(feeder, [](vscale::RemoteChannel<long> c) {
    for (long i = 0; i < 1000; ++i) c.put(i);
    return 0;
  }, ch);
  long total = 0;
  bool in_order = true;
  for (long i = 0; i < 1000; ++i) {
    const long v = ch.take();
    in_order &= v == i;
    total += v;
  }
  CHECK(fed.fetch() == 0);
  CHECK(in_order);
  CHECK(total == 999L * 1000 / 2);
  ch.close();
}

TEST_CASE("mpi.channel_close_under_puts_from_other_nodes") {
  // Puts on credit cross the gateways, and so do the owner's revokes at close: every put that
  // returned is in the channel once close() has returned, once each and in order.
  vscale::RemoteChannel<long> ch(1 << 20);
  const std::vector<int> prods{workers_on(1).at(0), workers_on(2).at(0)};
  std::vector<vscale::Future<long>> counts;
  for (int w : prods)
    counts.push_back(vscale::remotecall(w, [](vscale::RemoteChannel<long> c, long me) {
      long k = 0;
      try {
        for (;; ++k) c.put(me * 1'000'000'000L + k);
      } catch (const vscale::ChannelClosedError&) {
      }
      return k;
    }, ch, long{w}));
  std::this_thread::sleep_for(200ms);
  ch.close();
  std::map<long, std::vector<long>> got;
  while (ch.isready()) {
    const long v = ch.take();
    got[v / 1'000'000'000L].push_back(v % 1'000'000'000L);
  }
  for (std::size_t i = 0; i < prods.size(); ++i) {
    const long k = counts[i].fetch();
    const auto& mine = got[prods[i]];
    INFO("worker " << prods[i] << " on node " << vscale::host_of(prods[i]) << " returned from " << k << " puts");
    CHECK(k > 0);
    CHECK(mine.size() == static_cast<std::size_t>(k));
    bool in_order = true;
    for (std::size_t j = 0; j < mine.size(); ++j) in_order = in_order && mine[j] == static_cast<long>(j);
    CHECK(in_order);
  }
}

TEST_CASE("mpi.shared_array_stays_on_one_host") {
  vscale::SharedArray<long, 1> a(100);  // default pids: the workers of the master's host
  for (int p : a.pids()) CHECK(vscale::host_of(p) == 0);
  using Array = vscale::SharedArray<long, 1>;
  const int elsewhere = workers_on(2).at(0);
  CHECK_THROWS_WITH_AS(Array(100, vscale::pids({elsewhere})), doctest::Contains("needs all its processes on one host"),
                       vscale::UsageError);
}

TEST_CASE("mpi.interrupt_across_nodes") {
  const int w = workers_on(2).at(0);
  auto f = vscale::remotecall(w, [] {
    for (int i = 0; i < 3000; ++i) {
      vscale::check_interrupt();
      std::this_thread::sleep_for(10ms);
    }
    return 0;
  });
  std::this_thread::sleep_for(100ms);
  vscale::interrupt({w});
  CHECK_THROWS(f.fetch());
  CHECK(vscale::remotecall_fetch(w, [] { return 5; }) == 5);  // it still serves calls
}

TEST_CASE("mpi.output_from_a_node") {
  // The launcher of node 2 forwards it; mpirun brings it to this terminal (ctest checks).
  vscale::remotecall_fetch(workers_on(2).at(0), [] {
    std::printf("xnode-hello from %d\n", vscale::myid());
    std::fflush(stdout);
    return 0;
  });
}

TEST_CASE("mpi.rmprocs_and_addprocs_across_nodes") {
  const int before = vscale::nworkers();
  const int gone = workers_on(1).at(1), watcher = workers_on(2).at(0);
  {
    test_util::StderrCapture err;
    vscale::rmprocs(gone);
    // Gone everywhere: here, and as a worker on a third node sees it.
    CHECK_FALSE(vscale::ext::alive(gone));
    CHECK(eventually([&] { return !vscale::remotecall_fetch(watcher, [](int id) { return vscale::ext::alive(id); }, gone); }));
    CHECK(vscale::nworkers() == before - 1);
    CHECK(vscale::remotecall_fetch(watcher, [] { return vscale::nworkers(); }) == before - 1);
    CHECK_THROWS_AS(vscale::remotecall_fetch(gone, [] { return 0; }), vscale::ProcessExitedException);
    std::this_thread::sleep_for(100ms);  // a death report, if any were made, has time to come
    CHECK(err.contents().find("died") == std::string::npos);  // asked for: not reported as a death
    MESSAGE(err.contents());
  }
  // A worker added under mpirun runs on the master's node and is known on every node.
  const auto added = vscale::addprocs(1);
  REQUIRE(added.size() == 1);
  const int fresh = added[0];
  CHECK(vscale::host_of(fresh) == 0);
  CHECK(vscale::nworkers() == before);
  CHECK(eventually([&] { return vscale::remotecall_fetch(watcher, [] { return vscale::nworkers(); }) == before; }));
  CHECK(vscale::remotecall_fetch(watcher, [](int id) {
    return vscale::remotecall_fetch(id, [] { return vscale::myid() * 2; });
  }, fresh) == fresh * 2);
  auto hosts = vscale::pmap([](long) { return vscale::host_of(vscale::myid()); }, std::vector<long>(300, 0),
                            {.batch_size = 1});
  for (int h = 0; h < 3; ++h) CHECK(std::count(hosts.begin(), hosts.end(), h) > 0);
}

TEST_CASE("mpi.worker_killed_on_another_node_under_pmap") {
  // Last: it takes one worker away. Retries put the lost elements on the others.
  const int before = vscale::nworkers();
  const int victim = workers_on(2).at(1);
  const long pid = vscale::remotecall_fetch(victim, [] { return static_cast<long>(getpid()); });
  std::atomic<bool> done{false};
  std::thread killer([&] {
    std::this_thread::sleep_for(300ms);
    ::kill(static_cast<pid_t>(pid), SIGKILL);
  });
  std::vector<long> xs(4000);
  std::iota(xs.begin(), xs.end(), 0L);
  std::vector<long> r;
  {
    test_util::StderrCapture err;
    r = vscale::pmap([](long x) {
      std::this_thread::sleep_for(std::chrono::microseconds(500));
      return 3 * x + 1;
    }, xs, {.batch_size = 4, .retry_delays = std::vector<std::chrono::duration<double>>(20, 5ms)});
    killer.join();
    CHECK(eventually([&] { return err.contents().find("died: killed by SIGKILL") != std::string::npos; }));
    MESSAGE(err.contents());
  }
  REQUIRE(r.size() == xs.size());
  long wrong = 0;
  for (long i = 0; i < 4000; ++i) wrong += r[static_cast<std::size_t>(i)] != 3 * i + 1;
  CHECK(wrong == 0);
  CHECK(eventually([&] { return !vscale::ext::alive(victim); }));
  CHECK_THROWS_WITH_AS(vscale::remotecall_fetch(victim, [] { return 0; }), doctest::Contains("killed by SIGKILL"),
                       vscale::ProcessExitedException);
  CHECK(vscale::nworkers() == before - 1);
}

TEST_CASE("mpi.idle_master" * doctest::skip()) {
  // Run on its own (-tc=mpi.idle_master --no-skip) by the test of the master killed: it waits
  // here until killed.
  std::printf("mpi-idle-ready %d\n", static_cast<int>(getpid()));
  std::fflush(stdout);
  std::this_thread::sleep_for(120s);
}
