// The wire protocol between vscale processes: every message kind, the fixed head each kind
// starts with, and what follows the head. Heads are trivially copyable and travel by memcpy;
// they are written by Runtime::send_msg and read by decode_head, the one encode and the one
// decode of every message. Internal.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "vscale/detail/core.hpp"
#include "vscale/detail/transport.hpp"
#include "vscale/errors.hpp"

namespace vscale::detail {

enum MsgKind : std::uint16_t {
  kCallFetch = 1,  // CallFetchMsg, then the call's arguments; answered by kResult
  kCallRef = 2,    // CallRefMsg, then the arguments; the result stays here under `ref`
  kCallDo = 3,     // CallDoMsg, then the arguments; no answer
  kResult = 4,     // ResultMsg, then the value's bytes (ok) or an ErrorInfo (not ok)
  kFetch = 5,      // QueryMsg: the value of `ref`, answered by kResult with its bytes
  kWait = 6,       // QueryMsg: answered by an empty kResult once `ref` exists
  kIsReady = 7,    // QueryMsg: answered at once by kResult with one byte, 1 if it exists
  kAddRef = 8,     // AddRefMsg: more weight for a handle that ran out (answered by kResult)
  kDelRef = 9,     // DelRefMsg: weight given back by a handle that is gone
  kExit = 10,      // ExitMsg: leave politely
  kInterrupt = 11, // InterruptMsg: cancel the calls in flight here (vscale::interrupt)
  kCallInline = 12,  // CallInlineMsg, then the arguments; no answer; run by the poller that
                     // receives it, in the order of its ring (short, never blocking: channel credits)
};

struct CallFetchMsg {
  static constexpr MsgKind kind = kCallFetch;
  std::uint64_t req;
  CodeRef code;
};
struct CallRefMsg {
  static constexpr MsgKind kind = kCallRef;
  RefId ref;
  CodeRef code;
};
struct CallDoMsg {
  static constexpr MsgKind kind = kCallDo;
  CodeRef code;
};
struct CallInlineMsg {
  static constexpr MsgKind kind = kCallInline;
  CodeRef code;
};
struct ResultMsg {
  static constexpr MsgKind kind = kResult;
  std::uint64_t req;
  std::uint32_t ok;
  std::uint32_t pad = 0;
};
template <MsgKind K>
struct QueryMsg {
  static constexpr MsgKind kind = K;
  std::uint64_t req;
  RefId ref;
};
using FetchMsg = QueryMsg<kFetch>;
using WaitMsg = QueryMsg<kWait>;
using IsReadyMsg = QueryMsg<kIsReady>;
struct AddRefMsg {
  static constexpr MsgKind kind = kAddRef;
  std::uint64_t req;
  RefId ref;
  std::uint64_t weight;
};
struct DelRefMsg {
  static constexpr MsgKind kind = kDelRef;
  RefId ref;
  std::uint64_t weight;
};
struct ExitMsg {
  static constexpr MsgKind kind = kExit;
};
struct InterruptMsg {
  static constexpr MsgKind kind = kInterrupt;
};

/// Bytes a head takes on the wire (none for the kinds that have no fields).
template <class Head>
constexpr std::size_t head_size() {
  static_assert(std::is_trivially_copyable_v<Head>, "a message head travels by memcpy");
  return std::is_empty_v<Head> ? 0 : sizeof(Head);
}

/// The head of `m`, which must be a message of Head's kind. Throws Error when the body is too
/// short to hold it (a corrupt or foreign message).
template <class Head>
Head decode_head(const Inbound& m) {
  Head h{};
  constexpr std::size_t n = head_size<Head>();
  if (m.len < n)
    throw Error("vscale: a message of kind " + std::to_string(m.kind) + " from process " + std::to_string(m.src) +
                " is too short (" + std::to_string(m.len) + " bytes)");
  if constexpr (n > 0) std::memcpy(&h, m.body, n);
  return h;
}

/// What follows the head of `m`.
template <class Head>
const char* payload_of(const Inbound& m) {
  return m.body + head_size<Head>();
}
template <class Head>
std::size_t payload_size(const Inbound& m) {
  return m.len - head_size<Head>();
}

/// Who a message of this kind concerns at the receiver (which sleepers its doorbell wakes).
inline std::uint32_t bell_bits_for(std::uint16_t kind) {
  switch (kind) {
    case kCallFetch:
    case kCallRef:
    case kCallDo: return kBellExec;
    case kResult: return kBellWait;
    default: return kBellProgress;  // store queries, references, exit: any poller answers
  }
}

}  // namespace vscale::detail
