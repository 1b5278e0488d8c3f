// The per-process runtime: polling the rings, dispatching messages, the executor, the
// reference store, and the entry points that the public templates call (detail/core.hpp).
#include "vscale/detail/runtime.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "vscale/cluster.hpp"
#include "vscale/detail/env.hpp"

// ThreadSanitizer sees one process at a time. The rings that carry messages live in shared
// memory, and the order they give (a reply sent by one thread, the next call received by
// another, with the master in between) passes through another process, where TSan cannot
// follow it: two calls that run one after the other on different executor threads then
// show as racing. Under TSan every message sent releases, and every message received
// acquires, one per-process clock: the ring's cross-process order, as TSan can see it.
#if defined(__SANITIZE_THREAD__)
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
namespace {
char tsan_message_clock;
void tsan_message_sent() { __tsan_release(&tsan_message_clock); }
void tsan_message_received() { __tsan_acquire(&tsan_message_clock); }
}  // namespace
#else
namespace {
inline void tsan_message_sent() {}
inline void tsan_message_received() {}
}  // namespace
#endif

namespace vscale::detail {

thread_local bool tl_executor = false;
// An arena executor's thread, and whether it is inside arena_ now (a call it runs waits and
// runs another queued call: that one is already inside).
thread_local bool tl_arena_executor = false;
thread_local bool tl_in_arena = false;
thread_local std::uint32_t tl_dozing = 0;
thread_local bool tl_in_call = false;
thread_local std::uint32_t tl_call_gen = 0;
thread_local int tl_no_interrupt = 0;

void throw_interrupted() {
  Runtime* rt = Runtime::current();
  throw InterruptedException("vscale: the call running on process " + std::to_string(rt ? rt->self() : 0) +
                             " was interrupted (vscale::interrupt)");
}
std::atomic<Runtime*> Runtime::current_{nullptr};

namespace {

constexpr std::size_t kInlineMax = 8 * 1024;  // bodies above this go through the bulk area
constexpr std::uint64_t round16(std::uint64_t v) { return (v + 15) & ~std::uint64_t(15); }
constexpr std::uint64_t round64(std::uint64_t v) { return (v + 63) & ~std::uint64_t(63); }

struct ResultHeader {
  std::uint64_t req;
  std::uint32_t ok;
  std::uint32_t pad;
};
struct QueryBody {
  std::uint64_t req;
  RefId ref;
};
struct RefWeight {
  RefId ref;
  std::uint64_t weight;
};
struct AddRefBody {
  std::uint64_t req;
  RefId ref;
  std::uint64_t weight;
};

std::chrono::nanoseconds spin_from_env() {
  return std::chrono::microseconds(env_long("VSCALE_SPIN_US", 100, 0, 10'000'000));
}

template <class T>
T read_pod(Reader& r) {
  T v;
  r.read_raw(&v, sizeof v);
  return v;
}

}  // namespace

// ---------------------------------------------------------------- Inbound

Inbound& Inbound::operator=(Inbound&& o) noexcept {
  if (this != &o) {
    release();
    src = o.src;
    kind = o.kind;
    len = o.len;
    consumed = o.consumed;
    o.consumed = nullptr;
    if (o.body == o.heap.data() && !o.heap.empty()) {
      heap = std::move(o.heap);
      body = heap.data();
    } else {
      heap = std::move(o.heap);
      body = o.body;
    }
    o.body = nullptr;
    o.len = 0;
  }
  return *this;
}

void Inbound::release() noexcept {
  if (consumed) {
    consumed->store(1, std::memory_order_release);
    consumed = nullptr;
  }
}

// ---------------------------------------------------------------- BulkArea

void BulkArea::init(char* base, std::uint64_t size, int fd, std::uint64_t file_offset) {
  base_ = base;
  size_ = size;
  fd_ = fd;
  file_offset_ = file_offset;
  free_.clear();
  free_[0] = size;
}

void BulkArea::release(std::uint64_t off, std::uint64_t len) {
  // Give big blocks' memory back to the system; small ones stay warm for reuse.
  if (len >= (std::uint64_t(64) << 20) && fd_ >= 0) {
    std::uint64_t lo = (off + 4095) & ~std::uint64_t(4095), hi = (off + len) & ~std::uint64_t(4095);
    if (hi > lo)
      (void)fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(file_offset_ + lo),
                      static_cast<off_t>(hi - lo));
  }
  auto it = free_.emplace(off, len).first;
  if (it != free_.begin()) {
    auto prev = std::prev(it);
    if (prev->first + prev->second == it->first) {
      prev->second += it->second;
      free_.erase(it);
      it = prev;
    }
  }
  auto next = std::next(it);
  if (next != free_.end() && it->first + it->second == next->first) {
    it->second += next->second;
    free_.erase(next);
  }
}

void BulkArea::sweep(const std::vector<std::atomic<std::uint8_t>>& dead) {
  for (std::size_t i = 0; i < out_.size();) {
    auto* blk = reinterpret_cast<BulkBlock*>(base_ + out_[i].off);
    if (blk->consumed.load(std::memory_order_acquire) || dead[out_[i].dest - 1].load()) {
      release(out_[i].off, out_[i].len);
      out_[i] = out_.back();
      out_.pop_back();
    } else {
      ++i;
    }
  }
}

std::int64_t BulkArea::alloc(std::uint64_t len, int dest, const std::vector<std::atomic<std::uint8_t>>& dead) {
  const std::uint64_t need = round64(sizeof(BulkBlock) + len);
  std::lock_guard lk(m_);
  sweep(dead);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < need) continue;
    std::uint64_t off = it->first, rest = it->second - need;
    free_.erase(it);
    if (rest) free_[off + need] = rest;
    out_.push_back({off, need, dest});
    auto* blk = new (base_ + off) BulkBlock;
    blk->consumed.store(0, std::memory_order_relaxed);
    blk->len = len;
    return static_cast<std::int64_t>(off);
  }
  return -1;
}

void BulkArea::cancel(std::int64_t off) {
  std::lock_guard lk(m_);
  for (std::size_t i = 0; i < out_.size(); ++i)
    if (out_[i].off == std::uint64_t(off)) {
      release(out_[i].off, out_[i].len);
      out_[i] = out_.back();
      out_.pop_back();
      return;
    }
}

// ---------------------------------------------------------------- Runtime: life cycle

Runtime::Runtime(int self, bool master)
    : self_(self),
      master_(master),
      spin_(spin_from_env()),
      ncpu_(static_cast<std::int32_t>(usable_cpus())) {}

Runtime::~Runtime() {
  // Handles destroyed from here on do not message anyone: the job is ending.
  Runtime* me = this;
  current_.compare_exchange_strong(me, nullptr);
  stop();
}

Runtime& Runtime::get(const char* what) {
  Runtime* rt = current();
  if (!rt)
    throw UsageError(std::string("vscale: ") + what +
                     " needs a running vscale::Session: construct `vscale::Session s(argc, argv);` at the start "
                     "of main");
  return *rt;
}

void Runtime::start(int threads) {
  const std::uint32_t n = seg_.max_procs();
  out_.clear();
  for (std::uint32_t i = 0; i < n; ++i) out_.push_back(std::make_unique<Out>());
  dead_ = std::vector<std::atomic<std::uint8_t>>(n);
  auto& h = seg_.header();
  bulk_.init(seg_.bulk(self_), h.bulk_bytes, seg_.fd(), h.bulk_off + std::uint64_t(self_ - 1) * h.bulk_bytes);
  current_.store(this, std::memory_order_release);
  max_exec_ = static_cast<int>(env_long("VSCALE_MAX_EXECUTORS", 256, 1, 65536));
  threads_ = std::max(1, threads);
  // The spin budget is job-wide: every process uses the master's CPU count, also a worker
  // pinned to fewer CPUs.
  if (h.job_cpus > 0) ncpu_ = static_cast<std::int32_t>(h.job_cpus);
  // TBB sizes its worker pool from the affinity mask and ignores cgroup quotas (Debian's
  // 2021.8): set the limit ourselves, high enough for an arena of threads_. An arena with no
  // reserved slot asks for as many workers as it has slots (threads_), so the limit (workers
  // plus one) is threads_ + 1, or TBB warns and ignores the request.
  const int tbb_default = tbb::this_task_arena::max_concurrency();
  tbb_limit_ = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism,
                                                     static_cast<std::size_t>(std::max(threads_ + 1, tbb_default)));
  arena_ = std::make_unique<tbb::task_arena>(threads_, 0);  // no reserved slot: see runtime.hpp
  arena_->initialize();
  {
    // The first executor before the progress thread: a call that the progress thread queues
    // at once must find it counted, or maybe_add_executor would start one more than -t.
    std::lock_guard lk(exec_m_);
    add_executor(true);
  }
  progress_ = std::thread([this] { progress_loop(); });
}

void Runtime::add_executor(bool in_arena) {
  nexec_.fetch_add(1);
  if (in_arena) arena_execs_.fetch_add(1);
  // Arena executors spin when idle (within the job's spin budget), so that a stream of calls
  // does not pay a futex wake-up each; grown executors only sleep.
  executors_.emplace_back([this, in_arena] { executor_loop(in_arena); });
}

void Runtime::stop() {
  if (stopping_.exchange(true) || (!progress_.joinable() && executors_.empty())) return;  // never started
  auto& slot = seg_.slot(self_);
  slot.doorbell.fetch_add(1);
  futex_wake(slot.doorbell, INT_MAX);
  // stop() may run on one of our own threads: exit() called inside a remote call runs the
  // exit handlers there. That thread is not joined (it is the one ending the process).
  const auto me = std::this_thread::get_id();
  auto join = [me](std::thread& t) {
    if (!t.joinable()) return;
    if (t.get_id() == me)
      t.detach();
    else
      t.join();
  };
  join(progress_);
  std::lock_guard lk(exec_m_);
  for (auto& t : executors_) join(t);
  executors_.clear();
}

// ---------------------------------------------------------------- membership

bool Runtime::alive(int id) const {
  return seg_.valid_id(id) && seg_.slot(id).state.load(std::memory_order_acquire) == std::uint32_t(SlotState::Alive);
}

std::vector<int> Runtime::alive_ids() const {
  std::vector<int> ids;
  const int n = static_cast<int>(seg_.max_procs());
  for (int id = 1; id <= n; ++id) {
    auto st = seg_.slot(id).state.load(std::memory_order_acquire);
    if (st == std::uint32_t(SlotState::Alive)) ids.push_back(id);
    else if (st == std::uint32_t(SlotState::Unused)) break;  // ids are handed out in order
  }
  return ids;
}

std::string Runtime::dead_reason(int id) const {
  if (!seg_.valid_id(id)) return "does not exist (no such process id)";
  auto st = seg_.slot(id).state.load(std::memory_order_acquire);
  if (st == std::uint32_t(SlotState::Dead)) {
    const char* r = seg_.slot(id).reason;
    // The reason alone ("killed by SIGKILL"): ProcessExitedException's what() adds "is gone".
    return r[0] ? std::string(r, strnlen(r, sizeof seg_.slot(id).reason)) : std::string("exited");
  }
  if (st == std::uint32_t(SlotState::Starting)) return "has not finished starting";
  return "does not exist (no such process id)";
}

void Runtime::check_dest(int id) const {
  if (!alive(id)) throw ProcessExitedException(id, dead_reason(id));
}

void Runtime::handle_membership() {
  // Called with poll_m_ held.
  seen_epoch_ = seg_.header().epoch.load(std::memory_order_acquire);
  peers_.clear();
  const int n = static_cast<int>(seg_.max_procs());
  std::vector<int> newly_dead;
  for (int id = 1; id <= n; ++id) {
    auto st = seg_.slot(id).state.load(std::memory_order_acquire);
    if (st == std::uint32_t(SlotState::Unused)) break;
    if (st == std::uint32_t(SlotState::Dead)) {
      if (!dead_[id - 1].exchange(1)) newly_dead.push_back(id);
      continue;
    }
    if (id != self_) peers_.push_back(id);
  }
  nprocs_.store(static_cast<std::int32_t>(peers_.size() + 1), std::memory_order_relaxed);
  if (newly_dead.empty()) return;
  // What a dead process wrote completely before dying is still valid (a kCallRef whose
  // Future it already handed on, say): read it once.
  for (int d : newly_dead) drain_ring(d);
  std::vector<std::shared_ptr<Request>> failed;
  {
    std::lock_guard lk(req_m_);
    for (auto it = reqs_.begin(); it != reqs_.end();) {
      bool gone = false;
      for (int d : newly_dead) gone |= it->second->dest == d;
      if (gone) {
        failed.push_back(it->second);
        it = reqs_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& r : failed) {
    r->ok = false;
    r->error = ErrorInfo{ErrorInfo::Exited, r->dest, {}, dead_reason(r->dest)};
    if (r->on_done) r->on_done(*r);
    r->done.store(1, std::memory_order_release);
  }
  for (int d : newly_dead) {
    std::lock_guard lk(out_[d - 1]->m);
    out_[d - 1]->overflow.clear();
  }
  notify_local();
}

// ---------------------------------------------------------------- sending

bool Runtime::try_emit(int dest, const MsgHeader& h0, const void* a, std::size_t na, const void* b, std::size_t nb) {
  RingHeader& ring = seg_.ring(dest, self_);
  MsgHeader h = h0;
  const std::size_t body = na + nb;
  // Inline only what fits a quarter of the ring: a record of more than half the ring may
  // never fit however long we wait (the wrap padding before it takes the rest), and a small
  // VSCALE_RING_KB must still carry every message. A bulk descriptor (32 bytes) always fits.
  if (body <= kInlineMax && round16(sizeof(MsgHeader) + body) <= seg_.header().ring_bytes / 4) {
    h.len = static_cast<std::uint32_t>(body);
    return ring_try_write(seg_, ring, h, a, na, b, nb);
  }
  if (body + sizeof(BulkBlock) > bulk_.size())
    throw Error("vscale: a message of " + std::to_string(body >> 20) + " MiB is larger than the bulk area (" +
                std::to_string(bulk_.size() >> 20) + " MiB); raise VSCALE_BULK_MB");
  std::int64_t off = bulk_.alloc(body, dest, dead_);
  if (off < 0) return false;
  char* p = bulk_.at(off) + sizeof(BulkBlock);
  if (na) std::memcpy(p, a, na);
  if (nb) std::memcpy(p + na, b, nb);
  std::uint64_t desc[2] = {std::uint64_t(off), body};
  h.flags |= kFlagBulk;
  h.len = sizeof desc;
  if (ring_try_write(seg_, ring, h, desc, sizeof desc, nullptr, 0)) return true;
  bulk_.cancel(off);
  return false;
}

bool Runtime::flush_overflow(int dest, Out& o) {
  bool wrote = false;
  while (!o.overflow.empty()) {
    auto& rec = o.overflow.front();
    MsgHeader h;
    std::memcpy(&h, rec.data(), sizeof h);
    if (!try_emit(dest, h, rec.data() + sizeof h, rec.size() - sizeof h, nullptr, 0)) break;
    o.overflow.pop_front();
    overflow_pending_.fetch_sub(1);
    wrote = true;
  }
  if (wrote) wake_peer(dest, kBellExec | kBellWait);
  return o.overflow.empty();
}

void Runtime::wake_peer(int dest, std::uint32_t bits) {
  messages_sent_.fetch_add(1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  auto& slot = seg_.slot(dest);
  if (slot.awake.load(std::memory_order_seq_cst) == 0) ring_doorbell(slot.doorbell, bits);
}

void Runtime::send(int dest, std::uint16_t kind, const void* a, std::size_t na, const void* b, std::size_t nb,
                   bool may_block) {
  if (dest == self_) throw Error("vscale: internal error: message to self");
  check_dest(dest);
  tsan_message_sent();
  MsgHeader h{};
  h.kind = kind;
  h.src = self_;
  Out& o = *out_[dest - 1];
  RingHeader& ring = seg_.ring(dest, self_);
  for (;;) {
    {
      std::lock_guard lk(o.m);
      if (flush_overflow(dest, o) && try_emit(dest, h, a, na, b, nb)) break;
      if (!may_block) {
        std::vector<char> rec(sizeof h + na + nb);
        std::memcpy(rec.data(), &h, sizeof h);
        if (na) std::memcpy(rec.data() + sizeof h, a, na);
        if (nb) std::memcpy(rec.data() + sizeof h + na, b, nb);
        o.overflow.push_back(std::move(rec));
        overflow_pending_.fetch_add(1);
        return;
      }
    }
    // Full: wait for the receiver to drain, without holding the lock (its poller may need to
    // send to us meanwhile) and while keeping our own inbox moving.
    check_dest(dest);
    AwakeScope awake(*this);
    std::uint32_t seq = ring.space_seq.load(std::memory_order_acquire);
    ring.writer_waiting.fetch_add(1, std::memory_order_seq_cst);
    poll_once();
    timespec ts{0, 200000};
    futex_wait(ring.space_seq, seq, &ts);
    ring.writer_waiting.fetch_sub(1);
  }
  wake_peer(dest, bell_bits_for(kind));
}

std::shared_ptr<Request> Runtime::new_request(int dest, std::uint64_t& id, std::function<void(Request&)> on_done) {
  auto r = std::make_shared<Request>();
  r->dest = dest;
  r->on_done = std::move(on_done);  // before the request is visible to the poller
  id = next_req_.fetch_add(1, std::memory_order_relaxed) + 1;
  std::lock_guard lk(req_m_);
  reqs_.emplace(id, r);
  return r;
}

std::size_t Runtime::pending_requests_to(int id) {
  std::lock_guard lk(req_m_);
  std::size_t n = 0;
  for (const auto& [k, r] : reqs_) n += r->dest == id;
  return n;
}

void Runtime::drop_request(std::uint64_t id) {
  std::lock_guard lk(req_m_);
  reqs_.erase(id);
}

void Runtime::await_request(Request& r, bool interruptible) {
  wait_until([&] { return r.done.load(std::memory_order_acquire) != 0; }, interruptible);
}

void Runtime::reply_result(int dest, std::uint64_t req, bool ok, const void* data, std::size_t len, bool may_block) {
  ResultHeader rh{req, ok ? 1u : 0u, 0};
  if (!alive(dest)) return;  // nobody left to answer
  try {
    send(dest, kResult, &rh, sizeof rh, data, len, may_block);
  } catch (const ProcessExitedException&) {
    // The asker died meanwhile: nothing to do.
  } catch (const Error&) {
    // The answer cannot travel (larger than the bulk area): the asker gets the reason instead
    // of waiting forever, and this process goes on.
    if (ok) reply_error(dest, req, ErrorInfo::from_current_exception(self_), may_block);
  }
}

void Runtime::reply_error(int dest, std::uint64_t req, const ErrorInfo& e, bool may_block) {
  Writer w;
  e.write(w);
  reply_result(dest, req, false, w.bytes().data(), w.bytes().size(), may_block);
}

// ---------------------------------------------------------------- polling and waking

AwakeScope::AwakeScope(Runtime& r) : rt(r) { rt.seg_.slot(rt.self_).awake.fetch_add(1, std::memory_order_seq_cst); }

AwakeScope::~AwakeScope() {
  if (rt.seg_.slot(rt.self_).awake.fetch_sub(1, std::memory_order_seq_cst) == 1) rt.kick_self_if_pending();
}

void Runtime::kick_self_if_pending() {
  // We were the last thread polling. A sender that saw us awake did not wake anyone, so if
  // anything is waiting, wake the progress thread to take over.
  bool pending = overflow_pending_.load() > 0;
  if (!pending) {
    std::unique_lock lk(poll_m_, std::try_to_lock);
    if (!lk) {
      pending = true;  // someone is polling right now; let the progress thread re-check
    } else {
      for (int p : peers_) {
        RingHeader& r = seg_.ring(self_, p);
        if (r.head.load(std::memory_order_acquire) != r.tail.load(std::memory_order_relaxed)) {
          pending = true;
          break;
        }
      }
      if (seg_.header().epoch.load(std::memory_order_acquire) != seen_epoch_) pending = true;
    }
  }
  if (pending) ring_doorbell(seg_.slot(self_).doorbell);
}

bool Runtime::poll_once() {
  std::unique_lock lk(poll_m_, std::try_to_lock);
  if (!lk) return false;
  bool did = false;
  if (seg_.header().epoch.load(std::memory_order_acquire) != seen_epoch_) {
    handle_membership();
    did = true;
  }
  for (int peer : peers_) {
    RingHeader& r = seg_.ring(self_, peer);
    if (r.head.load(std::memory_order_acquire) == r.tail.load(std::memory_order_relaxed)) continue;
    drain_ring(peer);
    did = true;
  }
  if (overflow_pending_.load() > 0) {
    for (int p : peers_) {
      Out& o = *out_[p - 1];
      std::unique_lock olk(o.m, std::try_to_lock);
      if (olk && !o.overflow.empty()) flush_overflow(p, o);
    }
  }
  return did;
}

void Runtime::drain_ring(int peer) {
  RingHeader& r = seg_.ring(self_, peer);
  const std::uint64_t cap = seg_.header().ring_bytes;
  const std::uint64_t head = r.head.load(std::memory_order_acquire);
  std::uint64_t pos = r.tail.load(std::memory_order_relaxed);
  char* data = seg_.ring_data(r);
  while (pos != head) {
    MsgHeader h;
    std::memcpy(&h, data + pos % cap, sizeof h);
    if (h.kind == kWrap) {
      pos += cap - pos % cap;
      continue;
    }
    Inbound m;
    m.src = peer;
    m.kind = h.kind;
    const char* body = data + pos % cap + sizeof h;
    if (h.flags & kFlagBulk) {
      std::uint64_t desc[2];
      std::memcpy(desc, body, sizeof desc);
      char* blk = seg_.bulk(peer) + desc[0];
      m.consumed = &reinterpret_cast<BulkBlock*>(blk)->consumed;
      m.body = blk + sizeof(BulkBlock);
      m.len = desc[1];
    } else {
      m.heap.assign(body, body + h.len);
      m.body = m.heap.data();
      m.len = h.len;
    }
    pos += round16(sizeof h + h.len);
    try {
      dispatch(std::move(m));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "vscale: process %d dropped a message from %d: %s\n", self_, peer, e.what());
    }
  }
  r.tail.store(pos, std::memory_order_release);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (r.writer_waiting.load(std::memory_order_relaxed)) {
    r.space_seq.fetch_add(1);
    futex_wake(r.space_seq, INT_MAX);
  }
}

void Runtime::wake_local(std::atomic<int>& sleepers, std::uint32_t bits, int count) {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  // A thread counted as a sleeper that is still looking (doze's last check) needs no wake-up.
  if (sleepers.load(std::memory_order_seq_cst) > ((tl_dozing & bits) ? 1 : 0)) {
    auto& bell = seg_.slot(self_).doorbell;
    bell.fetch_add(1, std::memory_order_seq_cst);
    futex_wake_bits(bell, count, bits);
  }
}

void Runtime::notify_local() {
  // An answer or a value arrived here: wake the threads waiting for one (they re-check).
  wake_local(wait_sleepers_, kBellWait, INT_MAX);
}

void Runtime::progress_loop() {
  auto& slot = seg_.slot(self_);
  auto last_check = std::chrono::steady_clock::now();
  while (!stopping_.load()) {
    if (poll_once()) continue;
    std::uint32_t seq = slot.doorbell.load(std::memory_order_seq_cst);
    if (poll_once()) continue;
    const bool starving = q_size_.load() > 0 && busy_.load() >= nexec_.load();
    futex_wait_bits(slot.doorbell, seq, kBellProgress, (overflow_pending_.load() > 0 || starving) ? 2000000L : 100000000L);
    maybe_grow_executors();
    auto now = std::chrono::steady_clock::now();
    if (!master_ && now - last_check > std::chrono::milliseconds(100)) {
      last_check = now;
      // Liveness: if the master is gone, so are we (PR_SET_PDEATHSIG covers most cases).
      if (getppid() != master_os_pid) _exit(1);
    }
  }
}

// ---------------------------------------------------------------- dispatch

void Runtime::dispatch(Inbound&& m) {
  tsan_message_received();
  switch (m.kind) {
    case kCallRef: {
      RefId id;
      std::memcpy(&id, m.body, sizeof id);
      store_new(id, kInitialWeight);
      push_task(Task{std::move(m), {}, seg_.slot(self_).interrupts.load(std::memory_order_acquire)});
      return;
    }
    case kCallFetch:
    case kCallDo:
      push_task(Task{std::move(m), {}, seg_.slot(self_).interrupts.load(std::memory_order_acquire)});
      return;
    case kResult: {
      ResultHeader rh;
      std::memcpy(&rh, m.body, sizeof rh);
      std::shared_ptr<Request> r;
      {
        std::lock_guard lk(req_m_);
        auto it = reqs_.find(rh.req);
        if (it == reqs_.end()) return;  // abandoned
        r = std::move(it->second);
        reqs_.erase(it);
      }
      r->ok = rh.ok != 0;
      r->payload = m.body + sizeof rh;
      r->payload_len = m.len - sizeof rh;
      if (!r->ok) {
        Reader rd(r->payload, r->payload_len);
        r->error = ErrorInfo::read(rd);
      }
      r->reply = std::move(m);
      if (r->on_done) r->on_done(*r);
      r->done.store(1, std::memory_order_release);
      notify_local();
      return;
    }
    case kFetch:
    case kWait:
    case kIsReady:
      handle_ref_query(m);
      return;
    case kAddRef: {
      AddRefBody b;
      std::memcpy(&b, m.body, sizeof b);
      store_new(b.ref, b.weight);
      reply_result(m.src, b.req, true, nullptr, 0, false);
      return;
    }
    case kDelRef: {
      RefWeight b;
      std::memcpy(&b, m.body, sizeof b);
      release_weight(b.ref, b.weight);
      return;
    }
    case kExit:
      exit_requested_.store(true);
      notify_local();
      return;
    case kInterrupt:
      // Every call in flight here sees it at its next check_interrupt() or remote wait:
      // wake all our sleepers so that they look.
      seg_.slot(self_).interrupts.fetch_add(1, std::memory_order_acq_rel);
      wake_local(wait_sleepers_, kBellWait, INT_MAX);
      wake_local(exec_sleepers_, kBellExec, INT_MAX);
      return;
    default:
      std::fprintf(stderr, "vscale: process %d got an unknown message kind %u from %d\n", self_, m.kind, m.src);
  }
}

void Runtime::handle_ref_query(Inbound& m) {
  QueryBody q;
  std::memcpy(&q, m.body, sizeof q);
  const int asker = m.src;
  std::shared_ptr<FutureCore> core;
  {
    // The asker holds weight, so the value cannot have been freed; if it is unknown, the call
    // that makes it is still on its way (another ring), and the placeholder waits for it.
    std::lock_guard lk(store_m_);
    core = store_entry(q.ref).core;
  }
  const std::uint16_t kind = m.kind;
  if (kind == kIsReady) {
    std::uint8_t ready = core->state.load() != FutureCore::Pending;
    reply_result(asker, q.req, true, &ready, 1, false);
    return;
  }
  // Answer now if ready, otherwise when the value arrives. The answer may be large, so it is
  // sent by the thread that completes the value or, here, without blocking.
  auto answer = [this, asker, kind, req = q.req, core](bool may_block) {
    if (core->state.load() == FutureCore::Failed) {
      reply_error(asker, req, core->error, may_block);
    } else if (kind == kFetch) {
      const auto& b = core->ensure_bytes();
      reply_result(asker, req, true, b.data(), b.size(), may_block);
    } else {
      reply_result(asker, req, true, nullptr, 0, may_block);
    }
  };
  {
    std::lock_guard lk(core->m);
    if (core->state.load() == FutureCore::Pending) {
      // Runs where the value completes, possibly on the polling thread: never block.
      core->on_done.push_back([answer] { answer(false); });
      return;
    }
  }
  answer(false);
}

// ---------------------------------------------------------------- executor

void Runtime::push_task(Task&& t) {
  {
    std::lock_guard lk(q_m_);
    q_.push_back(std::move(t));
    q_size_.fetch_add(1, std::memory_order_seq_cst);
  }
  // An idle executor spinning on the queue takes it; otherwise wake one that sleeps (or a
  // thread waiting inside a call: it runs it there). The spinner counts itself out before it
  // looks at the queue a last time and sleeps, so a push it did not see wakes it.
  offer_to_executors();
}

void Runtime::offer_to_executors() {
  if (exec_spinning_.load(std::memory_order_seq_cst) == 0) wake_local(exec_sleepers_, kBellExec, 1);
  maybe_add_executor();
}

void Runtime::maybe_add_executor() {
  // Only when the arena executors are all busy and calls are still queued.
  if (arena_execs_.load() >= threads_ || q_size_.load() == 0 || busy_.load() < arena_execs_.load() ||
      stopping_.load())
    return;
  std::lock_guard lk(exec_m_);
  if (arena_execs_.load() >= threads_ || stopping_.load()) return;
  add_executor(true);
}

void Runtime::maybe_grow_executors() {
  using namespace std::chrono;
  const std::int64_t now = duration_cast<nanoseconds>(steady_clock::now().time_since_epoch()).count();
  if (q_size_.load() == 0 || busy_.load() < nexec_.load() || arena_execs_.load() < threads_) {
    queued_since_.store(0);
    return;
  }
  std::int64_t since = queued_since_.load();
  if (since == 0) {
    queued_since_.store(now);
    return;
  }
  if (now - since < 5'000'000 || nexec_.load() >= max_exec_ || stopping_.load()) return;
  std::lock_guard lk(exec_m_);
  if (stopping_.load()) return;
  add_executor(false);
  queued_since_.store(0);
}

bool Runtime::run_one_task() {
  if (q_size_.load(std::memory_order_acquire) == 0) return false;
  Task t;
  {
    std::lock_guard lk(q_m_);
    if (q_.empty()) return false;
    t = std::move(q_.front());
    q_.pop_front();
    q_size_.fetch_sub(1, std::memory_order_release);
  }
  busy_.fetch_add(1);
  if (q_size_.load(std::memory_order_seq_cst) > 0) offer_to_executors();  // more queued than we take
  if (tl_arena_executor && !tl_in_arena) {
    tl_in_arena = true;
    arena_->execute([&] { run_task(t); });  // run_task lets no exception out
    tl_in_arena = false;
  } else {
    run_task(t);
  }
  busy_.fetch_sub(1);
  return true;
}

void Runtime::run_task(Task& t) {
  if (t.fn) {
    try {
      t.fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "vscale: a local task on process %d failed: %s\n", self_, e.what());
    } catch (...) {
      std::fprintf(stderr, "vscale: a local task on process %d failed with an exception not derived from std::exception\n", self_);
    }
    return;
  }
  Inbound& m = t.msg;
  const int src = m.src;
  const std::uint16_t kind = m.kind;
  Reader in(m.body, m.len);
  std::uint64_t req = 0;
  RefId ref;
  if (kind == kCallFetch) req = read_pod<std::uint64_t>(in);
  if (kind == kCallRef) ref = read_pod<RefId>(in);
  Writer out;
  bool ok = true;
  ErrorInfo err;
  // This thread runs a call now: vscale::interrupt cancels it if one came after the call
  // arrived (calls and interrupts from one sender share a ring, so their order is kept). A
  // waiter helping with queued calls comes back to its own call afterwards.
  const bool outer_in_call = tl_in_call;
  const std::uint32_t outer_gen = tl_call_gen;
  const int outer_no_interrupt = tl_no_interrupt;
  tl_in_call = true;
  tl_call_gen = t.interrupts;
  tl_no_interrupt = 0;
  try {
    auto code = read_pod<CodeRef>(in);
    auto inv = reinterpret_cast<Invoker>(const_cast<void*>(decode_code(code)));
    inv(in, out);
  } catch (...) {
    ok = false;
    err = ErrorInfo::from_current_exception(self_);
  }
  tl_in_call = outer_in_call;
  tl_call_gen = outer_gen;
  tl_no_interrupt = outer_no_interrupt;
  m.release();  // arguments are no longer needed: let the sender reuse its bulk block
  if (kind == kCallFetch) {
    if (ok)
      reply_result(src, req, true, out.bytes().data(), out.bytes().size(), true);
    else
      reply_error(src, req, err, true);
  } else if (kind == kCallRef) {
    std::shared_ptr<FutureCore> core;
    {
      std::lock_guard lk(store_m_);
      auto it = store_.find(ref);
      if (it != store_.end()) core = it->second.core;
    }
    if (core) {
      if (ok)
        core->complete_bytes(std::move(out.bytes()));
      else
        core->complete_error(std::move(err));
    }
  } else if (!ok) {
    std::fprintf(stderr, "vscale: remote_do from process %d failed on process %d: %s: %s\n", src, self_,
                 err.type.c_str(), err.message.c_str());
  }
}

void Runtime::executor_loop(bool in_arena) {
  tl_executor = true;
  tl_arena_executor = in_arena;
  while (!stopping_.load()) {
    if (run_one_task()) continue;
    if (in_arena && try_spin()) {  // arena executors spin when idle (see add_executor)
      bool got = false;
      {
        AwakeScope awake(*this);
        exec_spinning_.fetch_add(1, std::memory_order_seq_cst);
        const auto until = std::chrono::steady_clock::now() + spin_;
        unsigned n = 0;
        while (!stopping_.load()) {
          if (q_size_.load(std::memory_order_acquire) > 0) {
            got = true;
            break;
          }
          if (poll_once()) continue;
          cpu_relax();
          if ((++n & 63) == 0) {
            if (std::chrono::steady_clock::now() > until) break;
            sched_yield();  // a thread woken on this CPU (a caller waiting for us) runs now
          }
        }
        exec_spinning_.fetch_sub(1, std::memory_order_seq_cst);  // before the queue's last look
      }
      leave_spin();
      if (got) continue;
    }
    doze([&] { return q_size_.load() > 0 || stopping_.load(); }, kBellExec, 100'000'000L);
  }
}

// ---------------------------------------------------------------- reference store

Runtime::Entry& Runtime::store_entry(const RefId& id) {
  auto [it, fresh] = store_.try_emplace(id);
  if (fresh) {
    it->second.core = std::make_shared<FutureCore>();
    it->second.core->id = id;
  }
  return it->second;
}

void Runtime::store_settle(std::unordered_map<RefId, Entry, RefIdHash>::iterator it,
                           std::shared_ptr<FutureCore>& dropped) {
  if (it->second.weight == 0) {
    dropped = std::move(it->second.core);  // destroyed by the caller, outside the lock
    store_.erase(it);
  }
}

std::shared_ptr<FutureCore> Runtime::store_new(const RefId& id, std::uint64_t weight) {
  std::shared_ptr<FutureCore> core, dropped;
  std::lock_guard lk(store_m_);
  Entry& e = store_entry(id);
  e.weight += static_cast<std::int64_t>(weight);
  core = e.core;
  store_settle(store_.find(id), dropped);
  return core;
}

void Runtime::release_weight(const RefId& id, std::uint64_t weight) {
  std::shared_ptr<FutureCore> dropped;
  std::lock_guard lk(store_m_);
  store_entry(id).weight -= static_cast<std::int64_t>(weight);
  store_settle(store_.find(id), dropped);
}

WireRef Runtime::export_ref(const std::shared_ptr<FutureCore>& core) {
  if (core->id.owner == self_) {
    // We own it: mint fresh weight for the copy that leaves.
    std::lock_guard lk(store_m_);
    auto [it, fresh] = store_.try_emplace(core->id, Entry{core, 0});
    it->second.weight += static_cast<std::int64_t>(kInitialWeight);
    return {core->id, kInitialWeight};
  }
  std::unique_lock lk(core->m);
  if (core->weight < 2) {
    // Out of weight to split (rare: 40 halvings): ask the owner for more, and wait for the
    // answer so that our own weight cannot reach it first.
    lk.unlock();
    std::uint64_t req;
    auto r = new_request(core->id.owner, req);
    AddRefBody b{req, core->id, kInitialWeight};
    try {
      send(core->id.owner, kAddRef, &b, sizeof b);
    } catch (...) {
      drop_request(req);
      throw;
    }
    await_request(*r);
    if (!r->ok) r->error.raise();
    lk.lock();
    core->weight += kInitialWeight;
  }
  std::uint64_t give = core->weight / 2;
  core->weight -= give;
  return {core->id, give};
}

std::shared_ptr<FutureCore> Runtime::import_ref(const WireRef& w) {
  if (w.id.owner == self_) {
    // Our own handles hold the core directly; the weight that came with this one goes back.
    std::shared_ptr<FutureCore> core, dropped;
    std::lock_guard lk(store_m_);
    Entry& e = store_entry(w.id);
    core = e.core;
    e.weight -= static_cast<std::int64_t>(w.weight);
    store_settle(store_.find(w.id), dropped);
    return core;
  }
  std::lock_guard lk(reg_m_);
  auto& slot = registry_[w.id];
  if (auto core = slot.lock()) {
    std::lock_guard ck(core->m);
    core->weight += w.weight;
    return core;
  }
  auto core = std::make_shared<FutureCore>();
  core->id = w.id;
  core->weight = w.weight;
  slot = core;
  return core;
}

Stats Runtime::stats() const {
  Stats s;
  s.messages_sent = messages_sent_.load();
  s.arena_executors = arena_execs_.load();
  s.executors = nexec_.load();
  std::lock_guard lk(store_m_);
  s.stored_values = store_.size();
  return s;
}

// ---------------------------------------------------------------- FutureCore

FutureCore::~FutureCore() {
  Runtime* rt = Runtime::current();
  if (!rt || id.owner == 0 || id.owner == rt->self()) return;
  // Questions still in flight (a wait_for gave up on them): withdrawn, so that an answer
  // that comes after all is dropped on arrival.
  for (int k = 0; k < 2; ++k)
    if (asking[k]) rt->drop_request(asking_id[k]);
  {
    std::lock_guard lk(rt->reg_m_);
    auto it = rt->registry_.find(id);
    if (it != rt->registry_.end() && it->second.expired()) rt->registry_.erase(it);
  }
  if (weight == 0 || !rt->alive(id.owner)) return;
  RefWeight b{id, weight};
  try {
    rt->send(id.owner, kDelRef, &b, sizeof b, nullptr, 0, false);
  } catch (...) {
    // Owner gone: nothing to release.
  }
}

void FutureCore::finish(int st) {
  std::vector<std::function<void()>> todo;
  {
    std::lock_guard lk(m);
    state.store(st, std::memory_order_release);
    todo.swap(on_done);
  }
  for (auto& f : todo) f();
  if (Runtime* rt = Runtime::current()) rt->notify_local();
}

void FutureCore::complete_bytes(std::vector<char>&& b) {
  {
    std::lock_guard lk(m);
    bytes = std::move(b);
    have_bytes = true;
  }
  finish(Ready);
}

void FutureCore::complete_typed(std::shared_ptr<void> obj, void (*ser)(const void*, Writer&)) {
  {
    std::lock_guard lk(m);
    typed = std::move(obj);
    if (ser) serialize_typed = ser;
  }
  finish(Ready);
}

void FutureCore::complete_error(ErrorInfo e) {
  {
    std::lock_guard lk(m);
    error = std::move(e);
  }
  finish(Failed);
}

const std::vector<char>& FutureCore::ensure_bytes() {
  std::lock_guard lk(m);
  if (!have_bytes && typed && serialize_typed) {
    Writer w;
    serialize_typed(typed.get(), w);
    bytes = std::move(w.bytes());
    have_bytes = true;
  }
  // The caller reads them after the lock is gone (an answer being sent): keep them.
  bytes_lent = true;
  return bytes;
}

void FutureCore::drop_bytes_locked() {
  if (!have_bytes || bytes_lent || !typed || !serialize_typed) return;
  std::vector<char>().swap(bytes);  // give the memory back, not only the size
  have_bytes = false;
}

// ---------------------------------------------------------------- entry points (core.hpp)

int self_id() { return Runtime::get("myid").self(); }
bool is_master() { return Runtime::get("is_master").master(); }
void require_session(const char* what) { Runtime::get(what); }

std::shared_ptr<FutureCore> call_ref(int pid, CodeRef invoker, Writer& args) {
  Runtime& rt = Runtime::get("remotecall");
  RefId id{pid, rt.self(), rt.next_seq()};
  char head[sizeof(RefId) + sizeof(CodeRef)];
  std::memcpy(head, &id, sizeof id);
  std::memcpy(head + sizeof id, &invoker, sizeof invoker);
  rt.send(pid, kCallRef, head, sizeof head, args.bytes().data(), args.bytes().size());
  auto core = std::make_shared<FutureCore>();
  core->id = id;
  core->weight = kInitialWeight;
  return core;
}

namespace {
/// Send a kCallFetch and return its request (`on_done`, if any, runs when the answer is in;
/// `id`, if given, gets the request's id). `may_block`: wait for ring space (false: a full
/// ring queues the call, for callers whose wait has a deadline).
std::shared_ptr<Request> start_call(Runtime& rt, int pid, CodeRef invoker, Writer& args,
                                    std::function<void(Request&)> on_done = {}, std::uint64_t* id = nullptr,
                                    bool may_block = true) {
  std::uint64_t req;
  auto r = rt.new_request(pid, req, std::move(on_done));
  char head[sizeof(std::uint64_t) + sizeof(CodeRef)];
  std::memcpy(head, &req, sizeof req);
  std::memcpy(head + sizeof req, &invoker, sizeof invoker);
  try {
    rt.send(pid, kCallFetch, head, sizeof head, args.bytes().data(), args.bytes().size(), may_block);
  } catch (...) {
    rt.drop_request(req);
    throw;
  }
  if (id) *id = req;
  return r;
}

bool past(Deadline d) { return d != kNoDeadline && std::chrono::steady_clock::now() >= d; }

/// on_done of a Future's question (on the polling thread). An answer that nobody waits for
/// now (every wait_for on it gave up) leaves the sender's bulk area at once: it may wait
/// for the next waiter a long time, and the sender cannot reuse a block until it is read.
void keep_answer(Request& q) {
  std::lock_guard lk(q.keep_m);
  q.answered = true;
  if (q.waiting > 0 || !q.reply.consumed) return;
  const std::size_t off = static_cast<std::size_t>(q.payload - q.reply.body);
  q.reply.heap.assign(q.reply.body, q.reply.body + q.reply.len);
  q.reply.body = q.reply.heap.data();
  q.reply.release();
  q.payload = q.reply.body + off;
}

/// Stop waiting on `q`; true when its answer is in (then `done` is, or is about to be, set).
bool leave_question(Request& q) {
  bool answered;
  {
    std::lock_guard lk(q.keep_m);
    --q.waiting;
    answered = q.answered;
  }
  if (answered)
    while (!q.done.load(std::memory_order_acquire)) cpu_relax();  // on_done ran; `done` follows at once
  return answered;
}

/// With core.fetch_m held: settle `core` from the answer `q` to its question `k` (0: kWait,
/// 1: kFetch). A value is decoded straight from the answer, when this core knows its type.
void take_answer(FutureCore& core, Request& q, int k) {
  if (core.state.load(std::memory_order_acquire) != FutureCore::Pending) return;  // settled another way
  if (!q.ok) {
    core.complete_error(q.error);
    return;
  }
  if (k == 0) {
    core.known_ready.store(true);
    return;
  }
  std::shared_ptr<void> (*decode)(Reader&);
  {
    std::lock_guard lk(core.m);
    decode = core.decode_typed;
  }
  if (decode) {
    Reader rd(q.payload, q.payload_len);
    core.complete_typed(decode(rd), nullptr);  // (a throw leaves it pending: the next fetch asks again)
  } else {
    core.complete_bytes(std::vector<char>(q.payload, q.payload + q.payload_len));
  }
}
}  // namespace

bool call_fetch(int pid, CodeRef invoker, Writer& args, ResultSink sink, Deadline deadline) {
  Runtime& rt = Runtime::get("remotecall_fetch");
  std::uint64_t req = 0;
  auto r = start_call(rt, pid, invoker, args, {}, &req, deadline == kNoDeadline);
  try {
    rt.wait_until([&] { return r->done.load(std::memory_order_acquire) != 0 || past(deadline); }, true);
  } catch (...) {
    rt.drop_request(req);  // interrupted: the answer, if it comes, is dropped
    throw;
  }
  if (!r->done.load(std::memory_order_acquire)) {
    rt.drop_request(req);
    if (!r->done.load(std::memory_order_acquire)) return false;
  }
  if (!r->ok) r->error.raise();
  // The result is read where it lies (the reply may still be in the sender's bulk area,
  // released when `r` goes): no copy of its bytes here.
  if (sink.read) {
    Reader rd(r->payload, r->payload_len);
    sink.read(sink.ctx, rd);
  }
  return true;
}

std::shared_ptr<FutureCore> call_push(int pid, CodeRef invoker, Writer& args) {
  Runtime& rt = Runtime::get("remotecall");
  auto core = new_local_core();
  start_call(rt, pid, invoker, args, [core](Request& q) {
    // (On the polling thread: copied, not decoded here. Future::fetch decodes and drops them.)
    if (q.ok)
      core->complete_bytes(std::vector<char>(q.payload, q.payload + q.payload_len));
    else
      core->complete_error(q.error);
  });
  return core;
}

void call_do(int pid, CodeRef invoker, Writer& args, bool may_block) {
  Runtime& rt = Runtime::get("remote_do");
  rt.send(pid, kCallDo, &invoker, sizeof invoker, args.bytes().data(), args.bytes().size(), may_block);
}

std::shared_ptr<FutureCore> new_local_core() {
  Runtime& rt = Runtime::get("remotecall");
  auto core = std::make_shared<FutureCore>();
  core->id = RefId{rt.self(), rt.self(), rt.next_seq()};
  return core;
}

void submit_local(std::function<void()> fn) { Runtime::get("remotecall").push_task(Task{{}, std::move(fn)}); }

bool await_core(FutureCore& core, bool want_value, Deadline deadline) {
  auto settled = [&] {
    return core.state.load(std::memory_order_acquire) != FutureCore::Pending || (!want_value && core.known_ready.load());
  };
  if (settled()) return true;
  Runtime& rt = Runtime::get("fetch");
  if (core.id.owner == rt.self()) {
    rt.wait_until([&] { return core.state.load(std::memory_order_acquire) != FutureCore::Pending || past(deadline); },
                  true);
    return core.state.load(std::memory_order_acquire) != FutureCore::Pending;
  }
  const int k = want_value ? 1 : 0;
  const int owner = core.id.owner;
  for (;;) {
    // Join the question in flight, or ask one. Nothing here waits (fetch_m is held only
    // for this and for decoding), so a deadline bounds the whole wait.
    std::shared_ptr<Request> q;
    std::uint64_t qid = 0;
    bool fresh = false;
    {
      std::lock_guard fl(core.fetch_m);
      if (settled()) return true;
      q = core.asking[k];
      if (q) {
        std::lock_guard lk(q->keep_m);
        ++q->waiting;
      } else {
        q = rt.new_request(owner, qid, &keep_answer);
        {
          std::lock_guard lk(q->keep_m);  // (a death fails it from the polling thread at any time)
          q->waiting = 1;
        }
        core.asking[k] = q;
        core.asking_id[k] = qid;
        fresh = true;
      }
    }
    if (fresh) {
      QueryBody body{qid, core.id};
      try {
        // With a deadline, a full ring queues the question rather than wait for room.
        rt.send(owner, want_value ? kFetch : kWait, &body, sizeof body, nullptr, 0, deadline == kNoDeadline);
      } catch (...) {
        {
          std::lock_guard fl(core.fetch_m);
          if (core.asking[k] == q) core.asking[k].reset();
        }
        rt.drop_request(qid);
        {
          std::lock_guard lk(q->keep_m);
          --q->waiting;
        }
        // The question never left: fail the Future, so that waiters that joined it meanwhile
        // (they look at `state`) do not wait for an answer that cannot come.
        try {
          throw;
        } catch (const ProcessExitedException& e) {
          core.complete_error(ErrorInfo{ErrorInfo::Exited, e.pid(), {}, e.reason()});
          return true;
        } catch (...) {
          core.complete_error(ErrorInfo::from_current_exception(rt.self()));
          throw;
        }
      }
    }
    try {
      rt.wait_until([&] { return q->done.load(std::memory_order_acquire) != 0 || settled() || past(deadline); }, true);
    } catch (...) {
      leave_question(*q);  // interrupted: the question stays for the next waiter
      throw;
    }
    if (!leave_question(*q)) return settled();  // the deadline came first, or another waiter settled it
    {
      std::lock_guard fl(core.fetch_m);
      if (core.asking[k] == q) {
        core.asking[k].reset();
        take_answer(core, *q, k);
      }
    }
    if (settled()) return true;
  }
}

bool sole_handle(const std::shared_ptr<FutureCore>& handle) { return FutureCore::sole(handle); }

bool FutureCore::sole(const std::shared_ptr<FutureCore>& handle) {
  Runtime* rt = Runtime::current();
  if (handle.use_count() != 1) return false;
  if (!rt || handle->id.owner == rt->self()) return true;  // the owner's store holds a reference while one is out
  // Here another handle could still come from the registry (a copy arriving from elsewhere):
  // take the core out of it, so that such a copy gets a core of its own.
  std::lock_guard lk(rt->reg_m_);
  if (handle.use_count() != 1) return false;
  auto it = rt->registry_.find(handle->id);
  if (it != rt->registry_.end() && !it->second.owner_before(handle) && !handle.owner_before(it->second))
    rt->registry_.erase(it);
  return true;
}

bool poll_ready(FutureCore& core) {
  if (core.state.load() != FutureCore::Pending || core.known_ready.load()) return true;
  Runtime& rt = Runtime::get("isready");
  if (core.id.owner == rt.self()) return false;
  std::uint64_t req;
  auto r = rt.new_request(core.id.owner, req);
  QueryBody q{req, core.id};
  try {
    rt.send(core.id.owner, kIsReady, &q, sizeof q);
  } catch (const ProcessExitedException& e) {
    rt.drop_request(req);
    core.complete_error(ErrorInfo{ErrorInfo::Exited, e.pid(), {}, e.reason()});
    return true;
  }
  rt.await_request(*r);
  if (!r->ok) {
    core.complete_error(r->error);
    return true;
  }
  bool ready = r->payload_len > 0 && r->payload[0] != 0;
  if (ready) core.known_ready.store(true);
  return ready;
}

WireRef export_ref(const std::shared_ptr<FutureCore>& core) { return Runtime::get("sending a Future").export_ref(core); }
std::shared_ptr<FutureCore> import_ref(const WireRef& w) { return Runtime::get("receiving a Future").import_ref(w); }

int next_any_worker() {
  Runtime& rt = Runtime::get("spawnat");
  auto ids = rt.alive_ids();
  if (ids.size() <= 1) return 1;  // no workers: the master does the work, as in Julia
  int k = rt.any_cursor.fetch_add(1, std::memory_order_relaxed);
  return ids[1 + static_cast<std::size_t>(k) % (ids.size() - 1)];
}

std::vector<int> all_procs() { return Runtime::get("procs").alive_ids(); }

Stats stats() { return Runtime::get("stats").stats(); }

}  // namespace vscale::detail
