// cgroup v1 and v2 (see vscale/detail/cgroup.hpp), and the /proc and /sys text readers that
// placement.cpp shares.
#include "vscale/detail/cgroup.hpp"

#include "vscale/errors.hpp"
#include "vscale/placement.hpp"

#include <algorithm>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <utility>

namespace vscale::detail {

namespace fs = std::filesystem;

namespace sysfs {

std::string_view trim(std::string_view s) {
  constexpr std::string_view blanks = " \t\r\n\v\f";
  auto b = s.find_first_not_of(blanks);
  if (b == std::string_view::npos) return {};
  auto e = s.find_last_not_of(blanks);
  return s.substr(b, e - b + 1);
}

fs::path under(const std::string& root, std::string_view abs) {
  while (!abs.empty() && abs.front() == '/') abs.remove_prefix(1);
  return fs::path(root.empty() ? "/" : root) / fs::path(abs);
}

bool is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

std::optional<std::string> read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return std::nullopt;
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return std::nullopt;
  return s;
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

}  // namespace sysfs

using namespace sysfs;

namespace {

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
    const std::string_view p = trim(std::string_view(line).substr(b + 1));
    const std::string path(p.empty() ? std::string_view("/") : p);
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

// The cgroup hierarchies of this process: its v1 lines and v2 path, the cgroup mounts, and
// the v2 levels (own first; empty without a v2 line).
struct Hierarchies {
  std::string root;
  ProcCgroup pc;
  std::vector<CgroupMount> mounts;
  std::vector<fs::path> v2;

  explicit Hierarchies(const std::string& r) : root(r), pc(read_proc_cgroup(r)), mounts(read_cgroup_mounts(r)) {
    if (!pc.v2_path) return;
    for (auto& m : mounts) {
      if (m.v2) {
        v2 = cgroup_levels(m.point, m.mount_root, *pc.v2_path);
        return;
      }
    }
    v2 = cgroup_levels(under(root, "/sys/fs/cgroup"), "/", *pc.v2_path);
  }

  // Levels of the v1 hierarchy that holds `ctrl`, or nullopt when we have no v1 line for it.
  std::optional<std::vector<fs::path>> v1_levels(const std::string& ctrl) const {
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
  }
};

}  // namespace

CgroupLimits read_cgroup_limits(const std::string& root) {
  CgroupLimits out;
  const Hierarchies h(root);
  const ProcCgroup& pc = h.pc;
  const std::vector<fs::path>& v2 = h.v2;

  bool v1_used = false;
  // cpu: v1 "cpu" (usually mounted together with cpuacct), else v2.
  if (auto lv = h.v1_levels("cpu")) {
    v1_used = true;
    for (auto& d : *lv) out.cpu_quota = min_limit(out.cpu_quota, v1_cpu_quota(d));
  } else {
    for (auto& d : v2) out.cpu_quota = min_limit(out.cpu_quota, v2_cpu_max(d));
  }
  if (auto lv = h.v1_levels("cpuset")) {
    v1_used = true;
    out.cpuset = first_cpuset(*lv, {"cpuset.effective_cpus", "cpuset.cpus"});
  } else {
    out.cpuset = first_cpuset(v2, {"cpuset.cpus.effective"});
  }
  if (auto lv = h.v1_levels("memory")) {
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

long cgroup_oom_kills(const std::vector<std::string>& memory_dirs, bool v1) {
  // v1: memory.oom_control has "oom_kill N" (kernel 4.13+); v2: memory.events "oom_kill N".
  // Summed over the levels: a kill counts where the limit that was hit is set.
  long total = 0;
  bool found = false;
  for (const auto& d : memory_dirs) {
    std::ifstream f(fs::path(d) / (v1 ? "memory.oom_control" : "memory.events"));
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

std::optional<std::uint64_t> cgroup_memory_usage(const std::string& dir, bool v1) {
  auto s = read_text(fs::path(dir) / (v1 ? "memory.usage_in_bytes" : "memory.current"));
  return s ? to_int<std::uint64_t>(*s) : std::nullopt;
}

std::optional<long> cgroup_tasks_room(const std::string& root) {
  const Hierarchies h(root);
  const auto lv = h.v1_levels("pids");
  std::optional<long> room;
  // Every level limits the tasks below it: the room is the smallest along the path.
  for (const auto& d : lv ? *lv : h.v2) {
    auto max = read_text(d / "pids.max");
    if (!max || trim(*max) == "max") continue;
    auto lim = to_int<long>(*max);
    auto cur = read_text(d / "pids.current");
    auto used = cur ? to_int<long>(*cur) : std::nullopt;
    if (!lim || !used) continue;
    room = min_limit(room, std::optional<long>(std::max(0L, *lim - *used)));
  }
  return room;
}

}  // namespace vscale::detail
