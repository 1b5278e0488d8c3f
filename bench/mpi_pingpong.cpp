// mpi_pingpong: the raw MPI round trip, the reference bench_remotecall quotes beside its own
// remotecall_fetch round trip: rank 0 sends one int to rank 1, which sends it back, plus one.
//
//   mpirun -n 2 ./mpi_pingpong [--json] [--reps R] [--calls C]
//
// A warm-up of max(1000, C / 10) round trips, then R reps of C round trips; seconds = the median
// over the reps of the time per round trip (rank 0's clock). Only rank 0 prints: with --json one
// line {"bench":"remotecall","variant":"mpi_pingpong_rtt","procs":2,"threads":1,"n":C,
// "seconds":S,"per_s":X,"reps":R}, in bench_remotecall's format, so that its driver can re-print
// it among its own lines. Ranks beyond 1 only wait at the final barrier.
#include <mpi.h>

#include <algorithm>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "bench_util.hpp"

namespace {

// `k` round trips of one int between ranks 0 and 1; false when an answer is wrong.
bool pingpong(int rank, long k) {
  int v = 0;
  bool ok = true;
  for (long i = 0; i < k; ++i) {
    if (rank == 0) {
      const int sent = static_cast<int>(i & 0xffff);
      v = sent;
      MPI_Send(&v, 1, MPI_INT, 1, 0, MPI_COMM_WORLD);
      MPI_Recv(&v, 1, MPI_INT, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      ok = ok && v == sent + 1;
    } else if (rank == 1) {
      MPI_Recv(&v, 1, MPI_INT, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      ++v;
      MPI_Send(&v, 1, MPI_INT, 0, 0, MPI_COMM_WORLD);
    }
  }
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);

  bool json = false;
  int reps = 5;
  long calls = 20000;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json")
      json = true;
    else if (a == "--reps")
      reps = static_cast<int>(bench_util::positive_arg("mpi_pingpong", argc, argv, i));
    else if (a == "--calls")
      calls = bench_util::positive_arg("mpi_pingpong", argc, argv, i);
    else {
      if (rank == 0) fmt::print(stderr, "mpi_pingpong: unknown option '{}'\nusage: mpirun -n 2 mpi_pingpong [--json] [--reps R] [--calls C]\n", a);
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
  }
  if (size < 2) {
    if (rank == 0) fmt::print(stderr, "mpi_pingpong: needs 2 ranks (mpirun -n 2), has {}\n", size);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }

  bool ok = pingpong(rank, std::max(1000L, calls / 10));  // warm up: connections, caches
  std::vector<double> per;
  for (int r = 0; r < reps; ++r) {
    MPI_Barrier(MPI_COMM_WORLD);  // both ranks start the rep together
    const auto t0 = bench_util::Clock::now();
    ok = pingpong(rank, calls) && ok;
    per.push_back(bench_util::seconds_since(t0) / static_cast<double>(calls));
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) {
    if (!ok) {
      fmt::print(stderr, "mpi_pingpong: rank 1 answered wrong values\n");
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    const double s = bench_util::median(per);
    if (json)
      bench_util::JsonLine()
          .add(R"("bench":"remotecall","variant":"mpi_pingpong_rtt","procs":2,"threads":1,"n":{},"seconds":{:.9g},)"
               R"("per_s":{:.6g},"reps":{})",
               calls, s, 1.0 / s, reps)
          .print();
    else
      fmt::print("mpi_pingpong: {} per round trip of one int between ranks 0 and 1 (median of {} reps of {})\n",
                 bench_util::human_time(s), reps, calls);
  }
  MPI_Finalize();
  return 0;
}
