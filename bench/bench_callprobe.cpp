// bench_callprobe: a fixed number of calls of one kind, for counting instructions per call
// under callgrind (bench/callgrind_calls.sh runs it twice and takes the difference). It times
// nothing: instruction counts do not depend on the machine's load, wall clock does.
//
//   ./bench_callprobe -p 1 [--mode fetch|do|chan] [--calls N]
//
//   fetch  N x remotecall_fetch(w, int -> int)
//   do     N x remote_do(w, counter += 1), then one remotecall_fetch of the counter
//   chan   a worker puts N longs into a master-owned RemoteChannel<long>(1024), the master takes them
//
// Exits non-zero when the results are wrong, so a broken run is not counted.
#include <cstdlib>
#include <string>

#include <vscale/vscale.hpp>

namespace {
int add_one(int x) { return x + 1; }
long counter = 0;  // on the worker
void bump() { ++counter; }
long get_count() { return counter; }
}  // namespace

int main(int argc, char** argv) {
  vscale::Session session(argc, argv);
  std::string mode = "fetch";
  long n = 1000;
  for (int i = 1; i + 1 < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--mode") mode = argv[++i];
    else if (a == "--calls") n = std::atol(argv[++i]);
  }
  if (vscale::nworkers() < 1 || n < 1) return 2;
  const int w = vscale::workers().front();
  if (mode == "fetch") {
    long s = 0;
    for (long i = 0; i < n; ++i) s += vscale::remotecall_fetch(w, add_one, static_cast<int>(i % 1000));
    long want = 0;
    for (long i = 0; i < n; ++i) want += i % 1000 + 1;
    return s == want ? 0 : 1;
  }
  if (mode == "do") {
    for (long i = 0; i < n; ++i) vscale::remote_do(w, bump);
    return vscale::remotecall_fetch(w, get_count) == n ? 0 : 1;
  }
  if (mode == "chan") {
    vscale::RemoteChannel<long> ch(1024, 1);
    auto producer = vscale::remotecall(w, [](vscale::RemoteChannel<long> c, long count) {
      for (long i = 0; i < count; ++i) c.put(i);
    }, ch, n);
    long s = 0;
    for (long i = 0; i < n; ++i) s += ch.take();
    producer.wait();
    return s == n * (n - 1) / 2 ? 0 : 1;
  }
  return 2;
}
