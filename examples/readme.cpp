// examples/readme.cpp: the whole program, run as ./readme -p 2
#include <vscale/vscale.hpp>
#include <cstdio>

long count_heads(long n);  // flips n coins with this process's own generator

int main(int argc, char** argv) {
  vscale::Session session(argc, argv);  // starts the workers (-p N); in them, code above
                                        // this line runs too and the constructor never returns
  auto a = vscale::spawnat(vscale::any, [] { return count_heads(100'000'000); });
  auto b = vscale::spawnat(vscale::any, [] { return count_heads(100'000'000); });
  std::printf("%ld heads\n", a.fetch() + b.fetch());   // two workers, in parallel
  int w = vscale::remotecall_fetch(2, [](int x) { return x * vscale::myid(); }, 21);
  std::printf("worker 2 says %d\n", w);            // 42
  return w == 42 ? 0 : 1;
}

// (Below the README's excerpt.) Each process seeds its own generator, so the workers flip
// different coins; 64 coins per draw.
#include <bit>
#include <random>
long count_heads(long n) {
  static thread_local std::mt19937_64 gen{std::random_device{}() ^ (std::uint64_t(vscale::myid()) << 32)};
  long c = 0;
  for (long i = 0; i < n / 64; ++i) c += std::popcount(gen());
  for (long i = 0; i < n % 64; ++i) c += gen() & 1;
  return c;
}
