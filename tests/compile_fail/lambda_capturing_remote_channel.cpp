// A vscale handle (here a RemoteChannel) carries a weight and is not trivially copyable: a
// shipped lambda cannot capture it, and the error says to pass it as an argument or through
// vscale::closure (one rule for Future, RemoteChannel, RemoteValue, SharedArray, WorkerPool).
// EXPECT_ERROR: no vscale handle .Future, RemoteChannel, RemoteValue, SharedArray, WorkerPool.: pass a handle
#include <vscale/vscale.hpp>

int f() {
  vscale::RemoteChannel<int> ch(4);
  return vscale::remotecall_fetch(2, [ch] { return ch.take(); });
}
