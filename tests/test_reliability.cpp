// Reliability: interrupt() cancels calls and leaves the workers usable; the start timeout
// kills workers that never join; rmprocs escalates to SIGTERM and SIGKILL; a death is one line
// with the reason and the number of failed calls; a killed master takes its workers with it
// within a second; and nothing leaks (fds, processes, /dev/shm) after kill -9 of a worker
// mid-call, kill -9 of the master mid-pmap, an exception in init, a failed construction.
#include <doctest/doctest.h>

#include <dirent.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <vscale/ext.hpp>
#include <vscale/vscale.hpp>

#include "test_util.hpp"

extern char** environ;

using namespace std::chrono_literals;
using test_util::eventually;

namespace {

void ensure_two_workers() {
  if (vscale::nworkers() < 2) vscale::addprocs(2 - vscale::nworkers());
  REQUIRE(vscale::nworkers() >= 2);
}

int os_pid_of(int w) {
  return vscale::remotecall_fetch(w, [] { return static_cast<int>(::getpid()); });
}

bool pid_alive(int pid) {
  // A zombie still answers kill(pid, 0); look at its state.
  std::ifstream st("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(st, line)) return false;
  const auto rp = line.rfind(')');
  return rp != std::string::npos && rp + 2 < line.size() && line[rp + 2] != 'Z';
}

std::size_t open_fds() {
  std::size_t n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (auto* e = ::readdir(d)) n += e->d_name[0] != '.';
    ::closedir(d);
  }
  return n;
}

std::set<std::string> dev_shm() {
  std::set<std::string> out;
  if (DIR* d = ::opendir("/dev/shm")) {
    while (auto* e = ::readdir(d))
      if (e->d_name[0] != '.') out.insert(e->d_name);
    ::closedir(d);
  }
  return out;
}

// Every worker answers.
void cluster_works() {
  for (int w : vscale::workers()) CHECK(vscale::remotecall_fetch(w, [] { return vscale::myid(); }) == w);
}

bool is_interrupted(const vscale::RemoteException& e) { return e.type() == "vscale::InterruptedException"; }

// Start this test binary as a separate master running one test case (the helper modes
// below), with `args` after it; returns its pid.
pid_t start_helper_master(const std::string& test_case, const std::vector<std::string>& env_add) {
  std::vector<std::string> args = {"/proc/self/exe", "-p", "2", "--test-case=" + test_case, "--no-version"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_store;
  for (char** e = environ; *e; ++e) env_store.emplace_back(*e);
  for (const auto& e : env_add) env_store.push_back(e);
  std::vector<char*> envp;
  for (auto& e : env_store) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t pid = -1;
  REQUIRE(::posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), envp.data()) == 0);
  return pid;
}

// A helper master's pids, its own first, then its workers', written whole (renamed into place).
void write_helper_pids(const std::string& out) {
  {
    std::ofstream f(out + ".tmp");
    f << ::getpid() << '\n';
    for (int w : vscale::workers()) f << os_pid_of(w) << '\n';
  }
  std::rename((out + ".tmp").c_str(), out.c_str());
}

std::vector<int> read_pids(const std::string& path, std::size_t want) {
  std::vector<int> pids;
  eventually([&] {
    pids.clear();
    std::ifstream in(path);
    for (int p; in >> p;) pids.push_back(p);
    return pids.size() >= want;
  });
  return pids;
}

}  // namespace

// ------------------------------------------------------------------ helper modes
// These run only in the helper master started above (VSCALE_TEST_HELPER set): they write the
// OS pids of the master and its workers to a file and then keep the cluster busy until killed.

TEST_CASE("reliability.helper_busy_master") {
  const char* out = std::getenv("VSCALE_TEST_HELPER");
  if (!out) return;
  write_helper_pids(out);
  // A pmap that never ends (mid-pmap is when the master gets killed).
  std::vector<long> xs(1'000'000);
  for (;;) (void)vscale::pmap([](long x) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
      return x;
    }, xs, {.batch_size = 1});
}

// ------------------------------------------------------------------ interrupt

TEST_CASE("reliability.interrupt_at_check_interrupt") {
  ensure_two_workers();
  const int w = test_util::w1();
  auto spin = vscale::remotecall(w, [] {
    for (long k = 0;; ++k) {
      vscale::check_interrupt();
      std::this_thread::sleep_for(1ms);
      if (k > 120'000) return k;  // two minutes: the test has failed by then
    }
  });
  std::this_thread::sleep_for(50ms);
  CHECK(!spin.isready());
  vscale::interrupt(w);
  try {
    (void)spin.fetch();
    FAIL("the call was not interrupted");
  } catch (const vscale::RemoteException& e) {
    CHECK(is_interrupted(e));
    CHECK(std::string(e.what()).find("interrupted") != std::string::npos);
  }
  // The worker stays usable, and calls started after the interrupt are not affected.
  CHECK(vscale::remotecall_fetch(w, [] {
    vscale::check_interrupt();
    return 7;
  }) == 7);
  cluster_works();
}

TEST_CASE("reliability.interrupt_a_remote_wait") {
  ensure_two_workers();
  const int a = test_util::w1(), b = test_util::w2();
  // Worker a waits for a slow call on worker b; interrupting a ends the wait at once, and b's
  // call goes on undisturbed.
  auto waiting = vscale::remotecall(a, [](int other) {
    return vscale::remotecall_fetch(other, [] {
      std::this_thread::sleep_for(1500ms);
      return 1;
    });
  }, b);
  std::this_thread::sleep_for(100ms);
  const auto t0 = std::chrono::steady_clock::now();
  vscale::interrupt(a);
  CHECK_THROWS_AS((void)waiting.fetch(), vscale::RemoteException);
  CHECK(std::chrono::steady_clock::now() - t0 < 1400ms);
  CHECK(vscale::remotecall_fetch(a, [] { return 3; }) == 3);
  CHECK(vscale::remotecall_fetch(b, [] { return 4; }) == 4);
}

TEST_CASE("reliability.interrupt_a_blocked_channel_take_loses_nothing") {
  ensure_two_workers();
  const int w = test_util::w1();
  vscale::RemoteChannel<int> ch(4);  // owned by the master
  auto taker = vscale::remotecall(w, [](vscale::RemoteChannel<int> c) { return c.take(); }, ch);
  std::this_thread::sleep_for(100ms);
  CHECK(!taker.isready());
  vscale::interrupt(w);
  try {
    (void)taker.fetch();
    FAIL("the take was not interrupted");
  } catch (const vscale::RemoteException& e) {
    CHECK(is_interrupted(e));
  }
  // The abandoned take took nothing: a value put now is there for the next taker.
  ch.put(41);
  CHECK(vscale::remotecall_fetch(w, [](vscale::RemoteChannel<int> c) { return c.take() + 1; }, ch) == 42);
  CHECK(!ch.isready());
}

TEST_CASE("reliability.interrupt_of_a_dead_id_is_an_error") {
  CHECK_THROWS_AS(vscale::interrupt(999), vscale::ProcessExitedException);
  CHECK(!vscale::interrupted());  // outside any call
  vscale::check_interrupt();      // does nothing outside calls
}

// ------------------------------------------------------------------ start timeout, rmprocs

TEST_CASE("reliability.start_timeout_kills_workers_that_never_join") {
  // A "worker" that never answers the handshake: a script that records its pid and sleeps.
  char dir[] = "/tmp/vscale_test_start_XXXXXX";
  REQUIRE(::mkdtemp(dir));
  const std::string script = std::string(dir) + "/never_joins.sh", pidfile = std::string(dir) + "/pid";
  {
    std::ofstream f(script);
    f << "#!/bin/sh\necho $$ > " << pidfile << "\nexec sleep 60\n";
  }
  ::chmod(script.c_str(), 0700);
  const auto before = vscale::workers();
  test_util::StderrCapture cap;
  const auto t0 = std::chrono::steady_clock::now();
  auto res = vscale::detail::launch(1, script, {}, 700ms);
  const auto took = std::chrono::steady_clock::now() - t0;
  const std::string err = cap.contents();
  cap.restore();
  CHECK(res.joined.empty());
  REQUIRE(res.failed.size() == 1);
  CHECK(res.failed[0].second.find("did not join within 700 ms") != std::string::npos);
  CHECK(err.find("failed to start: did not join within 700 ms") != std::string::npos);
  CHECK(took < 10s);
  const auto pids = read_pids(pidfile, 1);
  REQUIRE(pids.size() == 1);
  CHECK(eventually([&] { return !pid_alive(pids[0]); }, 10));
  CHECK(vscale::workers() == before);
  cluster_works();
  std::remove(pidfile.c_str());
  std::remove(script.c_str());
  ::rmdir(dir);
}

TEST_CASE("reliability.worker_exe_names_the_program_workers_run") {
  // VSCALE_WORKER_EXE (for valgrind --trace-children): the program's own path works as
  // /proc/self/exe does; another program is refused, named as not speaking the protocol.
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  REQUIRE(n > 0);
  self[n] = 0;
  REQUIRE(::setenv("VSCALE_WORKER_EXE", self, 1) == 0);
  const auto ids = vscale::addprocs(1);
  REQUIRE(ids.size() == 1);
  CHECK(vscale::remotecall_fetch(ids[0], [] { return vscale::myid(); }) == ids[0]);
  vscale::rmprocs(ids);
  const auto before = vscale::workers();
  REQUIRE(::setenv("VSCALE_WORKER_EXE", "/bin/true", 1) == 0);
  {
    test_util::StderrCapture cap;
    std::vector<int> bad;
    try {
      bad = vscale::addprocs(1);
    } catch (const vscale::Error&) {  // none started: either way no worker
    }
    CHECK(bad.empty());
    CHECK(cap.contents().find("failed to start") != std::string::npos);
    MESSAGE(cap.contents());
  }
  ::unsetenv("VSCALE_WORKER_EXE");
  CHECK(vscale::workers() == before);
  cluster_works();
}

TEST_CASE("reliability.rmprocs_escalates_to_sigkill") {
  ensure_two_workers();
  const int w = vscale::addprocs(1).at(0);
  const int pid = os_pid_of(w);
  ::kill(pid, SIGSTOP);  // neither the polite request nor SIGTERM can end it now
  const auto t0 = std::chrono::steady_clock::now();
  vscale::rmprocs({w}, 600ms);
  CHECK(std::chrono::steady_clock::now() - t0 < 10s);
  CHECK(!pid_alive(pid));
  const auto ws = vscale::workers();
  CHECK(std::find(ws.begin(), ws.end(), w) == ws.end());
  cluster_works();
}

// ------------------------------------------------------------------ deaths and leaks

TEST_CASE("reliability.death_line_names_reason_and_failed_calls") {
  ensure_two_workers();
  const int w = vscale::addprocs(1).at(0);
  const int pid = os_pid_of(w);
  test_util::StderrCapture cap;
  std::atomic<int> failed{0};
  std::vector<std::thread> ts;
  for (int k = 0; k < 2; ++k)
    ts.emplace_back([&] {
      try {
        vscale::remotecall_fetch(w, [] {
          std::this_thread::sleep_for(60s);
          return 0;
        });
      } catch (const vscale::ProcessExitedException& e) {
        if (e.pid() == w && e.reason().find("SIGKILL") != std::string::npos) failed.fetch_add(1);
      }
    });
  // Both calls are waiting when the worker is killed.
  REQUIRE(eventually([&] { return vscale::ext::pending_requests_to(w) == 2; }));
  ::kill(pid, SIGKILL);
  for (auto& t : ts) t.join();
  CHECK(failed.load() == 2);
  const std::string expect = "worker " + std::to_string(w) + " (pid " + std::to_string(pid) +
                             ") died: killed by SIGKILL; 2 pending calls failed";
  CHECK(eventually([&] { return cap.contents().find(expect) != std::string::npos; }, 10));
  cap.restore();
  const auto ws = vscale::workers();
  CHECK(std::find(ws.begin(), ws.end(), w) == ws.end());
  cluster_works();
}

TEST_CASE("reliability.nothing_leaks_after_failures") {
  ensure_two_workers();
  const auto shm0 = dev_shm();
  // Warm up what stays mapped for the session (the workers' first SharedArray, etc.).
  { vscale::SharedArray<double, 1> warm(1000); }
  const std::size_t fds0 = open_fds();

  // kill -9 of a worker mid-call
  const int w = vscale::addprocs(1).at(0);
  const int pid = os_pid_of(w);
  auto doomed = vscale::remotecall(w, [] {
    std::this_thread::sleep_for(60s);
    return 0;
  });
  std::this_thread::sleep_for(50ms);
  ::kill(pid, SIGKILL);
  CHECK_THROWS_AS((void)doomed.fetch(), vscale::ProcessExitedException);
  CHECK(eventually([&] { return !pid_alive(pid); }));

  // an exception in init
  CHECK_THROWS_AS((vscale::SharedArray<double, 1>(4096, vscale::init([](const vscale::SharedArray<double, 1>&) {
                    throw std::runtime_error("init failed on purpose");
                  }))),
                  vscale::Error);
  // a failed construction: far more memory than there is
  CHECK_THROWS_AS((vscale::SharedArray<double, 1>(std::size_t(1) << 50)), vscale::Error);

  cluster_works();
  // Back where it started, or lower (the warm-up array's fd may still have been closing).
  CHECK(eventually([&] { return open_fds() <= fds0; }));
  CHECK(dev_shm() == shm0);
}

TEST_CASE("reliability.killed_master_takes_its_workers_within_a_second") {
  const auto shm0 = dev_shm();
  char dir[] = "/tmp/vscale_test_master_XXXXXX";
  REQUIRE(::mkdtemp(dir));
  const std::string pidfile = std::string(dir) + "/pids";
  const pid_t master = start_helper_master("reliability.helper_busy_master", {"VSCALE_TEST_HELPER=" + pidfile});
  const auto pids = read_pids(pidfile, 3);  // the master, then its two workers
  REQUIRE(pids.size() == 3);
  CHECK(pids[0] == master);
  std::this_thread::sleep_for(200ms);  // mid-pmap
  ::kill(master, SIGKILL);
  int status = 0;
  ::waitpid(master, &status, 0);
  const auto t0 = std::chrono::steady_clock::now();
  bool all_gone = false;
  while (!all_gone && std::chrono::steady_clock::now() - t0 < 5s) {
    all_gone = !pid_alive(pids[1]) && !pid_alive(pids[2]);
    if (!all_gone) std::this_thread::sleep_for(10ms);
  }
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(all_gone);
  // The bar is 1 s; a loaded 2-core CI machine gets some slack in this assertion.
  CHECK(took < 1500ms);
  MESSAGE("workers gone " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                          << " ms after the master was killed");
  CHECK(dev_shm() == shm0);
  std::remove(pidfile.c_str());
  ::rmdir(dir);
}

// ------------------------------------------------------------------ exit() inside a call

namespace {
// The reason a call to a worker that ended itself fails with.
// Each `code` is one way out: exit(), quick_exit(), exit() from a user thread, exit() from
// an atexit handler.
std::string death_of_call(int w, int code) {
  try {
    switch (code) {
      case 3: vscale::remotecall_fetch(w, [] { std::exit(3); return 0; }); break;
      case 4: vscale::remotecall_fetch(w, [] { std::printf("last words\n"); std::quick_exit(4); return 0; }); break;
      case 5:
        vscale::remotecall_fetch(w, [] {
          std::thread([] { std::exit(5); }).detach();  // from a thread the user started
          std::this_thread::sleep_for(std::chrono::seconds(30));
          return 0;
        });
        break;
      case 6:
        vscale::remotecall_fetch(w, [] {
          std::atexit([] { std::exit(6); });  // exit() again from an atexit handler
          std::exit(0);
          return 0;
        });
        break;
    }
  } catch (const vscale::ProcessExitedException& e) {
    return e.reason();
  }
  return "the call returned";
}
}  // namespace

TEST_CASE("reliability.exit_in_a_call_is_a_clean_death") {
  // std::exit(3) inside a call killed the worker with SIGABRT (the exit handlers destroyed the
  // runtime, whose stop() joined the calling thread): now each way of ending the process from
  // user code is a death with its own exit code, reported as such.
  for (int code : {3, 4, 5, 6}) {
    CAPTURE(code);
    const int w = vscale::addprocs(1).at(0);
    test_util::StderrCapture cap;
    const std::string why = death_of_call(w, code);
    CHECK(why.find("exited with code " + std::to_string(code)) != std::string::npos);
    CHECK(why.find("SIGABRT") == std::string::npos);
    CHECK(eventually([&] { return cap.contents().find("died: exited with code " + std::to_string(code)) != std::string::npos; }, 10));
    CHECK(cap.contents().find("terminate called") == std::string::npos);
  }
  cluster_works();
}

TEST_CASE("reliability.helper_master_exits_in_a_call") {
  const char* out = std::getenv("VSCALE_TEST_HELPER");
  if (!out) return;
  write_helper_pids(out);
  std::this_thread::sleep_for(100ms);
  // A call the master runs itself (on one of its executor threads) ends the program.
  vscale::remotecall_fetch(1, [] { std::exit(7); return 0; });
}

TEST_CASE("reliability.master_exit_in_a_call_ends_the_job") {
  char dir[] = "/tmp/vscale_test_exit_XXXXXX";
  REQUIRE(::mkdtemp(dir));
  const std::string pidfile = std::string(dir) + "/pids";
  const pid_t master = start_helper_master("reliability.helper_master_exits_in_a_call", {"VSCALE_TEST_HELPER=" + pidfile});
  const auto pids = read_pids(pidfile, 3);
  REQUIRE(pids.size() == 3);
  int status = 0;
  REQUIRE(eventually([&] { return ::waitpid(master, &status, WNOHANG) == master; }, 30));
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 7);
  CHECK(eventually([&] { return !pid_alive(pids[1]) && !pid_alive(pids[2]); }, 5));
  std::remove(pidfile.c_str());
  ::rmdir(dir);
}

TEST_CASE("reliability.a_worker_joins_only_once_its_runtime_runs") {
  // Under ulimit -u a worker passed the cookie check, was counted as joined, and then could not
  // make its threads: Session returned with workers that died on the first call. Now a worker
  // is a member only once it says its runtime runs; one that cannot is reported, not counted.
  if (::geteuid() != 0 || ::access("/usr/bin/setpriv", X_OK) != 0) {
    MESSAGE("needs root and setpriv (the worker runs as nobody with ulimit -u 3): skipped");
    return;
  }
  char exe[4096];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  REQUIRE(n > 0);
  exe[n] = 0;
  if (::access(exe, R_OK | X_OK) != 0) return;
  char dir[] = "/tmp/vscale_test_nproc_XXXXXX";
  REQUIRE(::mkdtemp(dir));
  ::chmod(dir, 0755);
  const std::string script = std::string(dir) + "/few_threads.sh";
  {
    std::ofstream f(script);
    f << "#!/bin/bash\nulimit -u 3\nexec /usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups " << exe << " \"$@\"\n";
  }
  ::chmod(script.c_str(), 0755);
  const auto before = vscale::workers();
  test_util::StderrCapture cap;
  auto res = vscale::detail::launch(1, script, {}, 20s);
  const std::string err = cap.contents();
  cap.restore();
  CAPTURE(err);
  CHECK(res.joined.empty());
  REQUIRE(res.failed.size() == 1);
  CHECK(res.failed[0].second.find("could not start") != std::string::npos);
  CHECK(vscale::workers() == before);
  cluster_works();
  std::remove(script.c_str());
  ::rmdir(dir);
}
