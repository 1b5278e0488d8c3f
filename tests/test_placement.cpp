// Placement: CPU lists, machine detection on fake /proc + /sys trees (cgroup v1, v2, hybrid,
// containers, sysfs topology), the processes x threads rules on synthetic machines, and the
// real machine. Needs no workers (tests/test_placement.args: -p 0).
#include <doctest/doctest.h>

#include <vscale/detail/cgroup.hpp>
#include <vscale/errors.hpp>
#include <vscale/placement.hpp>

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using vscale::MachineInfo;
using vscale::Placement;
using Groups = std::vector<std::vector<int>>;

// A fake root (/proc and /sys below it) in a fresh temporary directory, removed afterwards.
class FakeRoot {
 public:
  FakeRoot() {
    std::string tmpl = (fs::temp_directory_path() / "vscale-placement-XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    dir_ = tmpl;
  }
  ~FakeRoot() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  FakeRoot(const FakeRoot&) = delete;
  FakeRoot& operator=(const FakeRoot&) = delete;

  // Write `text` to `rel` (a path below the root, directories created as needed).
  void write(const std::string& rel, const std::string& text) const {
    fs::path p = dir_ / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }
  void mkdir(const std::string& rel) const { fs::create_directories(dir_ / rel); }
  std::string root() const { return dir_.string(); }

 private:
  fs::path dir_;
};

std::vector<int> iota(int first, int n) {
  std::vector<int> v;
  for (int i = 0; i < n; ++i) v.push_back(first + i);
  return v;
}

// A consistent synthetic machine: CPUs 0..n-1 all usable, `usable` of them allowed by the
// quota (n when < 0). Groups default to the "unknown" fallback (one group, one core per CPU).
MachineInfo synth(int n, Groups numa = {}, Groups l3 = {}, Groups cores = {}, int usable = -1) {
  MachineInfo m;
  m.online_cpus = n;
  m.affinity = iota(0, n);
  m.usable_set = m.affinity;
  m.usable_cpus = usable < 0 ? n : usable;
  if (usable >= 0 && usable < n) m.cpu_quota = usable;
  m.numa = numa.empty() ? Groups{m.usable_set} : numa;
  m.l3 = l3.empty() ? Groups{m.usable_set} : l3;
  if (cores.empty())
    for (int c : m.usable_set) cores.push_back({c});
  m.cores = cores;
  return m;
}

// What every plan must satisfy: one entry per worker, threads >= 1, and when pinned, each
// process's CPUs are usable and no CPU serves two processes.
void check_invariants(const MachineInfo& m, const Placement& p) {
  CHECK(p.workers >= 0);
  CHECK(p.threads >= 1);
  REQUIRE(p.worker_cpus.size() == static_cast<std::size_t>(p.workers));
  CHECK_FALSE(p.how.empty());
  std::set<int> usable(m.usable_set.begin(), m.usable_set.end());
  std::set<int> seen;
  auto take = [&](const std::vector<int>& cpus) {
    for (int c : cpus) {
      CHECK(usable.count(c) == 1);
      CHECK(seen.insert(c).second);
    }
  };
  take(p.master_cpus);
  for (auto& w : p.worker_cpus) take(w);
  if (!p.bind) {
    CHECK(p.master_cpus.empty());
    for (auto& w : p.worker_cpus) CHECK(w.empty());
  }
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

// ------------------------------------------------------------------------------------------

TEST_CASE("parse_cpu_list reads the kernel's list syntax") {
  CHECK(vscale::parse_cpu_list("0-3,8,10-11") == std::vector<int>{0, 1, 2, 3, 8, 10, 11});
  CHECK(vscale::parse_cpu_list("").empty());
  CHECK(vscale::parse_cpu_list("\n").empty());
  CHECK(vscale::parse_cpu_list("5") == std::vector<int>{5});
  CHECK(vscale::parse_cpu_list("0-1\n") == std::vector<int>{0, 1});
  CHECK(vscale::parse_cpu_list(" 2 , 0-1 \t\n") == std::vector<int>{0, 1, 2});
  CHECK(vscale::parse_cpu_list("3,1-2,2") == std::vector<int>{1, 2, 3});  // sorted, unique
  CHECK(vscale::parse_cpu_list("7-7") == std::vector<int>{7});
  CHECK_THROWS_AS(vscale::parse_cpu_list("a"), vscale::UsageError);
  CHECK_THROWS_AS(vscale::parse_cpu_list("3-1"), vscale::UsageError);
  CHECK_THROWS_AS(vscale::parse_cpu_list("-1"), vscale::UsageError);
  CHECK_THROWS_AS(vscale::parse_cpu_list("1-"), vscale::UsageError);
  CHECK_THROWS_AS(vscale::parse_cpu_list("0-99999999"), vscale::UsageError);
}

TEST_CASE("format_cpu_list writes ranges and round-trips") {
  CHECK(vscale::format_cpu_list({0, 1, 2, 3, 8, 10, 11}) == "0-3,8,10-11");
  CHECK(vscale::format_cpu_list({}) == "");
  CHECK(vscale::format_cpu_list({5}) == "5");
  CHECK(vscale::format_cpu_list({3, 1, 2, 2}) == "1-3");
  for (const char* s : {"0-3,8,10-11", "5", "0,2,4", "1-2,4-5,7", ""})
    CHECK(vscale::format_cpu_list(vscale::parse_cpu_list(s)) == s);
}

// ------------------------------------------------------------------------------------------
// detection on fake trees

TEST_CASE("cgroup v2: cpu.max 150000 100000 is 1.5 cores, so at most 2 usable") {
  FakeRoot t;
  t.write("proc/self/cgroup", "0::/user.slice/job\n");
  t.write("proc/self/status", "Name:\tprog\nCpus_allowed:\tff\nCpus_allowed_list:\t0-7\n");
  t.write("sys/fs/cgroup/cgroup.controllers", "cpuset cpu memory\n");
  t.write("sys/fs/cgroup/user.slice/job/cpu.max", "150000 100000\n");
  auto m = vscale::detect_machine(t.root());
  CHECK(m.cgroup_version == 2);
  CHECK(m.cgroup_path == "/user.slice/job");
  REQUIRE(m.cpu_quota.has_value());
  CHECK(*m.cpu_quota == doctest::Approx(1.5));
  CHECK(m.affinity == iota(0, 8));
  CHECK(m.usable_set == iota(0, 8));
  CHECK(m.usable_cpus == 2);
  CHECK(m.online_cpus == 8);  // no sys/devices/system/cpu/online: the affinity count
  CHECK(m.cpuset.empty());
  CHECK_FALSE(m.memory_limit.has_value());

  SUBCASE("a single allowed CPU wins over the quota") {
    t.write("proc/self/status", "Cpus_allowed_list:\t3\n");
    auto m1 = vscale::detect_machine(t.root());
    CHECK(m1.usable_set == std::vector<int>{3});
    CHECK(m1.usable_cpus == 1);
  }
  SUBCASE("a whole quota does not round up") {
    t.write("sys/fs/cgroup/user.slice/job/cpu.max", "200000 100000\n");
    CHECK(vscale::detect_machine(t.root()).usable_cpus == 2);
  }
  SUBCASE("a quota below one core still leaves one CPU") {
    t.write("sys/fs/cgroup/user.slice/job/cpu.max", "20000 100000\n");
    auto m2 = vscale::detect_machine(t.root());
    CHECK(*m2.cpu_quota == doctest::Approx(0.2));
    CHECK(m2.usable_cpus == 1);
  }
}

TEST_CASE("cgroup v2: max is unlimited, cpuset and memory.max are read") {
  FakeRoot t;
  t.write("proc/self/cgroup", "0::/job\n");
  t.write("proc/self/status", "Cpus_allowed_list:\t0-7\n");
  t.write("sys/devices/system/cpu/online", "0-15\n");
  t.write("sys/fs/cgroup/job/cpu.max", "max 100000\n");
  t.write("sys/fs/cgroup/job/memory.max", "max\n");
  t.write("sys/fs/cgroup/job/cpuset.cpus.effective", "2-5,12\n");
  auto m = vscale::detect_machine(t.root());
  CHECK(m.cgroup_version == 2);
  CHECK(m.online_cpus == 16);
  CHECK_FALSE(m.cpu_quota.has_value());
  CHECK_FALSE(m.memory_limit.has_value());
  CHECK(m.cpuset == std::vector<int>{2, 3, 4, 5, 12});
  CHECK(m.usable_set == std::vector<int>{2, 3, 4, 5});  // affinity ∩ cpuset
  CHECK(m.usable_cpus == 4);

  SUBCASE("memory.max in bytes") {
    t.write("sys/fs/cgroup/job/memory.max", "4294967296\n");
    auto m2 = vscale::detect_machine(t.root());
    REQUIRE(m2.memory_limit.has_value());
    CHECK(*m2.memory_limit == 4294967296ULL);
    CHECK(contains(vscale::describe_machine(m2), "4.0 GiB"));
  }
}

TEST_CASE("cgroup v2: a limit in a parent directory binds the child") {
  FakeRoot t;
  t.write("proc/self/cgroup", "0::/a/b/c\n");
  t.write("proc/self/status", "Cpus_allowed_list:\t0-15\n");
  t.write("sys/fs/cgroup/a/cpu.max", "300000 100000\n");        // 3 cores
  t.write("sys/fs/cgroup/a/b/cpu.max", "max 100000\n");
  t.write("sys/fs/cgroup/a/b/c/cpu.max", "500000 100000\n");    // 5: looser than a's
  t.write("sys/fs/cgroup/a/memory.max", "max\n");
  t.write("sys/fs/cgroup/a/b/memory.max", "1073741824\n");      // 1 GiB
  t.write("sys/fs/cgroup/a/b/c/memory.max", "max\n");
  t.write("sys/fs/cgroup/cpuset.cpus.effective", "0-15\n");     // the root's, found walking up
  auto m = vscale::detect_machine(t.root());
  CHECK(m.cgroup_version == 2);
  REQUIRE(m.cpu_quota.has_value());
  CHECK(*m.cpu_quota == doctest::Approx(3.0));
  CHECK(m.usable_cpus == 3);
  REQUIRE(m.memory_limit.has_value());
  CHECK(*m.memory_limit == 1073741824ULL);
  CHECK(m.cpuset == iota(0, 16));
}

TEST_CASE("placement.oom_kill_count_reads_cgroup_v1_and_v2") {
  // The OOM reason of a death ("killed by SIGKILL (out of memory)") was read from the v2 file
  // only: a worker OOM-killed in a v1 memory cgroup was reported without it.
  SUBCASE("v1 (hybrid host): memory.oom_control, summed over the levels") {
    FakeRoot t;
    t.write("proc/self/cgroup", "9:memory:/job/task\n4:cpu,cpuacct:/job\n0::/job\n");
    t.write("proc/self/status", "Cpus_allowed_list:\t0-3\n");
    t.write("sys/fs/cgroup/memory/job/task/memory.limit_in_bytes", "314572800\n");
    t.write("sys/fs/cgroup/memory/job/task/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
    t.write("sys/fs/cgroup/memory/job/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n");
    auto m = vscale::detect_machine(t.root());
    CHECK(m.memory_cgroup_v1);
    REQUIRE(m.memory_limit.has_value());
    CHECK(*m.memory_limit == 314572800ULL);
    CHECK(vscale::oom_kill_count(m) == 3);
    t.write("sys/fs/cgroup/memory/job/task/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n");
    CHECK(vscale::oom_kill_count(m) == 4);  // read anew each time
  }
  SUBCASE("v2: memory.events") {
    FakeRoot t;
    t.write("proc/self/cgroup", "0::/job\n");
    t.write("proc/self/status", "Cpus_allowed_list:\t0-3\n");
    t.write("sys/fs/cgroup/job/memory.max", "314572800\n");
    t.write("sys/fs/cgroup/job/memory.events", "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n");
    auto m = vscale::detect_machine(t.root());
    CHECK_FALSE(m.memory_cgroup_v1);
    CHECK(vscale::oom_kill_count(m) == 1);
  }
  SUBCASE("no counter anywhere: unknown") {
    FakeRoot t;
    t.write("proc/self/cgroup", "0::/job\n");
    t.write("proc/self/status", "Cpus_allowed_list:\t0-3\n");
    t.mkdir("sys/fs/cgroup/job");
    CHECK(vscale::oom_kill_count(vscale::detect_machine(t.root())) == -1);
  }
}

TEST_CASE("cgroup.tasks_room_is_the_smallest_pids_room_along_the_path") {
  FakeRoot t;
  auto pids = [&](const std::string& dir, const std::string& max, int current) {
    t.write(dir + "/pids.max", max + "\n");
    t.write(dir + "/pids.current", std::to_string(current) + "\n");
  };
  auto room = [&] { return vscale::detail::cgroup_tasks_room(t.root()); };
  SUBCASE("v2: every level with a pids.max limits") {
    t.write("proc/self/cgroup", "0::/job/task\n");
    pids("sys/fs/cgroup/job", "100", 40);
    pids("sys/fs/cgroup/job/task", "max", 10);
    CHECK(room() == 60);
    pids("sys/fs/cgroup/job/task", "20", 10);
    CHECK(room() == 10);
    pids("sys/fs/cgroup/job/task", "20", 25);  // over the limit: no room, not less
    CHECK(room() == 0);
  }
  SUBCASE("v1: the pids controller's hierarchy, not v2's") {
    t.write("proc/self/cgroup", "5:pids:/job\n0::/other\n");
    pids("sys/fs/cgroup/pids/job", "64", 4);
    pids("sys/fs/cgroup/other", "1", 1);
    CHECK(room() == 60);
  }
  SUBCASE("no limit anywhere") {
    t.write("proc/self/cgroup", "0::/job\n");
    pids("sys/fs/cgroup/job", "max", 3);
    CHECK_FALSE(room().has_value());
  }
}

TEST_CASE("cgroup.memory_usage_reads_v1_and_v2") {
  FakeRoot t;
  t.write("proc/self/cgroup", "0::/job\n");
  t.write("sys/fs/cgroup/job/memory.max", "314572800\n");
  t.write("sys/fs/cgroup/job/memory.current", "1048576\n");
  auto m = vscale::detect_machine(t.root());
  REQUIRE(m.memory_cgroup_dirs.size() == 2);  // job, then the root
  CHECK(vscale::detail::cgroup_memory_usage(m.memory_cgroup_dirs.front(), false) == 1048576U);
  t.write("sys/fs/cgroup/job/memory.usage_in_bytes", "2097152\n");
  CHECK(vscale::detail::cgroup_memory_usage(m.memory_cgroup_dirs.front(), true) == 2097152U);
  CHECK_FALSE(vscale::detail::cgroup_memory_usage(m.memory_cgroup_dirs.back(), false).has_value());
}

TEST_CASE("cgroup v1: quota, cpuset and memory limit") {
  FakeRoot t;
  // A hybrid host: v1 controllers plus the empty unified hierarchy; v1 is what limits.
  t.write("proc/self/cgroup",
          "9:memory:/job\n7:cpuset:/job\n4:cpu,cpuacct:/job\n1:name=systemd:/job\n0::/job\n");
  t.write("proc/self/status", "Cpus_allowed_list:\t0-7\n");
  t.write("sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us", "250000\n");
  t.write("sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_period_us", "100000\n");
  t.write("sys/fs/cgroup/cpuset/job/cpuset.effective_cpus", "0-1,4-5\n");
  t.write("sys/fs/cgroup/memory/job/memory.limit_in_bytes", "536870912\n");
  t.write("sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
  t.mkdir("sys/fs/cgroup/unified/job");
  auto m = vscale::detect_machine(t.root());
  CHECK(m.cgroup_version == 1);
  REQUIRE(m.cpu_quota.has_value());
  CHECK(*m.cpu_quota == doctest::Approx(2.5));
  CHECK(m.cpuset == std::vector<int>{0, 1, 4, 5});
  CHECK(m.usable_set == std::vector<int>{0, 1, 4, 5});
  CHECK(m.usable_cpus == 3);  // min(4, ceil(2.5))
  REQUIRE(m.memory_limit.has_value());
  CHECK(*m.memory_limit == 536870912ULL);

  SUBCASE("-1 quota and the huge memory value mean unlimited; cpuset.cpus when no effective") {
    t.write("sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us", "-1\n");
    t.write("sys/fs/cgroup/memory/job/memory.limit_in_bytes", "9223372036854771712\n");
    fs::remove(fs::path(t.root()) / "sys/fs/cgroup/cpuset/job/cpuset.effective_cpus");
    t.write("sys/fs/cgroup/cpuset/job/cpuset.cpus", "6-7\n");
    auto m2 = vscale::detect_machine(t.root());
    CHECK(m2.cgroup_version == 1);
    CHECK_FALSE(m2.cpu_quota.has_value());
    CHECK_FALSE(m2.memory_limit.has_value());
    CHECK(m2.cpuset == std::vector<int>{6, 7});
    CHECK(m2.usable_cpus == 2);
  }
  SUBCASE("separate cpu and cpuacct mounts (this kind of host names them apart)") {
    t.write("proc/self/cgroup", "4:memory:/job\n2:cpuacct:/job\n1:cpu:/job\n");
    t.write("sys/fs/cgroup/cpu/job/cpu.cfs_quota_us", "100000\n");
    t.write("sys/fs/cgroup/cpu/job/cpu.cfs_period_us", "100000\n");
    auto m3 = vscale::detect_machine(t.root());
    CHECK(m3.cgroup_version == 1);
    REQUIRE(m3.cpu_quota.has_value());
    CHECK(*m3.cpu_quota == doctest::Approx(1.0));
    CHECK(m3.usable_cpus == 1);
  }
}

TEST_CASE("containers: path / in /proc/self/cgroup, or a host path missing under the mount") {
  SUBCASE("v2, own cgroup at the mount root") {
    FakeRoot t;
    t.write("proc/self/cgroup", "0::/\n");
    t.write("proc/self/status", "Cpus_allowed_list:\t0-3\n");
    t.write("sys/fs/cgroup/cpu.max", "100000 100000\n");
    t.write("sys/fs/cgroup/memory.max", "268435456\n");
    auto m = vscale::detect_machine(t.root());
    CHECK(m.cgroup_version == 2);
    REQUIRE(m.cpu_quota.has_value());
    CHECK(*m.cpu_quota == doctest::Approx(1.0));
    CHECK(m.usable_cpus == 1);
    REQUIRE(m.memory_limit.has_value());
    CHECK(*m.memory_limit == 268435456ULL);
  }
  SUBCASE("v1, host path that does not exist in the container: the mount itself") {
    FakeRoot t;
    t.write("proc/self/cgroup", "5:cpu,cpuacct:/docker/0123abcd\n3:memory:/docker/0123abcd\n");
    t.write("proc/self/status", "Cpus_allowed_list:\t0-3\n");
    t.write("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "200000\n");
    t.write("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    t.write("sys/fs/cgroup/memory/memory.limit_in_bytes", "1048576\n");
    auto m = vscale::detect_machine(t.root());
    CHECK(m.cgroup_version == 1);
    REQUIRE(m.cpu_quota.has_value());
    CHECK(*m.cpu_quota == doctest::Approx(2.0));
    CHECK(m.usable_cpus == 2);
    REQUIRE(m.memory_limit.has_value());
    CHECK(*m.memory_limit == 1048576ULL);
  }
  SUBCASE("mountinfo names the mount point and the cgroup shown at its top") {
    FakeRoot t;
    t.write("proc/self/cgroup", "0::/kubepods/pod1/ctr\n");
    t.write("proc/self/status", "Cpus_allowed_list:\t0-7\n");
    // The cgroup2 tree is mounted elsewhere and shows /kubepods at its top.
    t.write("proc/self/mountinfo",
            "25 1 0:22 / / rw - ext4 /dev/sda1 rw\n"
            "40 25 0:37 /kubepods /mnt/cg2 rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n");
    t.write("mnt/cg2/cpu.max", "400000 100000\n");           // /kubepods itself
    t.write("mnt/cg2/pod1/ctr/cpu.max", "150000 100000\n");  // our own
    auto m = vscale::detect_machine(t.root());
    CHECK(m.cgroup_version == 2);
    REQUIRE(m.cpu_quota.has_value());
    CHECK(*m.cpu_quota == doctest::Approx(1.5));
    CHECK(m.usable_cpus == 2);
  }
}

TEST_CASE("no cgroup information: version 0, nothing limits") {
  FakeRoot t;
  t.write("proc/self/status", "Cpus_allowed_list:\t0-5\n");
  auto m = vscale::detect_machine(t.root());
  CHECK(m.cgroup_version == 0);
  CHECK_FALSE(m.cpu_quota.has_value());
  CHECK(m.cpuset.empty());
  CHECK_FALSE(m.memory_limit.has_value());
  CHECK(m.usable_cpus == 6);
  // Without topology files: one NUMA group, one L3 group, one core per CPU.
  CHECK(m.topology_source == "none");
  CHECK(m.numa == Groups{iota(0, 6)});
  CHECK(m.l3 == Groups{iota(0, 6)});
  REQUIRE(m.cores.size() == 6);
  CHECK(m.cores[3] == std::vector<int>{3});
  auto text = vscale::describe_machine(m);
  CHECK(contains(text, "usable CPUs: 6"));
  CHECK(contains(text, "cgroup: none found"));
}

TEST_CASE("sysfs topology in a fake tree: NUMA nodes, L3 caches, SMT siblings") {
  FakeRoot t;
  t.write("proc/self/status", "Cpus_allowed_list:\t0-7\n");
  t.write("sys/devices/system/node/node0/cpulist", "0-1,4-5\n");
  t.write("sys/devices/system/node/node1/cpulist", "2-3,6-7\n");
  t.write("sys/devices/system/node/node2/cpulist", "\n");  // memory-only node: dropped
  for (int c = 0; c < 8; ++c) {
    std::string d = "sys/devices/system/cpu/cpu" + std::to_string(c) + "/";
    // Siblings c and c+4 (the usual Intel numbering); one L3 per node.
    t.write(d + "topology/thread_siblings_list", std::to_string(c % 4) + "," + std::to_string(c % 4 + 4) + "\n");
    t.write(d + "cache/index0/level", "1\n");
    t.write(d + "cache/index0/shared_cpu_list", std::to_string(c % 4) + "," + std::to_string(c % 4 + 4) + "\n");
    t.write(d + "cache/index3/level", "3\n");
    t.write(d + "cache/index3/shared_cpu_list", (c % 4) < 2 ? "0-1,4-5\n" : "2-3,6-7\n");
  }
  auto m = vscale::detect_machine(t.root());
  CHECK(m.topology_source == "sysfs");
  CHECK(m.numa == Groups{{0, 1, 4, 5}, {2, 3, 6, 7}});
  CHECK(m.l3 == Groups{{0, 1, 4, 5}, {2, 3, 6, 7}});
  CHECK(m.cores == Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}});

  SUBCASE("groups only keep usable CPUs") {
    t.write("proc/self/status", "Cpus_allowed_list:\t0-3\n");
    auto m2 = vscale::detect_machine(t.root());
    CHECK(m2.numa == Groups{{0, 1}, {2, 3}});
    CHECK(m2.cores == Groups{{0}, {1}, {2}, {3}});
  }
  SUBCASE("a quota of 4 CPUs picks one per core, and -p auto pins one worker to each") {
    t.write("proc/self/cgroup", "0::/\n");
    t.write("sys/fs/cgroup/cpu.max", "400000 100000\n");
    auto m3 = vscale::detect_machine(t.root());
    CHECK(m3.usable_cpus == 4);
    auto p = vscale::plan_placement(m3, -1, 0, -1);
    check_invariants(m3, p);
    CHECK(p.workers == 4);
    CHECK(p.bind);
    CHECK(p.worker_cpus == Groups{{0}, {1}, {2}, {3}});  // 4-7 are the siblings
  }
}

// ------------------------------------------------------------------------------------------
// planning on synthetic machines

TEST_CASE("-p auto -t auto: one worker per NUMA node, pinned to the node") {
  auto m = synth(16, {iota(0, 8), iota(8, 8)});
  auto p = vscale::plan_placement(m, -1, -1, -1);
  check_invariants(m, p);
  CHECK(p.workers == 2);
  CHECK(p.threads == 8);
  CHECK(p.bind);
  CHECK(p.master_cpus.empty());
  CHECK(p.worker_cpus == Groups{iota(0, 8), iota(8, 8)});
  CHECK(contains(p.how, "NUMA"));
  CHECK(p.warnings.empty());

  SUBCASE("--bind=none keeps the shape, pins nothing") {
    auto q = vscale::plan_placement(m, -1, -1, 0);
    check_invariants(m, q);
    CHECK(q.workers == 2);
    CHECK(q.threads == 8);
    CHECK_FALSE(q.bind);
  }
  SUBCASE("unequal nodes: threads is the smallest node's count") {
    auto m2 = synth(12, {iota(0, 8), iota(8, 4)});
    auto q = vscale::plan_placement(m2, -1, -1, -1);
    check_invariants(m2, q);
    CHECK(q.workers == 2);
    CHECK(q.threads == 4);
    CHECK(q.worker_cpus == Groups{iota(0, 8), iota(8, 4)});
    CHECK(contains(q.how, "smallest"));
  }
}

TEST_CASE("-p auto -t auto: one NUMA node with two L3 caches splits by L3") {
  auto m = synth(8, {}, {iota(0, 4), iota(4, 4)});
  auto p = vscale::plan_placement(m, -1, -1, -1);
  check_invariants(m, p);
  CHECK(p.workers == 2);
  CHECK(p.threads == 4);
  CHECK(p.bind);
  CHECK(p.worker_cpus == Groups{iota(0, 4), iota(4, 4)});
  CHECK(contains(p.how, "L3"));
}

TEST_CASE("-p auto -t auto: a single group is one process") {
  auto m = synth(8);
  auto p = vscale::plan_placement(m, -1, -1, -1);
  check_invariants(m, p);
  CHECK(p.workers == 0);
  CHECK(p.threads == 8);
  CHECK(p.bind);
  CHECK(p.master_cpus == iota(0, 8));
  auto text = vscale::describe_placement(p);
  CHECK(contains(text, "master: 8 threads, cpus 0-7"));
  CHECK_FALSE(contains(text, "worker"));
}

TEST_CASE("-p auto with one usable CPU plans exactly one process") {
  auto m = synth(1);
  auto p = vscale::plan_placement(m, -1, 0, -1);
  check_invariants(m, p);
  CHECK(p.workers == 0);
  CHECK(p.threads == 1);
  CHECK(p.worker_cpus.empty());
  // The same with a quota of one core on a bigger machine.
  auto m4 = synth(4, {}, {}, {}, 1);
  auto q = vscale::plan_placement(m4, -1, 0, -1);
  check_invariants(m4, q);
  CHECK(q.workers == 0);
  CHECK(q.threads == 1);
  CHECK(q.master_cpus == std::vector<int>{0});
}

TEST_CASE("-p auto with 8 usable CPUs: 8 workers, one CPU each, disjoint") {
  auto m = synth(8);
  auto p = vscale::plan_placement(m, -1, 0, -1);
  check_invariants(m, p);
  CHECK(p.workers == 8);
  CHECK(p.threads == 1);
  CHECK(p.bind);
  CHECK(p.master_cpus.empty());
  for (int i = 0; i < 8; ++i) CHECK(p.worker_cpus[static_cast<std::size_t>(i)] == std::vector<int>{i});
  CHECK(p.how == "-p auto: one worker per usable CPU (8); pinned one CPU each");
  auto text = vscale::describe_placement(p);
  CHECK(contains(text, "master: 1 thread, not pinned"));
  CHECK(contains(text, "worker 8 of 8: 1 thread, cpus 7"));
}

TEST_CASE("-p 4 -t 2 --bind on 8 CPUs: disjoint pairs; on 4 CPUs: a warning, not pinned") {
  auto m = synth(8);
  auto p = vscale::plan_placement(m, 4, 2, 1);
  check_invariants(m, p);
  CHECK(p.workers == 4);
  CHECK(p.threads == 2);
  CHECK(p.bind);
  CHECK(p.master_cpus.empty());
  CHECK(p.worker_cpus == Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}});
  CHECK(p.warnings.empty());

  auto m4 = synth(4);
  auto q = vscale::plan_placement(m4, 4, 2, 1);
  check_invariants(m4, q);
  CHECK(q.workers == 4);
  CHECK(q.threads == 2);
  CHECK_FALSE(q.bind);
  REQUIRE(q.warnings.size() == 1);
  CHECK(q.warnings[0] == "--bind: 4 processes x 2 threads need 8 CPUs, 4 usable; not pinning");
  CHECK(contains(vscale::describe_placement(q), "warning: --bind"));
}

TEST_CASE("explicit -p/-t: binding is off unless asked") {
  auto m = synth(8);
  auto p = vscale::plan_placement(m, 4, 2, -1);
  check_invariants(m, p);
  CHECK(p.workers == 4);
  CHECK(p.threads == 2);
  CHECK_FALSE(p.bind);
  CHECK(p.warnings.empty());

  auto q = vscale::plan_placement(m, 3, 0, -1);  // -t not given: 1 thread
  check_invariants(m, q);
  CHECK(q.workers == 3);
  CHECK(q.threads == 1);

  auto r = vscale::plan_placement(m, 0, 3, 1);  // master alone, pinned to the first 3
  check_invariants(m, r);
  CHECK(r.workers == 0);
  CHECK(r.master_cpus == std::vector<int>{0, 1, 2});

  auto s = vscale::plan_placement(m, 0, 0, -1);  // nothing given: one process, one thread
  check_invariants(m, s);
  CHECK(s.workers == 0);
  CHECK(s.threads == 1);
  CHECK_FALSE(s.bind);
}

TEST_CASE("-t auto: threads = U / workers, or the master alone with U threads") {
  auto m = synth(8);
  auto p = vscale::plan_placement(m, 3, -1, -1);
  check_invariants(m, p);
  CHECK(p.workers == 3);
  CHECK(p.threads == 2);
  CHECK(p.bind);
  CHECK(p.worker_cpus == Groups{{0, 1}, {2, 3}, {4, 5}});

  auto q = vscale::plan_placement(m, 0, -1, -1);
  check_invariants(m, q);
  CHECK(q.workers == 0);
  CHECK(q.threads == 8);
  CHECK(q.master_cpus == iota(0, 8));

  // More workers than CPUs: 1 thread each, and pinning cannot fit.
  auto r = vscale::plan_placement(synth(2), 4, -1, -1);
  check_invariants(synth(2), r);
  CHECK(r.workers == 4);
  CHECK(r.threads == 1);
  CHECK_FALSE(r.bind);
  CHECK(r.warnings.size() == 1);
}

TEST_CASE("-p auto -t T: U / T workers, or the master alone") {
  auto m = synth(8);
  auto p = vscale::plan_placement(m, -1, 2, -1);
  check_invariants(m, p);
  CHECK(p.workers == 4);
  CHECK(p.threads == 2);
  CHECK(p.bind);
  CHECK(p.worker_cpus == Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}});

  auto q = vscale::plan_placement(m, -1, 5, -1);  // 8 / 5 = 1 process
  check_invariants(m, q);
  CHECK(q.workers == 0);
  CHECK(q.threads == 5);
  CHECK(q.master_cpus == iota(0, 5));

  auto r = vscale::plan_placement(synth(2), -1, 4, -1);  // does not fit: not pinned
  CHECK(r.workers == 0);
  CHECK(r.threads == 4);
  CHECK_FALSE(r.bind);
  CHECK(r.warnings.size() == 1);
}

TEST_CASE("a quota smaller than the CPU set prefers one CPU per physical core") {
  // 4 cores of 2 siblings numbered next to each other; the quota allows 4 CPUs.
  auto m = synth(8, {}, {}, {{0, 1}, {2, 3}, {4, 5}, {6, 7}}, 4);
  auto p = vscale::plan_placement(m, -1, 0, -1);
  check_invariants(m, p);
  CHECK(p.workers == 4);
  CHECK(p.worker_cpus == Groups{{0}, {2}, {4}, {6}});

  // 6 CPUs: every core's first CPU, then siblings of the first cores.
  auto m6 = synth(8, {}, {}, {{0, 1}, {2, 3}, {4, 5}, {6, 7}}, 6);
  auto q = vscale::plan_placement(m6, 0, -1, -1);
  CHECK(q.threads == 6);
  CHECK(q.master_cpus == std::vector<int>{0, 1, 2, 3, 4, 6});

  // Both auto: groups are cut to the chosen CPUs.
  auto m2 = synth(8, {{0, 1, 2, 3}, {4, 5, 6, 7}}, {}, {{0, 1}, {2, 3}, {4, 5}, {6, 7}}, 4);
  auto r = vscale::plan_placement(m2, -1, -1, -1);
  check_invariants(m2, r);
  CHECK(r.workers == 2);
  CHECK(r.threads == 2);
  CHECK(r.worker_cpus == Groups{{0, 2}, {4, 6}});
}

TEST_CASE("plan_placement refuses out-of-range options and is deterministic") {
  auto m = synth(8, {iota(0, 4), iota(4, 4)});
  CHECK_THROWS_AS(vscale::plan_placement(m, -2, 0, -1), vscale::UsageError);
  CHECK_THROWS_AS(vscale::plan_placement(m, 1, -5, -1), vscale::UsageError);
  CHECK_THROWS_AS(vscale::plan_placement(m, 1, 1, 2), vscale::UsageError);
  for (int procs : {-1, 0, 1, 3, 9})
    for (int threads : {-1, 0, 1, 3, 9})
      for (int bind : {-1, 0, 1}) {
        auto a = vscale::plan_placement(m, procs, threads, bind);
        auto b = vscale::plan_placement(m, procs, threads, bind);
        check_invariants(m, a);
        CHECK(vscale::describe_placement(a) == vscale::describe_placement(b));
        if (procs >= 0) CHECK(a.workers == procs);
        if (threads >= 1) CHECK(a.threads == threads);
        if (bind == 0) CHECK_FALSE(a.bind);
      }
  // A machine with inconsistent counts still yields a sane plan.
  MachineInfo empty;
  auto e = vscale::plan_placement(empty, -1, -1, -1);
  check_invariants(empty, e);
  CHECK(e.workers == 0);
  CHECK(e.threads == 1);
}

// ------------------------------------------------------------------------------------------
// the real machine

TEST_CASE("detect_machine on this machine") {
  const auto& m = vscale::machine();
  CHECK(&m == &vscale::machine());  // cached
  CHECK(m.online_cpus >= 1);
  CHECK(m.usable_cpus >= 1);
  REQUIRE_FALSE(m.usable_set.empty());
  CHECK(std::is_sorted(m.usable_set.begin(), m.usable_set.end()));
  CHECK(std::adjacent_find(m.usable_set.begin(), m.usable_set.end()) == m.usable_set.end());
  CHECK(m.usable_cpus <= static_cast<int>(m.usable_set.size()));
  CHECK(std::includes(m.affinity.begin(), m.affinity.end(), m.usable_set.begin(), m.usable_set.end()));
  // Every group list partitions the usable set.
  for (const Groups* g : {&m.numa, &m.l3, &m.cores}) {
    std::vector<int> all;
    for (auto& x : *g) {
      CHECK_FALSE(x.empty());
      all.insert(all.end(), x.begin(), x.end());
    }
    std::sort(all.begin(), all.end());
    CHECK(all == m.usable_set);
  }
  auto text = vscale::describe_machine(m);
  CHECK_FALSE(text.empty());
  CHECK(contains(text, "usable"));
  MESSAGE("this machine:\n" << text);
  for (int procs : {-1, 0, 2})
    for (int threads : {-1, 0, 1}) check_invariants(m, vscale::plan_placement(m, procs, threads, -1));
  MESSAGE("-p auto -t auto here:\n" << vscale::describe_placement(vscale::plan_placement(m, -1, -1, -1)));
}

// ctest runs this binary under `taskset -c 0` with VSCALE_EXPECT_USABLE=1 as well.
TEST_CASE("VSCALE_EXPECT_USABLE: the usable CPU count the environment promises") {
  const char* want = std::getenv("VSCALE_EXPECT_USABLE");
  if (!want) return;
  CHECK(vscale::machine().usable_cpus == std::atoi(want));
  if (std::atoi(want) == 1) {
    auto p = vscale::plan_placement(vscale::machine(), -1, 0, -1);
    CHECK(p.workers == 0);  // -p auto on one CPU: the master alone
  }
}
