// The per-process runtime: its life cycle, membership, sending and the questions waited on,
// polling, dispatching what arrives, and running incoming calls for the executor.
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

thread_local std::uint32_t tl_dozing = 0;
thread_local bool tl_polls = false;  // this thread holds poll_m_ (in poll_once or poll_now)
thread_local bool tl_in_call = false;
thread_local std::uint32_t tl_call_gen = 0;
thread_local int tl_no_interrupt = 0;
namespace {
thread_local bool tl_busy = false;  // this thread holds a busy mark (enter_busy)
// The one arena executor (-t 1) still counts as polling (ProcSlot::awake) and holds its spinner
// seat from the idle spin that found its call: the call's busy mark adds to them (enter_busy),
// and the next idle spin takes them back, so that a stream of calls does not write the awake
// word, which every sender to this process reads, four times a call. Given back when the call
// blocks (leave_busy), when the thread runs anything but a call, sleeps, or stops.
thread_local bool tl_kept_poll = false;
// While a busy mark is held the progress thread looks at the rings this often, since senders
// skip the doorbell then; it keeps ticking for a few ticks after the last one ends, so that a
// stream of calls does not wake it for each.
constexpr long kBusyTickNs = 1'000'000;
constexpr int kQuietTicks = 4;
}  // namespace

void throw_interrupted() {
  Runtime* rt = Runtime::current();
  throw InterruptedException("vscale: the call running on process " + std::to_string(rt ? rt->self() : 0) +
                             " was interrupted (vscale::interrupt)");
}
std::atomic<Runtime*> Runtime::current_{nullptr};

namespace {

std::chrono::nanoseconds spin_from_env() {
  return std::chrono::microseconds(env_long("VSCALE_SPIN_US", 100, 0, 10'000'000));
}

}  // namespace

// ---------------------------------------------------------------- Runtime: life cycle

Runtime::Runtime(int self, bool master)
    : self_(self),
      master_(master),
      refs_(self, [this](const RefId& id, std::uint64_t w) { ask_weight(id, w); }),
      spin_us_(spin_from_env()) {
  // The master's CPU count is the job's spin budget; a worker reads it from the segment
  // (Waiting::init) and skips the topology scan (milliseconds of /sys reads per worker start).
  if (master_) waiting_.set_cpus(static_cast<std::int32_t>(usable_cpus()));
}

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
  shm_.start(self_);
  known_dead_.assign(seg_.max_procs(), 0);
  drained_ = std::make_unique<std::atomic<std::uint8_t>[]>(seg_.max_procs());
  ring_view_ = std::make_unique<std::atomic<RingHeader*>[]>(seg_.max_procs());
  current_.store(this, std::memory_order_release);
  waiting_.init(seg_, self_, spin_us_);  // the job's spin budget: the master's CPU count
  exec_.start(threads);
  progress_ = std::thread([this] { progress_loop(); });
}

void Runtime::stop() {
  if (stopping_.exchange(true) || !progress_.joinable()) return;  // never started
  exec_.request_stop();
  auto& slot = seg_.slot(self_);
  slot.doorbell.fetch_add(1);
  futex_wake(slot.doorbell, INT_MAX);
  // stop() may run on one of our own threads: exit() called inside a remote call runs the
  // exit handlers there. That thread is not joined (it is the one ending the process).
  if (progress_.get_id() == std::this_thread::get_id())
    progress_.detach();
  else
    progress_.join();
  exec_.join();
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

std::string Runtime::dead_reason(int id) const { return seg_.dead_reason(id); }

void Runtime::check_dest(int id) const {
  if (!alive(id)) throw ProcessExitedException(id, dead_reason(id));
}

void Runtime::handle_membership() {
  // Called with poll_m_ held.
  const std::uint32_t epoch = seg_.header().epoch.load(std::memory_order_acquire);
  peers_.clear();
  const int n = static_cast<int>(seg_.max_procs());
  std::vector<int> newly_dead;
  for (int id = 1; id <= n; ++id) {
    auto st = seg_.slot(id).state.load(std::memory_order_acquire);
    if (st == std::uint32_t(SlotState::Unused)) break;
    if (st == std::uint32_t(SlotState::Dead)) {
      if (!known_dead_[id - 1]) {
        known_dead_[id - 1] = 1;
        newly_dead.push_back(id);
      }
      continue;
    }
    if (id != self_) peers_.push_back(id);
  }
  // Shrinking first, growing last: a concurrent look sees only rings of live or late peers.
  const int nv = static_cast<int>(peers_.size());
  waiting_.set_processes(1 + static_cast<int>(std::count_if(peers_.begin(), peers_.end(),
                                                            [&](int id) { return !seg_.remote(id); })));
  if (nv < nring_view_.load(std::memory_order_relaxed)) nring_view_.store(nv, std::memory_order_release);
  for (int i = 0; i < nv; ++i) ring_view_[i].store(&seg_.ring(self_, peers_[i]), std::memory_order_relaxed);
  nring_view_.store(nv, std::memory_order_release);
  // Last: until now a look without the lock sees the epoch changed and goes for the lock.
  seen_epoch_.store(epoch, std::memory_order_release);
  if (newly_dead.empty()) return;
  // What it wrote completely is still delivered; what we queued for it is dropped.
  for (int d : newly_dead) {
    shm_.forget(d, &Runtime::deliver, this);
    drained_[d - 1].store(1, std::memory_order_release);
  }
  for (auto& r : reqs_.take_to(newly_dead)) r->fail(ErrorInfo{ErrorInfo::Exited, r->dest, {}, dead_reason(r->dest)});
  notify_local();
}

// ---------------------------------------------------------------- sending

void Runtime::send(int dest, std::uint16_t kind, const void* a, std::size_t na, const void* b, std::size_t nb,
                   bool may_block) {
  if (dest == self_) throw Error("vscale: internal error: message to self");
  check_dest(dest);
  tsan_message_sent();
  MsgHeader h{};
  h.kind = kind;
  h.src = self_;
  // A thread that may block waits for room when the way is full; the poller never blocks
  // (what does not fit is queued by the transport, sent in order later).
  while (!shm_.send(dest, h, a, na, b, nb, !may_block, bell_bits_for(kind))) {
    // Full: wait for the receiver to drain, while keeping our own inbox moving (its poller
    // may be sending to us meanwhile).
    check_dest(dest);
    PollingMark polling(*this);
    poll_once();
    shm_.wait_for_room(dest, 200'000);
  }
}

void Request::fail(ErrorInfo e) {
  ok = false;
  error = std::move(e);
  if (on_done) on_done(*this);
  done.store(1, std::memory_order_release);
}

void RequestTable::insert(std::uint64_t id, std::shared_ptr<Request> r) {
  std::lock_guard lk(m_);
  Slot& s = direct_[id % kDirect];
  if (s.id == 0) {
    s.id = id;
    s.r = std::move(r);
  } else {
    overflow_.emplace(id, std::move(r));  // an older question still waits there
  }
}

std::shared_ptr<Request> RequestTable::add(int dest, std::uint64_t& id, std::function<void(Request&)> on_done) {
  auto r = std::make_shared<Request>();
  r->dest = dest;
  r->on_done = std::move(on_done);  // before the request is visible to the poller
  id = next_.fetch_add(1, std::memory_order_relaxed) + 1;
  insert(id, r);
  return r;
}

void RequestTable::add_borrowed(Request& r, int dest, std::uint64_t& id) {
  r.dest = dest;
  id = next_.fetch_add(1, std::memory_order_relaxed) + 1;
  // Aliasing an empty owner: a pointer that counts nothing and frees nothing.
  insert(id, std::shared_ptr<Request>(std::shared_ptr<Request>(), &r));
}

bool RequestTable::drop(std::uint64_t id) { return take(id) != nullptr; }

void RequestTable::withdraw(std::uint64_t id, Request& r) {
  if (r.done.load(std::memory_order_acquire) || drop(id)) return;
  // Taken by the poller (an answer, or its process's death), which is settling it now.
  while (!r.done.load(std::memory_order_acquire)) std::this_thread::yield();
}

std::shared_ptr<Request> RequestTable::take(std::uint64_t id) {
  std::lock_guard lk(m_);
  Slot& s = direct_[id % kDirect];
  if (s.id == id) {
    s.id = 0;
    return std::move(s.r);
  }
  auto it = overflow_.find(id);
  if (it == overflow_.end()) return nullptr;
  auto r = std::move(it->second);
  overflow_.erase(it);
  return r;
}

std::size_t RequestTable::pending_to(int dest) {
  std::lock_guard lk(m_);
  std::size_t n = 0;
  for (const auto& s : direct_) n += s.id != 0 && s.r->dest == dest;
  for (const auto& [k, r] : overflow_) n += r->dest == dest;
  return n;
}

std::vector<std::shared_ptr<Request>> RequestTable::take_to(const std::vector<int>& dead) {
  std::vector<std::shared_ptr<Request>> out;
  auto is_dead = [&](const Request& r) { return std::find(dead.begin(), dead.end(), r.dest) != dead.end(); };
  std::lock_guard lk(m_);
  for (auto& s : direct_) {
    if (s.id != 0 && is_dead(*s.r)) {
      s.id = 0;
      out.push_back(std::move(s.r));
    }
  }
  for (auto it = overflow_.begin(); it != overflow_.end();) {
    if (is_dead(*it->second)) {
      out.push_back(std::move(it->second));
      it = overflow_.erase(it);
    } else {
      ++it;
    }
  }
  return out;
}

void Runtime::await_request(Request& r, bool interruptible) {
  wait_until([&] { return r.done.load(std::memory_order_acquire) != 0; }, interruptible);
}

void Runtime::reply_result(int dest, std::uint64_t req, bool ok, const void* data, std::size_t len, bool may_block) {
  if (!alive(dest)) return;  // nobody left to answer
  try {
    send_msg(dest, ResultMsg{req, ok ? 1u : 0u}, data, len, may_block);
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

void Runtime::kick_self_if_pending() {
  // We were the last thread polling. A sender that saw us awake did not wake anyone, so if
  // anything is waiting, wake the progress thread to take over.
  bool pending;
  {
    std::unique_lock lk(poll_m_, std::try_to_lock);
    // Someone polling right now: let the progress thread re-check.
    pending = !lk || shm_.pending(peers_) || seg_.header().epoch.load(std::memory_order_acquire) != seen_epoch_.load(std::memory_order_relaxed);
  }
  if (pending) ring_doorbell(seg_.slot(self_).doorbell);
}

bool Runtime::nothing_to_poll() const noexcept {
  if (seg_.header().epoch.load(std::memory_order_acquire) != seen_epoch_.load(std::memory_order_acquire) ||
      shm_.has_queued())
    return false;
  const int n = nring_view_.load(std::memory_order_acquire);
  for (int i = 0; i < n; ++i)
    if (seg_.ring_ready(*ring_view_[i].load(std::memory_order_relaxed))) return false;
  return true;
}

bool Runtime::poll_once() {
  bool took;
  return poll_handing(nullptr, took);
}

void Runtime::poll_now() {
  if (tl_polls) return;  // inside a poll already (a dispatch): what it reads is being applied
  std::unique_lock lk(poll_m_);
  poll_locked(SIZE_MAX);
}

bool Runtime::poll_locked(std::size_t per_peer) {
  tl_polls = true;
  struct Clear {
    ~Clear() { tl_polls = false; }
  } clear;
  bool did = false;
  if (seg_.header().epoch.load(std::memory_order_acquire) != seen_epoch_.load(std::memory_order_relaxed)) {
    handle_membership();
    did = true;
  }
  did |= shm_.poll(peers_, &Runtime::deliver, this, per_peer);
  if (!calls_.empty()) {
    std::size_t from = 0;
    if (direct_ && !exec_.queued()) {
      *direct_ = std::move(calls_.front());
      direct_taken_ = true;
      from = 1;
    }
    exec_.push_all(calls_, from);
  }
  return did;
}

void Runtime::deliver(void* self, Inbound&& m) {
  auto* rt = static_cast<Runtime*>(self);
  const int src = m.src;
  try {
    rt->dispatch(std::move(m));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vscale: process %d dropped a message from %d: %s\n", rt->self_, src, e.what());
  }
}

// A busy mark: a call running on the one arena executor (-t 1) counts as polling for its
// process, so that a sender skips the doorbell. In a stream of short calls to a busy process
// each message otherwise woke the progress thread, only for it to queue the call behind the
// one running (pmap with batch 1 on 2 CPUs: ~4.9 us a task, mostly those wake-ups; 2.3 us
// with the mark). What makes it safe: the executor polls before it sleeps (idle, doze's last
// look), a call that blocks in a vscale wait gives the mark up first (leave_busy), and a call
// that runs long or blocks elsewhere is covered by the progress thread, which looks every
// kBusyTickNs while a mark is held: a message then waits at most that long. A thread of the
// process asleep on the doorbell meanwhile (a waiter, an idle executor) is still woken by the
// sender (ProcSlot::busy and dozing). Only with -t 1: with more, the other arena executors
// are the ones to take the next call at once, spinning or woken as before.
bool Runtime::enter_busy() noexcept {
  if (tl_busy || exec_.threads() != 1) return false;
  tl_busy = true;
  busy_taken_.fetch_add(1, std::memory_order_relaxed);
  if (tl_kept_poll)
    waiting_.add_busy();  // already counted as awake
  else
    waiting_.mark_busy();
  // Pairs with the progress thread's store of progress_sleeps_long_ and load of the busy count: one
  // of the two sees the other, so a long sleep never overlooks a mark.
  if (progress_sleeps_long_.load(std::memory_order_seq_cst)) ring_doorbell(seg_.slot(self_).doorbell, kBellProgress);
  return true;
}

void Runtime::end_busy() noexcept {
  if (!tl_busy) return;  // given up while the call waited
  tl_busy = false;
  // No kick: the executor polls again before it sleeps. A kept mark stays: the thread goes
  // back to idle(), which polls at once.
  if (tl_kept_poll)
    waiting_.drop_busy();
  else
    waiting_.unmark_busy();
}

void Runtime::leave_busy() noexcept {
  if (!tl_busy) return;
  tl_busy = false;
  const bool kept = std::exchange(tl_kept_poll, false);
  const bool others = waiting_.unmark_busy();
  if (kept) leave_spin();
  if (!others) kick_self_if_pending();
}

void Runtime::drop_kept_poll() noexcept {
  if (!std::exchange(tl_kept_poll, false)) return;
  const bool others = waiting_.unmark_polling();
  leave_spin();
  if (!others) kick_self_if_pending();
}

void Runtime::serving_done() noexcept { drop_kept_poll(); }

void Runtime::progress_loop() {
  auto& slot = seg_.slot(self_);
  auto last_check = std::chrono::steady_clock::now();
  int quiet = kQuietTicks;  // ticks since a busy mark was last held or taken
  std::uint64_t taken = 0;
  while (!stopping_.load()) {
    // Keep polling while there is more, unless a busy call will look anyway: a tick is one
    // look, or the progress thread would become one more spinning thread beside the executor.
    if (poll_once() && waiting_.busy() == 0) continue;
    std::uint32_t seq = slot.doorbell.load(std::memory_order_seq_cst);
    if (poll_once() && waiting_.busy() == 0) continue;
    long timeout = (shm_.has_queued() || exec_.starving()) ? 2000000L : 100000000L;
    // Marks of short calls are mostly not held at the moment of a tick: count those taken.
    const std::uint64_t now_taken = busy_taken_.load(std::memory_order_relaxed);
    if (waiting_.busy() > 0 || now_taken != taken) quiet = 0;
    taken = now_taken;
    if (quiet < kQuietTicks) {
      ++quiet;
      timeout = std::min(timeout, kBusyTickNs);
    } else {
      progress_sleeps_long_.store(true, std::memory_order_seq_cst);
      if (waiting_.busy() > 0) {
        progress_sleeps_long_.store(false, std::memory_order_relaxed);  // ticking after all
        quiet = 1;
        timeout = std::min(timeout, kBusyTickNs);
      }
    }
    futex_wait_bits(slot.doorbell, seq, kBellProgress, timeout);
    progress_sleeps_long_.store(false, std::memory_order_seq_cst);
    exec_.maybe_grow();
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
    case kCallRef:
      refs_.add(decode_head<CallRefMsg>(m).ref, kInitialWeight);
      [[fallthrough]];
    case kCallFetch:
    case kCallDo: {
      // Queued together at the end of the poll (one lock and one wake-up for a burst).
      Task& t = calls_.emplace_back();  // (in place: a Task is moved twice more before it runs)
      t.msg = std::move(m);
      t.interrupts = seg_.slot(self_).interrupts.load(std::memory_order_acquire);
      return;
    }
    case kResult: {
      const auto rh = decode_head<ResultMsg>(m);
      std::shared_ptr<Request> r = reqs_.take(rh.req);
      if (!r) return;  // abandoned
      r->ok = rh.ok != 0;
      r->reply = std::move(m);  // first: the move may move a small body
      r->payload = payload_of<ResultMsg>(r->reply);
      r->payload_len = payload_size<ResultMsg>(r->reply);
      if (!r->ok) {
        Reader rd(r->payload, r->payload_len);
        try {
          r->error = ErrorInfo::read(rd);
        } catch (const std::exception& e) {
          // Settled all the same: its asker must not wait for ever (nor a borrowed Request
          // be left half filled).
          r->error = ErrorInfo{ErrorInfo::Remote, m.src, "vscale::Error",
                               std::string("a failed call's error could not be read: ") + e.what()};
        }
      }
      if (r->on_done) r->on_done(*r);
      r->done.store(1, std::memory_order_release);
      notify_local();
      return;
    }
    case kCallInline:
      run_inline(m);
      return;
    case kFetch:
    case kWait:
    case kIsReady:
      handle_ref_query(m);
      return;
    case kAddRef: {
      const auto b = decode_head<AddRefMsg>(m);
      refs_.add(b.ref, b.weight);
      reply_result(m.src, b.req, true, nullptr, 0, false);
      return;
    }
    case kDelRef: {
      const auto b = decode_head<DelRefMsg>(m);
      refs_.release(b.ref, b.weight);
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
      waiting_.wake(kBellWait, INT_MAX);
      waiting_.wake(kBellExec, INT_MAX);
      return;
    default:
      std::fprintf(stderr, "vscale: process %d got an unknown message kind %u from %d\n", self_, m.kind, m.src);
  }
}

void Runtime::handle_ref_query(Inbound& m) {
  // kFetch, kWait and kIsReady share one head.
  const auto q = decode_head<FetchMsg>(m);
  const int asker = m.src;
  // The asker holds weight, so the value cannot have been freed; if it is unknown, the call
  // that makes it is still on its way (another ring), and the placeholder waits for it.
  std::shared_ptr<FutureCore> core = refs_.find_or_placeholder(q.ref);
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

void Runtime::run_inline(Inbound& m) {
  // On the polling thread, in ring order: the invoker must not block (core.hpp, call_inline).
  const auto h = decode_head<CallInlineMsg>(m);
  Reader in(payload_of<CallInlineMsg>(m), payload_size<CallInlineMsg>(m));
  Writer out;
  try {
    auto inv = reinterpret_cast<Invoker>(const_cast<void*>(decode_code(h.code)));
    inv(in, out);
  } catch (...) {
    const ErrorInfo err = ErrorInfo::from_current_exception(self_);
    std::fprintf(stderr, "vscale: an inline call from process %d failed on process %d: %s: %s\n", m.src, self_,
                 err.type.c_str(), err.message.c_str());
  }
}

// ---------------------------------------------------------------- executor host

void Runtime::run_task(Task& t) {
  if (t.fn) {
    drop_kept_poll();  // a local task takes no busy mark, and may run long or block
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
  // The head (what to run, and where its result goes), then the arguments.
  std::uint64_t req = 0;
  RefId ref;
  CodeRef code;
  const char* args = nullptr;
  std::size_t nargs = 0;
  try {
    if (kind == kCallFetch) {
      const auto h = decode_head<CallFetchMsg>(m);
      req = h.req;
      code = h.code;
      args = payload_of<CallFetchMsg>(m);
      nargs = payload_size<CallFetchMsg>(m);
    } else if (kind == kCallRef) {
      const auto h = decode_head<CallRefMsg>(m);
      ref = h.ref;
      code = h.code;
      args = payload_of<CallRefMsg>(m);
      nargs = payload_size<CallRefMsg>(m);
    } else {
      code = decode_head<CallDoMsg>(m).code;
      args = payload_of<CallDoMsg>(m);
      nargs = payload_size<CallDoMsg>(m);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vscale: process %d dropped a call from %d: %s\n", self_, src, e.what());
    return;
  }
  struct Busy {  // (see enter_busy) until the answer is sent
    Runtime& rt;
    bool held;
    ~Busy() {
      if (held) rt.end_busy();
    }
  } busy{*this, enter_busy()};
  Reader in(args, nargs);
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
    if (auto core = refs_.find(ref)) {
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

bool Runtime::poll_handing(Task* t, bool& took) {
  took = false;
  // A look without the lock first: an empty poll is most polls, and the lock's two atomic
  // writes are most of one.
  if (nothing_to_poll()) return false;
  std::unique_lock lk(poll_m_, std::try_to_lock);
  if (!lk) return false;
  struct Hand {
    Runtime& rt;
    ~Hand() { rt.direct_ = nullptr; }
  } hand{*this};
  direct_ = t;
  direct_taken_ = false;
  const bool did = poll_locked(kPollBatch);
  took = direct_taken_;
  return did;
}

bool Runtime::idle(bool in_arena, Task& t) {
  // Arena executors spin when idle (within the job's spin budget), so that a stream of calls
  // does not pay a futex wake-up each; grown executors only sleep.
  // (see tl_kept_poll; only an arena executor keeps a mark, so `kept` implies in_arena)
  const bool kept = std::exchange(tl_kept_poll, false);
  if (in_arena && (kept || try_spin())) {
    if (!kept) waiting_.mark_polling();
    bool got = false, took = false;
    // The one arena executor (-t 1) takes the call it finds itself (see direct_).
    const bool hand = exec_.threads() == 1;
    {
      Executor::Spinning spinning(exec_);  // counted out before the queue's last look
      SpinPace pace(waiting_.spin_time(), waiting_);
      while (!exec_.stopping()) {
        if (exec_.queued()) {
          got = true;
          break;
        }
        if (poll_handing(hand ? &t : nullptr, took)) {
          if (took) {
            got = true;
            break;
          }
          continue;
        }
        if (!pace.turn()) break;
      }
    }
    tl_kept_poll = true;  // the mark and the seat this spin held
    // Kept for the call just found: its busy mark adds to them (enter_busy).
    if (got && hand && !exec_.stopping()) return took;
    drop_kept_poll();
    if (got) return took;  // (a call handed over is run even when stopping: nothing is lost)
  }
  exec_.trim();
  doze([&] { return exec_.queued() || exec_.stopping(); }, kBellExec, 100'000'000L);
  return false;
}

// ---------------------------------------------------------------- references and stats

void Runtime::ask_weight(const RefId& id, std::uint64_t weight) {
  std::uint64_t req;
  auto r = reqs_.add(id.owner, req, {});
  try {
    send_msg(id.owner, AddRefMsg{req, id, weight});
  } catch (...) {
    reqs_.drop(req);
    throw;
  }
  await_request(*r);
  if (!r->ok) r->error.raise();
}

Stats Runtime::stats() const {
  Stats s;
  s.messages_sent = shm_.messages_sent();
  s.arena_executors = exec_.arena_executors();
  s.executors = exec_.executors();
  s.stored_values = refs_.size();
  return s;
}

}  // namespace vscale::detail
