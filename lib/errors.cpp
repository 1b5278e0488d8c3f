// Exception types and how failures travel between processes.
#include <cxxabi.h>

#include <cstdlib>
#include <exception>
#include <memory>
#include <typeinfo>
#include <vector>

#include <fmt/format.h>

#include "vscale/detail/core.hpp"

namespace vscale {

namespace {

// "worker 3", or the master by name (it is not a worker).
std::string process_name(int pid, bool origin) {
  if (pid == 1) return origin ? "the master (process 1)" : "the master";
  return fmt::format("worker {}", pid);
}

// The path origin first, as what() tells it: "on worker 3, called from worker 2".
std::string remote_what(const std::vector<int>& path, const std::string& type, const std::string& message) {
  std::string s = fmt::format("on {}", process_name(path.front(), true));
  for (std::size_t i = 1; i < path.size(); ++i) s += fmt::format(", called from {}", process_name(path[i], false));
  return fmt::format("{}: {}: {}", s, type, message);
}

std::vector<int> normal_path(int pid, std::vector<int> path) {
  if (path.empty() || path.front() != pid) path.insert(path.begin(), pid);
  return path;
}

// Reasons that are not a death ("does not exist", "has not finished starting") read without
// "is gone".
std::string exited_what(int pid, const std::string& reason) {
  const bool not_dead = reason.rfind("does not exist", 0) == 0 || reason.rfind("has not finished starting", 0) == 0;
  if (not_dead) return fmt::format("vscale: process {} {}", pid, reason);
  return fmt::format("vscale: process {} is gone: {}", pid, reason);
}

}  // namespace

RemoteException::RemoteException(int pid, std::string type, std::string message, std::vector<int> path)
    : Error(remote_what(normal_path(pid, path), type, message)),
      pid_(pid),
      type_(std::move(type)),
      message_(std::move(message)),
      path_(normal_path(pid, std::move(path))) {}

ProcessExitedException::ProcessExitedException(int pid, std::string reason)
    : Error(exited_what(pid, reason)), pid_(pid), reason_(std::move(reason)) {}

namespace detail {

std::string demangle(const char* name) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> p(abi::__cxa_demangle(name, nullptr, nullptr, &status), std::free);
  return status == 0 && p ? std::string(p.get()) : std::string(name);
}

void ErrorInfo::raise() const {
  switch (kind) {
    case Remote: throw RemoteException(pid, type, message, {path.begin(), path.end()});
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
  n = static_cast<std::uint32_t>(path.size());
  w.write_raw(&n, sizeof n);
  w.write_raw(path.data(), n * sizeof(std::int32_t));
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
  r.read_raw(&n, sizeof n);
  if (n > r.remaining() / sizeof(std::int32_t)) throw Error("vscale: truncated message (internal error)");
  e.path.resize(n);
  r.read_raw(e.path.data(), n * sizeof(std::int32_t));
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
    // A failure that crossed several processes keeps its origin, and notes that it passed
    // here (1 calls 2, which calls 3, which throws: 2 sends {3, 2} on to 1).
    e.pid = re.pid();
    e.type = re.type();
    e.message = re.message();
    e.path.assign(re.path().begin(), re.path().end());
    if (e.path.empty() || e.path.back() != pid) e.path.push_back(pid);
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
