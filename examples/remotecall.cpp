// remotecall: the first pages of the Julia manual's "Distributed Computing" chapter in C++.
//
//   julia> r = remotecall(rand, 2, 2, 2)            auto r = vscale::remotecall(2, rand_matrix, 2, 2);
//   julia> s = @spawnat 2 1 .+ fetch(r)             auto s = vscale::remotecall(2, add_one, r);
//   julia> fetch(s)                                 s.fetch()
//   julia> remotecall_fetch(getindex, 2, r, 1, 1)   vscale::remotecall_fetch(2, getindex, r, 0, 0)
//   julia> r = @spawnat :any rand(2,2)              auto r2 = vscale::spawnat(vscale::any, ...);
//   julia> s = @spawnat :any 1 .+ fetch(r)          auto s2 = vscale::spawnat(vscale::any, vscale::closure(add_one, r2));
//
// It shows that a remote call returns a Future at once, that the value stays on the worker
// until fetched, that a Future can be handed to another remote call (which then reads the
// value where it lives), and that std::vector / std::string arguments and results travel as
// they are. Indices are 0-based. Run: ./remotecall -p 2 (it starts 2 workers by itself
// when run without -p). It checks its own answers and exits non-zero on a wrong one.
#include <cstdlib>
#include <iostream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <vscale/vscale.hpp>

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  std::cout << (ok ? "  ok: " : "  WRONG: ") << what << '\n';
  if (!ok) ++failures;
}

// Julia's rand(rows, cols). Each process seeds its own generator from std::random_device:
// Eigen's MatrixXd::Random uses std::rand, whose seed is the same in every freshly started
// process, so every worker would produce the very same "random" matrices.
Eigen::MatrixXd rand_matrix(long rows, long cols) {
  thread_local std::mt19937_64 gen{std::random_device{}()};
  std::uniform_real_distribution<double> u(0.0, 1.0);
  Eigen::MatrixXd m(rows, cols);
  for (long j = 0; j < cols; ++j)
    for (long i = 0; i < rows; ++i) m(i, j) = u(gen);
  return m;
}

// Julia's `1 .+ fetch(r)`. The Future arrives as an argument; on the process that owns its
// value, fetch() moves no data (the manual: "fetch doesn't move any data in this case").
Eigen::MatrixXd add_one(const vscale::Future<Eigen::MatrixXd>& r) {
  return (r.fetch().array() + 1.0).matrix().eval();
}

// Julia's getindex(r, i, j) on a Future: fetch, then index.
double getindex(const vscale::Future<Eigen::MatrixXd>& r, long i, long j) { return r.fetch()(i, j); }

}  // namespace

int main(int argc, char** argv) {
  vscale::Session session(argc, argv);
  if (vscale::nworkers() < 2) vscale::addprocs(2 - vscale::nworkers());  // like `julia -p 2`
  std::cout << "processes: " << vscale::nprocs() << ", workers:";
  for (int w : vscale::workers()) std::cout << ' ' << w;
  std::cout << "\n\n";

  // julia> r = remotecall(rand, 2, 2, 2)
  // A function (here a plain function pointer) and its arguments; returns at once.
  auto r = vscale::remotecall(2, rand_matrix, 2, 2);
  std::cout << "r = remotecall(2, rand_matrix, 2, 2)   -> Future on process " << r.where() << '\n';

  // julia> s = @spawnat 2 1 .+ fetch(r)
  // This is the @spawnat form with r passed explicitly: a lambda shipped to another process
  // may capture only trivially copyable values, and a Future is a handle with a reference
  // count, so it travels as an argument (vscale::spawnat(2, vscale::closure(add_one, r)) is
  // the same call spelled as a zero-argument spawnat).
  auto s = vscale::remotecall(
      2, [](const vscale::Future<Eigen::MatrixXd>& r) { return (r.fetch().array() + 1.0).matrix().eval(); }, r);
  std::cout << "s = remotecall(2, 1 .+ fetch(r), r)    -> Future on process " << s.where() << "\n\n";

  // julia> fetch(s)
  const Eigen::MatrixXd& sv = s.fetch();
  std::cout << "fetch(s) =\n" << sv << "\n\n";

  // julia> remotecall_fetch(r -> fetch(r)[1, 1], 2, r)
  double first = vscale::remotecall_fetch(
      2, [](const vscale::Future<Eigen::MatrixXd>& r) { return r.fetch()(0, 0); }, r);
  // julia> remotecall_fetch(getindex, 2, r, 1, 1)
  double first_again = vscale::remotecall_fetch(2, getindex, r, 0L, 0L);
  std::cout << "remotecall_fetch(2, r -> fetch(r)(0, 0), r) = " << first << '\n';
  std::cout << "remotecall_fetch(2, getindex, r, 0, 0)     = " << first_again << "\n\n";

  const Eigen::MatrixXd& rv = r.fetch();  // brings r's value here (and caches it)
  std::cout << "fetch(r) =\n" << rv << "\n\n";
  check(r.where() == 2 && s.where() == 2, "r and s live on process 2");
  check(rv.rows() == 2 && rv.cols() == 2 && (rv.array() >= 0.0).all() && (rv.array() < 1.0).all(),
        "r is a 2x2 matrix of numbers in [0, 1)");
  check(sv.rows() == 2 && sv.cols() == 2 && (sv.array() == rv.array() + 1.0).all(), "s == 1 .+ r elementwise");
  check(first == rv(0, 0) && first_again == rv(0, 0), "remotecall_fetch(getindex, r, 0, 0) == fetch(r)(0, 0)");

  // julia> r = @spawnat :any rand(2,2)
  // julia> s = @spawnat :any 1 .+ fetch(r)
  // :any picks the workers round robin, so s usually runs on a process that does not own r;
  // its fetch(r) then moves the matrix between the two workers. closure() ships the Future
  // with the function, which makes the zero-argument spawnat form possible.
  auto r2 = vscale::spawnat(vscale::any, [] { return rand_matrix(2, 2); });
  auto s2 = vscale::spawnat(vscale::any, vscale::closure(add_one, r2));
  std::cout << "r2 = spawnat(any, rand_matrix(2, 2))   -> Future on process " << r2.where() << '\n';
  std::cout << "s2 = spawnat(any, 1 .+ fetch(r2))      -> Future on process " << s2.where() << '\n';
  std::cout << "fetch(s2) =\n" << s2.fetch() << "\n\n";
  check(r2.where() >= 2 && s2.where() >= 2, "spawnat(any, ...) runs on workers");
  check((s2.fetch().array() == r2.fetch().array() + 1.0).all(), "s2 == 1 .+ r2 elementwise");
  check(!(r2.fetch().array() == rv.array()).all(), "r2 differs from r (per-process random streams)");

  // Containers and strings travel as arguments and results (a lambda cannot capture them:
  // pass them as arguments, or bundle them with vscale::closure).
  std::vector<double> xs(10);
  std::iota(xs.begin(), xs.end(), 1.0);  // 1, 2, ..., 10
  auto squares = vscale::remotecall(
      3,
      [](std::vector<double> v) {
        for (double& x : v) x *= x;
        return v;
      },
      xs);
  std::string greeting = vscale::remotecall_fetch(
      3, [](const std::string& who, int n) { return "hello " + who + " from process " + std::to_string(vscale::myid()) + " (" + std::to_string(n) + ")"; },
      std::string("master"), 42);
  double total = vscale::spawnat(vscale::any, vscale::closure(
                                                  [](const std::vector<double>& v) {
                                                    return std::accumulate(v.begin(), v.end(), 0.0);
                                                  },
                                                  xs))
                     .fetch();
  std::cout << "squares of 1..10 on process " << squares.where() << ':';
  for (double x : squares.fetch()) std::cout << ' ' << x;
  std::cout << '\n' << greeting << '\n' << "sum of 1..10 = " << total << "\n\n";
  const std::vector<double>& sq = squares.fetch();
  bool squares_ok = sq.size() == 10;
  for (std::size_t i = 0; squares_ok && i < sq.size(); ++i) squares_ok = sq[i] == double((i + 1) * (i + 1));
  check(squares_ok, "std::vector argument and result: squares of 1..10");
  check(greeting == "hello master from process 3 (42)", "std::string argument and result");
  check(total == 55.0, "closure with a std::vector capture: sum of 1..10 == 55");

  if (failures) {
    std::cout << failures << " check(s) FAILED\n";
    return EXIT_FAILURE;
  }
  std::cout << "all checks passed\n";
  return EXIT_SUCCESS;
}
