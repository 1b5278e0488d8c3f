// The Session: the flags and variables it reads, starting and stopping the master's runtime
// and its cluster manager, and Julia's process queries (myid, procs, addprocs, rmprocs, ...).
// A worker's side is worker_main.cpp; starting and watching workers is local_launcher.cpp.
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <vector>

#include "vscale/cluster.hpp"
#include "vscale/detail/env.hpp"
#include "vscale/detail/handshake.hpp"
#include "vscale/detail/local_launcher.hpp"
#include "vscale/detail/mpi_node.hpp"
#include "vscale/detail/runtime.hpp"
#include "vscale/detail/worker.hpp"
#include "vscale/placement.hpp"

namespace vscale {
namespace detail {

// ================================================================= the session

bool mpi_launch_detected() {
  // Open MPI's mpirun, MPICH's hydra (and srun with PMI), srun with PMIx.
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"})
    if (const char* s = std::getenv(v); s && std::atoi(s) > 1) return true;
  return false;
}

namespace {

struct Config {
  std::uint32_t max_procs;
  std::uint64_t ring_bytes;
  std::uint64_t bulk_bytes;
};

std::chrono::milliseconds default_start_timeout() {
  return std::chrono::milliseconds(env_long("VSCALE_START_TIMEOUT_MS", 60'000, 1, 86'400'000));
}

Config config_from_env() {
  Config c;
  // Ids are never reused, and each id has its slot, rings and bulk area in the (sparse)
  // control segment: this is how many processes a session can ever start.
  c.max_procs = static_cast<std::uint32_t>(env_long("VSCALE_MAX_PROCS", std::max(256, 8 * usable_cpus()), 1, 65535));
  // Any ring size works: a message whose record would not fit a quarter of the ring goes
  // through the bulk area (Runtime::try_emit), and a bulk descriptor always fits.
  c.ring_bytes = std::uint64_t(env_long("VSCALE_RING_KB", 64, 1, 1 << 20)) << 10;
  c.bulk_bytes = std::uint64_t(env_long("VSCALE_BULK_MB", 1024, 1, 1 << 20)) << 20;
  return c;
}

// The launcher's view of the master: its segment, its pending calls, its way to say exit.
class MasterHost final : public LauncherHost {
 public:
  explicit MasterHost(Runtime& rt) : rt_(rt) {}
  Segment& segment() override { return rt_.segment(); }
  long pending_to(int id) override { return static_cast<long>(rt_.requests().pending_to(id)); }
  void send_exit(int id) override { rt_.send_msg(id, ExitMsg{}, nullptr, 0, false); }

 private:
  Runtime& rt_;
};

std::unique_ptr<Runtime> g_runtime;
std::unique_ptr<MasterHost> g_host;  // outlives g_manager, which uses it
std::unique_ptr<ClusterManager> g_manager;
std::mutex g_session_m;
Placement g_placement;  // what the master chose at start (guarded by g_session_m)

void pin_self(const std::vector<int>& cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus)
    if (c >= 0 && c < CPU_SETSIZE) CPU_SET(c, &set);
  if (CPU_COUNT(&set) > 0 && sched_setaffinity(0, sizeof set, &set) != 0)
    std::fprintf(stderr, "vscale: cannot pin the master to CPUs %s: %s\n", format_cpu_list(cpus).c_str(),
                 std::strerror(errno));
}

// The master's exit handler: a program that calls exit() (from main with the Session still
// alive, from a call, from any thread) stops its workers first, politely. The runtime is
// left allocated: other threads may still be waiting in it while the process ends.
void master_on_exit(int, void*) {
  std::unique_lock lk(g_session_m, std::try_to_lock);
  if (!lk) return;  // a Session is being built or destroyed right now: that thread finishes it
  if (g_manager) g_manager->shutdown();
  if (g_runtime) g_runtime->stop();
  (void)g_runtime.release();
}

void start_master(const SessionOptions& o, const char* argv0) {
  std::lock_guard lk(g_session_m);
  if (g_runtime) throw UsageError("vscale: only one vscale::Session may exist in a process");
  (void)argv0;
  make_private();
  // Threads beyond a multiple of the CPUs only cost memory and switches (and TBB fails at
  // shutdown past 65,536): refuse them with the bound instead.
  const int max_threads = std::max(64, 16 * usable_cpus());
  if (!o.threads.is_auto && o.threads.n > max_threads)
    throw UsageError("vscale: -t " + std::to_string(o.threads.n) + " (or --threads, VSCALE_THREADS) asks for more threads per process than " +
                     "this machine can use: at most " + std::to_string(max_threads) + " (16 per usable CPU, " +
                     std::to_string(usable_cpus()) + " usable here, and at least 64)");
  // plan_placement's own encoding: -1 = auto; bind -1 = default, 1 = on, 0 = off.
  const Placement plan = plan_placement(machine(), o.procs.is_auto ? -1 : o.procs.n, o.threads.is_auto ? -1 : o.threads.n,
                                        o.bind == Bind::automatic ? -1 : o.bind == Bind::on ? 1 : 0);
  for (const auto& w : plan.warnings) std::fprintf(stderr, "vscale: %s\n", w.c_str());
  if (!plan.master_cpus.empty()) pin_self(plan.master_cpus);
  Config c = config_from_env();
  const auto timeout = default_start_timeout();
  // Under mpirun (several ranks): rank 0 goes on as the master of the whole job, every other
  // rank leads its node and never comes back (mpi_node.hpp).
#ifdef VSCALE_WITH_MPI
  std::unique_ptr<MpiNode> mpi;  // only where MpiNode is built (VSCALE_MPI)
#endif
  if (mpi_launch_detected()) {
#ifdef VSCALE_WITH_MPI
    mpi = MpiNode::init(plan.workers, c.max_procs);
    if (mpi->rank() != 0) MpiNode::lead(std::move(mpi), plan, c.ring_bytes, c.bulk_bytes, timeout);
    c.max_procs = mpi->max_procs();
#else
    throw Error("vscale: this program was started by mpirun (or srun) as one of several ranks, but vscale was built "
                "without MPI support: install libopenmpi-dev and build again (CMake option VSCALE_MPI), or run it "
                "without mpirun (one host: -p N)");
#endif
  }
  static const bool exit_handler = [] { return on_exit(master_on_exit, nullptr) == 0; }();
  (void)exit_handler;
  try {
    auto rt = std::make_unique<Runtime>(1, true);
    rt->segment().create(c.max_procs, c.ring_bytes, c.bulk_bytes);
    rt->segment().set_alive(1, getpid());
    rt->start(plan.threads);
    g_host = std::make_unique<MasterHost>(*rt);
    auto local = std::make_unique<LocalLauncher>(*g_host);
    local->set_plan(plan.threads, plan.bind ? plan.worker_cpus : std::vector<std::vector<int>>{});
    g_placement = plan;
#ifdef VSCALE_WITH_MPI
    if (mpi) {
      mpi->attach(rt->segment(), [h = g_host.get()](int id) { return h->pending_to(id); });
      g_runtime = std::move(rt);
      // The failures were reported on stderr; the job goes on with those that joined.
      if (plan.workers > 0) (void)local->launch(plan.workers, LaunchSpec{{}, {}, timeout});
      mpi->wait_settled(timeout + std::chrono::seconds(10));
      local->set_next_id(mpi->next_free_id());
      g_manager = std::make_unique<MpiManager>(std::move(local), std::move(mpi), g_runtime->segment());
      g_runtime->manager = g_manager.get();
    } else
#endif
    {
      rt->manager = local.get();
      g_manager = std::move(local);
      g_runtime = std::move(rt);
      if (plan.workers > 0) {
        auto res = g_manager->launch(plan.workers, LaunchSpec{{}, {}, timeout});
        (void)res;  // failures were reported on stderr; the session goes on with those that joined
      }
    }
  } catch (...) {
    // Nothing of a failed start stays behind: a later Session may try again.
    if (g_manager) g_manager->shutdown();
    if (g_runtime) g_runtime->stop();
    g_manager.reset();
    g_host.reset();
    g_runtime.reset();
    try {
      throw;
    } catch (const std::system_error& e) {
      // std::thread could not start one of the master's threads.
      throw Error(std::string("vscale: the master cannot start its threads: ") + e.what() +
                  (e.code() == std::errc::resource_unavailable_try_again
                       ? " (the limit of processes and threads, ulimit -u, is reached: raise it)"
                       : ""));
    }
  }
}

void stop_master() {
  std::lock_guard lk(g_session_m);
  if (g_manager) g_manager->shutdown();
  if (g_runtime) g_runtime->stop();
  g_manager.reset();
  g_host.reset();
  g_runtime.reset();
}

ClusterManager& manager_for(const char* what) {
  Runtime& rt = Runtime::get(what);
  if (!rt.master() || !rt.manager)
    throw UsageError(std::string("vscale: ") + what + " can only be called on the master (process 1); it was called on process " +
                     std::to_string(rt.self()));
  return *rt.manager;
}

}  // namespace

void push_fd(int id, RefId key, int fd) { manager_for("passing a file descriptor").push_fd(id, key, fd); }

LaunchResult launch(int n, const std::string& exe, const std::string& cookie, std::chrono::milliseconds timeout) {
  return manager_for("addprocs").launch(n, LaunchSpec{exe, cookie, timeout.count() > 0 ? timeout : default_start_timeout()});
}

}  // namespace detail

// ================================================================= public API

int usable_cpus() { return machine().usable_cpus; }

int nthreads() { return detail::Runtime::get("nthreads").threads(); }

std::string describe() {
  std::string out = describe_machine(machine());
  Placement plan;
  {
    std::lock_guard lk(detail::g_session_m);
    plan = detail::g_placement;
  }
  out += "placement: " + plan.how + "\n";
  for (const auto& w : plan.warnings) out += "  warning: " + w + "\n";
  auto* rt = detail::Runtime::current();
  if (!rt) return out + "  (no session running)\n";
  for (int id : rt->alive_ids()) {
    const int pid = static_cast<int>(rt->segment().slot(id).os_pid.load());
    std::string cpus = "?";
    std::ifstream st("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(st, line);)
      if (line.rfind("Cpus_allowed_list:", 0) == 0) {
        cpus = line.substr(line.find_first_not_of(" \t", 18));
        break;
      }
    // Workers not pinned keep the master's mask; the master is pinned only by the plan.
    const bool pinned = id == 1 ? !plan.master_cpus.empty() : (cpus != "?" && parse_cpu_list(cpus) != machine().affinity);
    out += "  process " + std::to_string(id) + (id == 1 ? " (master)" : "") + ", pid " + std::to_string(pid) + ": " +
           std::to_string(rt->threads()) + (rt->threads() == 1 ? " thread" : " threads") + ", cpus " + cpus +
           (pinned ? " (pinned)" : " (not pinned)") + "\n";
  }
  return out;
}

SessionOptions parse_options(int& argc, char** argv) {
  SessionOptions o;
  bool procs_given = false, threads_given = false;
  auto parse_count = [&](const std::string& v, const std::string& flag, bool threads) -> Count {
    if (v == "auto") return auto_count;
    char* end;
    long n = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end || n < 0 || (threads && n == 0) || n > 1'000'000)
      throw UsageError("vscale: " + flag + " expects " + (threads ? "a number of threads (1 or more)" : "a number of workers") +
                       " or `auto`, got `" + v + "`");
    return Count(static_cast<int>(n));
  };
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    // -p N, --procs N, --procs=N, -pN; the same for -t/--threads.
    auto match = [&](const char* s, const char* l, std::string& val, int& consumed) {
      const std::string lo = std::string(l) + "=";
      if (a == s || a == l) {
        if (i + 1 >= argc)
          throw UsageError("vscale: " + a + " needs a value: " + (a == "-t" || a == "--threads" ? "a number of threads" : "a number of workers") + " or `auto`");
        val = argv[i + 1];
        consumed = 2;
      } else if (a.rfind(lo, 0) == 0) {
        val = a.substr(lo.size());
        consumed = 1;
      } else if (a.size() > 2 && a.rfind(s, 0) == 0 && (std::isdigit(static_cast<unsigned char>(a[2])) || a.substr(2) == "auto")) {
        val = a.substr(2);
        consumed = 1;
      }
      return consumed > 0;
    };
    std::string val;
    int consumed = 0;
    if (match("-p", "--procs", val, consumed)) {
      o.procs = parse_count(val, a.rfind("--", 0) == 0 ? "--procs" : "-p", false);
      procs_given = true;
    } else if (match("-t", "--threads", val, consumed)) {
      o.threads = parse_count(val, a.rfind("--", 0) == 0 ? "--threads" : "-t", true);
      threads_given = true;
    } else if (a == "--bind") {
      o.bind = Bind::on;
      consumed = 1;
    } else if (a == "--bind=none") {
      o.bind = Bind::off;
      consumed = 1;
    } else if (a.rfind("--bind=", 0) == 0) {
      throw UsageError("vscale: --bind takes no value, or `--bind=none` to turn binding off; got `" + a + "`");
    } else if (a == "--vscale-info") {
      o.info = true;
      consumed = 1;
    }
    if (consumed) {
      i += consumed - 1;
      continue;
    }
    argv[out++] = argv[i];
  }
  if (argc > 0) {
    argv[out] = nullptr;
    argc = out;
  }
  // The variables are checked even when a flag overrides them: a typo is never silent.
  if (const char* e = std::getenv("VSCALE_PROCS"); e && *e) {
    const Count v = parse_count(e, "VSCALE_PROCS", false);
    if (!procs_given) o.procs = v;
  }
  if (const char* e = std::getenv("VSCALE_THREADS"); e && *e) {
    const Count v = parse_count(e, "VSCALE_THREADS", true);
    if (!threads_given) o.threads = v;
  }
  return o;
}

Session::Session(int& argc, char** argv) {
  if (argc >= 2 && std::strncmp(argv[1], detail::kWorkerFlag, sizeof detail::kWorkerFlag - 1) == 0)
    detail::worker_main(argv[1] + sizeof detail::kWorkerFlag - 1);
  // Started from a command line, a bad flag or variable, or a limit that stops the start, ends
  // the program as any command-line tool does: the message and exit status 2 (1 for a limit
  // of the machine), not an uncaught exception and a core dump. The other constructor throws.
  try {
    const SessionOptions o = parse_options(argc, argv);
    detail::start_master(o, argc > 0 ? argv[0] : nullptr);
    if (o.info) std::fputs(describe().c_str(), stdout);
  } catch (const Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s\n", e.what());
    std::exit(dynamic_cast<const UsageError*>(&e) ? 2 : 1);
  }
}

Session::Session(SessionOptions options, const char* argv0) {
  detail::start_master(options, argv0);
  if (options.info) std::fputs(describe().c_str(), stdout);
}

Session::~Session() { detail::stop_master(); }

int myid() { return detail::Runtime::get("myid").self(); }
int nprocs() { return static_cast<int>(detail::Runtime::get("nprocs").alive_ids().size()); }
int nworkers() { return nprocs() - 1; }
std::vector<int> procs() { return detail::Runtime::get("procs").alive_ids(); }
std::vector<int> workers() {
  auto ids = procs();
  if (ids.size() <= 1) return {1};
  ids.erase(ids.begin());
  return ids;
}

int host_of(int id) {
  auto& rt = detail::Runtime::get("host_of");
  auto& seg = rt.segment();
  if (!seg.valid_id(id) || seg.slot(id).state.load() == std::uint32_t(detail::SlotState::Unused))
    throw ProcessExitedException(id, rt.dead_reason(id));
  return static_cast<int>(seg.slot(id).node.load());
}

int nhosts() {
  int n = 0;
  for (int id : procs()) n = std::max(n, host_of(id) + 1);
  return n;
}

std::vector<int> procs_on(int host) {
  std::vector<int> out;
  for (int id : procs())
    if (host_of(id) == host) out.push_back(id);
  return out;
}

std::vector<int> addprocs(int n) { return addprocs(n, std::chrono::milliseconds(0)); }

std::vector<int> addprocs(int n, std::chrono::milliseconds start_timeout) {
  if (n < 0) throw UsageError("vscale: addprocs(" + std::to_string(n) + "): the count must not be negative");
  return detail::launch(n, {}, {}, start_timeout).joined;
}

void rmprocs(const std::vector<int>& ids, std::chrono::milliseconds timeout) {
  auto& l = detail::manager_for("rmprocs");
  for (int id : ids)
    if (id == 1) throw UsageError("vscale: rmprocs cannot remove the master (process 1)");
  l.remove(ids, timeout);
}

}  // namespace vscale
