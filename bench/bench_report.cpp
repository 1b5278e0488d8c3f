// bench_report: turns the JSON lines of a bench host run (bench/bench_host.sh's output file, or
// any benches' --json lines put together) into the bench/RESULTS.md table and an SVG chart of
// the speed-ups.
//
//   ./bench_report FILE.jsonl [--md OUT.md] [--svg OUT.svg]
//
// The markdown (on stdout without --md): the host lines first (bench_host.sh's "host" and
// "process_counts" lines, and any "skipped" lines), then one table with a row per measure and
// process count. A measure is (bench, workload for bench_scaling, variant); a row is a measure
// at one count (processes x threads: the cores it uses; bench_scaling: its "cores"; bench_pmap:
// its workers, procs - 1) and one thread count. Its time is the median of
// the "seconds" of every line with that key (normally one: each line is already a median over
// its reps), the other columns likewise. Speed-up = the time of the same measure at its smallest
// count (1 worker) / the row's time; bench_scaling lines bring their own ("speedup": over processes
// mode at 1 core, so threads and hybrid rows compare with the same baseline). It is left out
// ("-") where a measure has one count only, and for startup and the barriers, whose times grow
// with the count by design.
// The chart: one panel per bench (per workload for bench_scaling) with a measure at more than one
// count, speed-up (linear) against the count (log2), a line per variant, the ideal (count / the
// smallest count) dashed.
// Lines that are not JSON objects are ignored; the exit status is 1 when no line had seconds.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "bench_util.hpp"

namespace {

using bench_util::human_time;
using bench_util::json_field;
using bench_util::json_number;
using bench_util::median;

[[noreturn]] void die(const std::string& what) {
  fmt::print(stderr, "bench_report: {}\n", what);
  std::exit(2);
}

// The ratio fields the benches print, with the column text they get in the notes.
const std::vector<std::pair<std::string, std::string>> kRatios = {
    {"ratio_to_openmp", "x OpenMP"}, {"ratio_to_socketpair", "x socketpair"}, {"ratio_to_rtt", "x round trip"}, {"ratio_to_mpi", "x MPI"},
    {"ratio_to_1kb", "x 1 KiB capture"}};

// Measures whose time is not meant to fall as processes are added (no speed-up column).
bool grows_by_design(const std::string& variant) {
  return variant == "startup" || variant == "barrier" || variant == "openmp_barrier";
}

struct Row {
  std::string group, variant;  // group: bench, or "scaling <workload>"
  int count = 0, procs = 0, threads = 0;
  long n = 0;
  std::vector<double> seconds, speedups, per_s, gb_per_s, diffs;
  std::map<std::string, std::vector<double>> ratios;
  std::optional<double> speedup;  // filled once all rows are read
};

struct Report {
  std::vector<std::string> host;     // the host and process-count lines, as text
  std::vector<std::string> skipped;  // "what: why"
  std::vector<Row> rows;             // in order of first appearance of their measure, then count
};

std::string field_or(const std::string& line, const std::string& key, const std::string& dflt) {
  return json_field(line, key).value_or(dflt);
}

Report read(const std::string& path) {
  std::ifstream in(path);
  if (!in) die(fmt::format("cannot read '{}'", path));
  Report rep;
  std::map<std::tuple<std::string, std::string, int, int>, std::size_t> at;  // row key -> index
  std::map<std::pair<std::string, std::string>, std::size_t> first_seen;     // measure -> order
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line.front() != '{') continue;
    const std::string bench = field_or(line, "bench", "?");
    if (bench == "host") {
      rep.host.push_back(fmt::format("host {}, {} CPUs (nproc), {}, commit {}{}", field_or(line, "hostname", "?"),
                                     field_or(line, "nproc", "?"), field_or(line, "date", "?"),
                                     field_or(line, "commit", "?"),
                                     field_or(line, "mode", "full") == "quick" ? " (--quick: not a measurement)" : ""));
      continue;
    }
    if (bench == "process_counts") {
      rep.host.push_back(fmt::format("process counts {} ({} usable CPUs; {})", field_or(line, "counts", "?"),
                                     field_or(line, "cores", "?"), field_or(line, "note", "")));
      continue;
    }
    if (bench == "skipped") {
      rep.skipped.push_back(fmt::format("{}: {}", field_or(line, "what", "?"), field_or(line, "why", "?")));
      continue;
    }
    const auto s = json_number(line, "seconds");
    const auto variant = json_field(line, "variant");
    if (!s || !variant) continue;
    const auto workload = json_field(line, "workload");
    const std::string group = workload ? bench + " " + *workload : bench;
    const int procs = static_cast<int>(json_number(line, "procs").value_or(1));
    const int threads = static_cast<int>(json_number(line, "threads").value_or(1));
    // One process with T threads (an OpenMP reference) counts T: the cores it uses. bench_pmap's
    // procs count the master, which only hands out tasks: its rows count the workers.
    const int count = bench == "pmap" ? std::max(1, procs - 1)
                                      : static_cast<int>(json_number(line, "cores").value_or(procs * threads));
    const auto key = std::make_tuple(group, *variant, count, threads);
    auto it = at.find(key);
    if (it == at.end()) {
      first_seen.emplace(std::make_pair(group, *variant), first_seen.size());
      it = at.emplace(key, rep.rows.size()).first;
      Row r;
      r.group = group;
      r.variant = *variant;
      r.count = count;
      r.procs = procs;
      r.threads = threads;
      r.n = static_cast<long>(json_number(line, "n").value_or(0));
      rep.rows.push_back(std::move(r));
    }
    Row& r = rep.rows[it->second];
    r.seconds.push_back(*s);
    if (auto v = json_number(line, "speedup")) r.speedups.push_back(*v);
    if (auto v = json_number(line, "per_s")) r.per_s.push_back(*v);
    if (auto v = json_number(line, "tasks_per_s")) r.per_s.push_back(*v);
    if (auto v = json_number(line, "gb_per_s"); v && *v > 0) r.gb_per_s.push_back(*v);
    if (auto v = json_number(line, "max_abs_diff")) r.diffs.push_back(*v);
    for (const auto& [k, text] : kRatios)
      if (auto v = json_number(line, k)) r.ratios[k].push_back(*v);
  }
  std::stable_sort(rep.rows.begin(), rep.rows.end(), [&](const Row& a, const Row& b) {
    const auto fa = first_seen.at({a.group, a.variant}), fb = first_seen.at({b.group, b.variant});
    return std::tie(fa, a.count, a.threads) < std::tie(fb, b.count, b.threads);
  });
  // Speed-ups: bench_scaling's own, else over the smallest count of the measure.
  for (Row& r : rep.rows) {
    if (!r.speedups.empty()) {
      r.speedup = median(r.speedups);
      continue;
    }
    if (grows_by_design(r.variant)) continue;
    const Row* base = nullptr;
    int counts = 0;
    for (const Row& b : rep.rows)
      if (b.group == r.group && b.variant == r.variant) {
        ++counts;
        if (!base || b.count < base->count) base = &b;
      }
    if (counts > 1) r.speedup = median(base->seconds) / median(r.seconds);
  }
  return rep;
}

std::string notes_of(const Row& r) {
  std::vector<std::string> notes;
  for (const auto& [k, text] : kRatios)
    if (auto it = r.ratios.find(k); it != r.ratios.end()) notes.push_back(fmt::format("{:.3g}{}", median(it->second), text));
  if (!r.per_s.empty()) notes.push_back(fmt::format("{:.4g} per s", median(r.per_s)));
  if (!r.gb_per_s.empty()) notes.push_back(fmt::format("{:.3g} GB/s", median(r.gb_per_s)));
  if (!r.diffs.empty() && *std::max_element(r.diffs.begin(), r.diffs.end()) != 0)
    notes.push_back(fmt::format("**max_abs_diff {:.3g}: WRONG RESULT**", *std::max_element(r.diffs.begin(), r.diffs.end())));
  std::string out;
  for (const auto& n : notes) out += (out.empty() ? "" : "; ") + n;
  return out.empty() ? "" : out;
}

void markdown(bench_util::Text& md, const Report& rep, const std::string& source, const std::string& svg) {
  md.line("Generated by `bench_report {}` from bench/bench_host.sh's JSON lines.", source);
  md.line("");
  for (const auto& h : rep.host) md.line("- {}", h);
  for (const auto& s : rep.skipped) md.line("- skipped: {}", s);
  if (!rep.host.empty() || !rep.skipped.empty()) md.line("");
  md.line("| bench | variant | count | procs x threads | n | runs | time (median) | speed-up | notes |");
  md.line("|---|---|---|---|---|---|---|---|---|");
  for (const Row& r : rep.rows)
    md.line("| {} | {} | {} | {} x {} | {} | {} | {} | {} | {} |", r.group, r.variant, r.count, r.procs, r.threads, r.n,
            r.seconds.size(), human_time(median(r.seconds)), r.speedup ? fmt::format("{:.2f}", *r.speedup) : "-",
            notes_of(r));
  md.line("");
  md.line("count: processes x threads, the cores used (bench_pmap: its workers; procs counts the master too). "
          "Time: per unit where the bench measures one (a call, a task, a crossing), else per run. "
          "Speed-up: time at the measure's smallest count / time (bench_scaling: over processes mode at 1 core); "
          "'-' for a measure at one count, and for startup and the barriers.");
  if (!svg.empty()) md.line("").line("Chart: `{}`", svg);
}

// One panel per group with a measure at more than one count: speed-up against the count.
void chart(const Report& rep, const std::string& path) {
  std::vector<std::string> panels;
  for (const Row& r : rep.rows)
    if (r.speedup && std::find(panels.begin(), panels.end(), r.group) == panels.end()) {
      int counts = 0;
      for (const Row& b : rep.rows) counts += b.group == r.group && b.speedup;
      if (counts > 1) panels.push_back(r.group);
    }
  const std::vector<std::string> colours = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                            "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  const double pw = 360, ph = 260, left = 60, gap = 70, top = 70, legend_line = 16;
  const std::size_t cols = std::min<std::size_t>(3, std::max<std::size_t>(1, panels.size()));
  const std::size_t rows_n = std::max<std::size_t>(1, (panels.size() + cols - 1) / cols);
  // Each panel's legend sits under it: room for 7 variants and the ideal.
  const double cell_h = top + ph + 50 + 8 * legend_line;
  const double W = left + static_cast<double>(cols) * (pw + gap), H = 20 + static_cast<double>(rows_n) * cell_h;
  bench_util::Text svg;
  bench_util::svg_begin(svg, W, H);
  svg.line(R"(<text x="{:.1f}" y="24" text-anchor="middle" font-size="15">)"
           "vscale on the bench host: speed-up over the smallest process count (higher is better)</text>",
           W / 2);
  if (panels.empty())
    svg.line(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle">no measure at more than one count</text>)", W / 2,
             H / 2);
  for (std::size_t i = 0; i < panels.size(); ++i) {
    const std::string& g = panels[i];
    const double x0 = left + static_cast<double>(i % cols) * (pw + gap),
                 y0 = 20 + top + static_cast<double>(i / cols) * cell_h;
    std::set<int> counts;
    double ymax = 1;
    for (const Row& r : rep.rows)
      if (r.group == g && r.speedup) {
        counts.insert(r.count);
        ymax = std::max(ymax, *r.speedup);
      }
    // The ideal: speed-up = count / the smallest count.
    const double kmin = *counts.begin();
    ymax = std::max(ymax, *counts.rbegin() / kmin);
    const auto axis = bench_util::linear_axis(ymax);
    const double xlo = std::log2(static_cast<double>(*counts.begin())),
                 xhi = std::max(xlo + 1, std::log2(static_cast<double>(*counts.rbegin())));
    auto X = [&](double k) { return x0 + pw * (std::log2(k) - xlo) / (xhi - xlo); };
    auto Y = [&](double v) { return y0 + ph - ph * std::min(v, axis.top) / axis.top; };
    svg.line(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle" font-size="14">{}</text>)", x0 + pw / 2, y0 - 12, g);
    for (int k = 0; k * axis.step <= axis.top * 1.0001; ++k)
      bench_util::svg_tick(svg, x0, x0 + pw, Y(k * axis.step), k * axis.step);
    for (int k : counts)
      svg.line(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle">{}</text>)", X(k), y0 + ph + 16, k);
    bench_util::svg_axes(svg, x0, y0, pw, ph);
    svg.line(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle">processes (cores)</text>)", x0 + pw / 2, y0 + ph + 34);
    std::vector<std::pair<double, double>> ideal;
    for (int k : counts) ideal.emplace_back(X(k), Y(k / kmin));
    bench_util::svg_ideal(svg, ideal);
    std::vector<std::string> variants;
    for (const Row& r : rep.rows)
      if (r.group == g && r.speedup && std::find(variants.begin(), variants.end(), r.variant) == variants.end())
        variants.push_back(r.variant);
    for (std::size_t v = 0; v < variants.size(); ++v) {
      const std::string& colour = colours[v % colours.size()];
      std::vector<bench_util::SvgPoint> pts;
      for (const Row& r : rep.rows)
        if (r.group == g && r.variant == variants[v] && r.speedup)
          pts.push_back({X(r.count), Y(*r.speedup),
                         fmt::format("{} {}, {} x {}: {}, speed-up {:.3g}", g, r.variant, r.procs, r.threads,
                                     human_time(median(r.seconds)), *r.speedup)});
      bench_util::svg_series(svg, colour, pts);
      if (v < 7) bench_util::svg_legend(svg, x0, y0 + ph + 54 + static_cast<double>(v) * legend_line, colour, variants[v]);
    }
    bench_util::svg_legend(svg, x0, y0 + ph + 54 + static_cast<double>(std::min<std::size_t>(variants.size(), 7)) * legend_line,
                           "black", "ideal", true);
  }
  if (!bench_util::svg_end(svg, path)) die(fmt::format("cannot write the chart to '{}'", path));
}

const char* kUsage = "usage: bench_report FILE.jsonl [--md OUT.md] [--svg OUT.svg]\n";

}  // namespace

int main(int argc, char** argv) {
  std::string in, md_path, svg_path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "--md" || a == "--svg") && i + 1 < argc)
      (a == "--md" ? md_path : svg_path) = argv[++i];
    else if (a == "-h" || a == "--help") {
      fmt::print("{}", kUsage);
      return 0;
    } else if (!a.empty() && a[0] != '-' && in.empty())
      in = a;
    else
      die(fmt::format("unexpected argument '{}'\n{}", a, kUsage));
  }
  if (in.empty()) die(std::string("no input file\n") + kUsage);
  const Report rep = read(in);
  bench_util::Text md;
  markdown(md, rep, in, svg_path);
  if (!md.write_to(md_path.empty() ? "/dev/stdout" : md_path)) die(fmt::format("cannot write '{}'", md_path));
  if (!svg_path.empty()) chart(rep, svg_path);
  if (rep.rows.empty()) {
    fmt::print(stderr, "bench_report: no measurement (no JSON line with seconds) in '{}'\n", in);
    return 1;
  }
  return 0;
}
