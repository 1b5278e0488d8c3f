// monte_carlo_pi: the Monte Carlo estimate of pi from the "Julia distributed computing in the
// cloud" post, written with distributed_for and a `+` reducer:
//
//   inside = @distributed (+) for i = 1:N          long inside = vscale::distributed_for(
//       Int(rand()^2 + rand()^2 <= 1)                  {0, n}, [](long) { ... }, std::plus<>{});
//   end
//   pi_est = 4 * inside / N
//
// Each worker draws an independent random stream: its generator is seeded from
// std::random_device *and* myid() (workers are copies of one program, so a fixed or default
// seed would give every worker the same samples; see count_heads.cpp).
// Run: ./monte_carlo_pi -p 2 [--samples N]   (default 1e8)
// It checks |pi_est - pi| < 6 standard errors and exits non-zero otherwise.
#include <cmath>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <numbers>
#include <random>
#include <string>

#include <vscale/vscale.hpp>

namespace {

// One generator per thread of each process, seeded on first use.
std::mt19937_64& generator() {
  thread_local std::mt19937_64 gen = [] {
    std::random_device rd;
    std::seed_seq seed{rd(), rd(), rd(), rd(), static_cast<unsigned>(vscale::myid())};
    return std::mt19937_64(seed);
  }();
  return gen;
}

// One sample: 1 when a random point of the unit square falls inside the quarter circle.
long sample(long /*i*/) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  auto& g = generator();
  const double x = u(g), y = u(g);
  return x * x + y * y <= 1.0 ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  vscale::Session session(argc, argv);

  long n = 100000000;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--samples" && i + 1 < argc) {
      n = static_cast<long>(std::stod(argv[++i]));  // accepts 1e8 as well as 100000000
    } else {
      std::cerr << "usage: " << argv[0] << " [-p N] [--samples N]\n";
      return 2;
    }
  }
  if (n <= 0) {
    std::cerr << "monte_carlo_pi: --samples must be positive\n";
    return 2;
  }

  const auto t0 = std::chrono::steady_clock::now();
  // `sample` is a plain function: a function pointer ships as a code address.
  const long inside = vscale::distributed_for({0, n}, &sample, std::plus<>{});
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const double pi_est = 4.0 * static_cast<double>(inside) / static_cast<double>(n);
  const double err = pi_est - std::numbers::pi;
  const double p = std::numbers::pi / 4;
  const double se = 4.0 * std::sqrt(p * (1 - p) / static_cast<double>(n));  // standard error of pi_est
  std::cout << "samples: " << n << " on " << vscale::nworkers() << " workers, " << secs << " s\n";
  std::cout << "pi estimate: " << pi_est << "\n";
  std::cout << "error: " << err << " (" << err / se << " standard errors)\n";
  if (std::abs(err) >= 6 * se) {
    std::cout << "WRONG: the estimate is more than 6 standard errors from pi\n";
    return EXIT_FAILURE;
  }
  std::cout << "ok\n";
  return EXIT_SUCCESS;
}
