// vscale::interrupt: a kInterrupt message bumps the target's interrupt count (in its slot of
// the control segment) and wakes its waiters; calls compare it with the count they started
// with (runtime.cpp run_task, Runtime::call_interrupted).
#include "vscale/interrupt.hpp"

#include "vscale/detail/runtime.hpp"

namespace vscale {

void interrupt(const std::vector<int>& ids) {
  auto& rt = detail::Runtime::get("interrupt");
  for (int id : ids) {
    rt.check_dest(id);
    if (id == rt.self()) {
      rt.segment().slot(id).interrupts.fetch_add(1, std::memory_order_acq_rel);
      rt.notify_local();
    } else {
      rt.send_msg(id, detail::InterruptMsg{});
    }
  }
}

void check_interrupt() {
  if (interrupted()) detail::throw_interrupted();
}

bool interrupted() noexcept {
  auto* rt = detail::Runtime::current();
  return rt && rt->call_interrupted();
}

namespace detail {
std::uint32_t interrupts_of(int id) {
  return Runtime::get("interrupt").segment().slot(id).interrupts.load(std::memory_order_acquire);
}
NoInterrupt::NoInterrupt() { ++tl_no_interrupt; }
NoInterrupt::~NoInterrupt() { --tl_no_interrupt; }
}  // namespace detail

}  // namespace vscale
