// FutureCore and the entry points that the public templates call (core.hpp): remote calls,
// waiting on and fetching Futures, handles leaving and arriving.
#include "vscale/detail/core.hpp"

#include "vscale/detail/runtime.hpp"

namespace vscale::detail {

// ---------------------------------------------------------------- FutureCore

FutureCore::~FutureCore() {
  Runtime* rt = Runtime::current();
  if (!rt || id.owner == 0 || id.owner == rt->self()) return;
  // Questions still in flight (a wait_for gave up on them): withdrawn, so that an answer
  // that comes after all is dropped on arrival.
  for (int k = 0; k < 2; ++k)
    if (asking[k]) rt->requests().drop(asking_id[k]);
  rt->refs().forget_import(id);
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
  RefId id = new_ref_id();
  id.owner = pid;
  rt.send_msg(pid, CallRefMsg{id, invoker}, args.bytes().data(), args.bytes().size());
  auto core = std::make_shared<FutureCore>();
  core->id = id;
  core->weight = kInitialWeight;
  return core;
}

namespace {
/// Send a kCallFetch and return its request (`on_done`, if any, runs when the answer is in).
std::shared_ptr<Request> start_call(Runtime& rt, int pid, CodeRef invoker, Writer& args,
                                    std::function<void(Request&)> on_done) {
  std::uint64_t req;
  auto r = rt.requests().add(pid, req, std::move(on_done));
  try {
    rt.send_msg(pid, CallFetchMsg{req, invoker}, args.bytes().data(), args.bytes().size());
  } catch (...) {
    rt.requests().drop(req);
    throw;
  }
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
  q.reply.own();
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
  // The question lives here, not on the heap: the table borrows it, and it is withdrawn on
  // every way out that has not seen the answer (the poller may be filling it in just then).
  Request r;
  std::uint64_t req = 0;
  rt.requests().add_borrowed(r, pid, req);
  struct Withdraw {
    RequestTable& table;
    std::uint64_t id;
    Request& r;
    ~Withdraw() {
      if (id) table.withdraw(id, r);
    }
  } withdraw{rt.requests(), req, r};
  rt.send_msg(pid, CallFetchMsg{req, invoker}, args.bytes().data(), args.bytes().size(), deadline == kNoDeadline);
  // Interrupted: the exception leaves, and an answer that comes later is dropped.
  rt.wait_until([&] { return r.done.load(std::memory_order_acquire) != 0 || past(deadline); }, true);
  if (!r.done.load(std::memory_order_acquire)) {
    if (rt.requests().drop(req)) {
      withdraw.id = 0;  // out of the table: nothing left to withdraw
      return false;
    }
    rt.requests().withdraw(req, r);  // the answer came just now
  }
  if (!r.ok) r.error.raise();
  // The result is read where it lies (the reply may still be in the sender's bulk area,
  // released when `r` goes): no copy of its bytes here.
  if (sink.read) {
    Reader rd(r.payload, r.payload_len);
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

void drain_incoming() {
  if (Runtime* rt = Runtime::current()) rt->poll_now();
}

bool peer_drained(int pid) {
  Runtime* rt = Runtime::current();
  return rt && rt->drained(pid);
}

bool spin_poll(bool (*ready)(void*), void* ctx) {
  Runtime* rt = Runtime::current();
  if (!rt) return ready(ctx);
  return rt->spin_polling([&] { return ready(ctx); });
}

void leave_busy() noexcept {
  if (Runtime* rt = Runtime::current()) rt->leave_busy();
}

void call_inline(int pid, CodeRef invoker, Writer& args, bool may_block) {
  Runtime& rt = Runtime::get("remote_do");
  rt.send_msg(pid, CallInlineMsg{invoker}, args.bytes().data(), args.bytes().size(), may_block);
}

std::shared_ptr<FutureCore> new_local_core() {
  auto core = std::make_shared<FutureCore>();
  core->id = new_ref_id();
  return core;
}

RefId new_ref_id() {
  Runtime& rt = Runtime::get("naming a value");
  return RefId{rt.self(), rt.self(), rt.seq_.fetch_add(1, std::memory_order_relaxed) + 1};
}

void submit_local(std::function<void()> fn) { Runtime::get("remotecall").executor().push(Task{{}, std::move(fn)}); }

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
        q = rt.requests().add(owner, qid, &keep_answer);
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
        rt.requests().drop(qid);
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
  return rt->refs().claim_sole(handle);
}

bool poll_ready(FutureCore& core) {
  if (core.state.load() != FutureCore::Pending || core.known_ready.load()) return true;
  Runtime& rt = Runtime::get("isready");
  if (core.id.owner == rt.self()) return false;
  std::uint64_t req;
  auto r = rt.requests().add(core.id.owner, req);
  try {
    rt.send_msg(core.id.owner, IsReadyMsg{req, core.id});
  } catch (const ProcessExitedException& e) {
    rt.requests().drop(req);
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

WireRef export_ref(const std::shared_ptr<FutureCore>& core) { return Runtime::get("sending a Future").refs().export_ref(core); }
std::shared_ptr<FutureCore> import_ref(const WireRef& w) { return Runtime::get("receiving a Future").refs().import_ref(w); }

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
