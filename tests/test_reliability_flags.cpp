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
// This file: items 6 and 5; items 4, 7 and 8 are in test_reliability_flags_outputs.cpp and
// test_reliability_flags_plot.cpp (helpers: reliability_flags.hpp).
// Also here: issue 17's CIFAR flags and model choice (its runs are in test_reliability_flags_outputs.cpp).
#include "reliability_flags.hpp"

using namespace reliability_test;

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


// ---- issue 17: CIFAR-10 and CIFAR-100 (the runs: test_reliability_flags_outputs.cpp) ----

TEST_CASE("fedmoe-paper's CIFAR flags are checked before any work", "[reliability][paper][cifar]") {
  Options o;
  REQUIRE(parse_error({"--dataset", "cifar100", "--cifar100-labels", "coarse", "--data", "/d"}, &o).empty());
  CHECK(o.dataset == "cifar100");
  CHECK(o.cifar100_labels == "coarse");
  CHECK_NOTHROW(validate_options(o));
  CHECK_THAT(parse_error({"--dataset", "cifar1000"}), Contains("--dataset: cifar1000 not in {"));
  CHECK_THAT(parse_error({"--cifar100-labels", "superclass"}), Contains("--cifar100-labels: superclass not in {"));
  // Coarse labels exist only in CIFAR-100's files; fine (the default) is harmless anywhere.
  o.dataset = "cifar10";
  CHECK_THROWS_WITH(validate_options(o), Contains("fedmoe-paper: --cifar100-labels coarse needs --dataset cifar100 "
                                                  "(the only data with coarse labels), got --dataset cifar10"));
  o.cifar100_labels = "fine";
  CHECK_NOTHROW(validate_options(o));
  // CIFAR has no default directory: without --data the run stops before loading anything.
  for (const char* dataset : {"cifar10", "cifar100"}) {
    Options d;
    d.dataset = dataset;
    INFO(dataset);
    CHECK_THROWS_WITH(validate_options(d), Contains(std::string("fedmoe-paper: --dataset ") + dataset +
                                                    " needs --data DIR") &&
                                               Contains("https://www.cs.toronto.edu/~kriz/cifar.html"));
  }
  // The JSON's config echoes the dataset and the label set.
  o.cifar100_labels = "coarse";
  o.dataset = "cifar100";
  const nlohmann::json c = config_json(o);
  CHECK(c["dataset"] == "cifar100");
  CHECK(c["cifar100_labels"] == "coarse");
  CHECK(c["data"] == "/d");
}

TEST_CASE("the model flag takes the Fashion-MNIST and the CIFAR sample shapes and refuses any other",
          "[reliability][paper][cifar]") {
  Options o;
  o.data = "/data";
  o.dataset = "idx";
  CHECK_NOTHROW(check_model_shape(o, blank(Shape{1, 28, 28}, 1)));
  CHECK_NOTHROW(check_model_shape(o, blank(Shape{3, 32, 32}, 1)));
  CHECK_THROWS_WITH(check_model_shape(o, blank(Shape{1, 14, 56}, 1)),
                    Contains("fedmoe-paper: --model cnn takes samples of shape [1x28x28] (the Fashion-MNIST CNN) or "
                             "[3x32x32] (the CIFAR CNN), the data in '/data' (--dataset idx) has training samples of "
                             "shape [1x14x56] (the same number of values, in another shape)"));
  CHECK_THROWS_WITH(check_model_shape(o, blank(Shape{1, 32, 32}, 1)),
                    Contains("has training samples of shape [1x32x32]") && !Contains("the same number of values"));
  o.model = "mlp";
  CHECK_THROWS_WITH(check_model_shape(o, blank(Shape{3, 28, 28}, 1)),
                    Contains("--model mlp takes samples of shape [1x28x28] or [3x32x32]") &&
                        Contains("has training samples of shape [3x28x28]"));
  // The test split is held to the model the training split chose.
  o.model = "cnn";
  o.clients = 2;
  o.n_train = 2;
  o.n_val = 1;
  o.n_test = 2;
  o.global_test = 0;
  CHECK_THROWS_WITH(check_against_data(o, cifar_cnn<float>().input_shape(), blank(Shape{3, 32, 32}, 10),
                                       blank(Shape{1, 28, 28}, 10)),
                    Contains("--model cnn takes samples of shape [3x32x32]") &&
                        Contains("test samples of shape [1x28x28]"));
}
