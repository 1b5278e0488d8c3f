// Scale-out over MPI: the node's gateway thread, the start of a job across ranks, the node
// leader's life, and the master's cluster manager under mpirun (see mpi_node.hpp).
#include "vscale/detail/mpi_node.hpp"

#include <mpi.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "vscale/cluster.hpp"
#include "vscale/detail/core.hpp"
#include "vscale/detail/handshake.hpp"
#include "vscale/detail/local_launcher.hpp"
#include "vscale/detail/protocol.hpp"
#include "vscale/detail/transport.hpp"
#include "vscale/errors.hpp"
#include "vscale/placement.hpp"

namespace vscale::detail {

namespace {

constexpr int kTag = 7717;  // every message between gateways: one tag, so MPI keeps their order
// A gateway that found nothing to do keeps looking this long (a reply is usually microseconds
// away), then naps on the segment's gateway doorbell, longer each time up to kMaxNap: a local
// sender rings it; what arrives over MPI meanwhile waits for the nap's end.
constexpr auto kSpin = std::chrono::microseconds(200);
constexpr long kMaxNapUs = 1000;

// What travels between gateways: an envelope, then the body.
struct Envelope {
  std::int32_t dest;  // 0: for the gateway itself (membership, the end of the job)
  std::int32_t src;
  std::uint16_t kind;  // the protocol's kind, or a Control kind when dest is 0
  std::uint16_t pad;
  std::uint32_t len;  // of the body
};
enum Control : std::uint16_t { kJoined = 1, kDied, kSettled, kEndJob, kBye, kRemove };
struct JoinedMsg {
  std::int32_t id, os_pid;
};
struct DiedMsg {
  std::int32_t id, os_pid;
  std::uint32_t quiet;  // already reported where it happened (removed, or it never joined)
  char reason[120];
};
struct RemoveMsg {
  std::int64_t timeout_ms;
  std::int32_t n;  // then n ids (int32)
};

struct RankInfo {
  std::int32_t workers, pid;
  std::uint32_t max_procs;
  char build[80];
  char host[64];
};

std::string mpi_error_text(int rc) {
  char buf[MPI_MAX_ERROR_STRING];
  int n = 0;
  MPI_Error_string(rc, buf, &n);
  return std::string(buf, static_cast<std::size_t>(n));
}

std::vector<char> frame(const Envelope& e, const void* body, std::size_t n) {
  std::vector<char> buf(sizeof e + n);
  std::memcpy(buf.data(), &e, sizeof e);
  if (n) std::memcpy(buf.data() + sizeof e, body, n);
  return buf;
}

}  // namespace

struct MpiNode::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0, size = 1;
  std::vector<RankInfo> info;
  std::vector<int> first;  // per rank: the first id of its workers
  int next_free = 2;
  std::uint32_t max_procs = 0;

  // ---- the gateway thread's own (it alone makes MPI calls once the thread runs)
  Segment* seg = nullptr;
  std::function<long(int)> pending_to;
  std::vector<std::uint32_t> told;  // per id: the state of a local process last told the others
  std::vector<std::atomic<std::uint8_t>> dead;
  std::unordered_map<int, std::unique_ptr<BulkArea>> bulks;  // per remote sender: its bulk area here
  std::vector<int> local_ids, remote_ids;
  std::uint32_t seen_epoch = ~0u;
  std::vector<MPI_Request> reqs;  // sends in flight, with their buffers
  std::vector<std::vector<char>> bufs;
  std::vector<int> done_idx;
  // A message from another node, being received (req not yet MPI_REQUEST_NULL) or arrived.
  struct Incoming {
    std::vector<char> buf;
    MPI_Request req = MPI_REQUEST_NULL;
  };
  std::vector<std::deque<Incoming>> inq;  // per source rank, in MPI's order: not yet written here

  // ---- shared with other threads, under m
  std::mutex m;
  std::condition_variable cv;
  std::vector<std::pair<int, std::vector<char>>> ctrl_out;  // (rank, framed message)
  std::vector<int> exits;                                   // local ids to send kExit to, as from the master
  int settled = 0, byes = 0;
  bool end_job = false, lost = false;
  std::function<void(std::vector<int>, std::chrono::milliseconds)> on_remove;
  std::vector<std::thread> removers;

  std::thread thread;
  std::atomic<bool> stop{false};

  void post(int to_rank, Control kind, const void* body, std::size_t n) {
    {
      std::lock_guard lk(m);
      ctrl_out.emplace_back(to_rank, frame(Envelope{0, 0, kind, 0, static_cast<std::uint32_t>(n)}, body, n));
    }
    kick();
  }
  void kick() {
    auto& h = seg->header();
    h.gw_doorbell.fetch_add(1, std::memory_order_seq_cst);
    futex_wake(h.gw_doorbell, 1);
  }

  void isend(int to_rank, std::vector<char>&& buf) {
    MPI_Request r;
    const int rc = MPI_Isend(buf.data(), static_cast<int>(buf.size()), MPI_BYTE, to_rank, kTag, comm, &r);
    if (rc != MPI_SUCCESS) return lose(to_rank, rc);
    reqs.push_back(r);
    bufs.push_back(std::move(buf));
  }
  void broadcast(const std::vector<char>& buf) {
    for (int r = 0; r < size; ++r)
      if (r != rank) isend(r, std::vector<char>(buf));
  }

  // An MPI call failed: the job cannot go on as one. Every process of the other nodes is
  // gone for this node; the leader ends its node, the master's calls to them fail.
  void lose(int peer, int rc) {
    const std::string why = "its node was lost (MPI failed talking to node " + std::to_string(peer) + ", " +
                            std::string(info[peer].host) + ": " + mpi_error_text(rc) + ")";
    std::fprintf(stderr, "vscale (node %d): %s\n", rank, why.c_str() + 4);
    for (int id = 1; seg->valid_id(id); ++id)
      if (seg->slot(id).state.load() != std::uint32_t(SlotState::Unused) && seg->remote(id)) seg->set_dead(id, why);
    std::lock_guard lk(m);
    lost = true;
    end_job = true;
    stop.store(true);
    cv.notify_all();
  }

  BulkArea& bulk_for(int src) {
    auto& b = bulks[src];
    if (!b) {
      b = std::make_unique<BulkArea>();
      const auto& h = seg->header();
      b->init(seg->bulk(src), h.bulk_bytes, seg->fd(), h.bulk_off + std::uint64_t(src - 1) * h.bulk_bytes);
    }
    return *b;
  }

  // ---- the loop's steps; each says whether it did anything

  bool take_requests() {
    std::vector<std::pair<int, std::vector<char>>> out;
    std::vector<int> ex;
    {
      std::lock_guard lk(m);
      if (ctrl_out.empty() && exits.empty()) return false;
      out.swap(ctrl_out);
      ex.swap(exits);
    }
    for (auto& [r, buf] : out) isend(r, std::move(buf));
    // The ring (id, 1) here is written only by this thread: what the master sends comes in
    // through it too, so this kExit keeps the pair's order.
    for (int id : ex) {
      MsgHeader h{};
      h.kind = kExit;
      h.src = 1;
      std::uint64_t before = 0;
      if (emit_record(*seg, bulk_for(1), dead, id, h, nullptr, 0, nullptr, 0, &before))
        wake_after_record(*seg, id, 1, before, kBellProgress);
    }
    return true;
  }

  // Forward what a record of ring (to, from) holds to `to`'s node.
  struct Forward {
    Impl* g;
    int to, from, rank;
  };
  static void forward_record(void* c, const MsgHeader& h, const char* body, std::size_t len,
                             std::atomic<std::uint32_t>* consumed) {
    auto& f = *static_cast<Forward*>(c);
    f.g->isend(f.rank, frame(Envelope{f.to, f.from, h.kind, 0, static_cast<std::uint32_t>(len)}, body, len));
    if (consumed) consumed->store(1, std::memory_order_release);  // the copy is ours now
  }
  void drain_to(int to, int from) {
    Forward f{this, to, from, static_cast<int>(seg->slot(to).node.load())};
    drain_ring(*seg, to, from, &forward_record, &f);
  }

  bool scan_membership() {
    const std::uint32_t e = seg->header().epoch.load(std::memory_order_acquire);
    if (e == seen_epoch) return false;
    seen_epoch = e;
    local_ids.clear();
    remote_ids.clear();
    std::vector<int> died;
    for (int id = 1; seg->valid_id(id); ++id) {
      auto& s = seg->slot(id);
      const auto st = s.state.load(std::memory_order_acquire);
      if (st == std::uint32_t(SlotState::Unused)) continue;
      if (!seg->remote(id)) {
        if (st == std::uint32_t(SlotState::Dead)) {
          if (told[id - 1] != st) died.push_back(id);
          continue;
        }
        local_ids.push_back(id);
        if (st == std::uint32_t(SlotState::Alive) && told[id - 1] != st) {
          told[id - 1] = st;
          const JoinedMsg j{id, s.os_pid.load()};
          broadcast(frame(Envelope{0, 0, kJoined, 0, sizeof j}, &j, sizeof j));
        }
      } else if (st == std::uint32_t(SlotState::Dead)) {
        dead[id - 1].store(1);
      } else {
        remote_ids.push_back(id);
      }
    }
    for (int id : died) {
      // What it wrote completely still goes out, before the news of its death (one stream
      // per pair of nodes: the news cannot overtake it).
      for (int r : remote_ids) drain_to(r, id);
      auto& s = seg->slot(id);
      DiedMsg d{};
      d.id = id;
      d.os_pid = s.os_pid.load();
      std::memcpy(d.reason, s.reason, sizeof d.reason);
      d.reason[sizeof d.reason - 1] = 0;
      d.quiet = told[id - 1] != std::uint32_t(SlotState::Alive) || s.expected.load() != 0;
      told[id - 1] = std::uint32_t(SlotState::Dead);
      dead[id - 1].store(1);
      broadcast(frame(Envelope{0, 0, kDied, 0, sizeof d}, &d, sizeof d));
    }
    return true;
  }

  // Whether a ring from a process of this node to one of another holds anything; `forward`:
  // send what each holds on its way too.
  bool outgoing(bool forward) {
    bool any = false;
    for (int l : local_ids)
      for (int r : remote_ids) {
        if (!seg->ring_ready(seg->ring(r, l))) continue;
        if (!forward) return true;
        drain_to(r, l);
        any = true;
      }
    return any;
  }

  // Matches what has come and starts receiving it (MPI_Imrecv): a large message arrives while
  // the gateway goes on forwarding, and delays only what its own node sent after it.
  bool receive() {
    bool did = false;
    for (int i = 0; i < 256 && !stop.load(std::memory_order_relaxed); ++i) {
      int flag = 0;
      MPI_Message msg;
      MPI_Status st;
      int rc = MPI_Improbe(MPI_ANY_SOURCE, kTag, comm, &flag, &msg, &st);
      if (rc != MPI_SUCCESS) {
        lose(st.MPI_SOURCE >= 0 && st.MPI_SOURCE < size ? st.MPI_SOURCE : 0, rc);
        break;
      }
      if (!flag) break;
      int n = 0;
      MPI_Get_count(&st, MPI_BYTE, &n);
      Incoming in;
      in.buf.resize(static_cast<std::size_t>(n));
      rc = MPI_Imrecv(in.buf.data(), n, MPI_BYTE, &msg, &in.req);
      if (rc != MPI_SUCCESS) {
        lose(st.MPI_SOURCE, rc);
        break;
      }
      inq[st.MPI_SOURCE].push_back(std::move(in));
      did = true;
    }
    return did;
  }

  // Whether the first message from a node has arrived whole (false while it is being received).
  bool arrived(int from_rank, Incoming& in) {
    if (in.req == MPI_REQUEST_NULL) return true;
    int flag = 0;
    const int rc = MPI_Test(&in.req, &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
      lose(from_rank, rc);
      return false;
    }
    return flag != 0;
  }

  void control(int from_rank, const Envelope& e, const char* body) {
    switch (e.kind) {
      case kJoined: {
        JoinedMsg j;
        std::memcpy(&j, body, sizeof j);
        if (!seg->valid_id(j.id) || seg->slot(j.id).state.load() == std::uint32_t(SlotState::Dead)) return;
        seg->set_starting(j.id, j.os_pid, from_rank);
        seg->set_alive(j.id, j.os_pid);
        return;
      }
      case kDied: {
        DiedMsg d;
        std::memcpy(&d, body, sizeof d);
        if (!seg->valid_id(d.id)) return;
        dead[d.id - 1].store(1);
        const long pending = pending_to ? pending_to(d.id) : -1;  // before they are failed
        const bool was_alive = seg->slot(d.id).state.load() == std::uint32_t(SlotState::Alive);
        if (!seg->set_dead(d.id, d.reason, d.quiet != 0)) return;
        if (!d.quiet && was_alive && pending >= 0)
          std::fprintf(stderr, "vscale: worker %d (node %d, %s, pid %d) died: %s; %ld pending call%s failed\n", d.id,
                       from_rank, info[from_rank].host, d.os_pid, d.reason, pending, pending == 1 ? "" : "s");
        return;
      }
      case kRemove: {
        RemoveMsg rm;
        std::memcpy(&rm, body, sizeof rm);
        std::vector<int> ids(static_cast<std::size_t>(rm.n));
        for (int i = 0; i < rm.n; ++i) std::memcpy(&ids[i], body + sizeof rm + 4 * i, 4);
        std::lock_guard lk(m);
        if (on_remove)
          removers.emplace_back([f = on_remove, ids, t = std::chrono::milliseconds(rm.timeout_ms)] {
            try {
              f(ids, t);
            } catch (const std::exception& ex) {
              std::fprintf(stderr, "vscale: removing workers: %s\n", ex.what());
            }
          });
        return;
      }
      case kSettled:
      case kEndJob:
      case kBye: {
        std::lock_guard lk(m);
        if (e.kind == kSettled) ++settled;
        if (e.kind == kEndJob) end_job = true;
        if (e.kind == kBye) ++byes;
        cv.notify_all();
        return;
      }
      default:
        std::fprintf(stderr, "vscale (node %d): unknown gateway message %u from node %d\n", rank, e.kind, from_rank);
    }
  }

  bool apply() {
    bool did = false;
    for (int r = 0; r < size; ++r) {
      auto& q = inq[r];
      while (!q.empty() && arrived(r, q.front())) {
        const auto& buf = q.front().buf;
        if (buf.size() < sizeof(Envelope)) {  // nonsense: dropped
          q.pop_front();
          continue;
        }
        Envelope e;
        std::memcpy(&e, buf.data(), sizeof e);
        const char* body = buf.data() + sizeof e;
        if (e.dest == 0) {
          control(r, e, body);
        } else if (seg->valid_id(e.dest) && seg->valid_id(e.src) && !seg->remote(e.dest) &&
                   seg->slot(e.dest).state.load() != std::uint32_t(SlotState::Dead)) {
          MsgHeader h{};
          h.kind = e.kind;
          h.src = e.src;
          std::uint64_t before = 0;
          bool wrote = false;
          try {
            if (!emit_record(*seg, bulk_for(e.src), dead, e.dest, h, body, e.len, nullptr, 0, &before))
              break;  // the ring is full: the rest of this node's stream waits, in order
            wrote = true;
          } catch (const Error& ex) {
            std::fprintf(stderr, "vscale (node %d): a message from %d to %d was dropped: %s\n", rank, e.src, e.dest,
                         ex.what());
          }
          if (wrote) wake_after_record(*seg, e.dest, e.src, before, bell_bits_for(e.kind));
        }  // else: for a process that is gone (or nonsense): dropped, as on one host
        q.pop_front();
        did = true;
      }
    }
    return did;
  }

  void reap_sends() {
    if (reqs.empty()) return;
    done_idx.resize(reqs.size());
    int n = 0;
    if (MPI_Testsome(static_cast<int>(reqs.size()), reqs.data(), &n, done_idx.data(), MPI_STATUSES_IGNORE) !=
            MPI_SUCCESS ||
        n == MPI_UNDEFINED || n == 0)
      return;
    for (std::size_t i = 0; i < reqs.size();) {
      if (reqs[i] == MPI_REQUEST_NULL) {
        reqs[i] = reqs.back();
        reqs.pop_back();
        bufs[i] = std::move(bufs.back());
        bufs.pop_back();
      } else {
        ++i;
      }
    }
  }

  bool step() {
    bool did = take_requests();
    did |= scan_membership();
    did |= outgoing(true);
    did |= receive();
    did |= apply();
    reap_sends();
    return did;
  }

  void loop() {
    auto& hdr = seg->header();
    hdr.gw_awake.store(1, std::memory_order_seq_cst);
    auto last = std::chrono::steady_clock::now();
    long nap_us = 20;
    unsigned idle_turns = 0;
    while (!stop.load(std::memory_order_acquire)) {
      if (step()) {
        last = std::chrono::steady_clock::now();
        nap_us = 20;
        idle_turns = 0;
        continue;
      }
      if ((++idle_turns & 15) != 0 || std::chrono::steady_clock::now() - last < kSpin) {
        cpu_relax();
        if ((idle_turns & 3) == 0) sched_yield();
        continue;
      }
      // Nap. Senders ring the doorbell only while we are not awake: say so, then look again.
      const std::uint32_t seq = hdr.gw_doorbell.load(std::memory_order_seq_cst);
      hdr.gw_awake.store(0, std::memory_order_seq_cst);
      bool work = outgoing(false) || hdr.epoch.load(std::memory_order_acquire) != seen_epoch;
      if (!work) {
        std::lock_guard lk(m);
        work = !ctrl_out.empty() || !exits.empty();
      }
      if (!work) {
        timespec ts{0, nap_us * 1000};
        futex_wait(hdr.gw_doorbell, seq, &ts);
        nap_us = std::min(nap_us * 2, kMaxNapUs);
      }
      hdr.gw_awake.store(1, std::memory_order_seq_cst);
    }
    // Last words (a leader's Bye, the master's end of the job) must leave before MPI ends.
    take_requests();
    bool is_lost;
    {
      std::lock_guard lk(m);
      is_lost = lost;
    }
    if (!is_lost && !reqs.empty()) MPI_Waitall(static_cast<int>(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE);
    reqs.clear();
    bufs.clear();
    hdr.gw_awake.store(0);
  }

  void stop_thread() {
    if (!thread.joinable()) return;
    stop.store(true);
    kick();
    thread.join();
  }
};

MpiNode::MpiNode(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

MpiNode::~MpiNode() {
  if (!impl_) return;
  impl_->stop_thread();
  std::vector<std::thread> rs;
  {
    std::lock_guard lk(impl_->m);
    rs.swap(impl_->removers);
  }
  for (auto& t : rs) t.join();
}

int MpiNode::rank() const noexcept { return impl_->rank; }
int MpiNode::size() const noexcept { return impl_->size; }
std::uint32_t MpiNode::max_procs() const noexcept { return impl_->max_procs; }
int MpiNode::first_id() const noexcept { return impl_->first[impl_->rank]; }
int MpiNode::next_free_id() const noexcept { return impl_->next_free; }
std::string MpiNode::host_name(int node) const { return impl_->info.at(node).host; }

std::unique_ptr<MpiNode> MpiNode::init(int workers_here, std::uint32_t max_procs) {
  int inited = 0, provided = 0;
  MPI_Initialized(&inited);
  if (inited) {
    MPI_Query_thread(&provided);
  } else if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) {
    throw Error("vscale: MPI_Init_thread failed: this program was started by mpirun (or srun) but MPI could not start");
  }
  auto g = std::make_unique<Impl>();
  MPI_Comm_dup(MPI_COMM_WORLD, &g->comm);
  MPI_Comm_set_errhandler(g->comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(g->comm, &g->rank);
  MPI_Comm_size(g->comm, &g->size);
  // A problem every rank sees alike is told once, by rank 0; the others end quietly.
  auto fail = [&](const std::string& msg) {
    MPI_Finalize();
    if (g->rank != 0) std::exit(1);
    throw Error(msg);
  };
  if (provided < MPI_THREAD_SERIALIZED)
    fail("vscale: this MPI library gives no thread support (MPI_THREAD_SERIALIZED is needed: one thread per rank makes "
         "every MPI call, not the main one)");
  RankInfo me{};
  me.workers = workers_here;
  me.pid = getpid();
  me.max_procs = max_procs;
  std::snprintf(me.build, sizeof me.build, "%s", build_id().c_str());
  gethostname(me.host, sizeof me.host - 1);
  g->info.resize(static_cast<std::size_t>(g->size));
  if (MPI_Allgather(&me, sizeof me, MPI_BYTE, g->info.data(), sizeof me, MPI_BYTE, g->comm) != MPI_SUCCESS)
    fail("vscale: the ranks of this MPI job could not exchange their plans (MPI_Allgather failed)");
  for (int r = 1; r < g->size; ++r)
    if (std::strcmp(g->info[r].build, g->info[0].build) != 0)
      fail("vscale: the ranks of this MPI job run different builds of the program: node 0 (" +
           std::string(g->info[0].host) + ") has build " + g->info[0].build + ", node " + std::to_string(r) + " (" +
           g->info[r].host + ") has " + g->info[r].build +
           ". Every node must run the very same binary (install it on a shared path, or copy it to each).");
  g->first.resize(static_cast<std::size_t>(g->size));
  g->first[0] = 2;
  for (int r = 1; r < g->size; ++r) g->first[r] = g->first[r - 1] + g->info[r - 1].workers;
  g->next_free = g->first[g->size - 1] + g->info[g->size - 1].workers;
  g->max_procs = 0;
  for (auto& i : g->info) g->max_procs = std::max(g->max_procs, i.max_procs);
  if (std::uint32_t(g->next_free - 1) > g->max_procs)
    fail("vscale: this job starts " + std::to_string(g->next_free - 1) + " processes on " + std::to_string(g->size) +
         " nodes, more ids than VSCALE_MAX_PROCS=" + std::to_string(g->max_procs) + " allows: raise it");
  if (vscale::usable_cpus() == 1 && std::thread::hardware_concurrency() > 1)
    std::fprintf(stderr,
                 "vscale (node %d, %s): this rank may use only one CPU, so its workers and threads all share it; "
                 "mpirun binds each rank to a core by default: add `--bind-to none` (Open MPI) or "
                 "`--cpu-bind=none` (srun)\n",
                 g->rank, me.host);
  return std::unique_ptr<MpiNode>(new MpiNode(std::move(g)));
}

void MpiNode::attach(Segment& seg, std::function<long(int)> pending_to) {
  Impl& g = *impl_;
  g.seg = &seg;
  g.pending_to = std::move(pending_to);
  g.told.assign(seg.max_procs(), std::uint32_t(SlotState::Unused));
  g.dead = std::vector<std::atomic<std::uint8_t>>(seg.max_procs());
  g.inq.resize(static_cast<std::size_t>(g.size));
  for (int r = 0; r < g.size; ++r) {
    if (r == g.rank) continue;
    for (int i = 0; i < g.info[r].workers; ++i) seg.set_starting(g.first[r] + i, 0, r);
  }
  if (g.rank != 0) {
    seg.set_starting(1, g.info[0].pid, 0);
    seg.set_alive(1, g.info[0].pid);
  }
  g.thread = std::thread([&g] { g.loop(); });
}

void MpiNode::wait_settled(std::chrono::milliseconds timeout) {
  Impl& g = *impl_;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    bool all = true;
    for (int id = 2; id < g.next_free; ++id)
      if (g.seg->slot(id).state.load() == std::uint32_t(SlotState::Starting)) all = false;
    if (all || std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (g.rank != 0) {
    g.post(0, kSettled, nullptr, 0);
    return;
  }
  std::unique_lock lk(g.m);
  if (!g.cv.wait_until(lk, deadline, [&] { return g.settled == g.size - 1 || g.lost; }))
    std::fprintf(stderr, "vscale: %d of %d nodes did not report their workers within %lld ms; going on\n",
                 g.size - 1 - g.settled, g.size - 1, static_cast<long long>(timeout.count()));
}

void MpiNode::remove_remote(const std::vector<int>& ids, std::chrono::milliseconds timeout) {
  Impl& g = *impl_;
  std::vector<std::vector<std::int32_t>> per(static_cast<std::size_t>(g.size));
  for (int id : ids) per[g.seg->slot(id).node.load()].push_back(id);
  for (int r = 0; r < g.size; ++r) {
    if (per[r].empty() || r == g.rank) continue;
    RemoveMsg rm{timeout.count(), static_cast<std::int32_t>(per[r].size())};
    std::vector<char> body(sizeof rm + 4 * per[r].size());
    std::memcpy(body.data(), &rm, sizeof rm);
    std::memcpy(body.data() + sizeof rm, per[r].data(), 4 * per[r].size());
    g.post(r, kRemove, body.data(), body.size());
  }
}

void MpiNode::shutdown() {
  Impl& g = *impl_;
  if (!g.thread.joinable()) return;
  for (int r = 1; r < g.size; ++r) g.post(r, kEndJob, nullptr, 0);
  {
    std::unique_lock lk(g.m);
    if (!g.cv.wait_for(lk, std::chrono::seconds(30), [&] { return g.byes == g.size - 1 || g.lost; }))
      std::fprintf(stderr, "vscale: %d node(s) did not confirm the end of the job within 30 s\n", g.size - 1 - g.byes);
  }
  g.stop_thread();
  std::lock_guard lk(g.m);
  // After a lost node MPI_Finalize may wait for it forever: leave MPI as it is.
  if (g.lost) return;
  MPI_Comm_free(&g.comm);
  MPI_Finalize();
}

namespace {
// A node leader makes no calls: deaths are reported by the master, which knows its calls.
class LeaderHost final : public LauncherHost {
 public:
  LeaderHost(Segment& seg, MpiNode::Impl& g) : seg_(seg), g_(g) {}
  Segment& segment() override { return seg_; }
  long pending_to(int) override { return -1; }
  void send_exit(int id) override {
    {
      std::lock_guard lk(g_.m);
      g_.exits.push_back(id);
    }
    g_.kick();
  }

 private:
  Segment& seg_;
  MpiNode::Impl& g_;
};
}  // namespace

void MpiNode::lead(std::unique_ptr<MpiNode> node, const Placement& plan, std::uint64_t ring_bytes,
                   std::uint64_t bulk_bytes, std::chrono::milliseconds start_timeout) {
  Impl& g = *node->impl_;
  int code = 0;
  try {
    Segment seg;
    seg.create(g.max_procs, ring_bytes, bulk_bytes, static_cast<std::uint32_t>(g.rank));
    LeaderHost host(seg, g);
    {
      auto launcher = std::make_unique<LocalLauncher>(host);
      launcher->set_plan(plan.threads, plan.bind ? plan.worker_cpus : std::vector<std::vector<int>>{});
      launcher->set_next_id(node->first_id());
      {
        std::lock_guard lk(g.m);
        g.on_remove = [l = launcher.get()](std::vector<int> ids, std::chrono::milliseconds t) { l->remove(ids, t); };
      }
      node->attach(seg, {});
      if (g.info[g.rank].workers > 0) (void)launcher->launch(g.info[g.rank].workers, LaunchSpec{{}, {}, start_timeout});
      node->wait_settled(start_timeout + std::chrono::seconds(10));
      {
        std::unique_lock lk(g.m);
        g.cv.wait(lk, [&] { return g.end_job; });
        g.on_remove = nullptr;
      }
      std::vector<std::thread> rs;
      {
        std::lock_guard lk(g.m);
        rs.swap(g.removers);
      }
      for (auto& t : rs) t.join();
      launcher->shutdown();
    }
    bool lost;
    {
      std::lock_guard lk(g.m);
      lost = g.lost;
    }
    if (!lost) g.post(0, kBye, nullptr, 0);
    g.stop_thread();
    code = lost ? 1 : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vscale (node %d, %s): %s\n", g.rank, g.info[g.rank].host, e.what());
    code = 1;
  }
  if (code == 0) {
    MPI_Comm_free(&g.comm);
    MPI_Finalize();
  }
  std::fflush(nullptr);
  _exit(code);
}

// ================================================================= the master's manager

MpiManager::MpiManager(std::unique_ptr<LocalLauncher> local, std::unique_ptr<MpiNode> node, Segment& seg)
    : local_(std::move(local)), node_(std::move(node)), seg_(seg) {}

MpiManager::~MpiManager() { shutdown(); }

LaunchResult MpiManager::launch(int n, const LaunchSpec& spec) {
  // addprocs starts workers on the master's node; the gateway tells the other nodes.
  return local_->launch(n, spec);
}

void MpiManager::remove(const std::vector<int>& ids, std::chrono::milliseconds timeout) {
  std::vector<int> here, there;
  for (int id : ids) {
    if (seg_.valid_id(id) && seg_.remote(id) && seg_.slot(id).state.load() != std::uint32_t(SlotState::Unused)) {
      if (seg_.slot(id).state.load() != std::uint32_t(SlotState::Dead)) there.push_back(id);
    } else {
      here.push_back(id);
    }
  }
  if (!there.empty()) node_->remove_remote(there, timeout);
  if (!here.empty()) local_->remove(here, timeout);
  // Their leaders stop them and tell every node; wait for the news, which marks each dead
  // here (Segment::set_dead wakes the epoch's futex).
  const auto deadline = std::chrono::steady_clock::now() + timeout + std::chrono::seconds(5);
  auto& epoch = seg_.header().epoch;
  for (int id : there)
    for (;;) {
      const std::uint32_t seen = epoch.load(std::memory_order_seq_cst);
      if (seg_.slot(id).state.load() == std::uint32_t(SlotState::Dead)) break;
      const auto left = deadline - std::chrono::steady_clock::now();
      if (left <= std::chrono::nanoseconds(0)) break;
      // At most 100 ms a look (a death marked between the two loads above wakes us anyway).
      const long ns = static_cast<long>(
          std::min<std::chrono::nanoseconds>(left, std::chrono::milliseconds(100)).count());
      timespec ts{ns / 1000000000L, ns % 1000000000L};
      futex_wait(epoch, seen, &ts);
    }
}

void MpiManager::push_fd(int id, RefId key, int fd) {
  if (seg_.valid_id(id) && seg_.remote(id))
    throw UsageError("vscale: a SharedArray needs all its processes on one host: process " + std::to_string(id) +
                     " is on node " + std::to_string(seg_.slot(id).node.load()) + " (" +
                     node_->host_name(static_cast<int>(seg_.slot(id).node.load())) +
                     "), the array on node 0. Give it pids of one node (vscale::procs_on(host))");
  local_->push_fd(id, key, fd);
}

void MpiManager::shutdown() {
  if (!node_) return;
  local_->shutdown();
  node_->shutdown();
  node_.reset();
}

}  // namespace vscale::detail
