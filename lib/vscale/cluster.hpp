// The cluster: the Session that starts workers, and Julia's process queries.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace vscale {

/// A number of processes or threads, or `auto` (sized from the machine: placement.hpp).
/// Converts from a plain number: `o.procs = 4;`, `o.threads = vscale::auto_count;`.
struct Count {
  constexpr Count(int number = 0) noexcept : n(number) {}
  static constexpr Count automatic() noexcept {
    Count c;
    c.is_auto = true;
    return c;
  }
  int n = 0;
  bool is_auto = false;
  friend constexpr bool operator==(const Count&, const Count&) = default;
};
/// `-p auto`, `-t auto`.
inline constexpr Count auto_count = Count::automatic();

/// Whether processes are pinned to cores.
enum class Bind {
  automatic,  ///< on when the processes or the threads are `auto`, else off
  on,         ///< --bind
  off,        ///< --bind=none
};

/// How a Session starts. Usually filled from the command line by Session(argc, argv).
struct SessionOptions {
  Count procs = 0;     ///< workers to start (-p), or auto_count
  Count threads = 1;   ///< threads per process, the TBB arena's size (-t), or auto_count
  Bind bind = Bind::automatic;  ///< --bind, --bind=none
  bool info = false;   ///< --vscale-info: print the machine and the placement at start
};

/// The runtime of one process. Construct it first thing in `main`:
///
///     int main(int argc, char** argv) { vscale::Session s(argc, argv); ... }
///
/// Workers are this program started again: the code of `main` before the constructor runs in
/// every worker too, so keep it cheap and without side effects, and do master-only work after
/// it (where only the master runs) or under `if (vscale::myid() == 1)`.
///
/// Session(argc, argv) treats a bad flag or VSCALE_* variable as a command-line tool does: it
/// prints the error and exits with status 2 (1 when a limit of the machine stops the start:
/// process ids, open files, processes and threads, file size). Session(SessionOptions) throws
/// vscale::UsageError / vscale::Error instead.
///
/// On the master it reads `-p N|auto` / `--procs` (or VSCALE_PROCS), `-t N|auto` /
/// `--threads` (or VSCALE_THREADS), `--bind`, `--bind=none` and `--vscale-info`, starts the
/// workers and returns; it removes those flags from argv. In a worker (the same program,
/// re-executed with a hidden flag) it serves remote calls and never returns into `main`.
/// Destroying it on the master stops every worker.
class Session {
 public:
  Session(int& argc, char** argv);
  explicit Session(SessionOptions options, const char* argv0 = nullptr);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
};

/// Parse the flags above from argv (removing them) and VSCALE_PROCS / VSCALE_THREADS;
/// exposed for testing.
SessionOptions parse_options(int& argc, char** argv);

/// This process's id: 1 on the master, 2, 3, ... on workers (never reused).
int myid();
/// Number of processes, master included.
int nprocs();
/// Number of workers (0 when only the master runs).
int nworkers();
/// Ids of all processes, master first, ascending.
std::vector<int> procs();
/// Ids of the workers, ascending; `{1}` when there are none (as in Julia).
std::vector<int> workers();

/// The host (node) process `id` runs on: 0 on one host; under mpirun, the MPI rank of its
/// node (the master's is 0). Throws ProcessExitedException for an id that never existed.
int host_of(int id);
/// Number of hosts that run processes of the job (1 unless under mpirun).
int nhosts();
/// The processes alive on `host`, ascending (Julia's `procs(pid)`: those that share a host
/// with `pid` are `procs_on(host_of(pid))`), e.g. the pids of a SharedArray.
std::vector<int> procs_on(int host);

/// Start `n` more workers (master only) and return the ids of those that joined. A worker
/// that has not joined within `start_timeout` (default: VSCALE_START_TIMEOUT_MS, else 60 s)
/// is killed and reported on stderr with the reason; the others are returned (K8s cluster
/// managers' pending_timeout).
std::vector<int> addprocs(int n);
std::vector<int> addprocs(int n, std::chrono::milliseconds start_timeout);
/// Stop the given workers (master only): a polite request first, then SIGTERM, then
/// SIGKILL once `timeout` has passed; returns when all are gone.
void rmprocs(const std::vector<int>& ids, std::chrono::milliseconds timeout = std::chrono::seconds(10));
inline void rmprocs(int id, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  rmprocs(std::vector<int>{id}, timeout);
}

/// Number of CPUs this process may use (affinity mask, cgroup cpuset and CPU quota).
int usable_cpus();

/// Threads of this process's TBB arena, in which incoming calls run (-t).
int nthreads();

/// What was detected (cores, affinity, cgroup quota and memory limit, NUMA nodes) and where
/// each live process runs, one line per process: the text --vscale-info prints.
std::string describe();

}  // namespace vscale
