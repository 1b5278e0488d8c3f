// interrupt: Julia's interrupt(pids) stops what the workers are doing, and they stay usable.
//
//   julia> f = remotecall(() -> while true; sleep(0.01); end, 2)
//   julia> interrupt(2)                          vscale::interrupt(2);
//   julia> fetch(f)                              f.fetch()   throws RemoteException whose
//   ERROR: On worker 2: InterruptException       type() is "vscale::InterruptedException"
//   julia> remotecall_fetch(myid, 2)             vscale::remotecall_fetch(2, whoami)   (2)
//
// A C++ loop is not stopped from outside: it calls vscale::check_interrupt() now and then,
// which throws InterruptedException once the call has been interrupted (waits for remote
// results and channel operations are such points too; plain sleeps are not).
// Run: ./interrupt -p 2. It checks its answers and exits non-zero on a wrong one.
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>

#include <vscale/vscale.hpp>

// "Forever": one check_interrupt() per millisecond, for up to two minutes.
long long_loop() {
  for (long k = 0;; ++k) {
    vscale::check_interrupt();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (k > 120'000) return k;  // never interrupted
  }
}

int whoami() { return vscale::myid(); }

int main(int argc, char** argv) {
  vscale::Session session(argc, argv);
  if (vscale::nworkers() < 2) vscale::addprocs(2 - vscale::nworkers());  // like `julia -p 2`
  const int w = vscale::workers().front();
  int failures = 0;
  auto check = [&](bool ok, const char* what) {
    std::cout << (ok ? "  ok: " : "  WRONG: ") << what << '\n';
    if (!ok) ++failures;
  };

  auto f = vscale::remotecall(w, long_loop);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  check(!f.isready(), "the long call is still running");

  // interrupt() returns at once; the loop throws at its next check_interrupt(). (An interrupt
  // only reaches calls already running, so on a loaded machine it is sent again until it lands.)
  for (int round = 0; round < 60 && !f.isready(); ++round) {
    vscale::interrupt(w);
    for (int i = 0; i < 100 && !f.isready(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  bool interrupted = false;
  try {
    long k = f.fetch();
    std::cout << "the loop ended by itself after " << k << " rounds\n";
  } catch (const vscale::RemoteException& e) {
    std::cout << "fetch(f) threw: " << e.what() << '\n';
    interrupted = e.type() == "vscale::InterruptedException" && e.pid() == w;
  }
  check(interrupted, "fetch(f) raised the worker's InterruptedException");

  // The interrupt ended that call only: the worker serves new calls as before.
  check(vscale::remotecall_fetch(w, whoami) == w, "the worker answers the next call");
  check(vscale::remotecall_fetch(w, [] {
          vscale::check_interrupt();  // a new call is not interrupted
          return 42;
        }) == 42,
        "check_interrupt() in a new call does not throw");

  std::cout << (failures ? std::to_string(failures) + " check(s) FAILED\n" : "all checks passed\n");
  return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
