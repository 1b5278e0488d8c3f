// The local launcher: the first ClusterManager. It starts workers as processes of this very
// program on this host (posix_spawn of /proc/self/exe with the hidden --vscale-worker flag),
// checks each one's cookie and build id over a socketpair (handshake.hpp), forwards their
// stdout/stderr line by line ("From worker N:"), reaps them through a pidfd, and publishes
// joins and deaths through the segment's membership API. Internal; master only.
//
// Spawning happens on the launcher's own thread, because PR_SET_PDEATHSIG fires when the
// *thread* that forked the child exits.
#pragma once

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "vscale/detail/cluster_manager.hpp"

namespace vscale::detail {

class Segment;

/// What the launcher needs of the process it runs in: the master's runtime, or an MPI node
/// leader (mpi_node.hpp), which starts its node's workers but makes no calls itself.
class LauncherHost {
 public:
  virtual ~LauncherHost() = default;
  virtual Segment& segment() = 0;
  /// Calls this process waits on from `id`, for the news of its death; negative: this process
  /// makes no calls, and the death is reported where they are made (the master).
  virtual long pending_to(int id) = 0;
  /// Ask worker `id` to leave politely (a kExit message); throws Error if it cannot be sent.
  virtual void send_exit(int id) = 0;
};

class LocalLauncher final : public ClusterManager {
 public:
  explicit LocalLauncher(LauncherHost& host);
  ~LocalLauncher() override { shutdown(); }

  LaunchResult launch(int n, const LaunchSpec& spec) override;
  /// Threads per worker, and the CPUs the next workers are pinned to (in start order; workers
  /// started after the list is used up are not pinned).
  void set_plan(int threads, std::vector<std::vector<int>> cpus) {
    std::lock_guard lk(m_);
    threads_ = threads;
    cpu_plan_.assign(cpus.begin(), cpus.end());
  }
  /// The id the next worker gets (under mpirun each node starts its own block of ids).
  void set_next_id(int id) {
    std::lock_guard lk(m_);
    next_id_ = id;
  }
  void push_fd(int id, RefId key, int fd) override;
  void remove(const std::vector<int>& ids, std::chrono::milliseconds timeout) override;
  void shutdown() override;

 private:
  struct Worker {
    int id = 0;
    pid_t pid = -1;
    int sock = -1, out = -1, err = -1, pidfd = -1;
    std::string out_buf, err_buf;
    bool verified = false;  // passed the cookie and build-id check; joined once it is Ready
    bool joined = false, refused = false, exited = false, removing = false;
    std::string failure;  // why it never joined
    int status = 0;
  };
  struct Batch {
    int n;
    std::string exe, cookie;
    std::vector<int> ids;
    bool spawned = false;
  };

  void loop();
  void check_room(int n);  // with m_ held
  void spawn(Batch& b);
  void on_hello(Worker& w);
  void on_ready(Worker& w);
  bool on_output(Worker& w, bool err_stream);  // false when nothing was there
  void flush_line(Worker& w, bool err_stream, const std::string& line);
  void reap(Worker& w);
  void kick();  // wakes the launcher thread

  LauncherHost& host_;
  std::string cookie_;
  long oom_base_;
  int wake_fd_ = -1;
  std::thread thread_;
  std::mutex m_;
  std::condition_variable cv_;
  std::map<int, Worker> workers_;  // guarded by m_
  std::vector<Batch*> pending_;    // guarded by m_
  int next_id_ = 2;                // guarded by m_
  int threads_ = 1;                 // guarded by m_
  std::deque<std::vector<int>> cpu_plan_;  // guarded by m_
  bool quit_ = false;
};


}  // namespace vscale::detail
