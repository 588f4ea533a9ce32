// Issue 16, section 1, items 7 and 8 in fedmoe-paper (examples/paper_experiment.hpp): --plot pastes nothing
// into the gnuplot script, unknown extensions and a missing gnuplot are refused before any work;
// --val-per-client 0 runs without early stopping and the JSON says so. The other items:
// test_reliability_flags.cpp.
#include "reliability_flags.hpp"

using namespace reliability_test;

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
  // method 3 of the default --methods is "mixture": p, local mean and std, global mean and std
  CHECK(script.find("$d0_3 << EOD\n0.5 80 5 70 10\n1 80 5 70 10\nEOD\n") != std::string::npos);
  CHECK(script.find("title 'mixture-prior'") != std::string::npos);
}

TEST_CASE("the gate plot draws every mixture's gate-value histograms, normalised, and names no file",
          "[reliability][paper]") {
  Options o;
  o.p = {0.5, 1.0};
  std::vector<Row> rows = some_rows(o);
  CHECK(gate_plot_script(rows, "png").find("no mixture method was run") != std::string::npos);
  for (Row& r : rows)
    if (r.method == "mixture-prior") {
      r.metrics = {{"gate_auc", 0.9}};
      r.series = {{"gate_hist_majority", {0, 1, 3}}, {"gate_hist_other", {2, 2, 0}}};
    }
  const std::string script = gate_plot_script(rows, "svg");
  CHECK(script.find("set terminal svg") == 0);
  CHECK(script.find("set output") == std::string::npos);
  CHECK(script.find("$g0 << EOD\n") != std::string::npos);
  CHECK(script.find("0.5 0.25 0.5\n") != std::string::npos);  // middle bin: 1 of 4 majority, 2 of 4 other
  CHECK(script.find("mixture-prior, p 1, opt-out 0.5, AUC 0.90") != std::string::npos);
  CHECK(script.find("'mixture'") == std::string::npos);  // the paper mixture has no gate_auc in these rows
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
  write_plot(plot_script(o, some_rows(o), plot_format(o.plot)), OutputFile("--plot", o.plot));
  CHECK(dir.entries() == std::set<std::string>{name});
  CHECK(read(dir.path / name).rfind("\x89PNG", 0) == 0);
  o.plot = (dir.path / "r.svg").string();
  write_plot(plot_script(o, some_rows(o), plot_format(o.plot)), OutputFile("--plot", o.plot));
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
  Setting s{0.5, 0.5, {}, {}, 1.0, {}, {}, 0};
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
  const nlohmann::json doc = nlohmann::json::parse(json_text(Runtime{}, o, some_rows(o), {s}, 1.0, 1024));
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
