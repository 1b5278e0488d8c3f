// What the public templates (future.hpp, remotecall.hpp) need from the runtime (runtime.cpp).
// Not for users: names and layouts here change freely.
#pragma once

#include <atomic>
#include <compare>
#include <condition_variable>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "vscale/errors.hpp"
#include "vscale/serialize.hpp"

namespace vscale::detail {

/// A pause for spin loops (PAUSE on x86, YIELD on Arm).
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

/// Names a remote value: `owner` keeps it, `creator` made the id, `seq` is unique per creator.
struct RefId {
  std::int32_t owner = 0;
  std::int32_t creator = 0;
  std::uint64_t seq = 0;
  friend bool operator==(const RefId&, const RefId&) = default;
  friend auto operator<=>(const RefId&, const RefId&) = default;
};
struct RefIdHash {
  std::size_t operator()(const RefId& r) const noexcept {
    return std::hash<std::uint64_t>()(r.seq * 0x9E3779B97F4A7C15ull ^
                                      (std::uint64_t(std::uint32_t(r.owner)) << 32 | std::uint32_t(r.creator)));
  }
};

/// A failure as it travels: a user exception on some process, or a process that is gone.
struct ErrorInfo {
  enum Kind : std::uint32_t { None = 0, Remote = 1, Exited = 2, Usage = 3 };
  Kind kind = None;
  std::int32_t pid = 0;
  std::string type;     // Remote: demangled exception type
  std::string message;  // Remote: what(); Exited: the reason; Usage: the message
  std::vector<std::int32_t> path = {};  // Remote: the processes it passed through, origin first (empty: {pid})
  [[noreturn]] void raise() const;
  void write(Writer& w) const;
  static ErrorInfo read(Reader& r);
  /// Describe the exception being handled (call inside a catch block).
  static ErrorInfo from_current_exception(int pid);
};

struct Request;  // runtime.hpp

/// When a wait gives up; kNoDeadline: never.
using Deadline = std::chrono::steady_clock::time_point;
inline constexpr Deadline kNoDeadline = Deadline::max();
/// The deadline `d` from now (at once for d <= 0; none for more than about 30 years).
template <class Rep, class Period>
Deadline deadline_after(std::chrono::duration<Rep, Period> d) {
  const auto now = std::chrono::steady_clock::now();
  if (d <= d.zero()) return now;
  if (std::chrono::duration<double>(d).count() > 1e9) return kNoDeadline;
  return now + std::chrono::ceil<std::chrono::steady_clock::duration>(d);
}

/// Shared state behind every copy of a Future in one process.
///
/// Reference counting across processes is weighted: the creator of a remote value holds a
/// large weight, shipping a handle gives half of the local weight away with it, and a process
/// returns its weight to the owner when its last local handle is gone. The owner frees the
/// value when all weight has come back. No message is needed to copy a handle, and a handle
/// can never be freed while one is in flight.
///
/// Once a value is fetched, the typed object is its only copy here: it is decoded straight
/// from the answer (which may still lie in the sender's bulk area), and bytes that came
/// another way are dropped once decoded (the owner serializes again from `typed` if it must).
struct FutureCore {
  enum State : int { Pending = 0, Ready = 1, Failed = 2 };
  RefId id;
  std::atomic<int> state{Pending};
  std::atomic<bool> known_ready{false};  // a wait() or isready() saw the owner's value ready

  std::mutex m;
  std::vector<char> bytes;  // serialized value, when it came from elsewhere or was serialized for shipping
  bool have_bytes = false;
  bool bytes_lent = false;  // ensure_bytes handed `bytes` out by reference: never drop them
  std::shared_ptr<void> typed;                           // the value as an object, once known here
  void (*serialize_typed)(const void*, Writer&) = nullptr;  // set by Future<R> (and where the value is produced)
  std::shared_ptr<void> (*decode_typed)(Reader&) = nullptr;  // set by Future<R>: bytes -> typed
  ErrorInfo error;
  std::vector<std::function<void()>> on_done;  // owner: answers to fetches that came early

  // Non-owner: the questions to the owner in flight, [0] kWait and [1] kFetch, one of each
  // at most, shared by all the threads waiting here (guarded by fetch_m, which is held only
  // for book-keeping and for decoding an answer, never while waiting). A wait that gives up
  // leaves its question for the next waiter; the core's destruction withdraws it.
  std::mutex fetch_m;
  std::shared_ptr<Request> asking[2];
  std::uint64_t asking_id[2] = {0, 0};
  std::uint64_t weight = 0;      // non-owner: weight this process holds (returned at destruction)

  ~FutureCore();
  /// Owner side: publish the result and run the waiting continuations.
  void complete_bytes(std::vector<char>&& b);
  void complete_typed(std::shared_ptr<void> obj, void (*ser)(const void*, Writer&));
  void complete_error(ErrorInfo e);
  /// Make sure `bytes` holds the serialized value (owner side, ready state). The reference
  /// stays valid while the core lives (bytes handed out are never dropped).
  const std::vector<char>& ensure_bytes();
  /// With `m` held, once `typed` is set: drop `bytes` if they can be made again and were never
  /// handed out (the decoded value is then the only copy).
  void drop_bytes_locked();
  /// See sole_handle.
  static bool sole(const std::shared_ptr<FutureCore>& handle);

 private:
  void finish(int st);
};

/// A position-independent pointer to `invoke_call<F, A...>`.
using Invoker = void (*)(Reader& in, Writer& out);

/// Handle on the wire: the id and the weight that travels with it.
struct WireRef {
  RefId id;
  std::uint64_t weight;
};

// Entry points implemented by the runtime.
int self_id();
bool is_master();
/// Throws UsageError when no Session exists in this process.
void require_session(const char* what);
/// Remote call whose result is stored at `pid` (Julia's remotecall).
std::shared_ptr<FutureCore> call_ref(int pid, CodeRef invoker, Writer& args);
/// Reads a call_fetch result where it lies, in the answer (its bytes live only during the call).
struct ResultSink {
  void* ctx = nullptr;
  void (*read)(void* ctx, Reader& r) = nullptr;  // null: the result is not wanted (void)
};
/// Remote call whose result comes straight back: `sink` reads it, or this throws. Returns
/// false when `deadline` passed first (the call may still run there; its answer is dropped).
bool call_fetch(int pid, CodeRef invoker, Writer& args, ResultSink sink, Deadline deadline = kNoDeadline);
/// Remote call whose result is pushed back to this process with the answer (no value stored
/// there): a Future owned here, for results only the caller waits on (distributed_for, pmap).
std::shared_ptr<FutureCore> call_push(int pid, CodeRef invoker, Writer& args);
/// Remote call without any answer (`may_block` false: never waits for ring space, for use in
/// destructors that may run on the polling thread).
void call_do(int pid, CodeRef invoker, Writer& args, bool may_block = true);
/// Like call_do, but the call runs on `pid`'s polling thread as the message is received, in
/// the order of the ring from here (after everything this process sent `pid` before). For
/// short bookkeeping that never blocks (a channel's credited puts and credits); an exception
/// there is printed there.
void call_inline(int pid, CodeRef invoker, Writer& args, bool may_block = true);
/// A Future whose value is produced by this process.
std::shared_ptr<FutureCore> new_local_core();
/// A fresh id owned and created by this process: the one id scheme for everything a process
/// names for others (values, channels, pools, pmap runs, SharedArrays, timed operations).
RefId new_ref_id();
/// Spin a while, polling this process's messages (they are dispatched here), until
/// ready(ctx): for a wait whose wake-up would come from a message this process receives (a
/// local take on a channel that other processes put to on credit). Within the job's spin
/// budget; false when ready(ctx) still does not hold (then sleep).
bool spin_poll(bool (*ready)(void*), void* ctx);
/// The call this thread runs is about to block outside the runtime's own waits (a channel's
/// or pool's condition variable, a barrier's futex): it stops counting as polling for this
/// process, so that what is sent here meanwhile wakes it (Runtime::enter_busy).
void leave_busy() noexcept;
/// Dispatch now every message that is in this process's rings (waiting for a poll in progress
/// on another thread): what any process wrote here before the caller learned of it, directly
/// or through others, has been applied when this returns (a channel's puts on credit).
void drain_incoming();
/// `pid` is dead and everything it wrote to this process before has been delivered.
bool peer_drained(int pid);
/// Run `fn` on this process's executor, as an incoming call would.
void submit_local(std::function<void()> fn);
/// Block until `core` is no longer pending here, fetching from its owner when needed
/// (`want_value`: bring the value; otherwise only wait for readiness), or until `deadline`.
/// True when settled (ready, or failed: look at `state`), false when the deadline came first.
bool await_core(FutureCore& core, bool want_value, Deadline deadline = kNoDeadline);
/// True when `core` is reachable through `handle` alone, and now through nothing else: its
/// value may be moved out (Future::fetch on an rvalue). Then `handle` must be let go.
bool sole_handle(const std::shared_ptr<FutureCore>& handle);
bool poll_ready(FutureCore& core);
WireRef export_ref(const std::shared_ptr<FutureCore>& core);
std::shared_ptr<FutureCore> import_ref(const WireRef& w);
/// Pick the next worker for spawnat(any, ...): round robin over workers(), like Julia.
int next_any_worker();
std::vector<int> all_procs();

/// The readable C++ name of a mangled type name (typeid(T).name()).
std::string demangle(const char* name);

/// Counters for tests and benchmarks (this process only).
struct Stats {
  std::uint64_t messages_sent = 0;  // ring messages written by this process
  std::uint64_t stored_values = 0;  // remote values this process keeps for others
  int arena_executors = 0;          // executor threads that run calls in the -t arena (<= -t)
  int executors = 0;                // all executor threads (grown ones included)
};
Stats stats();

/// addprocs with test overrides. `exe`: start another program instead of this one (it must
/// be refused: not the same binary); `cookie`: give the workers a wrong cookie.
struct LaunchResult {
  std::vector<int> joined;
  std::vector<std::pair<int, std::string>> failed;  // id, reason
};
LaunchResult launch(int n, const std::string& exe = {}, const std::string& cookie = {},
                    std::chrono::milliseconds timeout = std::chrono::milliseconds(0));  // 0: the default

/// The code address of an invoker, computed once per instantiation.
template <auto Fn>
CodeRef code_of() {
  static const CodeRef ref = encode_code(reinterpret_cast<const void*>(Fn));
  return ref;
}

}  // namespace vscale::detail
