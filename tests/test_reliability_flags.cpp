// Issue 16, section 1, in fedmoe-paper (examples/paper_experiment.hpp), each defect with the test that
// would have caught it:
// - Item 4: outputs are checked before any work, every write is checked (a full disk is an error), and no
//   half-written file is ever left under the final name.
// - Item 5: the model's input shape against the data's, before the first setting.
// - Item 6: every flag refuses NaN, infinities, out-of-range and wrapped values while parsing and in
//   validate_options, with a readable message; a bad value in a list fails before the first setting.
// - Item 7: --plot pastes nothing into the gnuplot script; unknown extensions and a missing gnuplot are
//   refused before any work.
// - Item 8: --val-per-client 0 runs without early stopping and the JSON says so (no best_round 0).
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

namespace {

/// The message CLI11 gives for `args` after the program name ("" when they parse), and the Options.
std::string parse_error(const std::vector<std::string>& args, Options* parsed = nullptr) {
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
std::vector<NumericFlag> numeric_flags() {
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

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// Runs the body in `dir` (restores the working directory).
struct InDirectory {
  fs::path previous = fs::current_path();
  explicit InDirectory(const fs::path& dir) { fs::current_path(dir); }
  ~InDirectory() { fs::current_path(previous); }
};

bool gnuplot_available() {
  try {
    run_gnuplot("set terminal pngcairo\n", -1, "probe", true);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

/// Rows of a small finished sweep: p in {0.5, 1}, one opt-out, the four methods.
std::vector<Row> some_rows(const Options& o) {
  std::vector<Row> rows;
  for (double p : o.p)
    for (const char* m : method_names) rows.push_back(Row{p, o.opt_out[0], m, "all", {0.8, 0.05, 4}, {0.7, 0.1, 4}});
  return rows;
}

/// Ten classes of `per_class` samples of shape `shape` (zero pixels).
Dataset<float> blank(Shape shape, Index per_class) {
  const Index n = 10 * per_class;
  Dataset<float> d{Matrix<float>::Zero(shape.size(), n), Labels(n), shape, 10};
  for (Index j = 0; j < n; ++j) d.labels[j] = std::int32_t(j % 10);
  return d;
}

}  // namespace

// ---- item 6: flags ----

TEST_CASE("the flags of fedmoe-paper refuse the values of issue 16 with a readable message", "[reliability][paper]") {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases{
      {{"--clients", "4611686018427387904"}, "--clients: expected an integer in [1, 1048576], got 4611686018427387904"},
      {{"--opt-out", "nan"}, "--opt-out: expected a number in [0, 1], got nan (not a number)"},
      {{"--p", "0.5", "nan"}, "--p: expected a number in [0, 1], got nan (not a number)"},
      {{"--client-fraction", "nan"}, "--client-fraction: expected a number in [0, 1], got nan (not a number)"},
      {{"--seed", "-1"}, "--seed: expected an integer in [0, 18446744073709551615], got -1"},
      {{"--seed", "18446744073709551616"}, "--seed: expected an integer in [0, 18446744073709551615], got "
                                           "18446744073709551616"},
      {{"--batch", "0"}, "--batch: expected an integer in [1, 2147483647], got 0"},
      {{"--threads", "-1"}, "--threads: expected an integer in [1, 1024], got -1"},
      {{"--rounds", "1e3"}, "--rounds: expected an integer in [0, 2147483647], got '1e3'"},
      {{"--clients", "0x10"}, "--clients: expected an integer in [1, 1048576], got '0x10'"},
      {{"--alpha", "inf"}, "--alpha: expected a number > 0, got inf"},
      {{"--lr-fedavg", "1e400"}, "--lr-fedavg: expected a number > 0, got '1e400'"},
      {{"--dropout", "0.96"}, "--dropout: expected a number in [0, 0.95], got 0.96"},
      {{"--dp-noise", "nan"}, "--dp-noise: expected a number >= 0, got nan (not a number)"},
      {{"--dp-delta", "1"}, "--dp-delta: expected a number in (0, 1), got 1"},
      {{"--dp-adaptive-quantile", "-0.5"}, "--dp-adaptive-quantile: expected a number in [0, 1] or -1 (off), got -0.5"},
      {{"--dp-epsilon-budget", "-1"}, "--dp-epsilon-budget: expected a number >= 0, got -1"},
  };
  for (const auto& [args, message] : cases) {
    INFO(args[0] << " " << args.back());
    CHECK(parse_error(args) == message);
  }
}

TEST_CASE("every numeric flag refuses NaN, infinities and values just outside its range", "[reliability][paper]") {
  const auto all = numeric_flags();
  REQUIRE(all.size() > 40);
  for (const auto& f : all) {
    for (const std::string bad : {"nan", "inf", "-inf", "1e999", "", "abc", "0.5x"}) {
      INFO(f.name << " " << bad);
      CHECK_THAT(parse_error({f.name, bad}), Contains(f.name + ": expected "));
    }
  }
  // The integer flags, one past each end.
  Options o;
  for_each_flag(o, [&](const char* name, auto&, const auto& accepted, const std::string&) {
    using A = std::decay_t<decltype(accepted)>;
    if constexpr (!std::is_same_v<A, flags::Real> && !std::is_same_v<A, flags::Choice> &&
                  !std::is_same_v<A, flags::Text>) {
      using T = decltype(accepted.lo);
      INFO(name);
      if (accepted.lo > std::numeric_limits<T>::min())
        CHECK(parse_error({name, std::to_string(accepted.lo - 1)}) ==
              std::string(name) + ": " + flags::refusal(accepted, T(accepted.lo - 1)));
      if (accepted.hi < std::numeric_limits<T>::max())
        CHECK(parse_error({name, std::to_string(accepted.hi + 1)}) ==
              std::string(name) + ": " + flags::refusal(accepted, T(accepted.hi + 1)));
      CHECK(parse_error({name, std::to_string(accepted.hi)}).empty());
    }
  });
}

TEST_CASE("accepted flag values are read exactly as typed", "[reliability][paper]") {
  Options o;
  REQUIRE(parse_error({"--clients", "010", "--seed", "18446744073709551615", "--lr-fedavg", "0.1", "--p", "0.2", "0.3",
                       "--dp-adaptive-quantile", "-1", "--threads", "3"},
                      &o)
              .empty());
  CHECK(o.clients == 10);  // decimal: CLI11 alone reads 010 as octal 8
  CHECK(o.seed == std::numeric_limits<std::uint64_t>::max());
  CHECK(o.lr_fedavg == 0.1);  // bitwise: the text is handed on as an exact hexadecimal float
  CHECK(o.p == std::vector<double>{0.2, 0.3});
  CHECK(o.dp_adaptive_quantile == -1);
  CHECK(o.threads == 3);
}

TEST_CASE("validate_options checks every flag of programmatically set Options too", "[reliability][paper]") {
  CHECK_NOTHROW(validate_options(Options{}));
  for (const auto& f : numeric_flags()) {
    Options o;
    bool set = false;
    for_each_flag(o, [&](const char* name, auto& value, const auto& accepted, const std::string&) {
      if (f.name != name) return;
      using V = std::decay_t<decltype(value)>;
      using A = std::decay_t<decltype(accepted)>;
      if constexpr (std::is_same_v<V, std::vector<double>>) {
        value.push_back(std::nan(""));
        set = true;
      } else if constexpr (std::is_same_v<A, flags::Real>) {
        value = std::nan("");
        set = true;
      } else if constexpr (!std::is_same_v<A, flags::Choice> && !std::is_same_v<A, flags::Text>) {
        if (accepted.hi < std::numeric_limits<V>::max()) {
          value = V(accepted.hi + 1);
          set = true;
        } else if (accepted.lo > std::numeric_limits<V>::min()) {
          value = V(accepted.lo - 1);
          set = true;
        }
      }
    });
    if (!set) continue;  // --seed: every uint64 is a seed
    INFO(f.name);
    CHECK_THROWS_WITH(validate_options(o), Contains("fedmoe-paper: " + f.name + ": expected "));
  }
  Options o;
  o.opt_out = {};
  CHECK_THROWS_WITH(validate_options(o), Contains("--opt-out: expected at least one value, got none"));
  o = Options{};
  o.strategy = "fedsgd";
  CHECK_THROWS_WITH(validate_options(o), Contains("--strategy: expected one of fedavg fedavgm"));
}

TEST_CASE("a bad value anywhere in a list fails before the first setting runs", "[reliability][paper]") {
  CHECK(parse_error({"--p", "0.2", "0.5", "nan", "1.0"}) == "--p: expected a number in [0, 1], got nan (not a number)");
  Options o;
  o.opt_out = {0.0, 0.5, 1.0};  // the last leaves no client
  CHECK_THROWS_WITH(validate_options(o), Contains("opt-out fraction 1 leaves no client"));
  // A setting the data cannot supply (p = 1: 7 test samples of each majority class, the split has 6 per class)
  // fails after loading, before the first setting, naming p.
  o = Options{};
  o.clients = 4;
  o.clients_per_round = 2;
  o.n_train = 10;
  o.n_val = 5;
  o.n_test = 14;
  o.global_test = 0;
  o.p = {0.5, 1.0};
  const Dataset<float> train = blank(Shape{1, 28, 28}, 100), test = blank(Shape{1, 28, 28}, 6);
  CHECK_THROWS_WITH(check_against_data(o, Shape{1, 28, 28}, train, test),
                    Contains("needs 7 test samples") && Contains("p = 1"));
  o.p = {0.5};
  CHECK_NOTHROW(check_against_data(o, Shape{1, 28, 28}, train, test));
  o.global_test = 61;
  CHECK_THROWS_WITH(check_against_data(o, Shape{1, 28, 28}, train, test),
                    Contains("--global-test: expected at most 60 (the size of the test split; 0: all of it), got 61"));
}

// ---- item 5: shapes ----

TEST_CASE("fedmoe-paper refuses data whose samples have another shape than the model takes", "[reliability][paper]") {
  Options o;
  o.clients = 4;
  o.n_train = 10;
  o.n_val = 5;
  o.n_test = 5;
  o.global_test = 0;
  const Dataset<float> wide = blank(Shape{1, 14, 56}, 20);  // 784 pixels per image, as 28 x 28
  CHECK_THROWS_WITH(check_against_data(o, fashion_cnn<float>().input_shape(), wide, wide),
                    Contains("--model cnn takes samples of shape [1x28x28]") &&
                        Contains("has training samples of shape [1x14x56] and test samples of shape [1x14x56] (the "
                                 "same number of values, in another shape)"));
  // The MLP is built for the images' shape: it refuses them too (it used to compare sizes only).
  o.model = "mlp";
  CHECK_THROWS_WITH(check_against_data(o, mlp<float>(Shape{1, 28, 28}).input_shape(), wide, wide),
                    Contains("--model mlp takes samples of shape [1x28x28]"));
  const Dataset<float> right = blank(Shape{1, 28, 28}, 20);
  CHECK_NOTHROW(check_against_data(o, Shape{1, 28, 28}, right, right));
}

// ---- item 4: outputs ----

TEST_CASE("an output that cannot be created is refused before any work, and the check leaves nothing",
          "[reliability][paper]") {
  TempDir dir;
  CHECK_THROWS_WITH(OutputFile("--json", (dir.path / "missing" / "r.json").string()).check(),
                    Contains("--json: the directory '" + (dir.path / "missing").string() + "' of '") &&
                        Contains("' does not exist"));
  CHECK_THROWS_WITH(OutputFile("--csv", dir.path.string()).check(), Contains("is a directory, expected a file name"));
  CHECK_NOTHROW(OutputFile("--json", (dir.path / "r.json").string()).check());
  CHECK(dir.entries().empty());  // the probe's temporary file is gone
  if (::geteuid() != 0) {  // root may write anywhere
    fs::create_directory(dir.path / "ro");
    fs::permissions(dir.path / "ro", fs::perms::owner_read | fs::perms::owner_exec);
    CHECK_THROWS_WITH(OutputFile("--json", (dir.path / "ro" / "r.json").string()).check(),
                      Contains("cannot create files in the directory"));
    fs::permissions(dir.path / "ro", fs::perms::owner_all);
  }
  // run_experiment checks the outputs before it even looks for the data.
  Options o;
  o.data = (dir.path / "no-data").string();
  o.json = (dir.path / "missing" / "r.json").string();
  CHECK_THROWS_WITH(run_experiment(InProcessRuntime{}, o), Contains("does not exist"));
  o.json.clear();
  o.csv = (dir.path / "r.csv").string();
  o.plot = (dir.path / "r.txt").string();
  CHECK_THROWS_WITH(check_outputs(o), Contains("--plot: expected a file name ending in .png or .svg"));
  o.plot.clear();
  o.json = o.csv;
  CHECK_THROWS_WITH(check_outputs(o), Contains("--json and --csv both name the file"));
}

TEST_CASE("outputs are written atomically and a failed write is an error", "[reliability][paper]") {
  TempDir dir;
  const fs::path file = dir.path / "r.json";
  OutputFile("--json", file.string()).write("first\n");
  CHECK(read(file) == "first\n");
  CHECK(dir.entries() == std::set<std::string>{"r.json"});
  const mode_t mask = ::umask(0);
  ::umask(mask);
  CHECK((fs::status(file).permissions() & fs::perms::all) == fs::perms(0666 & ~mask));
  // A write that fails half-way leaves the old file as it was and no temporary behind.
  CHECK_THROWS_WITH(OutputFile("--json", file.string()).write_with([](int fd) {
    REQUIRE(::write(fd, "half", 4) == 4);
    FEDMOE_FAIL("simulated failure");
  }),
                    Contains("simulated failure"));
  CHECK(read(file) == "first\n");
  CHECK(dir.entries() == std::set<std::string>{"r.json"});
  // A full disk.
  if (fs::exists("/dev/full")) {
    CHECK_THROWS_WITH(OutputFile("--json", "/dev/full").write(std::string(1 << 16, 'x')),
                      Contains("--json: writing '/dev/full' failed: No space left on device"));
    CHECK(fs::is_character_file("/dev/full"));  // written in place, never renamed over
    // Every output is tried; the error names each failure.
    Options o;
    o.json = "/dev/full";
    o.csv = (dir.path / "r.csv").string();
    o.methods = {"global"};
    const std::vector<Row> rows = some_rows(o);
    CHECK_THROWS_WITH(write_outputs(InProcessRuntime{}, o, rows, {}, 1.0, 1024),
                      Contains("--json: writing '/dev/full' failed: No space left on device"));
    CHECK(read(dir.path / "r.csv").rfind("p,opt_out,group,method", 0) == 0);
  }
}

// ---- item 7: the plot ----

TEST_CASE("the plot refuses unknown extensions before any work", "[reliability][paper]") {
  for (const std::string name : {"r.pdf", "r", "r.png.txt", "png", "r.svgz"}) {
    Options o;
    o.plot = name;
    INFO(name);
    CHECK_THROWS_WITH(validate_options(o), Contains("--plot: expected a file name ending in .png or .svg, got '" +
                                                    name + "'"));
  }
  CHECK(plot_format("a/b.PNG") == "png");
  CHECK(plot_format("b.svg") == "svg");
}

TEST_CASE("the plot script holds no string from the command line", "[reliability][paper]") {
  Options o;
  o.p = {0.5, 1.0};
  o.plot = "/tmp/x'; system \"touch MARK\"; '.png";
  const std::string script = plot_script(o, some_rows(o), "png");
  CHECK(script.find("set output") == std::string::npos);  // gnuplot writes to its standard output
  CHECK(script.find('"') == std::string::npos);
  CHECK(script.find("MARK") == std::string::npos);
  CHECK(script.find("$d0_mixture << EOD\n0.5 80 5 70\n1 80 5 70\nEOD\n") != std::string::npos);
}

TEST_CASE("a plot file name with quotes runs nothing and the plot lands under exactly that name",
          "[reliability][paper]") {
  if (!gnuplot_available()) {
    WARN("gnuplot with pngcairo not found: skipped");
    return;
  }
  TempDir dir;
  InDirectory cwd(dir.path);  // where the old script's `system` would have run
  Options o;
  o.p = {0.5, 1.0};
  const std::string name = "q'; system \"touch MARK\"; x='.png";
  o.plot = (dir.path / name).string();
  validate_options(o);
  check_outputs(o);
  write_plot(o, some_rows(o), OutputFile("--plot", o.plot));
  CHECK(dir.entries() == std::set<std::string>{name});
  CHECK(read(dir.path / name).rfind("\x89PNG", 0) == 0);
  o.plot = (dir.path / "r.svg").string();
  write_plot(o, some_rows(o), OutputFile("--plot", o.plot));
  CHECK(read(dir.path / "r.svg").find("<svg") != std::string::npos);
  // A gnuplot error is an error and leaves no file.
  CHECK_THROWS_WITH(OutputFile("--plot", (dir.path / "bad.png").string()).write_with([](int fd) {
    run_gnuplot("plot $nothing\n", fd, "fedmoe-paper: --plot", true);
  }),
                    Contains("fedmoe-paper: --plot: gnuplot failed (exit status 1)"));
  CHECK(!fs::exists(dir.path / "bad.png"));
  CHECK(dir.entries().size() == 2);
}

TEST_CASE("a plot without gnuplot fails before any work", "[reliability][paper]") {
  const char* old = std::getenv("PATH");
  const std::string saved = old ? old : "";
  ::setenv("PATH", "/nonexistent-fedmoe-path", 1);
  Options o;
  o.plot = (fs::temp_directory_path() / "fedmoe-never.png").string();
  std::string message;
  try {
    check_outputs(o);
  } catch (const std::exception& e) {
    message = e.what();
  }
  ::setenv("PATH", saved.c_str(), 1);
  CHECK_THAT(message, Contains("--plot needs gnuplot with the pngcairo terminal (checked before the run): gnuplot not "
                               "found on PATH (Debian: apt-get install gnuplot-nox)"));
  CHECK(!fs::exists(o.plot));
}

// ---- item 8: no validation data ----

TEST_CASE("without validation data the JSON says the last round was kept, not best_round 0", "[reliability][paper]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  Options o;
  Setting s{0.5, 0.5, {}, {}, 1.0};
  s.fed.rounds = 100;  // what train_federated returns without validation data: every round, nothing selected
  s.fed.val_history = {{0, nan}, {20, nan}, {40, nan}, {60, nan}, {80, nan}, {100, nan}};
  o.n_val = 0;
  nlohmann::json j = federation_json(o, s);
  CHECK(j["model_selection"] == "last round (no validation data: --val-per-client 0)");
  CHECK(j["model_round"] == 100);
  CHECK(j["best_round"].is_null());
  CHECK(j["best_val_loss"].is_null());
  // With validation data: the round early stopping chose.
  o.n_val = 200;
  s.fed.best_round = 40;
  s.fed.best_val_loss = 0.42;
  s.fed.val_history = {{0, 2.3}, {20, 0.5}, {40, 0.42}, {60, 0.45}};
  j = federation_json(o, s);
  CHECK(j["model_selection"] == "best validation loss (early stopping)");
  CHECK(j["model_round"] == 40);
  CHECK(j["best_round"] == 40);
  CHECK(j["best_val_loss"] == 0.42);
  // DP keeps the last round whatever the losses say.
  o.dp_clip = 1;
  o.dp_noise = 1;
  j = federation_json(o, s);
  CHECK(j["model_selection"] == "last round (differential privacy: validation losses are reported, not used)");
  CHECK(j["best_round"].is_null());
  // The personalisation's selection is in the document too.
  o = Options{};
  o.n_val = 0;
  const nlohmann::json doc = nlohmann::json::parse(json_text(InProcessRuntime{}, o, some_rows(o), {s}, 1.0, 1024));
  CHECK(doc["personalisation"]["model_selection"] ==
        "last epoch (no validation data: --val-per-client 0, every one of --max-epochs epochs runs)");
  CHECK(doc["federation"][0]["model_selection"] == "last round (no validation data: --val-per-client 0)");
}

TEST_CASE("the help says what a validation size of 0 and the plot do", "[reliability][paper]") {
  Options o;
  CLI::App app;
  add_options(app, o);
  const std::string help = app.help();
  CHECK_THAT(help, Contains("0: no validation data, so no early stopping"));
  CHECK_THAT(help, Contains("Needs gnuplot"));
  CHECK_THAT(help, Contains("a decimal integer in [0, 2^64 - 1]"));
}
