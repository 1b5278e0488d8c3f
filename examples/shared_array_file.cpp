// shared_array_file: a SharedArray backed by a file (Julia's SharedArray{T}(filename, dims,
// offset; mode)). The workers fill it through their own mappings of the file; what they wrote
// is in the file itself, as plain bytes, after the array is gone:
//
//   julia> S = SharedArray{Int32}(path, (n,), 0; mode="w+",
//                  init = S -> for i in localindices(S) S[i] = 1000000myid() + i end)
//   julia> finalize(S); read(path)                  (the array's scope ends; std::ifstream)
//
// The file lives in a fresh temporary directory, removed at the end.
// Run: ./shared_array_file -p 2. It checks the file and exits non-zero on a wrong byte.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include <vscale/vscale.hpp>

using Ints = vscale::SharedArray<std::int32_t, 1>;

// Each participating process writes its id and the index into its own part.
void fill_mine(const Ints& s) {
  for (std::size_t i : vscale::localindices(s)) s[i] = 1'000'000 * vscale::myid() + static_cast<std::int32_t>(i);
}

int main(int argc, char** argv) {
  vscale::Session session(argc, argv);
  if (vscale::nworkers() < 2) vscale::addprocs(2 - vscale::nworkers());  // like `julia -p 2`
  char tmpl[] = "/tmp/vscale-example-XXXXXX";
  if (!mkdtemp(tmpl)) {
    std::perror("shared_array_file: mkdtemp");
    return EXIT_FAILURE;
  }
  const std::filesystem::path dir = tmpl, path = dir / "numbers.bin";
  const std::size_t n = 10'000;

  std::vector<std::pair<std::size_t, std::size_t>> parts;  // [first, last) written by procs()[k]
  std::vector<int> who;
  {
    Ints s(path.string(), n, 0, vscale::FileMode::w_plus, vscale::init(fill_mine));
    who = vscale::procs(s);
    for (int p : who)
      parts.push_back(vscale::remotecall_fetch(p, [](const Ints& a) {
        auto r = vscale::localindices(a);
        return std::pair{r.first, r.last};
      }, s));
  }  // the last handle is gone: the mappings are unmapped, the file stays

  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::size_t wrong = bytes.size() == n * sizeof(std::int32_t) ? 0 : n;
  for (std::size_t k = 0; k < parts.size() && wrong == 0; ++k)
    for (std::size_t i = parts[k].first; i < parts[k].second; ++i) {
      std::int32_t v;
      std::memcpy(&v, bytes.data() + i * sizeof v, sizeof v);
      wrong += v != 1'000'000 * who[k] + static_cast<std::int32_t>(i);
    }
  const bool covered = !parts.empty() && parts.front().first == 0 && parts.back().second == n;
  std::cout << path.string() << ": " << bytes.size() << " bytes written by processes";
  for (std::size_t k = 0; k < who.size(); ++k)
    std::cout << ' ' << who[k] << " [" << parts[k].first << ", " << parts[k].second << ')';
  std::cout << '\n';
  std::filesystem::remove_all(dir);

  if (wrong || !covered) {
    std::cout << "WRONG: " << wrong << " elements differ, or the parts do not cover the array\n";
    return EXIT_FAILURE;
  }
  std::cout << "ok: every element holds its writer's id and its index\n";
  return EXIT_SUCCESS;
}
