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


std::chrono::nanoseconds spin_from_env() {
  return std::chrono::microseconds(env_long("VSCALE_SPIN_US", 100, 0, 10'000'000));
}

}  // namespace

// ---------------------------------------------------------------- Runtime: life cycle

Runtime::Runtime(int self, bool master)
    : self_(self),
      master_(master),
      spin_us_(spin_from_env()) {
  waiting_.set_cpus(static_cast<std::int32_t>(usable_cpus()));
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
  current_.store(this, std::memory_order_release);
  max_exec_ = static_cast<int>(env_long("VSCALE_MAX_EXECUTORS", 256, 1, 65536));
  threads_ = std::max(1, threads);
  waiting_.init(seg_, self_, spin_us_);  // the job's spin budget: the master's CPU count
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
      if (!known_dead_[id - 1]) {
        known_dead_[id - 1] = 1;
        newly_dead.push_back(id);
      }
      continue;
    }
    if (id != self_) peers_.push_back(id);
  }
  nprocs_.store(static_cast<std::int32_t>(peers_.size() + 1), std::memory_order_relaxed);
  if (newly_dead.empty()) return;
  // What it wrote completely is still delivered; what we queued for it is dropped.
  for (int d : newly_dead) shm_.forget(d, &Runtime::deliver, this);
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
  while (!shm_.send(dest, h, a, na, b, nb, !may_block)) {
    // Full: wait for the receiver to drain, while keeping our own inbox moving (its poller
    // may be sending to us meanwhile).
    check_dest(dest);
    PollingMark polling(*this);
    poll_once();
    shm_.wait_for_room(dest, 200'000);
  }
  shm_.wake(dest, bell_bits_for(kind));
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
    pending = !lk || shm_.pending(peers_) || seg_.header().epoch.load(std::memory_order_acquire) != seen_epoch_;
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
  did |= shm_.poll(peers_, &Runtime::deliver, this);
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

void Runtime::notify_local() {
  // An answer or a value arrived here: wake the threads waiting for one (they re-check).
  waiting_.wake_waiters();
}

void Runtime::progress_loop() {
  auto& slot = seg_.slot(self_);
  auto last_check = std::chrono::steady_clock::now();
  while (!stopping_.load()) {
    if (poll_once()) continue;
    std::uint32_t seq = slot.doorbell.load(std::memory_order_seq_cst);
    if (poll_once()) continue;
    const bool starving = q_size_.load() > 0 && busy_.load() >= nexec_.load();
    futex_wait_bits(slot.doorbell, seq, kBellProgress, (shm_.has_queued() || starving) ? 2000000L : 100000000L);
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
      store_new(decode_head<CallRefMsg>(m).ref, kInitialWeight);
      push_task(Task{std::move(m), {}, seg_.slot(self_).interrupts.load(std::memory_order_acquire)});
      return;
    }
    case kCallFetch:
    case kCallDo:
      push_task(Task{std::move(m), {}, seg_.slot(self_).interrupts.load(std::memory_order_acquire)});
      return;
    case kResult: {
      const auto rh = decode_head<ResultMsg>(m);
      std::shared_ptr<Request> r;
      {
        std::lock_guard lk(req_m_);
        auto it = reqs_.find(rh.req);
        if (it == reqs_.end()) return;  // abandoned
        r = std::move(it->second);
        reqs_.erase(it);
      }
      r->ok = rh.ok != 0;
      r->payload = payload_of<ResultMsg>(m);
      r->payload_len = payload_size<ResultMsg>(m);
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
      const auto b = decode_head<AddRefMsg>(m);
      store_new(b.ref, b.weight);
      reply_result(m.src, b.req, true, nullptr, 0, false);
      return;
    }
    case kDelRef: {
      const auto b = decode_head<DelRefMsg>(m);
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
  if (exec_spinning_.load(std::memory_order_seq_cst) == 0) waiting_.wake(kBellExec, 1);
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
        PollingMark polling(*this);
        exec_spinning_.fetch_add(1, std::memory_order_seq_cst);
        const auto until = std::chrono::steady_clock::now() + waiting_.spin_time();
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
    try {
      send_msg(core->id.owner, AddRefMsg{req, core->id, kInitialWeight});
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
  s.messages_sent = shm_.messages_sent();
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
  try {
    rt->send_msg(id.owner, DelRefMsg{id, weight}, nullptr, 0, false);
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
  rt.send_msg(pid, CallRefMsg{id, invoker}, args.bytes().data(), args.bytes().size());
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
  try {
    rt.send_msg(pid, CallFetchMsg{req, invoker}, args.bytes().data(), args.bytes().size(), may_block);
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
  rt.send_msg(pid, CallDoMsg{invoker}, args.bytes().data(), args.bytes().size(), may_block);
}

std::shared_ptr<FutureCore> new_local_core() {
  auto core = std::make_shared<FutureCore>();
  core->id = new_ref_id();
  return core;
}

RefId new_ref_id() {
  Runtime& rt = Runtime::get("naming a value");
  return RefId{rt.self(), rt.self(), rt.next_seq()};
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
      try {
        // With a deadline, a full ring queues the question rather than wait for room.
        if (want_value)
          rt.send_msg(owner, FetchMsg{qid, core.id}, nullptr, 0, deadline == kNoDeadline);
        else
          rt.send_msg(owner, WaitMsg{qid, core.id}, nullptr, 0, deadline == kNoDeadline);
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
  try {
    rt.send_msg(core.id.owner, IsReadyMsg{req, core.id});
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
