// Machine detection (affinity, topology; the cgroups are read by cgroup.cpp) and the processes x
// threads plan. See vscale/placement.hpp for the rules; this file only says why where it is not
// obvious.
#include "vscale/placement.hpp"

#include "vscale/detail/cgroup.hpp"
#include "vscale/errors.hpp"

#include <fmt/format.h>
#include <hwloc.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <filesystem>
#include <iterator>
#include <set>
#include <sstream>
#include <string_view>
#include <system_error>
#include <utility>

namespace vscale {

namespace {

namespace fs = std::filesystem;
using namespace detail::sysfs;

// Larger than any kernel's NR_CPUS (8192 today): a bound that stops a corrupt file from making
// us allocate gigabytes, without refusing any real machine.
constexpr int kMaxCpuId = 1 << 20;

std::vector<int> sorted_unique(std::vector<int> v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

std::vector<int> intersect(const std::vector<int>& a, const std::vector<int>& b) {
  std::vector<int> out;
  std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(out));
  return out;
}

// ------------------------------------------------------------------------------------------
// affinity and online CPUs

std::vector<int> real_affinity() {
  long conf = sysconf(_SC_NPROCESSORS_CONF);
  // The kernel refuses a mask smaller than its own (EINVAL): grow until it fits.
  for (long n = std::max<long>(conf, CPU_SETSIZE); n <= kMaxCpuId; n *= 2) {
    cpu_set_t* set = CPU_ALLOC(static_cast<int>(n));
    if (!set) return {};
    std::size_t size = CPU_ALLOC_SIZE(static_cast<int>(n));
    CPU_ZERO_S(size, set);
    if (sched_getaffinity(0, size, set) == 0) {
      std::vector<int> cpus;
      for (int i = 0; i < static_cast<int>(n); ++i) {
        if (CPU_ISSET_S(i, size, set)) cpus.push_back(i);
      }
      CPU_FREE(set);
      return cpus;
    }
    int err = errno;
    CPU_FREE(set);
    if (err != EINVAL) break;
  }
  return {};
}

// "Cpus_allowed_list:\t0-3" from a /proc/<pid>/status file.
std::optional<std::vector<int>> status_affinity(const std::string& root) {
  auto text = read_text(under(root, "/proc/self/status"));
  if (!text) return std::nullopt;
  std::istringstream in(*text);
  std::string line;
  constexpr std::string_view key = "Cpus_allowed_list:";
  while (std::getline(in, line)) {
    if (!line.starts_with(key)) continue;
    try {
      return parse_cpu_list(line.substr(key.size()));
    } catch (const UsageError&) {
      return std::nullopt;
    }
  }
  return std::nullopt;
}

std::vector<int> range(int n) {
  std::vector<int> v(static_cast<std::size_t>(std::max(n, 0)));
  for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i;
  return v;
}

// ------------------------------------------------------------------------------------------
// topology

using Groups = std::vector<std::vector<int>>;

struct Topology {
  Groups numa, l3, cores;  // raw, over all CPUs they know
};

// `groups` cut down to `usable` (empty ones dropped). Usable CPUs that no group names get a
// group of their own (one each for cores), so the result always partitions `usable` even when
// the topology source missed some CPUs; a CPU named twice stays in its first group.
Groups restrict_groups(const Groups& groups, const std::vector<int>& usable, bool singletons) {
  Groups out;
  std::set<int> left(usable.begin(), usable.end());
  for (auto& g : groups) {
    std::vector<int> keep;
    for (int c : sorted_unique(g)) {
      if (left.erase(c)) keep.push_back(c);
    }
    if (!keep.empty()) out.push_back(std::move(keep));
  }
  if (!left.empty()) {
    if (singletons) {
      for (int c : left) out.push_back({c});
    } else {
      out.emplace_back(left.begin(), left.end());
    }
  }
  return out;
}

// RAII for an hwloc topology.
struct HwlocTopology {
  hwloc_topology_t topo = nullptr;
  bool ok = false;
  HwlocTopology() {
    if (hwloc_topology_init(&topo) != 0) {
      topo = nullptr;
      return;
    }
    ok = hwloc_topology_load(topo) == 0;
  }
  ~HwlocTopology() {
    if (topo) hwloc_topology_destroy(topo);
  }
  HwlocTopology(const HwlocTopology&) = delete;
  HwlocTopology& operator=(const HwlocTopology&) = delete;

  Groups groups(hwloc_obj_type_t type) const {
    Groups out;
    int n = hwloc_get_nbobjs_by_type(topo, type);
    for (int i = 0; i < n; ++i) {
      hwloc_obj_t o = hwloc_get_obj_by_type(topo, type, static_cast<unsigned>(i));
      // An infinite set (weight -1) would make the loop below endless; objects never have
      // one, but a corrupt XML topology (HWLOC_XMLFILE) could.
      if (!o || !o->cpuset || hwloc_bitmap_weight(o->cpuset) <= 0) continue;
      std::vector<int> cpus;
      unsigned id;
      hwloc_bitmap_foreach_begin(id, o->cpuset) {
        cpus.push_back(static_cast<int>(id));
      }
      hwloc_bitmap_foreach_end();
      out.push_back(std::move(cpus));
    }
    return out;
  }
};

std::optional<Topology> hwloc_topology() {
  HwlocTopology h;
  if (!h.ok) return std::nullopt;
  Topology t;
  t.numa = h.groups(HWLOC_OBJ_NUMANODE);
  t.l3 = h.groups(HWLOC_OBJ_L3CACHE);
  t.cores = h.groups(HWLOC_OBJ_CORE);
  return t;
}

// Numbered entries "<prefix><N>" of a directory, by N.
std::vector<std::pair<int, fs::path>> numbered(const fs::path& dir, std::string_view prefix) {
  std::vector<std::pair<int, fs::path>> out;
  std::error_code ec;
  fs::directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (!name.starts_with(prefix)) continue;
    if (auto n = to_int<int>(std::string_view(name).substr(prefix.size())); n && *n >= 0)
      out.emplace_back(*n, it->path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Topology from /sys/devices/system (what hwloc itself reads on Linux): used for fake trees
// and when hwloc fails. Groups are keyed by their CPU list, in order of their lowest CPU.
Topology sysfs_topology(const std::string& root, const std::vector<int>& cpus) {
  Topology t;
  for (auto& [n, dir] : numbered(under(root, "/sys/devices/system/node"), "node")) {
    if (auto l = read_cpu_list(dir / "cpulist"); l && !l->empty()) t.numa.push_back(*l);
  }
  std::set<std::vector<int>> seen_core, seen_l3;
  fs::path cpu_dir = under(root, "/sys/devices/system/cpu");
  for (int c : cpus) {
    fs::path d = cpu_dir / ("cpu" + std::to_string(c));
    auto core = read_cpu_list(d / "topology" / "core_cpus_list");
    if (!core) core = read_cpu_list(d / "topology" / "thread_siblings_list");
    if (core && !core->empty() && seen_core.insert(*core).second) t.cores.push_back(*core);
    for (auto& [i, idx] : numbered(d / "cache", "index")) {
      auto level = read_text(idx / "level");
      if (!level || to_int<int>(*level) != 3) continue;
      auto shared = read_cpu_list(idx / "shared_cpu_list");
      if (shared && !shared->empty() && seen_l3.insert(*shared).second) t.l3.push_back(*shared);
    }
  }
  return t;
}

// ------------------------------------------------------------------------------------------
// planning helpers

std::string plural(long n, const char* one, const char* many) { return fmt::format("{} {}", n, n == 1 ? one : many); }

// The CPUs processes may be pinned to, ascending: the usable set, cut to `u` CPUs when the
// quota allows fewer, taking one CPU per physical core before any SMT sibling.
std::vector<int> cpu_order(const MachineInfo& m, int u) {
  std::vector<int> set = sorted_unique(m.usable_set);
  if (static_cast<int>(set.size()) <= u) return set;
  std::set<int> want(set.begin(), set.end());
  std::vector<int> order;
  Groups cores;
  for (auto& c : m.cores) cores.push_back(sorted_unique(c));
  for (std::size_t r = 0;; ++r) {
    bool any = false;
    for (auto& c : cores) {
      if (r >= c.size()) continue;
      any = true;
      if (want.erase(c[r])) order.push_back(c[r]);
    }
    if (!any) break;
  }
  order.insert(order.end(), want.begin(), want.end());  // CPUs no core names
  order.resize(static_cast<std::size_t>(u));
  return sorted_unique(order);
}

std::string count_arg(int v) { return v == -1 ? "auto" : std::to_string(v); }

std::string human_bytes(std::uint64_t b) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024.0 && u < 5) {
    v /= 1024.0;
    ++u;
  }
  if (u == 0) return fmt::format("{} bytes", b);
  return fmt::format("{:.1f} {} ({} bytes)", v, units[u], b);
}

// "2: [0-3] [4-7]"
std::string describe_groups(const Groups& g) {
  std::string s = fmt::to_string(g.size());
  const char* sep = ": ";
  for (auto& x : g) {
    s += fmt::format("{}[{}]", sep, format_cpu_list(x));
    sep = " ";
  }
  return s;
}

}  // namespace

// ------------------------------------------------------------------------------------------
// CPU lists

std::vector<int> parse_cpu_list(const std::string& s) {
  std::vector<int> out;
  for (auto& item : split(s, ',')) {
    std::string_view t = trim(item);
    if (t.empty()) continue;  // "" (no CPUs), or a trailing comma
    auto bad = [&] {
      return UsageError("vscale: not a CPU list: `" + std::string(trim(s)) + "`");
    };
    auto dash = t.find('-');
    auto lo = to_int<int>(t.substr(0, dash));
    auto hi = dash == std::string_view::npos ? lo : to_int<int>(t.substr(dash + 1));
    if (!lo || !hi || *lo < 0 || *hi < *lo || *hi > kMaxCpuId) throw bad();
    for (int c = *lo; c <= *hi; ++c) out.push_back(c);
  }
  return sorted_unique(std::move(out));
}

std::string format_cpu_list(const std::vector<int>& cpus) {
  auto v = sorted_unique(cpus);
  std::string s;
  for (std::size_t i = 0; i < v.size();) {
    std::size_t j = i;
    while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
    if (!s.empty()) s += ',';
    s += j > i ? fmt::format("{}-{}", v[i], v[j]) : fmt::to_string(v[i]);
    i = j + 1;
  }
  return s;
}

// ------------------------------------------------------------------------------------------
// detection

MachineInfo detect_machine(const std::string& root_in) {
  const std::string root = root_in.empty() ? "/" : root_in;
  const bool real = fs::path(root).lexically_normal() == fs::path("/");
  MachineInfo m;

  if (real) {
    m.online_cpus = static_cast<int>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
    m.affinity = real_affinity();
    if (m.affinity.empty()) m.affinity = range(m.online_cpus);  // never seen; stay usable
  } else {
    auto online = read_cpu_list(under(root, "/sys/devices/system/cpu/online"));
    auto aff = status_affinity(root);
    if (aff && !aff->empty())
      m.affinity = *aff;
    else if (online && !online->empty())
      m.affinity = *online;
    else
      m.affinity = {0};
    m.online_cpus = static_cast<int>(online && !online->empty() ? online->size() : m.affinity.size());
  }
  m.affinity = sorted_unique(std::move(m.affinity));

  detail::CgroupLimits cg = detail::read_cgroup_limits(root);
  m.cgroup_version = cg.version;
  m.cpu_quota = cg.cpu_quota;
  m.cpuset = sorted_unique(std::move(cg.cpuset));
  m.memory_limit = cg.memory_limit;
  m.memory_cgroup_dirs = std::move(cg.memory_dirs);
  m.memory_cgroup_v1 = cg.memory_v1;
  m.cgroup_path = cg.path;

  // sched_getaffinity already honours the cpuset on Linux; intersecting guards fake trees and
  // kernels that do not. A cpuset that misses the affinity entirely (numbered in another
  // namespace, say) is not believed.
  m.usable_set = m.affinity;
  if (!m.cpuset.empty()) {
    auto both = intersect(m.affinity, m.cpuset);
    if (!both.empty()) m.usable_set = std::move(both);
  }
  m.usable_cpus = static_cast<int>(m.usable_set.size());
  if (m.cpu_quota) {
    // 1e-9: 200000/100000 must stay 2 cores, not round up to 3 through float noise.
    double q = std::ceil(*m.cpu_quota - 1e-9);
    if (q < static_cast<double>(m.usable_cpus)) m.usable_cpus = static_cast<int>(q);
  }
  m.usable_cpus = std::max(1, m.usable_cpus);

  std::optional<Topology> topo;
  if (real) {
    topo = hwloc_topology();
    if (topo) m.topology_source = "hwloc";
  }
  if (!topo) {
    Topology t = sysfs_topology(root, m.usable_set);
    bool any = !t.numa.empty() || !t.l3.empty() || !t.cores.empty();
    m.topology_source = any ? "sysfs" : "none";
    topo = std::move(t);
  }
  m.numa = restrict_groups(topo->numa, m.usable_set, false);
  m.l3 = restrict_groups(topo->l3, m.usable_set, false);
  m.cores = restrict_groups(topo->cores, m.usable_set, true);
  return m;
}

const MachineInfo& machine() {
  static const MachineInfo info = detect_machine("/");
  return info;
}

// ------------------------------------------------------------------------------------------
// planning

Placement plan_placement(const MachineInfo& m, int procs, int threads, int bind) {
  if (procs < -1)
    throw UsageError(fmt::format("vscale: the number of workers must be >= 0 or auto, got {}", procs));
  if (threads < -1)
    throw UsageError(fmt::format("vscale: the number of threads must be >= 1 or auto, got {}", threads));
  if (bind < -1 || bind > 1)
    throw UsageError(fmt::format("vscale: bind must be -1 (default), 0 (off) or 1 (on), got {}", bind));

  const bool p_auto = procs == -1, t_auto = threads == -1;
  const int u = std::max(1, m.usable_cpus);
  const std::vector<int> cpus = cpu_order(m, u);
  const bool want_bind = bind == 1 || (bind == -1 && (p_auto || t_auto));

  Placement p;
  Groups groups;  // -p auto -t auto with several groups: worker i runs on groups[i]
  std::string args = procs == 0 && threads != 0 ? "" : "-p " + count_arg(procs);
  if (threads != 0) args += (args.empty() ? "-t " : " -t ") + count_arg(threads);
  const std::string ucpus = plural(u, "usable CPU", "usable CPUs");

  if (p_auto && t_auto) {
    auto restrict_to_cpus = [&](const Groups& g) {
      Groups out;
      for (auto& x : g) {
        auto y = intersect(sorted_unique(x), cpus);
        if (!y.empty()) out.push_back(std::move(y));
      }
      return out;
    };
    const char* kind = "NUMA node";
    groups = restrict_to_cpus(m.numa);
    if (groups.size() <= 1) {
      kind = "L3 cache";
      groups = restrict_to_cpus(m.l3);
    }
    if (groups.size() > 1) {
      std::size_t lo = groups[0].size(), hi = lo;
      for (auto& g : groups) {
        lo = std::min(lo, g.size());
        hi = std::max(hi, g.size());
      }
      p.workers = static_cast<int>(groups.size());
      p.threads = static_cast<int>(lo);
      p.how = fmt::format("{}: one worker per {} ({}), {} each", args, kind, groups.size(),
                          plural(p.threads, "thread", "threads"));
      if (lo != hi) p.how += fmt::format(" (the smallest group's CPU count; groups have {}-{} CPUs)", lo, hi);
    } else {
      groups.clear();
      p.workers = 0;
      p.threads = u;
      p.how = fmt::format("{}: {} in one group (one NUMA node and L3 cache): the master alone runs {}", args, ucpus,
                          plural(u, "thread", "threads"));
    }
  } else if (p_auto) {
    const int t = std::max(1, threads);
    const int k = u / t;
    p.threads = t;
    if (k >= 2) {
      p.workers = k;
      p.how = threads == 0 ? fmt::format("{}: one worker per usable CPU ({})", args, u)
                           : fmt::format("{}: {} / {} = {}", args, ucpus, plural(t, "thread", "threads"),
                                         plural(k, "worker", "workers"));
    } else {
      // One worker beside an idle master would only add a hop to every call.
      p.workers = 0;
      p.how = fmt::format("{}: {}{}: the master alone does the work (a worker would add nothing)", args, ucpus,
                          threads == 0 ? "" : fmt::format(" / {}: room for 1 process", plural(t, "thread", "threads")));
    }
  } else if (t_auto) {
    if (procs == 0) {
      p.workers = 0;
      p.threads = u;
      p.how = fmt::format("{}: the master alone, one thread per usable CPU ({})", args, u);
    } else {
      p.workers = procs;
      p.threads = std::max(1, u / procs);
      p.how = fmt::format("{}: {} / {} = {} each", args, ucpus, plural(procs, "worker", "workers"),
                          plural(p.threads, "thread", "threads"));
    }
  } else {
    p.workers = procs;
    p.threads = std::max(1, threads);
    if (procs == 0)
      p.how = fmt::format("{}: the master alone with {}", threads == 0 ? "no -p or -t" : args,
                          plural(p.threads, "thread", "threads"));
    else
      p.how = fmt::format("{}: {}, {} each{}", args, plural(procs, "worker", "workers"),
                          plural(p.threads, "thread", "threads"), threads == 0 ? " (-t not given)" : "");
  }

  p.worker_cpus.assign(static_cast<std::size_t>(p.workers), {});
  if (!want_bind) {
    p.how += "; not pinned";
    if (bind == 0) p.how += " (--bind=none)";
    return p;
  }
  if (!groups.empty()) {
    // Groups are disjoint subsets of the usable CPUs: they always fit.
    for (std::size_t i = 0; i < groups.size(); ++i) p.worker_cpus[i] = groups[i];
    p.bind = true;
    p.how += "; each pinned to its group";
    return p;
  }
  const long nproc = std::max(1, p.workers);
  const long need = nproc * p.threads;
  if (need > static_cast<long>(cpus.size())) {
    p.warnings.push_back(fmt::format("{}{} x {} {} {}, {} usable; not pinning", bind == 1 ? "--bind: " : "",
                                     plural(nproc, "process", "processes"), plural(p.threads, "thread", "threads"),
                                     nproc == 1 ? "needs" : "need", plural(need, "CPU", "CPUs"), cpus.size()));
    p.how += "; not pinned (does not fit)";
    return p;
  }
  p.bind = true;
  auto slice = [&](long first) {
    return std::vector<int>(cpus.begin() + first, cpus.begin() + first + p.threads);
  };
  if (p.workers == 0) {
    p.master_cpus = slice(0);
    p.how += "; pinned";
  } else {
    for (long i = 0; i < p.workers; ++i) p.worker_cpus[static_cast<std::size_t>(i)] = slice(i * p.threads);
    p.how += p.threads == 1 ? "; pinned one CPU each" : "; pinned, disjoint CPUs each";
  }
  return p;
}

// ------------------------------------------------------------------------------------------
// text

long oom_kill_count(const MachineInfo& m) {
  return detail::cgroup_oom_kills(m.memory_cgroup_dirs, m.memory_cgroup_v1);
}

std::string describe_machine(const MachineInfo& m) {
  std::size_t widest = 0;
  for (auto& c : m.cores) widest = std::max(widest, c.size());
  fmt::memory_buffer s;
  auto o = std::back_inserter(s);
  fmt::format_to(o, "online CPUs: {}\n", m.online_cpus);
  fmt::format_to(o, "affinity: {} ({})\n", format_cpu_list(m.affinity),
                 plural(static_cast<long>(m.affinity.size()), "CPU", "CPUs"));
  if (m.cgroup_version == 0)
    fmt::format_to(o, "cgroup: none found\n");
  else
    fmt::format_to(o, "cgroup: v{}{}{}\n", m.cgroup_version, m.cgroup_path.empty() ? "" : " ", m.cgroup_path);
  if (m.cpu_quota)
    fmt::format_to(o, "CPU quota: {:g} cores\n", *m.cpu_quota);
  else
    fmt::format_to(o, "CPU quota: unlimited\n");
  fmt::format_to(o, "cpuset: {}\n", m.cpuset.empty() ? "not found" : format_cpu_list(m.cpuset));
  fmt::format_to(o, "memory limit: {}\n", m.memory_limit ? human_bytes(*m.memory_limit) : "unlimited");
  fmt::format_to(o, "NUMA nodes: {}\n", describe_groups(m.numa));
  fmt::format_to(o, "L3 groups: {}\n", describe_groups(m.l3));
  fmt::format_to(o, "cores: {} (up to {} each)\n", m.cores.size(), plural(static_cast<long>(widest), "CPU", "CPUs"));
  fmt::format_to(o, "topology from: {}\n", m.topology_source.empty() ? "none" : m.topology_source);
  fmt::format_to(o, "usable CPUs: {} (of {})\n", m.usable_cpus, format_cpu_list(m.usable_set));
  return fmt::to_string(s);
}

std::string describe_placement(const Placement& p) {
  auto where = [](const std::vector<int>& cpus) {
    return cpus.empty() ? std::string("not pinned") : fmt::format("cpus {}", format_cpu_list(cpus));
  };
  const std::string th = plural(p.threads, "thread", "threads");
  fmt::memory_buffer s;
  auto o = std::back_inserter(s);
  fmt::format_to(o, "master: {}, {}\n", th, where(p.master_cpus));
  const auto n = static_cast<std::size_t>(std::max(p.workers, 0));
  for (std::size_t i = 0; i < n; ++i)
    fmt::format_to(o, "worker {} of {}: {}, {}\n", i + 1, n, th,
                   where(i < p.worker_cpus.size() ? p.worker_cpus[i] : std::vector<int>{}));
  fmt::format_to(o, "{}\n", p.how);
  for (auto& w : p.warnings) fmt::format_to(o, "warning: {}\n", w);
  return fmt::to_string(s);
}

}  // namespace vscale
