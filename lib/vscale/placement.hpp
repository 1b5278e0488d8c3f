// Placement: what this process may run on (affinity, cgroup limits, NUMA/L3/core topology) and
// how many processes x threads to run where (`-p`, `-t`, `--bind`).
//
// Detection reads plain files under /proc and /sys (so tests can point it at a fake tree) and
// asks hwloc for the topology of the real machine. Planning is a pure function of the detected
// MachineInfo and the three options, so every rule below is testable on synthetic machines.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace vscale {

/// What this process may use and how the machine is built (all CPU ids are OS ids).
struct MachineInfo {
  int online_cpus = 0;                        ///< CPUs online on the host (sysconf)
  std::vector<int> affinity;                  ///< sched_getaffinity of this process, ascending
  int cgroup_version = 0;                     ///< 0: none found, 1 or 2
  std::optional<double> cpu_quota;            ///< cores allowed by cpu.max (v2) or
                                              ///< cfs_quota_us / cfs_period_us (v1), the
                                              ///< smallest along the cgroup path; nullopt =
                                              ///< unlimited
  std::vector<int> cpuset;                    ///< cpuset.cpus.effective (v2) /
                                              ///< cpuset.effective_cpus or cpuset.cpus (v1);
                                              ///< empty = not found
  std::optional<std::uint64_t> memory_limit;  ///< bytes: memory.max (v2) /
                                              ///< memory.limit_in_bytes (v1), the smallest along
                                              ///< the cgroup path; nullopt = unlimited
  std::vector<std::string> memory_cgroup_dirs;  ///< the memory controller's directories of
                                              ///< this cgroup, own level first (v1 or v2)
  bool memory_cgroup_v1 = false;              ///< whether those are cgroup v1 directories
  std::vector<int> usable_set;                ///< affinity ∩ cpuset (affinity when no cpuset or
                                              ///< when they do not meet), ascending
  int usable_cpus = 1;                        ///< min(|usable_set|, ceil(cpu_quota)), >= 1
  std::vector<std::vector<int>> numa;         ///< usable CPUs per NUMA node (nodes with none
                                              ///< dropped); one group of all usable if unknown
  std::vector<std::vector<int>> l3;           ///< usable CPUs per L3 cache (same rule)
  std::vector<std::vector<int>> cores;        ///< usable CPUs per physical core (SMT siblings
                                              ///< together); one core per CPU if unknown
  std::string topology_source;                ///< "hwloc", "sysfs" (fake trees, or hwloc
                                              ///< failed) or "none" (groups are the fallback)
  std::string cgroup_path;                    ///< this process's cgroup as /proc/self/cgroup
                                              ///< names it (v2, else v1 cpu); for messages
};

/// Detect everything for this process. `root` prefixes every /proc and /sys path so tests can
/// point it at a fake tree. With root "/": affinity from sched_getaffinity, online CPUs from
/// sysconf, topology from hwloc (from sysfs if hwloc fails). With any other root: affinity from
/// the tree's /proc/self/status "Cpus_allowed_list:" line (0..online-1 if absent), online CPUs
/// from sys/devices/system/cpu/online (else the affinity count), topology from the tree's
/// sys/devices/system/{node,cpu} files where present, else the fallback groups (one NUMA node,
/// one L3 group, one core per CPU). hwloc is never used then.
///
/// cgroups: v1 controller lines of /proc/self/cgroup (cpu, cpuset, memory) win over the v2
/// "0::" line (hybrid hosts mount the controllers in v1); mount points come from
/// /proc/self/mountinfo when it lists them, else sys/fs/cgroup/<controllers> (v1) and
/// sys/fs/cgroup (v2). A cgroup path whose directory does not exist under the mount (a
/// container seeing its host's path) means the mount root itself.
MachineInfo detect_machine(const std::string& root = "/");

/// detect_machine("/") once, cached (thread-safe). The first call decides: make it before this
/// process pins itself, or the cached affinity is the pinned one.
const MachineInfo& machine();

/// OOM kills counted by the memory cgroup of `m` (v1 memory.oom_control, v2 memory.events,
/// summed over its levels), read now; -1 when no counter is found. A rise between two reads
/// means the kernel's OOM killer ended a process of this cgroup meanwhile.
long oom_kill_count(const MachineInfo& m);

/// How many processes and threads, and where they run.
struct Placement {
  int workers = 0;                            ///< worker processes to start (plus the master)
  int threads = 1;                            ///< threads per process (master and workers)
  bool bind = false;                          ///< whether processes are pinned
  std::vector<int> master_cpus;               ///< empty: not pinned
  std::vector<std::vector<int>> worker_cpus;  ///< one entry per worker (empty: not pinned)
  std::string how;                            ///< one line: how it was chosen
  std::vector<std::string> warnings;          ///< e.g. binding turned off: it does not fit
};

/// Plan processes x threads for machine `m`.
///
/// procs: workers asked for (>= 0), or -1 for `-p auto`. threads: per process (>= 1), 0 = not
/// given, -1 = `-t auto`. bind: -1 = default (on when procs or threads is auto, else off),
/// 0 = off (`--bind=none`), 1 = on (`--bind`). Anything else throws UsageError.
///
/// Rules (U = m.usable_cpus, at least 1):
/// - The CPU list L is m.usable_set; when the quota allows fewer CPUs than that, L keeps only U
///   of them, one per physical core first (the first CPU of each core in m.cores order, then the
///   second ones, ...), because a quota-limited process gains nothing from SMT siblings while
///   other cores sit idle. L is ascending.
/// - `-p N [-t T]` (T not given means 1): N workers x T threads. Binding off by default.
/// - `-p auto` (-t not given) = `-p auto -t 1`.
/// - `-p auto -t T`: U / T workers of T threads; if that is 1 or less the master alone runs
///   the T threads (one worker beside an idle master only adds a hop).
/// - `-p N -t auto`: N workers of max(1, U / N) threads each.
/// - `-t auto` with `-p 0` or no -p: the master alone with U threads.
/// - `-p auto -t auto`: groups = the NUMA nodes of L if more than one, else its L3 groups if
///   more than one, else one group. One group: the master alone with U threads. G > 1 groups:
///   G workers, worker i pinned to all of group i's CPUs; `threads` (one number for all) is
///   the smallest group's CPU count.
/// - Pinning (bind on): each worker gets its own T consecutive CPUs of L (its group in
///   `-p auto -t auto`); the master is pinned only when there are no workers, to the first T.
///   If the CPUs needed (workers x T, or T for the master alone) exceed |L|, nothing is pinned
///   and a warning says so.
/// - threads is never below 1, and the result depends on nothing but the arguments.
Placement plan_placement(const MachineInfo& m, int procs, int threads, int bind);

/// Multi-line human text: what was detected (online CPUs, affinity, cgroup version, quota,
/// cpuset, memory limit, NUMA nodes, L3 groups, cores, usable CPUs).
std::string describe_machine(const MachineInfo& m);

/// One line per process: "master: 2 threads, cpus 0-1" / "worker 1 of 4: 2 threads, cpus 2-3"
/// (or "not pinned"), then the `how` line and one "warning: ..." line per warning.
std::string describe_placement(const Placement& p);

/// "0-3,8,10-11" for a list of CPU ids (sorted and deduplicated first; "" for none).
std::string format_cpu_list(const std::vector<int>& cpus);

/// The kernel's list syntax ("0-3,8,10-11", blanks and a trailing newline allowed, "" = none)
/// into ascending unique ids. Throws vscale::UsageError on anything else.
std::vector<int> parse_cpu_list(const std::string& s);

}  // namespace vscale
