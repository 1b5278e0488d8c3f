// Machine detection (affinity, cgroups, topology) and the processes x threads plan.
// See vscale/placement.hpp for the rules; this file only says why where it is not obvious.
#include "vscale/placement.hpp"

#include "vscale/errors.hpp"

#include <fmt/format.h>
#include <hwloc.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <utility>

namespace vscale {

namespace {

namespace fs = std::filesystem;

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

std::string_view trim(std::string_view s) {
  constexpr std::string_view blanks = " \t\r\n\v\f";
  auto b = s.find_first_not_of(blanks);
  if (b == std::string_view::npos) return {};
  auto e = s.find_last_not_of(blanks);
  return s.substr(b, e - b + 1);
}

// `root` + an absolute path; with root "/" the path itself, so error messages show real paths.
fs::path under(const std::string& root, std::string_view abs) {
  while (!abs.empty() && abs.front() == '/') abs.remove_prefix(1);
  return fs::path(root.empty() ? "/" : root) / fs::path(abs);
}

bool is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

// The whole file, or nullopt when it cannot be read (missing files are normal here: which
// cgroup and topology files exist depends on kernel, version and controllers).
std::optional<std::string> read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return std::nullopt;
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return std::nullopt;
  return s;
}

template <class Int>
std::optional<Int> to_int(std::string_view s) {
  s = trim(s);
  Int v{};
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

std::optional<std::vector<int>> read_cpu_list(const fs::path& p) {
  auto s = read_text(p);
  if (!s) return std::nullopt;
  try {
    return parse_cpu_list(*s);
  } catch (const UsageError&) {
    return std::nullopt;  // a file we do not understand tells us nothing
  }
}

std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (true) {
    auto pos = s.find(sep, start);
    out.emplace_back(s.substr(start, pos == std::string_view::npos ? std::string_view::npos : pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return out;
}

// ------------------------------------------------------------------------------------------
// cgroups

// /proc/self/cgroup: "0::/path" (v2) and "N:ctrl1,ctrl2:/path" (v1, one line per hierarchy).
struct ProcCgroup {
  std::optional<std::string> v2_path;
  // v1 controller name -> (the line's controller list, path)
  std::map<std::string, std::pair<std::string, std::string>> v1;
};

ProcCgroup read_proc_cgroup(const std::string& root) {
  ProcCgroup pc;
  auto text = read_text(under(root, "/proc/self/cgroup"));
  if (!text) return pc;
  std::istringstream in(*text);
  std::string line;
  while (std::getline(in, line)) {
    // The path may itself contain ':', so split only at the first two.
    auto a = line.find(':');
    if (a == std::string::npos) continue;
    auto b = line.find(':', a + 1);
    if (b == std::string::npos) continue;
    std::string id = line.substr(0, a), ctrls = line.substr(a + 1, b - a - 1);
    std::string path(trim(std::string_view(line).substr(b + 1)));
    if (path.empty()) path = "/";
    if (id == "0" && ctrls.empty()) {
      pc.v2_path = path;
      continue;
    }
    for (auto& c : split(ctrls, ',')) {
      if (!c.empty()) pc.v1.emplace(c, std::make_pair(ctrls, path));
    }
  }
  return pc;
}

// One cgroup mount from /proc/self/mountinfo.
struct CgroupMount {
  fs::path point;                     // already under `root`
  std::string mount_root;             // which cgroup the mount shows at its top
  bool v2 = false;
  std::set<std::string> controllers;  // v1 only
};

// mountinfo escapes blanks and backslashes in paths as \ooo.
std::string unescape_octal(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() &&
        std::all_of(s.begin() + static_cast<std::ptrdiff_t>(i) + 1,
                    s.begin() + static_cast<std::ptrdiff_t>(i) + 4,
                    [](char c) { return c >= '0' && c <= '7'; })) {
      out.push_back(static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::vector<CgroupMount> read_cgroup_mounts(const std::string& root) {
  std::vector<CgroupMount> mounts;
  auto text = read_text(under(root, "/proc/self/mountinfo"));
  if (!text) return mounts;
  std::istringstream in(*text);
  std::string line;
  while (std::getline(in, line)) {
    // "id parent maj:min root point options [optional...] - fstype source superoptions"
    std::istringstream ls(line);
    std::vector<std::string> f;
    for (std::string w; ls >> w;) f.push_back(w);
    auto dash = std::find(f.begin(), f.end(), "-");
    if (f.size() < 5 || dash == f.end() || std::distance(dash, f.end()) < 3) continue;
    const std::string& fstype = *(dash + 1);
    if (fstype != "cgroup" && fstype != "cgroup2") continue;
    CgroupMount m;
    m.mount_root = unescape_octal(f[3]);
    m.point = under(root, unescape_octal(f[4]));
    m.v2 = fstype == "cgroup2";
    if (!m.v2) {
      for (auto& o : split(*(dash + 3), ',')) m.controllers.insert(o);
    }
    mounts.push_back(std::move(m));
  }
  return mounts;
}

// The directories of one cgroup from its own up to the mount (own first). A path that does
// not exist under the mount, or that climbs out of it ("/.." when the process is outside the
// cgroup namespace), means the mount itself: inside containers the mount shows our cgroup at
// its top while /proc/self/cgroup may still name the host's path.
std::vector<fs::path> cgroup_levels(const fs::path& mount, const std::string& mount_root,
                                    const std::string& path) {
  if (!is_dir(mount)) return {};
  std::string rel = path;
  if (!mount_root.empty() && mount_root != "/") {
    if (rel == mount_root)
      rel = "/";
    else if (rel.starts_with(mount_root + "/"))
      rel = rel.substr(mount_root.size());
  }
  std::vector<std::string> segs;
  for (auto& s : split(rel, '/')) {
    if (s.empty() || s == ".") continue;
    if (s == "..") return {mount};
    segs.push_back(s);
  }
  fs::path own = mount;
  for (auto& s : segs) own /= s;
  if (!is_dir(own)) return {mount};
  std::vector<fs::path> levels;
  for (std::size_t n = segs.size() + 1; n-- > 0;) {
    fs::path d = mount;
    for (std::size_t i = 0; i < n; ++i) d /= segs[i];
    levels.push_back(d);
  }
  return levels;
}

struct CgroupLimits {
  int version = 0;
  std::optional<double> cpu_quota;
  std::vector<int> cpuset;
  std::optional<std::uint64_t> memory_limit;
  std::vector<std::string> memory_dirs;
  bool memory_v1 = false;
  std::string path;
};

// Smallest of two optional limits, nullopt meaning unlimited.
template <class T>
std::optional<T> min_limit(std::optional<T> a, std::optional<T> b) {
  if (!a) return b;
  if (!b) return a;
  return std::min(*a, *b);
}

// v1 memory.limit_in_bytes says "unlimited" as a huge page-rounded number (LONG_MAX rounded).
constexpr std::uint64_t kV1Unlimited = std::uint64_t{1} << 60;

std::optional<double> v2_cpu_max(const fs::path& dir) {
  auto s = read_text(dir / "cpu.max");
  if (!s) return std::nullopt;
  std::istringstream in(*s);
  std::string quota, period;
  in >> quota >> period;
  if (quota.empty() || quota == "max") return std::nullopt;
  auto q = to_int<std::int64_t>(quota);
  auto p = period.empty() ? std::optional<std::int64_t>(100000) : to_int<std::int64_t>(period);
  if (!q || !p || *q <= 0 || *p <= 0) return std::nullopt;
  return static_cast<double>(*q) / static_cast<double>(*p);
}

std::optional<double> v1_cpu_quota(const fs::path& dir) {
  auto qs = read_text(dir / "cpu.cfs_quota_us");
  auto ps = read_text(dir / "cpu.cfs_period_us");
  if (!qs || !ps) return std::nullopt;
  auto q = to_int<std::int64_t>(*qs);
  auto p = to_int<std::int64_t>(*ps);
  if (!q || !p || *q <= 0 || *p <= 0) return std::nullopt;  // -1 = unlimited
  return static_cast<double>(*q) / static_cast<double>(*p);
}

std::optional<std::uint64_t> v2_memory_max(const fs::path& dir) {
  auto s = read_text(dir / "memory.max");
  if (!s || trim(*s) == "max") return std::nullopt;
  return to_int<std::uint64_t>(*s);
}

std::optional<std::uint64_t> v1_memory_limit(const fs::path& dir) {
  auto s = read_text(dir / "memory.limit_in_bytes");
  if (!s) return std::nullopt;
  auto v = to_int<std::uint64_t>(*s);
  if (!v || *v >= kV1Unlimited) return std::nullopt;
  return v;
}

// First level (own cgroup first) whose file names some CPUs: a fresh v1 cpuset child may have
// an empty cpuset.cpus, and v2 has no cpuset files where the controller is not enabled.
std::vector<int> first_cpuset(const std::vector<fs::path>& levels,
                              std::initializer_list<const char*> names) {
  for (auto& d : levels) {
    for (const char* n : names) {
      auto cpus = read_cpu_list(d / n);
      if (cpus && !cpus->empty()) return *cpus;
    }
  }
  return {};
}

CgroupLimits detect_cgroups(const std::string& root) {
  CgroupLimits out;
  ProcCgroup pc = read_proc_cgroup(root);
  auto mounts = read_cgroup_mounts(root);

  // Levels of the v1 hierarchy that holds `ctrl`, or nullopt when we have no v1 line for it.
  auto v1_levels = [&](const std::string& ctrl) -> std::optional<std::vector<fs::path>> {
    auto it = pc.v1.find(ctrl);
    if (it == pc.v1.end()) return std::nullopt;
    const auto& [ctrls, path] = it->second;
    for (auto& m : mounts) {
      if (!m.v2 && m.controllers.count(ctrl)) return cgroup_levels(m.point, m.mount_root, path);
    }
    // No mountinfo (fake trees, odd systems): the usual places.
    for (auto name : {ctrls, ctrl}) {
      auto mount = under(root, "/sys/fs/cgroup/" + name);
      if (is_dir(mount)) return cgroup_levels(mount, "/", path);
    }
    return std::vector<fs::path>{};
  };
  std::vector<fs::path> v2;
  if (pc.v2_path) {
    bool found = false;
    for (auto& m : mounts) {
      if (m.v2) {
        v2 = cgroup_levels(m.point, m.mount_root, *pc.v2_path);
        found = true;
        break;
      }
    }
    if (!found) v2 = cgroup_levels(under(root, "/sys/fs/cgroup"), "/", *pc.v2_path);
  }

  bool v1_used = false;
  // cpu: v1 "cpu" (usually mounted together with cpuacct), else v2.
  if (auto lv = v1_levels("cpu")) {
    v1_used = true;
    for (auto& d : *lv) out.cpu_quota = min_limit(out.cpu_quota, v1_cpu_quota(d));
  } else {
    for (auto& d : v2) out.cpu_quota = min_limit(out.cpu_quota, v2_cpu_max(d));
  }
  if (auto lv = v1_levels("cpuset")) {
    v1_used = true;
    out.cpuset = first_cpuset(*lv, {"cpuset.effective_cpus", "cpuset.cpus"});
  } else {
    out.cpuset = first_cpuset(v2, {"cpuset.cpus.effective"});
  }
  if (auto lv = v1_levels("memory")) {
    v1_used = true;
    out.memory_v1 = true;
    for (auto& d : *lv) {
      out.memory_limit = min_limit(out.memory_limit, v1_memory_limit(d));
      out.memory_dirs.push_back(d.string());
    }
  } else {
    for (auto& d : v2) {
      out.memory_limit = min_limit(out.memory_limit, v2_memory_max(d));
      out.memory_dirs.push_back(d.string());
    }
  }

  // Hybrid hosts list both kinds; the controllers that limit us live in v1 there.
  if (v1_used) {
    out.version = 1;
    auto it = pc.v1.find("cpu");
    if (it == pc.v1.end()) it = pc.v1.begin();
    out.path = it->second.second;
  } else if (pc.v2_path && !v2.empty()) {
    out.version = 2;
    out.path = *pc.v2_path;
  }
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

  CgroupLimits cg = detect_cgroups(root);
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
  // v1: memory.oom_control has "oom_kill N" (kernel 4.13+); v2: memory.events "oom_kill N".
  // Summed over the levels: a kill counts where the limit that was hit is set.
  long total = 0;
  bool found = false;
  for (const auto& d : m.memory_cgroup_dirs) {
    std::ifstream f(fs::path(d) / (m.memory_cgroup_v1 ? "memory.oom_control" : "memory.events"));
    std::string key;
    long v;
    while (f >> key >> v)
      if (key == "oom_kill") {
        total += v;
        found = true;
        break;
      }
  }
  return found ? total : -1;
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
