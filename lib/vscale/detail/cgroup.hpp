// cgroup v1 and v2: the one reader of /proc/self/cgroup, /proc/self/mountinfo and the cgroup
// files (CPU quota, cpuset, memory limit and usage, pids.max, the OOM counter), and the small
// readers of /proc and /sys text files that placement.cpp shares with it. Every path is taken
// under a `root` so that tests can point them at a fake tree. The runtime's own header: not
// installed (placement.hpp's MachineInfo is the public view of what it finds).
#pragma once

#include <charconv>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace vscale::detail {

namespace sysfs {

/// `s` without leading and trailing blanks.
std::string_view trim(std::string_view s);
/// `s` cut at every `sep` (empty parts kept).
std::vector<std::string> split(std::string_view s, char sep);
/// `root` + an absolute path; with root "/" the path itself, so error messages show real paths.
std::filesystem::path under(const std::string& root, std::string_view abs);
/// Whether `p` is a directory (false on any error).
bool is_dir(const std::filesystem::path& p);
/// The whole file, or nullopt when it cannot be read (missing files are normal here: which
/// cgroup and topology files exist depends on kernel, version and controllers).
std::optional<std::string> read_text(const std::filesystem::path& p);
/// A kernel CPU list file ("0-3,8"), or nullopt when it is missing or not a CPU list.
std::optional<std::vector<int>> read_cpu_list(const std::filesystem::path& p);

/// The whole of `s` (blanks around it allowed) as an Int, or nullopt.
template <class Int>
std::optional<Int> to_int(std::string_view s) {
  s = trim(s);
  Int v{};
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

}  // namespace sysfs

/// What the cgroups of this process allow (see detect_machine in placement.hpp for the rules).
struct CgroupLimits {
  int version = 0;                            ///< 0: none found, 1 or 2
  std::optional<double> cpu_quota;            ///< cores, the smallest along the path
  std::vector<int> cpuset;                    ///< empty: not found
  std::optional<std::uint64_t> memory_limit;  ///< bytes, the smallest along the path
  std::vector<std::string> memory_dirs;       ///< the memory controller's levels, own first
  bool memory_v1 = false;                     ///< whether memory_dirs are v1 directories
  std::string path;                           ///< as /proc/self/cgroup names it (v2, else v1 cpu)
};

/// Read the cgroup limits of this process under `root`.
CgroupLimits read_cgroup_limits(const std::string& root);

/// OOM kills counted in `memory_dirs` (v1 memory.oom_control, v2 memory.events, summed over
/// the levels); -1 when no counter is found.
long cgroup_oom_kills(const std::vector<std::string>& memory_dirs, bool v1);

/// Bytes the cgroup of memory directory `dir` uses now (v2 memory.current, v1
/// memory.usage_in_bytes); nullopt when unreadable.
std::optional<std::uint64_t> cgroup_memory_usage(const std::string& dir, bool v1);

/// Tasks this process's cgroup may still start: the smallest pids.max - pids.current along
/// its path (v1 pids controller, else v2), at least 0; nullopt when no level has a limit.
std::optional<long> cgroup_tasks_room(const std::string& root = "/");

}  // namespace vscale::detail
