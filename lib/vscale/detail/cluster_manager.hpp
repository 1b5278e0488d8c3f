// The cluster-manager interface (Julia's ClusterManager): what starts, watches and stops the
// processes of a session. The local launcher (local_launcher.hpp: worker processes of this
// program on this host, joined over a socketpair) is the first implementation; an MPI manager
// of node leaders is meant to be the second. Internal.
//
// A manager reports what happens to its processes through the segment's membership API
// (Segment::set_starting / set_alive / set_dead, transport.hpp): Julia's manage(:register),
// manage(:deregister) and a death. Everything else in the runtime only reads membership.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "vscale/detail/core.hpp"
#include "vscale/detail/fd_passing.hpp"

namespace vscale::detail {

/// How to start processes: the program to run (empty: this one), the cookie they must show
/// (empty: the session's), and how long each may take to join.
struct LaunchSpec {
  std::string exe;
  std::string cookie;
  std::chrono::milliseconds timeout{0};
};

class ClusterManager {
 public:
  virtual ~ClusterManager() = default;
  /// Start `n` processes and return when each has joined or failed (Julia's launch). Refuses
  /// up front (throws) when they cannot all be started; nothing is started then.
  virtual LaunchResult launch(int n, const LaunchSpec& spec) = 0;
  /// Stop these processes: a polite kExit, then forcibly once `timeout` has passed; returns
  /// when all are gone. Ids never given out are a UsageError; ids already gone are skipped.
  virtual void remove(const std::vector<int>& ids, std::chrono::milliseconds timeout) = 0;
  /// Pass a duplicate of `fd` to process `id` (managers of processes on this host only).
  virtual void push_fd(int id, RefId key, int fd) = 0;
  /// Stop every process and the manager's own threads (the end of the session).
  virtual void shutdown() = 0;
};

}  // namespace vscale::detail
