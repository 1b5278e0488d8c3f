// Scale-out over MPI (issue 12): one MPI rank per node. Rank 0 is the master (process 1);
// every other rank is a node leader, which starts its node's workers with the local launcher
// and never returns into main. Processes on one node talk through the node's control segment
// as on one host; the rings to processes on other nodes are drained by the node's gateway
// thread, which is the only thread that makes MPI calls, and which writes what arrives for a
// process of its node into the ring (dest, original sender) of its segment. Per-pair order
// holds because each ring keeps it and MPI keeps it between two ranks.
//
// Ids are global: rank r's workers get a block of ids after rank r-1's, and every node's
// segment has a slot for every id (the slot's `node` says where it runs). The gateways tell
// each other of joins and deaths (the membership messages below); a death on any node thus
// fails the calls that wait on it everywhere, as on one host. Internal; only built with MPI
// (the CMake option VSCALE_MPI).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "vscale/detail/cluster_manager.hpp"

namespace vscale {
struct Placement;
}

namespace vscale::detail {

class Segment;
class LocalLauncher;

/// Whether this process is one of several ranks started by mpirun or srun (the launchers'
/// environment variables), so that it must run as one node of a job. Reads only the
/// environment: usable without MPI support.
bool mpi_launch_detected();

/// This rank's part of the job: MPI itself, the id blocks, and the gateway thread.
class MpiNode {
 public:
  /// MPI_Init and the exchange of every rank's plan: how many workers it starts here, its
  /// limit of ids, its build. Throws Error when the ranks cannot form one job (different
  /// builds, too many ids); every rank throws the same.
  static std::unique_ptr<MpiNode> init(int workers_here, std::uint32_t max_procs);
  ~MpiNode();

  int rank() const noexcept;
  int size() const noexcept;
  std::uint32_t max_procs() const noexcept;  // the same on every node
  int first_id() const noexcept;             // of this node's workers
  int next_free_id() const noexcept;         // after every node's first workers
  std::string host_name(int node) const;

  /// Mark every other node's ids in `seg` (created for this node) and start the gateway.
  /// `pending_to` (master only) counts the calls waiting on a process, for the news of its death.
  void attach(Segment& seg, std::function<long(int)> pending_to);
  /// Wait until every first worker of every node has joined or failed, as this node sees it;
  /// the master also waits for every leader to say the same.
  void wait_settled(std::chrono::milliseconds timeout);
  /// Master: ask the leaders to stop the workers `ids` (of their nodes), as rmprocs does.
  void remove_remote(const std::vector<int>& ids, std::chrono::milliseconds timeout);
  /// Master: stop every node (its workers, its leader), then the gateway, then MPI.
  void shutdown();

  /// Leader: run this node until the master ends the job; never returns.
  [[noreturn]] static void lead(std::unique_ptr<MpiNode> node, const Placement& plan, std::uint64_t ring_bytes,
                                std::uint64_t bulk_bytes, std::chrono::milliseconds start_timeout);

  struct Impl;

 private:
  explicit MpiNode(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// The master's cluster manager under mpirun: its own node's workers through the local
/// launcher (addprocs starts them here), the other nodes' through their leaders.
class MpiManager final : public ClusterManager {
 public:
  MpiManager(std::unique_ptr<LocalLauncher> local, std::unique_ptr<MpiNode> node, Segment& seg);
  ~MpiManager() override;
  LaunchResult launch(int n, const LaunchSpec& spec) override;
  void remove(const std::vector<int>& ids, std::chrono::milliseconds timeout) override;
  void push_fd(int id, RefId key, int fd) override;
  void shutdown() override;

 private:
  std::unique_ptr<LocalLauncher> local_;
  std::unique_ptr<MpiNode> node_;
  Segment& seg_;
};

}  // namespace vscale::detail
