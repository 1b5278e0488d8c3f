// Exceptions that vscale throws. Every message names the process and what to do.
#pragma once

#include <stdexcept>
#include <string>

namespace vscale {

/// Base of every exception vscale throws itself (user exceptions travel as RemoteException).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Misuse of the API: a call that is never valid where it was made (addprocs on a worker,
/// fetch on an empty Future, no Session). Fix the program, not the cluster.
class UsageError : public Error {
 public:
  using Error::Error;
};

/// An exception thrown by user code on process `pid()`, carried back to the caller.
/// `type()` is the demangled C++ type of what was thrown, `what()` names all three.
class RemoteException : public Error {
 public:
  RemoteException(int pid, std::string type, std::string message);
  int pid() const noexcept { return pid_; }
  const std::string& type() const noexcept { return type_; }
  const std::string& message() const noexcept { return message_; }

 private:
  int pid_;
  std::string type_;
  std::string message_;
};

/// The process a call, fetch or channel operation depended on does not exist (never
/// started, removed) or died; `reason()` says how ("killed by SIGKILL", "exited with code 3").
class ProcessExitedException : public Error {
 public:
  ProcessExitedException(int pid, std::string reason);
  int pid() const noexcept { return pid_; }
  const std::string& reason() const noexcept { return reason_; }

 private:
  int pid_;
  std::string reason_;
};

/// The call this code runs in was cancelled by vscale::interrupt (seen at check_interrupt()
/// or at a wait for a remote result). The caller of the call gets it as a RemoteException
/// whose type() is "vscale::InterruptedException"; the process goes on serving calls.
class InterruptedException : public Error {
 public:
  using Error::Error;
};

}  // namespace vscale
