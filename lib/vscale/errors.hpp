// Exceptions that vscale throws. Every message names the process and what to do.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

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
/// A failure that crossed several processes (1 calls 2, which calls 3, which throws) keeps
/// its origin: pid() is 3, type() and message() are the original ones, `path()` is {3, 2}
/// (where it passed, origin first; the last is the process this caller called), and what()
/// reads "on worker 3, called from worker 2: std::runtime_error: ...".
class RemoteException : public Error {
 public:
  /// `path`: the processes it passed through, origin first; empty means {pid}.
  RemoteException(int pid, std::string type, std::string message, std::vector<int> path = {});
  int pid() const noexcept { return pid_; }
  const std::string& type() const noexcept { return type_; }
  const std::string& message() const noexcept { return message_; }
  /// The processes the failure passed through on its way here, origin (pid()) first.
  const std::vector<int>& path() const noexcept { return path_; }

 private:
  int pid_;
  std::string type_;
  std::string message_;
  std::vector<int> path_;
};

/// The process a call, fetch or channel operation depended on does not exist (never
/// started, removed) or died. `reason()` is exactly one of: "killed by SIGKILL" (any signal
/// by name, "(out of memory)" appended when the kernel's OOM killer did it), "exited with
/// code 3", "was removed by rmprocs", "has not finished starting", "does not exist (no such
/// process id)"; a worker that failed to start says why ("did not join within 60000 ms;
/// killed", "refused: ..."); a vscale::Barrier appends what it could no longer do. what()
/// reads "vscale: process 3 is gone: killed by SIGKILL" (or "vscale: process 9 does not
/// exist (no such process id)").
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
