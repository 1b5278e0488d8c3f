// addprocs: growing and shrinking the cluster while the program runs (Julia's addprocs,
// rmprocs, procs, workers, nworkers):
//
//   julia> addprocs(1)                   auto added = vscale::addprocs(1);   (its new id)
//   julia> procs(), workers()            vscale::procs(), vscale::workers()
//   julia> remotecall_fetch(myid, 3)     vscale::remotecall_fetch(added[0], whoami)
//   julia> rmprocs(3; waitfor=10)        vscale::rmprocs(added[0]);
//
// Ids are never reused: a worker added after one was removed gets a new id.
// Run: ./addprocs -p 1. It checks its answers and exits non-zero on a wrong one.
#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include <vscale/vscale.hpp>

int whoami() { return vscale::myid(); }

void show(const char* when) {
  std::cout << when << ": nworkers() = " << vscale::nworkers() << ", procs() =";
  for (int p : vscale::procs()) std::cout << ' ' << p;
  std::cout << ", workers() =";
  for (int p : vscale::workers()) std::cout << ' ' << p;
  std::cout << '\n';
}

int main(int argc, char** argv) {
  vscale::Session session(argc, argv);
  int failures = 0;
  auto check = [&](bool ok, const char* what) {
    std::cout << (ok ? "  ok: " : "  WRONG: ") << what << '\n';
    if (!ok) ++failures;
  };
  auto has = [](const std::vector<int>& v, int id) { return std::find(v.begin(), v.end(), id) != v.end(); };
  show("at start");
  const int before = vscale::nworkers();

  const std::vector<int> added = vscale::addprocs(1);
  show("after addprocs(1)");
  check(added.size() == 1 && vscale::nworkers() == before + 1, "addprocs(1) started one more worker");
  if (added.empty()) return EXIT_FAILURE;
  const int id = added.front();
  check(has(vscale::workers(), id) && has(vscale::procs(), id), "its id is in workers() and procs()");
  check(vscale::remotecall_fetch(id, whoami) == id, "a call on the new worker runs there");

  vscale::rmprocs(id);  // asks it to stop, then SIGTERM and SIGKILL after 10 s; returns when gone
  show("after rmprocs");
  check(!has(vscale::procs(), id) && vscale::nworkers() == before, "rmprocs removed it");
  const std::vector<int> again = vscale::addprocs(1);
  check(again.size() == 1 && again.front() > id, "a worker added afterwards gets a new id");
  vscale::rmprocs(again);

  std::cout << (failures ? std::to_string(failures) + " check(s) FAILED\n" : "all checks passed\n");
  return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
