// count_heads: the Julia manual's Monte Carlo example. Two workers each flip n coins and the
// master adds the two counts, the "many independent iterations, then a reduction" pattern:
//
//   julia> a = @spawnat :any count_heads(100000000)     auto a = vscale::spawnat(vscale::any, ...);
//   julia> b = @spawnat :any count_heads(100000000)     auto b = vscale::spawnat(vscale::any, ...);
//   julia> fetch(a)+fetch(b)                            a.fetch().heads + b.fetch().heads
//   100001564
//
// The manual then generalizes to any number of workers with a reducing parallel loop:
//
//   julia> nheads = @distributed (+) for i = 1:200000000     long nheads = vscale::distributed_for(
//              Int(rand(Bool))                                    {0, 2 * n}, flip_one, std::plus<>{});
//          end
//
// Julia needs `@everywhere include(...)` so that the workers know count_heads; here every
// worker is the same binary, so a plain function is already there.
// Run: ./count_heads -p 2 [--n N]   (N coins per worker, default 100000000)
// It checks its answer (the two halves ran on different workers with independent random
// streams, and the total is within 6 standard deviations of n) and exits non-zero otherwise.
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <random>
#include <string>

#include <vscale/vscale.hpp>

// Sums n random bits. The generator is seeded per call from std::random_device *and* this
// process's id: workers are copies of one program, so any fixed or default seed (std::rand,
// Eigen's Random, a default-constructed std::mt19937) would make every worker flip the very
// same coins, and the two "independent" trials would be one trial counted twice. random_device
// alone normally differs per process; mixing in myid() guarantees distinct streams even where
// random_device is deterministic.
long count_heads(long n) {
  std::random_device rd;
  std::seed_seq seed{rd(), rd(), rd(), rd(), static_cast<unsigned>(vscale::myid())};
  std::mt19937_64 gen(seed);
  long c = 0;
  // Each draw gives 64 fair bits; count the ones (the heads) 64 coins at a time.
  for (long i = 0; i < n / 64; ++i) c += std::popcount(gen());
  if (long rest = n % 64) c += std::popcount(gen() & ((std::uint64_t{1} << rest) - 1));
  return c;
}

// One coin of the distributed_for form: 1 for heads. The generator is per thread of each
// process, seeded as in count_heads.
long flip_one(long /*i*/) {
  thread_local std::mt19937_64 gen = [] {
    std::random_device rd;
    std::seed_seq seed{rd(), rd(), rd(), rd(), static_cast<unsigned>(vscale::myid())};
    return std::mt19937_64(seed);
  }();
  thread_local std::uint64_t bits = 0;
  thread_local int left = 0;
  if (left == 0) {
    bits = gen();
    left = 64;
  }
  --left;
  const long head = static_cast<long>(bits & 1);
  bits >>= 1;
  return head;
}

// What a trial reports: who ran it, and what it counted.
struct Trial {
  int pid;
  long heads;
};

int main(int argc, char** argv) {
  vscale::Session session(argc, argv);

  long n = 100000000;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--n" && i + 1 < argc) {
      n = std::stol(argv[++i]);
    } else {
      std::cerr << "usage: " << argv[0] << " [-p N] [--n COINS_PER_WORKER]\n";
      return 2;
    }
  }
  if (n <= 0) {
    std::cerr << "count_heads: --n must be positive\n";
    return 2;
  }
  if (vscale::nworkers() < 2) vscale::addprocs(2 - vscale::nworkers());  // like `julia -p 2`

  // The lambdas capture only n (a long): that is all a shipped lambda may capture by value.
  auto a = vscale::spawnat(vscale::any, [n] { return Trial{vscale::myid(), count_heads(n)}; });
  auto b = vscale::spawnat(vscale::any, [n] { return Trial{vscale::myid(), count_heads(n)}; });

  const Trial& ta = a.fetch();
  const Trial& tb = b.fetch();
  long total = ta.heads + tb.heads;
  std::cout << "a = spawnat(any, count_heads(" << n << ")) ran on process " << ta.pid << ": " << ta.heads << " heads\n";
  std::cout << "b = spawnat(any, count_heads(" << n << ")) ran on process " << tb.pid << ": " << tb.heads << " heads\n";
  std::cout << "fetch(a) + fetch(b) = " << total << "   (expected about " << n << ")\n";

  // 2n fair coins: mean n, standard deviation sqrt(2n / 4).
  double sd = std::sqrt(2.0 * static_cast<double>(n) / 4.0);
  double z = (static_cast<double>(total) - static_cast<double>(n)) / sd;
  std::cout << "deviation from n: " << total - n << " = " << z << " standard deviations\n";

  int failures = 0;
  if (ta.pid == tb.pid || ta.pid < 2 || tb.pid < 2) {
    std::cout << "WRONG: the two trials should run on two different workers\n";
    ++failures;
  }
  // Identical streams would make the two counts equal every time. Independent streams give
  // equal counts by chance with probability about 1 / sqrt(pi n) (4e-4 for n = 2e6), so an
  // equal pair is flipped once more on the same two workers before it counts as a failure.
  if (ta.heads == tb.heads && ta.pid != tb.pid) {
    std::cout << "equal counts: flipping again on processes " << ta.pid << " and " << tb.pid << '\n';
    auto a2 = vscale::remotecall(ta.pid, count_heads, n);
    long b2 = vscale::remotecall_fetch(tb.pid, count_heads, n);
    if (a2.fetch() == b2) {
      std::cout << "WRONG: both workers counted the same number of heads twice (same random stream?)\n";
      ++failures;
    }
  }
  if (std::abs(z) > 6.0) {
    std::cout << "WRONG: the total is more than 6 standard deviations from n\n";
    ++failures;
  }

  // The distributed_for (+) form: 2n coins over all the workers, reduced with +.
  long nheads = vscale::distributed_for({0, 2 * n}, flip_one, std::plus<>{});
  double z2 = (static_cast<double>(nheads) - static_cast<double>(n)) / sd;
  std::cout << "distributed_for({0, " << 2 * n << "}, flip_one, std::plus<>{}) = " << nheads << "   (" << z2
            << " standard deviations from " << n << ")\n";
  if (std::abs(z2) > 6.0) {
    std::cout << "WRONG: the distributed_for total is more than 6 standard deviations from n\n";
    ++failures;
  }
  if (failures) return EXIT_FAILURE;
  std::cout << "ok\n";
  return EXIT_SUCCESS;
}
