// The cluster: process queries on the master and in workers, addprocs/rmprocs (ids never
// reused), misuse from a worker, command-line options, and refused joins (bad cookie, other
// binary).
#include <doctest/doctest.h>

#include <vscale/vscale.hpp>

#include "test_util.hpp"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace {

using test_util::eventually;

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool ascending(const std::vector<int>& v) { return std::is_sorted(v.begin(), v.end()) &&
                                                   std::adjacent_find(v.begin(), v.end()) == v.end(); }

// Every worker answers a call with its own id.
void check_all_workers_answer() {
  for (int w : vscale::workers()) {
    if (w == 1) continue;
    CHECK(vscale::remotecall_fetch(w, [] { return vscale::myid(); }) == w);
  }
}

// Bring the cluster back to exactly two workers (whatever their ids).
void restore_two_workers() {
  int n = vscale::nworkers();
  if (n < 2) vscale::addprocs(2 - n);
  if (n > 2) {
    auto w = vscale::workers();
    vscale::rmprocs(std::vector<int>(w.begin() + 2, w.end()));
  }
  REQUIRE(vscale::nworkers() == 2);
}

// Build a mutable argv from strings (parse_options may rearrange the pointers).
struct Argv {
  std::vector<std::string> storage;
  std::vector<char*> ptrs;
  int argc = 0;
  explicit Argv(std::vector<std::string> args) : storage(std::move(args)) {
    for (auto& s : storage) ptrs.push_back(s.data());
    ptrs.push_back(nullptr);
    argc = static_cast<int>(storage.size());
  }
  std::vector<std::string> remaining() const {
    std::vector<std::string> out;
    for (int i = 0; i < argc; ++i) out.emplace_back(ptrs[static_cast<std::size_t>(i)]);
    return out;
  }
};

// Set or unset an environment variable for one scope, restoring what was there.
struct EnvVar {
  std::string name;
  std::optional<std::string> old;
  EnvVar(std::string n, const char* value) : name(std::move(n)) {
    if (const char* o = std::getenv(name.c_str())) old = o;
    if (value)
      ::setenv(name.c_str(), value, 1);
    else
      ::unsetenv(name.c_str());
  }
  ~EnvVar() {
    if (old)
      ::setenv(name.c_str(), old->c_str(), 1);
    else
      ::unsetenv(name.c_str());
  }
};
struct EnvProcs : EnvVar {
  explicit EnvProcs(const char* value) : EnvVar("VSCALE_PROCS", value) {}
};

}  // namespace

TEST_CASE("cluster.queries_on_master") {
  CHECK(vscale::myid() == 1);
  CHECK(vscale::nprocs() == 3);
  CHECK(vscale::nworkers() == 2);
  auto p = vscale::procs();
  auto w = vscale::workers();
  REQUIRE(p.size() == 3);
  REQUIRE(w.size() == 2);
  CHECK(p.front() == 1);
  CHECK(ascending(p));
  CHECK(ascending(w));
  CHECK(std::find(w.begin(), w.end(), 1) == w.end());
  CHECK(std::vector<int>(p.begin() + 1, p.end()) == w);
  // Started with -p 2 and nothing changed yet: Julia's numbering.
  CHECK(w == std::vector<int>{2, 3});
  CHECK(vscale::usable_cpus() >= 1);
}

TEST_CASE("cluster.queries_in_worker") {
  auto p = vscale::procs();
  for (int w : vscale::workers()) {
    CAPTURE(w);
    CHECK(vscale::remotecall_fetch(w, [] { return vscale::myid(); }) == w);
    CHECK(vscale::remotecall_fetch(w, [] { return vscale::procs(); }) == p);
    CHECK(vscale::remotecall_fetch(w, [] { return vscale::nprocs(); }) == vscale::nprocs());
  }
}

TEST_CASE("cluster.addprocs_rmprocs_ids_never_reused") {
  auto before = vscale::procs();
  int max_before = *std::max_element(before.begin(), before.end());

  auto added = vscale::addprocs(2);
  REQUIRE(added.size() == 2);
  CHECK(ascending(added));
  for (int id : added) CHECK(id > max_before);
  CHECK(vscale::nworkers() == 4);
  CHECK(vscale::nprocs() == 5);
  auto w = vscale::workers();
  CHECK(ascending(w));
  for (int id : added) {
    CHECK(std::find(w.begin(), w.end(), id) != w.end());
    CHECK(vscale::remotecall_fetch(id, [] { return vscale::myid(); }) == id);
    // A new worker sees the whole cluster.
    CHECK(vscale::remotecall_fetch(id, [] { return vscale::procs(); }) == vscale::procs());
  }

  // Old workers learn about the new ones and can call them (all to all, like Julia).
  for (int old : before) {
    if (old == 1) continue;
    CAPTURE(old);
    auto all = vscale::procs();
    CHECK(eventually([&] { return vscale::remotecall_fetch(old, [] { return vscale::procs(); }) == all; }));
    for (int id : added)
      CHECK(vscale::remotecall_fetch(old, [](int to) { return vscale::remotecall_fetch(to, [] { return vscale::myid(); }); }, id) == id);
  }
  // And new workers can call old ones.
  CHECK(vscale::remotecall_fetch(added[0], [](int to) { return vscale::remotecall_fetch(to, [] { return vscale::myid(); }); },
                                 before[1]) == before[1]);

  vscale::rmprocs(added);
  w = vscale::workers();
  for (int id : added) CHECK(std::find(w.begin(), w.end(), id) == w.end());
  for (int old : before) {
    if (old == 1) continue;
    CHECK(eventually([&] { return vscale::remotecall_fetch(old, [] { return vscale::procs(); }) == before; }));
  }
  CHECK(vscale::nworkers() == 2);
  CHECK(vscale::procs() == before);

  // A later worker never takes a removed worker's id.
  auto again = vscale::addprocs(1);
  REQUIRE(again.size() == 1);
  CHECK(again[0] > *std::max_element(added.begin(), added.end()));
  CHECK(vscale::remotecall_fetch(again[0], [] { return vscale::myid(); }) == again[0]);
  vscale::rmprocs(again[0]);
  CHECK(vscale::nworkers() == 2);
  check_all_workers_answer();
}

std::atomic<int> g_everywhere_runs{0};

TEST_CASE("cluster.remove_all_workers_then_add_back") {
  auto old = vscale::workers();
  int max_old = *std::max_element(old.begin(), old.end());
  vscale::rmprocs(old);
  CHECK(vscale::workers() == std::vector<int>{1});
  CHECK(vscale::nworkers() == 0);
  CHECK(vscale::nprocs() == 1);
  CHECK(vscale::procs() == std::vector<int>{1});
  // The master alone still runs calls to itself, and is the worker of last resort (Julia).
  CHECK(vscale::remotecall_fetch(1, [] { return vscale::myid(); }) == 1);
  CHECK(vscale::spawnat(vscale::any, [] { return vscale::myid(); }).fetch() == 1);
  int before = g_everywhere_runs.load();
  vscale::everywhere([] { ++g_everywhere_runs; });
  CHECK(g_everywhere_runs.load() == before + 1);

  auto added = vscale::addprocs(2);
  REQUIRE(added.size() == 2);
  for (int id : added) CHECK(id > max_old);
  CHECK(vscale::workers() == added);
  CHECK(vscale::nworkers() == 2);
  check_all_workers_answer();
  restore_two_workers();
}

TEST_CASE("cluster.addprocs_from_worker_is_usage_error") {
  int w = vscale::workers().front();
  try {
    vscale::remotecall_fetch(w, [] { return vscale::addprocs(1); });
    FAIL("addprocs on a worker did not throw");
  } catch (const vscale::RemoteException& e) {
    CHECK(e.pid() == w);
    CHECK(e.type().find("UsageError") != std::string::npos);
  }
  try {
    vscale::remotecall_fetch(w, [](int victim) { vscale::rmprocs(victim); }, vscale::workers().back());
    FAIL("rmprocs on a worker did not throw");
  } catch (const vscale::RemoteException& e) {
    CHECK(e.pid() == w);
    CHECK(e.type().find("UsageError") != std::string::npos);
  }
  CHECK(vscale::nworkers() == 2);
  check_all_workers_answer();
}

TEST_CASE("cluster.addprocs_from_other_thread") {
  // Other threads exist (and hold a lock) while a non-main thread starts a worker.
  std::mutex m;
  std::condition_variable cv;
  bool stop = false;
  std::vector<std::thread> idle;
  for (int i = 0; i < 3; ++i)
    idle.emplace_back([&] {
      std::unique_lock lk(m);
      cv.wait(lk, [&] { return stop; });
    });

  std::vector<int> added;
  int answered = 0;
  std::string error;
  std::thread t([&] {
    try {
      added = vscale::addprocs(1);
      if (added.size() == 1) answered = vscale::remotecall_fetch(added[0], [] { return vscale::myid(); });
    } catch (const std::exception& e) {
      error = e.what();
    }
  });
  t.join();
  {
    std::lock_guard lk(m);
    stop = true;
  }
  cv.notify_all();
  for (auto& th : idle) th.join();

  CHECK(error == "");
  REQUIRE(added.size() == 1);
  CHECK(answered == added[0]);
  vscale::rmprocs(added);
  restore_two_workers();
  check_all_workers_answer();
}

TEST_CASE("cluster.calls_while_adding_and_removing") {
  // Other threads keep calling the original workers while workers come and go.
  auto original = vscale::workers();
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0}, errors{0}, calls{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 2; ++t)
    callers.emplace_back([&, t] {
      for (int i = 0; !stop.load() || i < 20; ++i) {
        int w = original[static_cast<std::size_t>(i + t) % original.size()];
        try {
          if (vscale::remotecall_fetch(w, [](int x) { return x + vscale::myid(); }, i) != i + w) ++wrong;
        } catch (...) {
          ++errors;
        }
        ++calls;
      }
    });
  for (int round = 0; round < 3; ++round) {
    auto added = vscale::addprocs(1);
    REQUIRE(added.size() == 1);
    CHECK(vscale::remotecall_fetch(added[0], [] { return vscale::myid(); }) == added[0]);
    vscale::rmprocs(added);
  }
  stop = true;
  for (auto& th : callers) th.join();
  CHECK(wrong.load() == 0);
  CHECK(errors.load() == 0);
  CHECK(calls.load() >= 40);
  CHECK(vscale::workers() == original);
  check_all_workers_answer();
}

TEST_CASE("cluster.addprocs_negative") {
  auto before = vscale::workers();
  CHECK_THROWS_AS(vscale::addprocs(-1), vscale::Error);
  CHECK(vscale::workers() == before);
}

TEST_CASE("cluster.addprocs_zero") {
  auto before = vscale::workers();
  CHECK(vscale::addprocs(0).empty());
  CHECK(vscale::workers() == before);
}

TEST_CASE("cluster.parse_options.short_flag") {
  EnvProcs env(nullptr);
  Argv a({"prog", "-p", "3", "x"});
  auto o = vscale::parse_options(a.argc, a.ptrs.data());
  CHECK(o.procs == 3);
  CHECK(a.argc == 2);
  CHECK(a.remaining() == std::vector<std::string>{"prog", "x"});
}

TEST_CASE("cluster.parse_options.long_flag") {
  EnvProcs env(nullptr);
  Argv a({"prog", "a", "--procs", "3", "b", "c"});
  auto o = vscale::parse_options(a.argc, a.ptrs.data());
  CHECK(o.procs == 3);
  CHECK(a.argc == 4);
  CHECK(a.remaining() == std::vector<std::string>{"prog", "a", "b", "c"});
}

TEST_CASE("cluster.parse_options.long_flag_equals") {
  EnvProcs env(nullptr);
  Argv a({"prog", "first", "--procs=3", "last"});
  auto o = vscale::parse_options(a.argc, a.ptrs.data());
  CHECK(o.procs == 3);
  CHECK(a.argc == 3);
  CHECK(a.remaining() == std::vector<std::string>{"prog", "first", "last"});
}

TEST_CASE("cluster.parse_options.auto") {
  EnvProcs env(nullptr);
  Argv a({"prog", "-p", "auto", "--other", "7"});
  auto o = vscale::parse_options(a.argc, a.ptrs.data());
  CHECK(o.procs == vscale::auto_count);
  CHECK(a.argc == 3);
  CHECK(a.remaining() == std::vector<std::string>{"prog", "--other", "7"});
}

TEST_CASE("cluster.parse_options.no_flag") {
  EnvProcs env(nullptr);
  EnvVar t("VSCALE_THREADS", nullptr);
  Argv a({"prog", "--other", "2", "y"});
  auto o = vscale::parse_options(a.argc, a.ptrs.data());
  CHECK(o.procs == 0);
  CHECK(o.threads == 1);
  CHECK(o.bind == vscale::Bind::automatic);
  CHECK(!o.info);
  CHECK(a.argc == 4);
  CHECK(a.remaining() == std::vector<std::string>{"prog", "--other", "2", "y"});
}

TEST_CASE("cluster.parse_options.threads_bind_info") {
  EnvProcs env(nullptr);
  EnvVar t("VSCALE_THREADS", nullptr);
  {
    Argv a({"prog", "-t", "4", "x", "-p2", "--bind", "--vscale-info"});
    auto o = vscale::parse_options(a.argc, a.ptrs.data());
    CHECK(o.threads == 4);
    CHECK(o.procs == 2);
    CHECK(o.bind == vscale::Bind::on);
    CHECK(o.info);
    CHECK(a.remaining() == std::vector<std::string>{"prog", "x"});
  }
  {
    Argv a({"prog", "--threads=auto", "-p", "auto", "--bind=none"});
    auto o = vscale::parse_options(a.argc, a.ptrs.data());
    CHECK(o.threads == vscale::auto_count);
    CHECK(o.procs == vscale::auto_count);
    CHECK(o.bind == vscale::Bind::off);
    CHECK(a.argc == 1);
  }
  {
    Argv a({"prog", "-t3"});
    CHECK(vscale::parse_options(a.argc, a.ptrs.data()).threads == 3);
  }
  {
    EnvVar e("VSCALE_THREADS", "6");
    Argv a({"prog"});
    CHECK(vscale::parse_options(a.argc, a.ptrs.data()).threads == 6);
    Argv b({"prog", "-t", "2"});  // the command line wins
    CHECK(vscale::parse_options(b.argc, b.ptrs.data()).threads == 2);
  }
  for (auto bad : {std::vector<std::string>{"prog", "-t", "0"}, {"prog", "-t", "x"}, {"prog", "--threads"},
                   {"prog", "--bind=yes"}, {"prog", "-p", "-1"}}) {
    Argv a(bad);
    CHECK_THROWS_AS(vscale::parse_options(a.argc, a.ptrs.data()), vscale::UsageError);
  }
}

TEST_CASE("cluster.parse_options.env") {
  {
    EnvProcs env("5");
    Argv a({"prog", "z"});
    auto o = vscale::parse_options(a.argc, a.ptrs.data());
    CHECK(o.procs == 5);
    CHECK(a.argc == 2);
    CHECK(a.remaining() == std::vector<std::string>{"prog", "z"});
  }
  {
    // A flag on the command line wins over the environment.
    EnvProcs env("5");
    Argv a({"prog", "-p", "3"});
    auto o = vscale::parse_options(a.argc, a.ptrs.data());
    CHECK(o.procs == 3);
    CHECK(a.argc == 1);
  }
}

TEST_CASE("cluster.launch.wrong_cookie_refused") {
  auto before = vscale::workers();
  auto r = vscale::detail::launch(1, "", "wrong-cookie");
  CHECK(r.joined.empty());
  REQUIRE(r.failed.size() == 1);
  CAPTURE(r.failed[0].second);
  CHECK(lower(r.failed[0].second).find("cookie") != std::string::npos);
  CHECK(vscale::workers() == before);
  check_all_workers_answer();
  CHECK(vscale::remotecall_fetch(before.front(), [](int a, int b) { return a * b; }, 6, 7) == 42);
}

TEST_CASE("cluster.launch.other_binary_refused") {
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  REQUIRE_FALSE(ec);
  auto other = self.parent_path() / "test_remotecall";
  if (!std::filesystem::exists(other)) {
    MESSAGE("skipped: no sibling binary " << other.string());
    return;
  }
  auto before = vscale::workers();
  auto r = vscale::detail::launch(1, other.string());
  CHECK(r.joined.empty());
  REQUIRE(r.failed.size() == 1);
  std::string reason = lower(r.failed[0].second);
  CAPTURE(r.failed[0].second);
  CHECK((reason.find("binary") != std::string::npos || reason.find("build id") != std::string::npos ||
         reason.find("build-id") != std::string::npos || reason.find("test_remotecall") != std::string::npos));
  CHECK(vscale::workers() == before);
  check_all_workers_answer();
  CHECK(vscale::remotecall_fetch(before.back(), [](int a, int b) { return a + b; }, 40, 2) == 42);
}

TEST_CASE("cluster.parse_options.env_auto") {
  EnvProcs env("auto");
  Argv a({"prog"});
  auto o = vscale::parse_options(a.argc, a.ptrs.data());
  CHECK(o.procs == vscale::auto_count);
  CHECK(a.argc == 1);
}

TEST_CASE("cluster.parse_options.bad_values") {
  EnvProcs env(nullptr);
  for (std::vector<std::string> bad : {std::vector<std::string>{"prog", "-p", "abc"},
                                       std::vector<std::string>{"prog", "--procs=-3"},
                                       std::vector<std::string>{"prog", "-p"},
                                       std::vector<std::string>{"prog", "--procs", "2x"}}) {
    Argv a(bad);
    CAPTURE(bad.back());
    CHECK_THROWS_AS(vscale::parse_options(a.argc, a.ptrs.data()), vscale::Error);
  }
  {
    EnvProcs bad_env("lots");
    Argv a({"prog"});
    CHECK_THROWS_AS(vscale::parse_options(a.argc, a.ptrs.data()), vscale::Error);
  }
}

// Helper for cluster.master_killed_workers_exit: run only in a child master started by that
// test (skipped otherwise). Writes the workers' OS pids to $VSCALE_TEST_PIDFILE, then waits.
TEST_CASE("cluster.helper_master_to_be_killed" * doctest::skip()) {
  const char* pidfile = std::getenv("VSCALE_TEST_PIDFILE");
  REQUIRE(pidfile != nullptr);
  std::string tmp = std::string(pidfile) + ".tmp";
  {
    std::ofstream out(tmp);
    for (int w : vscale::workers()) out << vscale::remotecall_fetch(w, [] { return static_cast<int>(::getpid()); }) << "\n";
  }
  std::filesystem::rename(tmp, pidfile);
  std::this_thread::sleep_for(std::chrono::seconds(120));
}

namespace {
bool process_gone(int pid) {
  if (::kill(pid, 0) != 0) return true;  // ESRCH
  // A zombie (exited, not yet reaped by its new parent) counts as gone.
  std::ifstream st("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(st, line)) return true;
  auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'Z';
}
}  // namespace

TEST_CASE("cluster.master_killed_workers_exit") {
  // kill -9 of a master: its workers notice and exit on their own (no orphans).
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  REQUIRE_FALSE(ec);
  std::string pidfile = (std::filesystem::temp_directory_path() /
                         ("vscale_test_cluster_pids_" + std::to_string(::getpid()))).string();
  std::filesystem::remove(pidfile);

  std::vector<std::string> args{self.string(), "-p", "2", "-tc=cluster.helper_master_to_be_killed", "--no-skip"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e)
    if (std::string(*e).rfind("VSCALE_", 0) != 0) envs.emplace_back(*e);
  envs.push_back("VSCALE_TEST_PIDFILE=" + pidfile);
  std::vector<char*> envp;
  for (auto& e : envs) envp.push_back(e.data());
  envp.push_back(nullptr);

  pid_t child = -1;
  REQUIRE(::posix_spawn(&child, self.c_str(), nullptr, nullptr, argv.data(), envp.data()) == 0);

  std::vector<int> worker_pids;
  bool written = eventually([&] {
    int status = 0;
    if (::waitpid(child, &status, WNOHANG) == child) {
      child = -1;
      return true;  // the child ended early: fail below
    }
    return std::filesystem::exists(pidfile);
  });
  REQUIRE(written);
  REQUIRE(child > 0);
  {
    std::ifstream in(pidfile);
    int p = 0;
    while (in >> p) worker_pids.push_back(p);
  }
  std::filesystem::remove(pidfile);
  CHECK(worker_pids.size() == 2);
  for (int p : worker_pids) CHECK_FALSE(process_gone(p));

  REQUIRE(::kill(child, SIGKILL) == 0);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFSIGNALED(status));

  for (int p : worker_pids) {
    CAPTURE(p);
    CHECK(eventually([p] { return process_gone(p); }));
  }
  check_all_workers_answer();  // our own cluster is untouched
}
