// pmap_svdvals: the manual's parallel map over ten random matrices,
//
//   julia> M = Matrix{Float64}[rand(1000,1000) for i = 1:10];
//   julia> pmap(svdvals, M);
//
// with Eigen: each matrix travels to a worker (Eigen matrices ship as they are), the worker
// computes its singular values, and the results come back in input order.
// Run: ./pmap_svdvals -p 2 [--size N]   (N x N matrices, default 1000)
// It checks the results against a serial computation on the master and exits non-zero if
// they differ.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <Eigen/SVD>

#include <vscale/vscale.hpp>
#include <vscale/pmap.hpp>

// Julia's svdvals: the singular values, in decreasing order.
Eigen::VectorXd svdvals(const Eigen::MatrixXd& m) { return Eigen::BDCSVD<Eigen::MatrixXd>(m).singularValues(); }

int main(int argc, char** argv) {
  vscale::Session session(argc, argv);

  long size = 1000;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--size" && i + 1 < argc) {
      size = std::stol(argv[++i]);
    } else {
      std::cerr << "usage: " << argv[0] << " [-p N] [--size N]\n";
      return 2;
    }
  }
  if (size <= 0) {
    std::cerr << "pmap_svdvals: --size must be positive\n";
    return 2;
  }

  // M = [rand(size, size) for i = 1:10], uniform on [0, 1) as Julia's rand.
  std::mt19937_64 gen(12345);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<Eigen::MatrixXd> M(10);
  for (auto& m : M) m = Eigen::MatrixXd::NullaryExpr(size, size, [&] { return u(gen); });

  auto t0 = std::chrono::steady_clock::now();
  // One matrix per remote call (each call is a lot of work; Julia's default batch size is 1).
  std::vector<Eigen::VectorXd> sv = vscale::pmap(svdvals, M, {.batch_size = 1});
  double t_par = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  t0 = std::chrono::steady_clock::now();
  std::vector<Eigen::VectorXd> serial;
  for (const auto& m : M) serial.push_back(svdvals(m));
  double t_ser = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::cout << "pmap(svdvals, M) over 10 " << size << "x" << size << " matrices on " << vscale::nworkers()
            << " workers: " << t_par << " s (serial: " << t_ser << " s)\n";
  double worst = 0;
  bool ok = sv.size() == serial.size();
  for (std::size_t k = 0; ok && k < sv.size(); ++k) {
    if (sv[k].size() != serial[k].size()) {
      ok = false;
      break;
    }
    const double scale = std::max(1.0, serial[k].cwiseAbs().maxCoeff());
    worst = std::max(worst, (sv[k] - serial[k]).cwiseAbs().maxCoeff() / scale);
  }
  if (ok) std::cout << "largest singular value of M[0]: " << sv[0](0) << "; max relative difference to serial: " << worst << '\n';
  if (!ok || !(worst < 1e-9)) {
    std::cout << "WRONG: pmap's singular values differ from the serial computation\n";
    return EXIT_FAILURE;
  }
  std::cout << "ok\n";
  return EXIT_SUCCESS;
}
