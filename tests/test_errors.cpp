// Failures: exceptions thrown remotely (every call path), calls to processes that never
// existed or were removed, misuse of empty Futures, and a worker killed with SIGKILL while a
// call to it is pending. After each, the cluster keeps answering.
#include <doctest/doctest.h>

#include <vscale/vscale.hpp>

#include "test_util.hpp"

#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// A user exception type (global namespace, so its demangled name is just "MyError").
struct MyError : std::exception {
  const char* what() const noexcept override { return "my error happened"; }
};

namespace {

using test_util::eventually;

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

void check_cluster_answers() {
  for (int w : vscale::workers()) CHECK(vscale::remotecall_fetch(w, [] { return vscale::myid(); }) == w);
  CHECK(vscale::remotecall_fetch(1, [] { return vscale::myid(); }) == 1);
}

// Run `fn`, which must throw RemoteException; return it.
template <class Fn>
std::optional<vscale::RemoteException> remote_exception_of(Fn&& fn) {
  try {
    fn();
  } catch (const vscale::RemoteException& e) {
    return e;
  } catch (const std::exception& e) {
    FAIL_CHECK("expected vscale::RemoteException, got another exception: " << e.what());
    return std::nullopt;
  } catch (...) {
    FAIL_CHECK("expected vscale::RemoteException, got a non-std exception");
    return std::nullopt;
  }
  FAIL_CHECK("expected vscale::RemoteException, nothing was thrown");
  return std::nullopt;
}

void check_remote(const std::optional<vscale::RemoteException>& e, int pid, const std::string& type,
                  const std::string& message) {
  REQUIRE(e.has_value());
  CHECK(e->pid() == pid);
  CHECK(e->type() == type);
  CHECK(e->message() == message);
  std::string what = e->what();
  CAPTURE(what);
  CHECK(contains(what, std::to_string(pid)));
  CHECK(contains(what, type));
  CHECK(contains(what, message));
}

// Check one thrower through every call path: fetch, wait, remotecall_wait, remotecall_fetch.
template <class F>
void check_all_paths(int pid, F thrower, const std::string& type, const std::string& message) {
  CAPTURE(pid);
  CAPTURE(type);
  {
    auto f = vscale::remotecall(pid, thrower);
    check_remote(remote_exception_of([&] { (void)f.fetch(); }), pid, type, message);
    // A failed Future stays failed.
    check_remote(remote_exception_of([&] { (void)f.fetch(); }), pid, type, message);
  }
  {
    auto f = vscale::remotecall(pid, thrower);
    check_remote(remote_exception_of([&] { f.wait(); }), pid, type, message);
  }
  check_remote(remote_exception_of([&] { (void)vscale::remotecall_wait(pid, thrower); }), pid, type, message);
  check_remote(remote_exception_of([&] { (void)vscale::remotecall_fetch(pid, thrower); }), pid, type, message);
  check_cluster_answers();
}

int throws_runtime_error() { throw std::runtime_error("runtime boom"); }
int throws_out_of_range() { return std::vector<int>{1, 2, 3}.at(7); }

std::string out_of_range_message() {
  try {
    (void)std::vector<int>{1, 2, 3}.at(7);
  } catch (const std::out_of_range& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("errors.remote.runtime_error") {
  for (int w : vscale::workers()) check_all_paths(w, throws_runtime_error, "std::runtime_error", "runtime boom");
}

TEST_CASE("errors.remote.out_of_range") {
  check_all_paths(vscale::workers().front(), throws_out_of_range, "std::out_of_range", out_of_range_message());
}

TEST_CASE("errors.remote.user_type") {
  check_all_paths(vscale::workers().back(), []() -> double { throw MyError(); }, "MyError", "my error happened");
}

TEST_CASE("errors.remote.int") {
  int w = vscale::workers().front();
  auto e = remote_exception_of([&] { vscale::remotecall_fetch(w, []() -> int { throw 42; }); });
  REQUIRE(e.has_value());
  CHECK(e->pid() == w);
  CHECK(e->type() == "int");
  CHECK(contains(e->what(), std::to_string(w)));
  CHECK(contains(e->what(), "int"));
  auto f = vscale::remotecall(w, [] { throw 42; });
  auto e2 = remote_exception_of([&] { f.wait(); });
  REQUIRE(e2.has_value());
  CHECK(e2->type() == "int");
  check_cluster_answers();
}

TEST_CASE("errors.remote.void_call") {
  int w = vscale::workers().back();
  auto f = vscale::remotecall(w, [] { throw std::runtime_error("void boom"); });
  check_remote(remote_exception_of([&] { f.fetch(); }), w, "std::runtime_error", "void boom");
}

TEST_CASE("errors.remote.on_master_itself") {
  // A call to one's own id fails the same way, with pid 1.
  check_all_paths(1, throws_runtime_error, "std::runtime_error", "runtime boom");
}

TEST_CASE("errors.remote.long_message") {
  int w = vscale::workers().back();
  auto e = remote_exception_of([&] {
    vscale::remotecall_fetch(w, [] { throw std::runtime_error(std::string(100000, 'e') + "|end"); });
  });
  REQUIRE(e.has_value());
  CHECK(e->message().size() == 100004);
  CHECK(e->message() == std::string(100000, 'e') + "|end");
  check_cluster_answers();
}

TEST_CASE("errors.remote.failed_future_fetched_elsewhere") {
  // A Future of a failed call, fetched by another worker, carries the original failure.
  auto ws = vscale::workers();
  int a = ws.front(), b = ws.back();
  auto f = vscale::remotecall(a, throws_runtime_error);
  auto seen = vscale::remotecall_fetch(b, [](const vscale::Future<int>& fu) {
    try {
      (void)fu.fetch();
    } catch (const vscale::RemoteException& ex) {
      return std::make_tuple(ex.pid(), ex.type(), ex.message());
    }
    return std::make_tuple(0, std::string("nothing thrown"), std::string());
  }, f);
  CHECK(std::get<0>(seen) == a);
  CHECK(std::get<1>(seen) == "std::runtime_error");
  CHECK(std::get<2>(seen) == "runtime boom");
  check_remote(remote_exception_of([&] { (void)f.fetch(); }), a, "std::runtime_error", "runtime boom");
}

TEST_CASE("errors.remote.is_vscale_error") {
  int w = vscale::workers().front();
  bool caught = false;
  try {
    vscale::remotecall_fetch(w, throws_runtime_error);
  } catch (const vscale::Error& e) {
    caught = true;
    CHECK(dynamic_cast<const vscale::RemoteException*>(&e) != nullptr);
  }
  CHECK(caught);
}

TEST_CASE("errors.remote.nested_worker_to_worker") {
  // Worker a calls worker b, which throws; a does not catch: the master sees a failure from a.
  auto ws = vscale::workers();
  int a = ws.front(), b = ws.back();
  auto e = remote_exception_of([&] {
    vscale::remotecall_fetch(a, [](int to) { return vscale::remotecall_fetch(to, throws_runtime_error); }, b);
  });
  REQUIRE(e.has_value());
  CHECK(contains(e->what(), "runtime boom"));
  // What a sees is a RemoteException from b.
  auto seen = vscale::remotecall_fetch(a, [](int to) {
    try {
      vscale::remotecall_fetch(to, throws_runtime_error);
    } catch (const vscale::RemoteException& ex) {
      return std::make_tuple(ex.pid(), ex.type(), ex.message());
    }
    return std::make_tuple(0, std::string(), std::string());
  }, b);
  CHECK(std::get<0>(seen) == b);
  CHECK(std::get<1>(seen) == "std::runtime_error");
  CHECK(std::get<2>(seen) == "runtime boom");
  check_cluster_answers();
}

TEST_CASE("errors.remote.nested_error_says_where_it_passed") {
  // 1 calls a, which calls b, which throws: the RemoteException named b alone. It keeps the
  // origin (pid, type, message) and now the path, origin first.
  auto ws = vscale::workers();
  const int a = ws.front(), b = ws.back();
  const std::string ida = std::to_string(a), idb = std::to_string(b);
  auto direct = remote_exception_of([&] { vscale::remotecall_fetch(b, throws_runtime_error); });
  REQUIRE(direct.has_value());
  CHECK(direct->path() == std::vector<int>{b});
  CHECK(std::string(direct->what()) == "on worker " + idb + ": std::runtime_error: runtime boom");

  auto nested = [](int to) { return vscale::remotecall_fetch(to, throws_runtime_error); };
  auto e = remote_exception_of([&] { vscale::remotecall_fetch(a, nested, b); });
  check_remote(e, b, "std::runtime_error", "runtime boom");
  REQUIRE(e.has_value());
  CHECK(e->path() == std::vector<int>{b, a});
  CHECK(std::string(e->what()) == "on worker " + idb + ", called from worker " + ida + ": std::runtime_error: runtime boom");

  // The same through a Future (remotecall + fetch), and through the master in the middle.
  auto f = vscale::remotecall(a, nested, b);
  auto e2 = remote_exception_of([&] { (void)f.fetch(); });
  REQUIRE(e2.has_value());
  CHECK(e2->path() == std::vector<int>{b, a});
  auto e3 = remote_exception_of([&] {
    vscale::remotecall_fetch(a, [](int to) {
      return vscale::remotecall_fetch(1, [](int t) { return vscale::remotecall_fetch(t, throws_runtime_error); }, to);
    }, b);
  });
  check_remote(e3, b, "std::runtime_error", "runtime boom");
  REQUIRE(e3.has_value());
  CHECK(e3->path() == std::vector<int>{b, 1, a});
  CHECK(contains(e3->what(), "on worker " + idb + ", called from the master, called from worker " + ida + ": "));
  // A failure that starts on the master and comes back through a worker.
  auto e4 = remote_exception_of([&] {
    vscale::remotecall_fetch(a, [] { return vscale::remotecall_fetch(1, throws_runtime_error); });
  });
  REQUIRE(e4.has_value());
  CHECK(e4->pid() == 1);
  CHECK(e4->path() == std::vector<int>{1, a});
  CHECK(contains(e4->what(), "on the master (process 1), called from worker " + ida + ": std::runtime_error"));
  // A rethrown RemoteException on the process that caught it does not count that process twice.
  auto e5 = remote_exception_of([&] {
    vscale::remotecall_fetch(a, [](int to) {
      try {
        return vscale::remotecall_fetch(to, throws_runtime_error);
      } catch (const vscale::RemoteException&) {
        auto g = vscale::remotecall(vscale::myid(), [](int t) { return vscale::remotecall_fetch(t, throws_runtime_error); }, to);
        return g.fetch();
      }
    }, b);
  });
  REQUIRE(e5.has_value());
  CHECK(e5->path() == std::vector<int>{b, a});
  check_cluster_answers();
}

std::atomic<int> g_everywhere_runs{0};

TEST_CASE("errors.everywhere_reports_failure_after_all_ran") {
  int bad = vscale::workers().back();
  std::vector<int> before;
  for (int p : vscale::procs()) before.push_back(vscale::remotecall_fetch(p, [] { return g_everywhere_runs.load(); }));
  auto e = remote_exception_of([&] {
    vscale::everywhere([] {
      ++g_everywhere_runs;
      if (vscale::myid() == vscale::workers().back()) throw std::runtime_error("everywhere boom");
    });
  });
  REQUIRE(e.has_value());
  CHECK(e->pid() == bad);
  CHECK(e->message() == "everywhere boom");
  auto ps = vscale::procs();
  for (std::size_t i = 0; i < ps.size(); ++i)
    CHECK(vscale::remotecall_fetch(ps[i], [] { return g_everywhere_runs.load(); }) == before[i] + 1);
  check_cluster_answers();
}

TEST_CASE("errors.remote_do_failure_keeps_worker") {
  int w = vscale::workers().front();
  vscale::remote_do(w, [] { throw std::runtime_error("remote_do boom (expected in this test)"); });
  check_cluster_answers();
  CHECK(vscale::remotecall_fetch(w, [](int x) { return x + 1; }, 1) == 2);
}

// A type whose cereal load rejects negative values and whose save rejects 13.
struct Picky {
  std::string tag;
  int v = 0;
  template <class A>
  void serialize(A& a) {
    if constexpr (A::is_saving::value) {
      if (v == 13) throw std::domain_error("13 cannot be saved");
    }
    a(tag, v);
    if constexpr (A::is_loading::value) {
      if (v < 0) throw std::invalid_argument("negative Picky");
    }
  }
};

TEST_CASE("errors.remote.argument_cannot_be_read") {
  int w = vscale::workers().front();
  auto e = remote_exception_of([&] { vscale::remotecall_fetch(w, [](Picky p) { return p.v; }, Picky{"p", -1}); });
  REQUIRE(e.has_value());
  CHECK(e->pid() == w);
  CHECK(e->type() == "std::invalid_argument");
  CHECK(e->message() == "negative Picky");
  auto f = vscale::remotecall(w, [](Picky p) { return p.v; }, Picky{"p", -2});
  auto e2 = remote_exception_of([&] { (void)f.fetch(); });
  REQUIRE(e2.has_value());
  CHECK(e2->type() == "std::invalid_argument");
  check_cluster_answers();
}

TEST_CASE("errors.remote.result_cannot_be_written") {
  int w = vscale::workers().back();
  auto e = remote_exception_of([&] { vscale::remotecall_fetch(w, [] { return Picky{"r", 13}; }); });
  REQUIRE(e.has_value());
  CHECK(e->pid() == w);
  CHECK(e->type() == "std::domain_error");
  CHECK(e->message() == "13 cannot be saved");
  check_cluster_answers();
}

TEST_CASE("errors.exited.never_existed") {
  try {
    vscale::remotecall_fetch(999, [] { return 1; });
    FAIL("a call to process 999 did not throw");
  } catch (const vscale::ProcessExitedException& e) {
    CHECK(e.pid() == 999);
    CHECK(contains(e.what(), "999"));
  }
  try {
    auto f = vscale::remotecall(999, [] { return 1; });
    (void)f.fetch();
    FAIL("remotecall to process 999 did not throw");
  } catch (const vscale::ProcessExitedException& e) {
    CHECK(e.pid() == 999);
    CHECK(contains(e.what(), "999"));
  }
  try {
    vscale::remote_do(999, [] {});
    // remote_do has no answer; not throwing is allowed, but the cluster must be fine.
  } catch (const vscale::ProcessExitedException& e) {
    CHECK(e.pid() == 999);
  }
  CHECK_THROWS_AS(vscale::remotecall_fetch(0, [] { return 1; }), vscale::ProcessExitedException);
  CHECK_THROWS_AS(vscale::remotecall_fetch(-5, [] { return 1; }), vscale::ProcessExitedException);
  check_cluster_answers();
}

TEST_CASE("errors.exited.removed_worker") {
  auto added = vscale::addprocs(1);
  REQUIRE(added.size() == 1);
  int id = added[0];
  CHECK(vscale::remotecall_fetch(id, [] { return vscale::myid(); }) == id);
  vscale::rmprocs(id);
  try {
    vscale::remotecall_fetch(id, [] { return 1; });
    FAIL("a call to a removed worker did not throw");
  } catch (const vscale::ProcessExitedException& e) {
    CHECK(e.pid() == id);
    CHECK(contains(e.what(), std::to_string(id)));
  }
  CHECK_THROWS_AS((void)vscale::remotecall(id, [] { return 1; }).fetch(), vscale::ProcessExitedException);
  CHECK(vscale::nworkers() == 2);
  check_cluster_answers();
}

TEST_CASE("errors.usage.empty_future") {
  vscale::Future<int> empty;
  CHECK_FALSE(empty.valid());
  CHECK_THROWS_AS((void)empty.fetch(), vscale::UsageError);
  CHECK_THROWS_AS(empty.wait(), vscale::UsageError);
  CHECK_THROWS_AS((void)empty.isready(), vscale::UsageError);
  CHECK_THROWS_AS((void)empty.where(), vscale::UsageError);

  vscale::Future<void> empty_void;
  CHECK_THROWS_AS(empty_void.fetch(), vscale::UsageError);

  auto a = vscale::remotecall(vscale::workers().front(), [] { return 5; });
  auto b = std::move(a);
  CHECK_FALSE(a.valid());  // NOLINT(bugprone-use-after-move): testing the moved-from state
  CHECK_THROWS_AS((void)a.fetch(), vscale::UsageError);
  CHECK_THROWS_AS(a.wait(), vscale::UsageError);
  CHECK(b.valid());
  CHECK(b.fetch() == 5);

  // Sending an empty Future is misuse too.
  CHECK_THROWS_AS(vscale::remotecall_fetch(vscale::workers().front(),
                                           [](const vscale::Future<int>& f) { return f.valid(); }, empty),
                  vscale::UsageError);
  check_cluster_answers();
}

TEST_CASE("errors.exited.sigkill_during_call") {
  auto ws = vscale::workers();
  int victim = ws.back();
  int survivor = ws.front();
  pid_t os_pid = vscale::remotecall_fetch(victim, [] { return ::getpid(); });
  REQUIRE(os_pid > 0);
  REQUIRE(os_pid != ::getpid());

  // The call tells us it started by creating a marker file, then sleeps for a long time.
  std::string marker = (std::filesystem::temp_directory_path() /
                        ("vscale_test_errors_" + std::to_string(::getpid()) + ".marker")).string();
  std::filesystem::remove(marker);
  struct Outcome {
    std::atomic<bool> done{false};
    bool exited = false;
    int pid = 0;
    std::string reason;
    std::string other;
  };
  auto out = std::make_shared<Outcome>();
  int master_pid = ::getpid();
  std::thread caller([out, victim, master_pid] {
    try {
      vscale::remotecall_fetch(victim, [](int mp) {
        std::string path = (std::filesystem::temp_directory_path() /
                            ("vscale_test_errors_" + std::to_string(mp) + ".marker")).string();
        if (FILE* f = std::fopen(path.c_str(), "w")) std::fclose(f);
        std::this_thread::sleep_for(std::chrono::seconds(120));
        return 1;
      }, master_pid);
      out->other = "no exception";
    } catch (const vscale::ProcessExitedException& e) {
      out->exited = true;
      out->pid = e.pid();
      out->reason = e.reason();
    } catch (const std::exception& e) {
      out->other = e.what();
    }
    out->done = true;
  });

  bool started = eventually([&] { return std::filesystem::exists(marker); });
  CHECK(started);
  REQUIRE(::kill(os_pid, SIGKILL) == 0);

  bool finished = eventually([&] { return out->done.load(); }, 60);
  CHECK(finished);
  if (finished) {
    caller.join();
  } else {
    caller.detach();  // let ctest's timeout or the process exit take it
  }
  std::filesystem::remove(marker);
  if (finished) {
    CAPTURE(out->other);
    CHECK(out->exited);
    CHECK(out->pid == victim);
    CAPTURE(out->reason);
    CHECK(contains(out->reason, "SIGKILL"));
  }

  CHECK(eventually([&] {
    auto w = vscale::workers();
    return std::find(w.begin(), w.end(), victim) == w.end();
  }));
  CHECK_THROWS_AS(vscale::remotecall_fetch(victim, [] { return 1; }), vscale::ProcessExitedException);
  // The other worker and the master are unaffected.
  CHECK(vscale::remotecall_fetch(survivor, [] { return vscale::myid(); }) == survivor);

  // Restore two workers.
  if (vscale::nworkers() < 2) vscale::addprocs(2 - vscale::nworkers());
  CHECK(vscale::nworkers() == 2);
  check_cluster_answers();
}

TEST_CASE("errors.exited.sigkill_fails_stored_future") {
  // A Future whose owner dies fails with ProcessExitedException too.
  int victim = vscale::workers().back();
  pid_t os_pid = vscale::remotecall_fetch(victim, [] { return ::getpid(); });
  auto f = vscale::remotecall(victim, [] {
    std::this_thread::sleep_for(std::chrono::seconds(120));
    return 2;
  });
  REQUIRE(::kill(os_pid, SIGKILL) == 0);
  struct Outcome {
    std::atomic<bool> done{false};
    bool exited = false;
    int pid = 0;
    std::string reason;
  };
  auto out = std::make_shared<Outcome>();
  std::thread fetcher([out, f] {
    try {
      (void)f.fetch();
    } catch (const vscale::ProcessExitedException& e) {
      out->exited = true;
      out->pid = e.pid();
      out->reason = e.reason();
    } catch (...) {
    }
    out->done = true;
  });
  bool finished = eventually([&] { return out->done.load(); }, 60);
  CHECK(finished);
  if (finished) {
    fetcher.join();
    CHECK(out->exited);
    CHECK(out->pid == victim);
    CAPTURE(out->reason);
    CHECK(contains(out->reason, "SIGKILL"));
  } else {
    fetcher.detach();
  }
  CHECK(eventually([&] {
    auto w = vscale::workers();
    return std::find(w.begin(), w.end(), victim) == w.end();
  }));
  if (vscale::nworkers() < 2) vscale::addprocs(2 - vscale::nworkers());
  CHECK(vscale::nworkers() == 2);
  check_cluster_answers();
}

TEST_CASE("errors.exited.sigkill_fails_worker_to_worker_call") {
  // Worker a waits on a call to worker b; b is killed: a's call fails, and the master sees
  // ProcessExitedException naming b.
  auto ws = vscale::workers();
  int a = ws.front(), b = ws.back();
  pid_t b_os = vscale::remotecall_fetch(b, [] { return ::getpid(); });
  auto f = vscale::remotecall(a, [](int to) {
    return vscale::remotecall_fetch(to, [] {
      std::this_thread::sleep_for(std::chrono::seconds(120));
      return 3;
    });
  }, b);
  // Let a's call reach b (not required for the outcome, only to make it pending there).
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  REQUIRE(::kill(b_os, SIGKILL) == 0);
  struct Outcome {
    std::atomic<bool> done{false};
    bool exited = false;
    int pid = 0;
    std::string reason, other;
  };
  auto out = std::make_shared<Outcome>();
  std::thread fetcher([out, f] {
    try {
      (void)f.fetch();
      out->other = "no exception";
    } catch (const vscale::ProcessExitedException& e) {
      out->exited = true;
      out->pid = e.pid();
      out->reason = e.reason();
    } catch (const std::exception& e) {
      out->other = e.what();
    }
    out->done = true;
  });
  bool finished = eventually([&] { return out->done.load(); }, 60);
  CHECK(finished);
  if (finished) {
    fetcher.join();
    CAPTURE(out->other);
    CAPTURE(out->reason);
    CHECK(out->exited);
    CHECK(out->pid == b);
  } else {
    fetcher.detach();
  }
  CHECK(eventually([&] {
    auto w = vscale::workers();
    return std::find(w.begin(), w.end(), b) == w.end();
  }));
  // a knows b is gone as well.
  CHECK(eventually([&] {
    auto pa = vscale::remotecall_fetch(a, [] { return vscale::procs(); });
    return std::find(pa.begin(), pa.end(), b) == pa.end();
  }));
  if (vscale::nworkers() < 2) vscale::addprocs(2 - vscale::nworkers());
  CHECK(vscale::nworkers() == 2);
  check_cluster_answers();
}

TEST_CASE("errors.exited.rmprocs_fails_pending_future") {
  // rmprocs of a worker busy in a long call: the polite request cannot be served in time,
  // the worker is stopped after the timeout, and the pending Future fails.
  int victim = vscale::workers().back();
  auto f = vscale::remotecall(victim, [] {
    std::this_thread::sleep_for(std::chrono::seconds(120));
    return 4;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  vscale::rmprocs(victim, std::chrono::milliseconds(500));
  auto w = vscale::workers();
  CHECK(std::find(w.begin(), w.end(), victim) == w.end());
  try {
    (void)f.fetch();
    FAIL("fetch from a removed worker did not throw");
  } catch (const vscale::ProcessExitedException& e) {
    CHECK(e.pid() == victim);
    CHECK(contains(e.what(), std::to_string(victim)));
  }
  if (vscale::nworkers() < 2) vscale::addprocs(2 - vscale::nworkers());
  CHECK(vscale::nworkers() == 2);
  check_cluster_answers();
}

TEST_CASE("errors.exited.future_of_removed_owner") {
  // A finished value whose owner is then removed cannot be fetched any more.
  auto added = vscale::addprocs(1);
  REQUIRE(added.size() == 1);
  auto f = vscale::remotecall_wait(added[0], [] { return 5; });
  vscale::rmprocs(added);
  CHECK_THROWS_AS((void)f.fetch(), vscale::ProcessExitedException);
  CHECK(vscale::nworkers() == 2);
  check_cluster_answers();
}

namespace {
// Start `call` (which makes the worker die) on a fresh worker; return what the pending fetch
// threw. Restores two workers.
template <class F>
std::optional<vscale::ProcessExitedException> death_of_fresh_worker(F call, int& id) {
  auto added = vscale::addprocs(1);
  REQUIRE(added.size() == 1);
  id = added[0];
  auto f = vscale::remotecall(id, call);
  std::optional<vscale::ProcessExitedException> out;
  try {
    (void)f.fetch();
    FAIL_CHECK("fetch from a worker that died did not throw");
  } catch (const vscale::ProcessExitedException& e) {
    out = e;
  } catch (const std::exception& e) {
    FAIL_CHECK("expected ProcessExitedException, got: " << e.what());
  }
  int wid = id;
  CHECK(eventually([wid] {
    auto w = vscale::workers();
    return std::find(w.begin(), w.end(), wid) == w.end();
  }));
  if (vscale::nworkers() < 2) vscale::addprocs(2 - vscale::nworkers());
  CHECK(vscale::nworkers() == 2);
  check_cluster_answers();
  return out;
}
}  // namespace

TEST_CASE("errors.exited.exit_code") {
  int id = 0;
  auto e = death_of_fresh_worker([] {
    std::_Exit(3);
    return 0;
  }, id);
  REQUIRE(e.has_value());
  CHECK(e->pid() == id);
  CAPTURE(e->reason());
  CHECK(contains(e->reason(), "3"));
  CHECK(contains(e->what(), std::to_string(id)));
}

TEST_CASE("errors.exited.segfault") {
  int id = 0;
  auto e = death_of_fresh_worker([] {
    ::raise(SIGSEGV);
    return 0;
  }, id);
  REQUIRE(e.has_value());
  CHECK(e->pid() == id);
  CAPTURE(e->reason());
  CHECK(contains(e->reason(), "SIGSEGV"));
}

TEST_CASE("errors.exited.reason_is_the_reason_alone") {
  // reason() said "is gone: killed by SIGKILL" while errors.hpp documents "killed by SIGKILL":
  // reason() is the reason alone, and what() says the rest.
  auto exited_of = [](auto&& fn) -> std::optional<vscale::ProcessExitedException> {
    try {
      fn();
    } catch (const vscale::ProcessExitedException& e) {
      return e;
    } catch (const std::exception& e) {
      FAIL_CHECK("expected ProcessExitedException, got: " << e.what());
    }
    return std::nullopt;
  };
  auto none = exited_of([] { vscale::remotecall_fetch(999, [] { return 1; }); });
  REQUIRE(none.has_value());
  CHECK(none->reason() == "does not exist (no such process id)");
  CHECK(std::string(none->what()) == "vscale: process 999 does not exist (no such process id)");

  // Killed by a signal: the pending call fails, and so does a new one.
  const int killed = vscale::addprocs(1).at(0);
  const pid_t os_pid = vscale::remotecall_fetch(killed, [] { return ::getpid(); });
  auto pending = vscale::remotecall(killed, [] {
    std::this_thread::sleep_for(std::chrono::seconds(120));
    return 1;
  });
  REQUIRE(::kill(os_pid, SIGKILL) == 0);
  auto k1 = exited_of([&] { (void)pending.fetch(); });
  REQUIRE(k1.has_value());
  CHECK(k1->pid() == killed);
  CHECK(k1->reason() == "killed by SIGKILL");
  CHECK(std::string(k1->what()) == "vscale: process " + std::to_string(killed) + " is gone: killed by SIGKILL");
  auto k2 = exited_of([&] { vscale::remotecall_fetch(killed, [] { return 1; }); });
  REQUIRE(k2.has_value());
  CHECK(k2->reason() == "killed by SIGKILL");

  // Removed by rmprocs.
  const int removed = vscale::addprocs(1).at(0);
  vscale::rmprocs(removed);
  auto r = exited_of([&] { vscale::remotecall_fetch(removed, [] { return 1; }); });
  REQUIRE(r.has_value());
  CHECK(r->reason() == "was removed by rmprocs");
  CHECK(std::string(r->what()) == "vscale: process " + std::to_string(removed) + " is gone: was removed by rmprocs");

  // Exited with a code.
  int id = 0;
  auto x = death_of_fresh_worker([] {
    std::_Exit(3);
    return 0;
  }, id);
  REQUIRE(x.has_value());
  CHECK(x->reason() == "exited with code 3");
  CHECK(std::string(x->what()) == "vscale: process " + std::to_string(id) + " is gone: exited with code 3");

  // Through a nested call: the worker that called the dead one passes the reason on as is.
  auto ws = vscale::workers();
  auto nested = exited_of([&] {
    vscale::remotecall_fetch(ws.front(), [](int to) { return vscale::remotecall_fetch(to, [] { return 1; }); }, killed);
  });
  REQUIRE(nested.has_value());
  CHECK(nested->pid() == killed);
  CHECK(nested->reason() == "killed by SIGKILL");
  if (vscale::nworkers() < 2) vscale::addprocs(2 - vscale::nworkers());
  check_cluster_answers();
}
