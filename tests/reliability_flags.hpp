#pragma once
// Helpers of the fedmoe-paper reliability tests (test_reliability_flags*.cpp, issue 16). They link
// run_experiment from target fedmoe_paper_core (examples/paper_experiment.cpp, the whole experiment
// compiled once) and include paper_experiment.hpp for the flag checks and the outputs.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "../examples/paper_experiment.hpp"

using namespace fedmoe_paper;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace reliability_test {

/// The message CLI11 gives for `args` after the program name ("" when they parse), and the Options.
inline std::string parse_error(const std::vector<std::string>& args, Options* parsed = nullptr) {
  Options o;
  CLI::App app;
  add_options(app, o);
  std::vector<const char*> argv{"fedmoe-paper"};
  for (const auto& a : args) argv.push_back(a.c_str());
  try {
    app.parse(int(argv.size()), argv.data());
  } catch (const CLI::ParseError& e) {
    return e.what();
  }
  if (parsed) *parsed = o;
  return {};
}

/// The numeric flags of for_each_flag, with their bounds' kind.
struct NumericFlag {
  std::string name;
  bool integer;
};
inline std::vector<NumericFlag> numeric_flags() {
  std::vector<NumericFlag> out;
  Options o;
  for_each_flag(o, [&](const char* name, auto&, const auto& accepted, const std::string&) {
    using A = std::decay_t<decltype(accepted)>;
    if constexpr (std::is_same_v<A, flags::Real>) out.push_back({name, false});
    else if constexpr (!std::is_same_v<A, flags::Choice> && !std::is_same_v<A, flags::Text>)
      out.push_back({name, true});
  });
  return out;
}

/// A fresh empty directory, removed with its contents at the end of the scope.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string t = (fs::temp_directory_path() / "fedmoe-reliability-XXXXXX").string();
    REQUIRE(::mkdtemp(t.data()) != nullptr);
    path = t;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::set<std::string> entries() const {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(path)) names.insert(e.path().filename().string());
    return names;
  }
};

inline std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// Runs the body in `dir` (restores the working directory).
struct InDirectory {
  fs::path previous = fs::current_path();
  explicit InDirectory(const fs::path& dir) { fs::current_path(dir); }
  ~InDirectory() { fs::current_path(previous); }
};

inline bool gnuplot_available() {
  try {
    run_gnuplot("set terminal pngcairo\n", -1, "probe", true);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

/// Rows of a small finished sweep: p in {0.5, 1}, one opt-out, the four methods.
inline std::vector<Row> some_rows(const Options& o) {
  std::vector<Row> rows;
  for (double p : o.p)
    for (const std::string& m : o.methods)
      rows.push_back(Row{p, o.opt_out[0], m, "all", {0.8, 0.05, 4}, {0.7, 0.1, 4}, {}, {}});
  return rows;
}

/// Ten classes of `per_class` samples of shape `shape` (zero pixels).
inline Dataset<float> blank(Shape shape, Index per_class) {
  const Index n = 10 * per_class;
  Dataset<float> d{Matrix<float>::Zero(shape.size(), n), Labels(n), shape, 10};
  for (Index j = 0; j < n; ++j) d.labels[j] = std::int32_t(j % 10);
  return d;
}

}  // namespace reliability_test
