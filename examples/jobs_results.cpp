// jobs_results: the Julia manual's RemoteChannel example ("Channels and RemoteChannels"):
//
//   const jobs = RemoteChannel(()->Channel{Int}(32));
//   const results = RemoteChannel(()->Channel{Tuple}(32));
//   @everywhere function do_work(jobs, results)
//       while true
//           job_id = take!(jobs)
//           exec_time = rand()
//           sleep(exec_time)
//           put!(results, (job_id, exec_time, myid()))
//       end
//   end
//   n = 12
//   errormonitor(@async make_jobs(n));       # put! 1..n into jobs
//   for p in workers() remote_do(do_work, p, jobs, results) end
//   @elapsed while n > 0
//       job_id, exec_time, where = take!(results)
//       println("$job_id finished in $(round(exec_time; digits=2)) seconds on worker $where")
//       global n = n - 1
//   end
//
// Both channels are owned by the master (capacity 32); every worker loops taking jobs and
// putting (job id, elapsed seconds, worker id) results. Jobs sleep 10-50 ms instead of up to
// a second. Unlike the manual, the master closes `jobs` once all jobs are made, so the workers'
// loops (`for (int job : jobs)`) end when it is drained, and each worker returns how many jobs
// it did. (Closing is not needed to free a channel: it goes when its last handle, on any
// process, is gone.) The channels travel to the workers as arguments of the remote call. Run: ./jobs_results -p 4. It checks that each job was done exactly once.
#include <chrono>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <map>
#include <random>
#include <thread>
#include <tuple>
#include <vector>

#include <vscale/remote_channel.hpp>
#include <vscale/vscale.hpp>

namespace {

using Result = std::tuple<int, double, int>;  // job id, elapsed seconds, worker id

// Julia's do_work: runs on a worker until `jobs` is closed and drained; returns the job count.
int do_work(vscale::RemoteChannel<int> jobs, vscale::RemoteChannel<Result> results) {
  thread_local std::mt19937 gen{std::random_device{}()};
  std::uniform_int_distribution<int> ms(10, 50);
  int done = 0;
  for (int job_id : jobs) {
    auto t0 = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(std::chrono::milliseconds(ms(gen)));  // the "work"
    double exec_time = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    results.put(Result{job_id, exec_time, vscale::myid()});
    ++done;
  }
  return done;
}

}  // namespace

int main(int argc, char** argv) {
  vscale::Session session(argc, argv);
  if (vscale::nworkers() < 4) vscale::addprocs(4 - vscale::nworkers());  // like `julia -p 4`

  vscale::RemoteChannel<int> jobs(32);        // RemoteChannel(()->Channel{Int}(32))
  vscale::RemoteChannel<Result> results(32);  // RemoteChannel(()->Channel{Tuple}(32))

  const int n = 12;
  std::thread make_jobs([&] {  // @async make_jobs(n)
    for (int i = 1; i <= n; ++i) jobs.put(i);
    jobs.close();
  });

  std::vector<vscale::Future<int>> workers;
  for (int p : vscale::workers()) workers.push_back(vscale::remotecall(p, do_work, jobs, results));

  auto t0 = std::chrono::steady_clock::now();
  std::map<int, int> times_done;  // job id -> how often a result came back
  std::map<int, int> per_worker;
  bool where_ok = true;
  for (int left = n; left > 0; --left) {
    auto [job_id, exec_time, where] = results.take();
    std::cout << job_id << " finished in " << std::fixed << std::setprecision(2) << exec_time << " seconds on worker "
              << where << '\n';
    ++times_done[job_id];
    ++per_worker[where];
    where_ok = where_ok && where >= 2;
  }
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "elapsed: " << std::setprecision(3) << elapsed << " s\n";
  make_jobs.join();

  int failures = 0;
  auto check = [&](bool ok, const char* what) {
    std::cout << (ok ? "  ok: " : "  WRONG: ") << what << '\n';
    if (!ok) ++failures;
  };
  bool once = times_done.size() == std::size_t(n);
  for (int i = 1; i <= n; ++i) once = once && times_done.count(i) == 1 && times_done[i] == 1;
  check(once, "each of the 12 jobs done exactly once");
  check(where_ok, "every result came from a worker");
  int total = 0;
  for (auto& w : workers) total += w.fetch();
  check(total == n, "the workers' loops ended when jobs was closed and drained, 12 jobs in all");
  check(!results.isready(), "no stray results");
  for (auto [w, k] : per_worker) std::cout << "worker " << w << ": " << k << " job(s)\n";
  results.close();

  if (failures) {
    std::cout << failures << " check(s) FAILED\n";
    return EXIT_FAILURE;
  }
  std::cout << "all checks passed\n";
  return EXIT_SUCCESS;
}
