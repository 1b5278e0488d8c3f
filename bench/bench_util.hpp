// What every vscale benchmark needs: timing, medians, readable times, the --json lines, and the
// reference that remote calls are measured against (a 1-byte round trip over a Unix socketpair).
// Text is formatted with fmt (its {:.9g} etc. write exactly what printf's %.9g does).
#pragma once

#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace bench_util {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

/// "1.69 us", "8.2 ms", ...
inline std::string human_time(double s) {
  if (s < 1e-6) return fmt::format("{:.1f} ns", s * 1e9);
  if (s < 1e-3) return fmt::format("{:.2f} us", s * 1e6);
  if (s < 1) return fmt::format("{:.2f} ms", s * 1e3);
  return fmt::format("{:.3f} s", s);
}

/// One line of a bench's --json output: a flat object, appended to piece by piece (each piece
/// an fmt format, e.g. add(R"(,"per_s":{:.6g})", x)), then printed whole and flushed, so that
/// a driver reading the pipe (bench_scaling) gets every measurement as it is made.
class JsonLine {
 public:
  JsonLine() { buf_.push_back('{'); }
  /// Appends `f` formatted with `args`.
  template <class... T>
  JsonLine& add(fmt::format_string<T...> f, T&&... args) {
    fmt::format_to(std::back_inserter(buf_), f, std::forward<T>(args)...);
    return *this;
  }
  /// Closes the object and prints it on stdout as one line.
  void print() {
    fmt::print("{}}}\n", fmt::string_view(buf_.data(), buf_.size()));
    std::fflush(stdout);
  }

 private:
  fmt::memory_buffer buf_;
};

/// Text made with fmt piece by piece or line by line (the SVG charts), then written to a file.
class Text {
 public:
  /// Appends `f` formatted with `args`.
  template <class... T>
  Text& add(fmt::format_string<T...> f, T&&... args) {
    fmt::format_to(std::back_inserter(buf_), f, std::forward<T>(args)...);
    return *this;
  }
  /// The same, and a newline.
  template <class... T>
  Text& line(fmt::format_string<T...> f, T&&... args) {
    fmt::format_to(std::back_inserter(buf_), f, std::forward<T>(args)...);
    buf_.push_back('\n');
    return *this;
  }
  /// Writes it all to `path`; false when that fails.
  bool write_to(const std::string& path) const {
    std::ofstream out(path);
    out.write(buf_.data(), static_cast<std::streamsize>(buf_.size()));
    return static_cast<bool>(out);
  }

 private:
  fmt::memory_buffer buf_;
};

// --- SVG charts (bench_advection, bench_scaling, bench_report): plain text, coordinates with one decimal ---

/// Opens a W x H chart: the <svg> element (sans-serif, 12 px) and a white background.
inline void svg_begin(Text& svg, double w, double h) {
  svg.line(R"(<svg xmlns="http://www.w3.org/2000/svg" width="{0:.1f}" height="{1:.1f}" viewBox="0 0 {0:.1f} {1:.1f}")"
           R"( font-family="sans-serif" font-size="12">)",
           w, h);
  svg.line(R"(<rect width="100%" height="100%" fill="white"/>)");
}

/// A linear axis from 0 to at least `max`: its tick step (1, 2 or 5 times a power of ten, about
/// five ticks) and its top (a whole number of steps).
struct LinearAxis {
  double step, top;
};
inline LinearAxis linear_axis(double max) {
  double step = std::pow(10.0, std::floor(std::log10(max / 5)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (max / (step * m) <= 6) {
      step *= m;
      break;
    }
  return {step, std::max(step, std::ceil(max / step) * step)};
}

/// A horizontal grid line at height y from x0 to x1, labelled with `value` left of x0.
inline void svg_tick(Text& svg, double x0, double x1, double y, double value) {
  svg.line(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="#ddd"/>)", x0, y, x1, y);
  svg.line(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="end">{:.6g}</text>)", x0 - 6, y + 4, value);
}

/// The y axis and the x axis of a plot area of w x h whose top left corner is (x0, y0).
inline void svg_axes(Text& svg, double x0, double y0, double w, double h) {
  svg.line(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="black"/>)", x0, y0, x0, y0 + h);
  svg.line(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="black"/>)", x0, y0 + h, x0 + w, y0 + h);
}

/// A point of a series: where it is drawn (pixels) and its tooltip.
struct SvgPoint {
  double x, y;
  std::string title;
};

/// A series of a chart: a 2 px polyline through `points` and a dot with its tooltip at each.
inline void svg_series(Text& svg, const std::string& colour, const std::vector<SvgPoint>& points) {
  svg.add(R"(<polyline fill="none" stroke="{}" stroke-width="2" points=")", colour);
  for (const SvgPoint& p : points) svg.add("{:.1f},{:.1f} ", p.x, p.y);
  svg.line(R"("/>)");
  for (const SvgPoint& p : points)
    svg.line(R"(<circle cx="{:.1f}" cy="{:.1f}" r="3.5" fill="{}"><title>{}</title></circle>)", p.x, p.y, colour, p.title);
}

/// The ideal (speed-up = count) as a dashed black polyline through `points`.
inline void svg_ideal(Text& svg, const std::vector<std::pair<double, double>>& points) {
  svg.add(R"(<polyline fill="none" stroke="black" stroke-dasharray="5,4" points=")");
  for (const auto& [x, y] : points) svg.add("{:.1f},{:.1f} ", x, y);
  svg.line(R"("/>)");
}

/// A legend entry at (x, y): a short line in `colour` (dashed black for the ideal) and `label`.
inline void svg_legend(Text& svg, double x, double y, const std::string& colour, const std::string& label,
                       bool dashed = false) {
  if (dashed)
    svg.line(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="black" stroke-dasharray="5,4"/>)", x, y,
             x + 24, y);
  else
    svg.line(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="{}" stroke-width="2"/>)", x, y, x + 24, y,
             colour);
  svg.line(R"(<text x="{:.1f}" y="{:.1f}">{}</text>)", x + 30, y + 4, label);
}

/// Closes the chart and writes it to `path`; false when that fails.
inline bool svg_end(Text& svg, const std::string& path) {
  svg.line("</svg>");
  return svg.write_to(path);
}

[[noreturn]] inline void fail(const char* program, const std::string& what) {
  fmt::print(stderr, "{}: {}\n", program, what);
  std::exit(1);
}

/// The positive integer after option argv[i] (advancing i), or a clear exit.
inline long positive_arg(const char* program, int argc, char** argv, int& i) {
  const std::string opt = argv[i];
  if (i + 1 >= argc) fail(program, opt + " needs a value");
  char* end = nullptr;
  long v = std::strtol(argv[++i], &end, 10);
  if (*end != '\0' || v <= 0) fail(program, opt + " needs a positive integer, got '" + argv[i] + "'");
  return v;
}

/// Median seconds per 1-byte round trip between this process and a forked child over a Unix
/// socketpair: `reps` runs of `calls` round trips after a warm-up. The child is forked from a
/// process that has threads (the runtime's), so it only reads, writes and _exits.
inline double socketpair_rtt(const char* program, int reps, long calls) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    fail(program, std::string("socketpair: ") + std::strerror(errno));
  pid_t child = fork();
  if (child < 0) fail(program, std::string("fork: ") + std::strerror(errno));
  if (child == 0) {
    close(sv[0]);
    char c;
    while (read(sv[1], &c, 1) == 1)
      if (write(sv[1], &c, 1) != 1) break;
    _exit(0);
  }
  close(sv[1]);
  int fd = sv[0];
  auto ping = [&](long k) {
    char c = 'x';
    for (long i = 0; i < k; ++i)
      if (write(fd, &c, 1) != 1 || read(fd, &c, 1) != 1) fail(program, "socketpair ping-pong failed");
  };
  ping(std::max(1000L, calls / 10));  // warm up
  std::vector<double> per;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    ping(calls);
    per.push_back(seconds_since(t0) / static_cast<double>(calls));
  }
  close(fd);  // the child's read returns 0 and it exits
  // The runtime may reap children of its own; a failed waitpid here is harmless.
  while (waitpid(child, nullptr, 0) < 0 && errno == EINTR) {
  }
  return median(per);
}

/// The value of "key" in one line of the benches' flat JSON (no nesting, no escapes needed):
/// the text between the quotes for a string, else up to the next ',' or '}'. "key" counts only
/// where a ':' follows it: a string value may be a key's name too ("variant":"threads").
inline std::optional<std::string> json_field(const std::string& line, const std::string& key) {
  const std::string k = "\"" + key + "\"";
  std::size_t at = 0;
  for (std::size_t from = 0;; from = at) {
    at = line.find(k, from);
    if (at == std::string::npos) return std::nullopt;
    at = line.find_first_not_of(" \t", at + k.size());
    if (at == std::string::npos) return std::nullopt;
    if (line[at] == ':') break;
  }
  at = line.find_first_not_of(" \t", at + 1);
  if (at == std::string::npos) return std::nullopt;
  if (line[at] == '"') {
    const std::size_t end = line.find('"', at + 1);
    if (end == std::string::npos) return std::nullopt;
    return line.substr(at + 1, end - at - 1);
  }
  const std::size_t end = line.find_first_of(",}", at);
  return line.substr(at, end == std::string::npos ? std::string::npos : end - at);
}
/// The number under "key" in such a line, if it has one.
inline std::optional<double> json_number(const std::string& line, const std::string& key) {
  auto v = json_field(line, key);
  if (!v) return std::nullopt;
  char* end = nullptr;
  const double x = std::strtod(v->c_str(), &end);
  if (end == v->c_str()) return std::nullopt;
  return x;
}

/// `s` cut at every `sep` (empty parts kept: an empty $PATH entry means ".").
inline std::vector<std::string> split_on(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::size_t at = 0;
  for (std::size_t next; (next = s.find(sep, at)) != std::string::npos; at = next + 1) out.push_back(s.substr(at, next - at));
  out.push_back(s.substr(at));
  return out;
}

/// The first executable `name` in $PATH, or "".
inline std::string find_in_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  for (const std::string& d : split_on(path ? path : "", ':')) {
    const std::string p = (d.empty() ? std::string(".") : d) + "/" + name;
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

/// The start of every mpirun command of the benches, as argv: `env [OMPI_ALLOW_RUN_AS_ROOT=1
/// OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1] mpirun --bind-to none --oversubscribe` (the variables
/// when run as root); the ranks follow. Empty, with `why` set, when mpirun is not in PATH.
inline std::vector<std::string> mpirun_prefix(std::string& why) {
  const std::string mpirun = find_in_path("mpirun"), env = find_in_path("env");
  if (mpirun.empty() || env.empty()) {
    why = "no mpirun in PATH (Open MPI is not installed here: apt-get install openmpi-bin)";
    return {};
  }
  std::vector<std::string> argv{env};
  if (geteuid() == 0) argv.insert(argv.end(), {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"});
  argv.insert(argv.end(), {mpirun, "--bind-to", "none", "--oversubscribe"});
  return argv;
}

/// What a run under mpirun gave: the JSON lines it printed, or why there are none.
struct MpiRunOutput {
  std::vector<std::string> lines;  // every line with a "variant"
  std::string why;                 // when the run could not be made or failed
  std::string command;
};

/// Runs program `name` (beside this one; "" for this program itself) as one rank per entry of
/// `rank_args` (each rank its own arguments: `mpirun -n 1 prog A : -n 1 prog B`), with
/// `--bind-to none --oversubscribe`, and the two OMPI_ALLOW_RUN_AS_ROOT variables when run as
/// root. popen, not fork: the caller has threads; the shell it starts only execs the command.
/// A reference must not hang the bench (an mpirun stuck probing networks): at most 5 minutes.
inline MpiRunOutput run_under_mpirun(const std::string& name, const std::vector<std::string>& rank_args) {
  MpiRunOutput run;
  char exe[4096];
  const ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len <= 0) {
    run.why = std::string("cannot read /proc/self/exe: ") + std::strerror(errno);
    return run;
  }
  const std::string self(exe, static_cast<std::size_t>(len));
  const std::string prog = name.empty() ? self : self.substr(0, self.rfind('/')) + "/" + name;
  const std::vector<std::string> prefix = mpirun_prefix(run.why);
  if (prefix.empty()) return run;
  if (access(prog.c_str(), X_OK) != 0) {
    run.why = fmt::format("{} is missing (built only where CMake found MPI: libopenmpi-dev)", prog);
    return run;
  }
  const std::string timeout = find_in_path("timeout");
  run.command = timeout.empty() ? "" : fmt::format("'{}' -k 5 300 ", timeout);
  for (const std::string& a : prefix) run.command += fmt::format("'{}' ", a);
  for (std::size_t r = 0; r < rank_args.size(); ++r)
    run.command += fmt::format("{}-n 1 '{}' {}", r == 0 ? "" : " : ", prog, rank_args[r]);
  std::fflush(nullptr);  // nothing of ours buffered twice
  std::FILE* p = popen(run.command.c_str(), "r");
  if (!p) {
    run.why = fmt::format("popen: {}", std::strerror(errno));
    return run;
  }
  std::string out;
  char buf[4096];
  for (std::size_t k; (k = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, k);
  const int status = pclose(p);
  for (const std::string& line : split_on(out, '\n'))
    if (json_field(line, "variant")) run.lines.push_back(line);
  if (status != 0) run.why = fmt::format("`{}` failed (status {})", run.command, status);
  return run;
}

/// The line of `variant` among a run's lines, or "".
inline std::string line_of(const MpiRunOutput& run, const std::string& variant) {
  for (const std::string& l : run.lines)
    if (json_field(l, "variant") == variant) return l;
  return "";
}

/// "1,2,4" -> {"1", "2", "4"} (empty parts dropped): the benchmarks' list options.
inline std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string part; std::getline(ss, part, ',');)
    if (!part.empty()) out.push_back(part);
  return out;
}

/// The positive integer `v` given to option `opt` (100000000 and 1e8 alike), or a clear exit.
inline long parse_positive(const char* program, const std::string& opt, const std::string& v) {
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || !(x >= 1) || x > 9e18 || x != std::floor(x)) {
    fmt::print(stderr, "{}: {} needs a positive integer, got '{}'\n", program, opt, v);
    std::exit(2);
  }
  return static_cast<long>(x);
}

/// Median of `reps` timed runs, after one untimed warm-up run (it maps and faults in the pages
/// in the processes that use them); `reset` runs before each run, outside the timed region.
template <class Reset, class Run>
double time_reps(int reps, Reset reset, Run run) {
  reset();
  run();
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    reset();
    const auto t0 = Clock::now();
    run();
    t.push_back(seconds_since(t0));
  }
  return median(t);
}

}  // namespace bench_util
