// Exception types and how failures travel between processes.
#include <cxxabi.h>

#include <cstdlib>
#include <exception>
#include <memory>
#include <typeinfo>

#include "vscale/detail/core.hpp"

namespace vscale {

RemoteException::RemoteException(int pid, std::string type, std::string message)
    : Error("on worker " + std::to_string(pid) + ": " + type + ": " + message),
      pid_(pid),
      type_(std::move(type)),
      message_(std::move(message)) {
  if (pid == 1) {
    // The master is not a worker; say so rather than "worker 1".
    static_cast<std::runtime_error&>(*this) =
        std::runtime_error("on the master (process 1): " + type_ + ": " + message_);
  }
}

ProcessExitedException::ProcessExitedException(int pid, std::string reason)
    : Error("process " + std::to_string(pid) + " " + reason), pid_(pid), reason_(std::move(reason)) {}

namespace detail {

std::string demangle(const char* name) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> p(abi::__cxa_demangle(name, nullptr, nullptr, &status), std::free);
  return status == 0 && p ? std::string(p.get()) : std::string(name);
}

void ErrorInfo::raise() const {
  switch (kind) {
    case Remote: throw RemoteException(pid, type, message);
    case Exited: throw ProcessExitedException(pid, message);
    case Usage: throw UsageError(message);
    case None: break;
  }
  throw Error("vscale: internal error: raise() without an error");
}

void ErrorInfo::write(Writer& w) const {
  std::uint32_t k = kind;
  w.write_raw(&k, sizeof k);
  w.write_raw(&pid, sizeof pid);
  std::uint32_t n = static_cast<std::uint32_t>(type.size());
  w.write_raw(&n, sizeof n);
  w.write_raw(type.data(), n);
  n = static_cast<std::uint32_t>(message.size());
  w.write_raw(&n, sizeof n);
  w.write_raw(message.data(), n);
}

ErrorInfo ErrorInfo::read(Reader& r) {
  ErrorInfo e;
  std::uint32_t k = 0, n = 0;
  r.read_raw(&k, sizeof k);
  e.kind = static_cast<Kind>(k);
  r.read_raw(&e.pid, sizeof e.pid);
  r.read_raw(&n, sizeof n);
  e.type.resize(n);
  r.read_raw(e.type.data(), n);
  r.read_raw(&n, sizeof n);
  e.message.resize(n);
  r.read_raw(e.message.data(), n);
  return e;
}

ErrorInfo ErrorInfo::from_current_exception(int pid) {
  ErrorInfo e;
  e.kind = Remote;
  e.pid = pid;
  const std::type_info* t = abi::__cxa_current_exception_type();
  e.type = t ? demangle(t->name()) : "unknown";
  try {
    throw;
  } catch (const RemoteException& re) {
    // A failure that crossed several processes keeps its origin.
    e.pid = re.pid();
    e.type = re.type();
    e.message = re.message();
  } catch (const ProcessExitedException& pe) {
    e.kind = Exited;
    e.pid = pe.pid();
    e.message = pe.reason();
  } catch (const std::exception& ex) {
    e.message = ex.what();
  } catch (const char* s) {  // throw "text": keep the text
    e.type = "const char*";
    e.message = s ? s : "";
  } catch (const std::string& s) {
    e.type = "std::string";
    e.message = s;
  } catch (...) {
    e.message = "(an exception that is not a std::exception)";
  }
  return e;
}

}  // namespace detail
}  // namespace vscale
