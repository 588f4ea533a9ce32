// Issue 16, section 1, in the library: the defects that bad input exposed, each with the test that would
// have caught it.
// - Item 3: a capacity factor so large that its capacity does not fit an integer (1e300) is defined and
//   drops nothing, for every capacity gate; the partition sizes' products are refused before they overflow;
//   a huge batch size is one batch.
// - Item 5: shapes, not sizes, wherever a model meets data (evaluate, train_epoch, fit, personalize,
//   the mixture, the mixture-of-experts layer).
// - Item 8: fit() without validation data says so (validated false, the last epoch, no "best" loss of 0).
// - Section 4: error messages are built without iostreams (for small embedded binaries) and still print
//   every argument exactly as std::ostream would.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>
#include <span>
#include <vector>

#include <fedmoe/fedmoe.hpp>
#include <fedmoe/training/trainer.hpp>

using namespace fedmoe;
using Catch::Matchers::Contains;

namespace {

Matrix<float> random_tokens(Index width, Index tokens, std::uint64_t seed) {
  Rng rng(seed);
  Matrix<float> x(width, tokens);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = float(rng.normal());
  return x;
}

/// n samples of shape `shape`, labels j % classes, inputs uniform in [0, 1).
Dataset<float> images(Shape shape, Index n, Index classes, std::uint64_t seed = 1) {
  Rng rng(seed);
  Dataset<float> d{Matrix<float>(shape.size(), n), Labels(n), shape, classes};
  for (Index i = 0; i < d.inputs.size(); ++i) d.inputs.data()[i] = rng.uniform<float>(0.0f, 1.0f);
  for (Index j = 0; j < n; ++j) d.labels[j] = std::int32_t(j % classes);
  d.validate();
  return d;
}

std::vector<Index> first(Index n) {
  std::vector<Index> v(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) v[std::size_t(i)] = i;
  return v;
}

}  // namespace

// ---- item 3: capacity ----

TEST_CASE("capacity: any finite factor is defined and a capacity above the tokens drops nothing",
          "[reliability][gates]") {
  using detail::capacity;
  CHECK(capacity(10, 4, 1.0, 10) == 3);           // ceil(10 / 4)
  CHECK(capacity(20, 4, 1.0, 10) == 5);           // top-2: ceil(2 * 10 / 4)
  CHECK(capacity(10, 4, 1e-9, 10) == 1);          // at least 1
  CHECK(capacity(10, 4, 1e300, 10) == 10);        // used to cast 2.5e300 to an integer: undefined, came out 1
  CHECK(capacity(10, 1, std::numeric_limits<double>::max(), 10) == 10);  // the product overflows to +inf
  const Index most = std::numeric_limits<Index>::max();
  CHECK(capacity(most, 1, 2.0, most) == most);    // 2^64 as a double: not representable as Index
  CHECK_THROWS_WITH(capacity(10, 4, std::nan(""), 10), Contains("expected a finite capacity factor > 0, got nan"));
  CHECK_THROWS_WITH(capacity(10, 4, HUGE_VAL, 10), Contains("got inf"));
}

TEMPLATE_TEST_CASE("every capacity gate routes a huge capacity factor exactly as an uncapped one",
                   "[reliability][gates]", SwitchGate<float>, Top2Gate<float>, ExpertChoiceGate<float>) {
  const Index width = 5, experts = 4, tokens = 37;
  const Matrix<float> x = random_tokens(width, tokens, 3);
  TestType roomy(width, experts, double(experts));  // capacity >= tokens already: nothing can be dropped
  Rng rng(7);
  roomy.init(rng);
  // Everything prefers expert 0, so a small capacity would drop most tokens.
  roomy.parameters()[width * experts] = 10.0f;
  const Routing<float> expected = roomy.forward(x);
  for (double factor : {1e300, 1e308, std::numeric_limits<double>::max()}) {
    INFO("capacity factor " << factor);
    TestType huge(width, experts, factor);
    huge.parameters() = roomy.parameters();
    const Routing<float>& r = huge.forward(x);
    CHECK(r.capacity == tokens);
    CHECK(r.dropped == expected.dropped);
    CHECK((r.indices.array() == expected.indices.array()).all());
    CHECK((r.weights.array() == expected.weights.array()).all());
  }
  CHECK(expected.dropped == 0);
  CHECK_THROWS_WITH(TestType(width, experts, std::numeric_limits<double>::infinity()),
                    Contains("expected a finite capacity factor > 0, got inf"));
  CHECK_THROWS_WITH(TestType(width, experts, std::nan("")), Contains("got nan"));
}

// ---- item 3 / 6: the partition's totals ----

TEST_CASE("partition sizes whose totals overflow an Index are refused before anything is computed",
          "[reliability][partition]") {
  Labels labels(40);
  for (Index i = 0; i < labels.size(); ++i) labels[i] = std::int32_t(i % 4);
  Rng rng(1);
  // In terms of this target's Index (63 value bits on x86-64 and aarch64, 31 on armhf).
  constexpr Index most = std::numeric_limits<Index>::max();
  const Index huge_clients = Index(1) << (std::numeric_limits<Index>::digits - 1);  // 2^62: --clients 4611686018427387904
  const PartitionSpec too_many{huge_clients, 100, 200, 200, 0.5};
  // (one matcher: Catch2's && of matchers keeps references to its operands, so it cannot be stored)
  const auto refused = Contains("expected clients x (n_train + n_val) <= " + std::to_string(most) +
                                " (the largest Index), got " + std::to_string(huge_clients) + " x (100 + 200)");
  CHECK_THROWS_WITH(partition_majority(labels, labels, 4, too_many, rng), refused);
  CHECK_THROWS_WITH(partition_iid(labels, labels, 4, too_many, rng), refused);
  CHECK_THROWS_WITH(partition_dirichlet(labels, labels, 4, too_many, 0.5, rng), refused);
  CHECK_THROWS_WITH(partition_quantity_skew(labels, labels, 4, too_many, 0.5, rng), refused);
  const PartitionSpec many_tests{Index(1) << 11, 1, 0, detail::max_split_size, 0.5};  // 2^53 (2^31 - 1 on armhf)
  CHECK_THROWS_WITH(partition_quantity_skew(labels, labels, 4, many_tests, 0.5, rng),
                    Contains("expected clients x n_test <= "));
  if (detail::max_split_size < most) {  // 64-bit Index: sizes beyond 2^53 are not exact in double
    const PartitionSpec beyond_double{1, detail::max_split_size + 1, 0, 1, 0.5};
    CHECK_THROWS_WITH(partition_majority(labels, labels, 4, beyond_double, rng),
                      Contains("expected n_train <= 2^53 (9007199254740992), got 9007199254740993"));
  }
  // Totals that fit are held to the data as before.
  const PartitionSpec fits{4, 8, 3, 2, 0.5};
  CHECK_THROWS_WITH(partition_iid(labels, labels, 4, fits, rng), Contains("needs 44 training samples"));
}

TEST_CASE("a batch size beyond any data set is one batch, computed without overflow", "[reliability][batcher]") {
  const Dataset<float> data = images(Shape{3, 1, 1}, 10, 2);
  Batcher<float> batcher(data, first(10), std::numeric_limits<Index>::max());  // n + B - 1 used to overflow
  CHECK(batcher.num_batches() == 1);
  CHECK(batcher.batch_length(0) == 10);
  batcher.gather(0);
  CHECK(batcher.inputs().cols() == 10);
}

// ---- item 5: shapes, not sizes ----

TEST_CASE("a model meets data of its own shape only: evaluate, train_epoch and fit", "[reliability][shapes]") {
  auto cnn = fashion_cnn<float>(10, 0.0);
  Rng rng(2);
  cnn.init(rng);
  const Dataset<float> wide = images(Shape{1, 14, 56}, 20, 10);  // 784 pixels, not 28 x 28
  const Dataset<float> right = images(Shape{1, 28, 28}, 20, 10);
  const std::vector<Index> idx = first(20);
  const auto named = [](const char* who) {
    return Contains(std::string(who) + ": the model expects samples of shape [1x28x28], the data has samples of "
                    "shape [1x14x56] (the same number of values, in another shape)");
  };
  CHECK_THROWS_WITH(evaluate(cnn, wide, idx), named("evaluate"));
  Adam<float> opt(1e-3);
  Batcher<float> batcher(wide, idx, 5);
  CHECK_THROWS_WITH(train_epoch(cnn, opt, batcher, rng), named("train_epoch"));
  const FitConfig config{2, 1, 1, 5};
  CHECK_THROWS_WITH(fit(cnn, opt, wide, idx, idx, config, rng), named("fit"));
  CHECK_THROWS_WITH(fit(cnn, opt, wide, idx, std::span<const Index>(), config, rng), named("fit"));
  CHECK_NOTHROW(evaluate(cnn, right, idx));
  // A flat model reads flat samples; built for the images' shape it reads the images (Dense flattens).
  auto flat = mlp<float>(Shape{784, 1, 1}, 10, 8, 0.0);
  flat.init(rng);
  CHECK_THROWS_WITH(evaluate(flat, right, idx),
                    Contains("evaluate: the model expects samples of shape [784x1x1], the data has samples of shape "
                             "[1x28x28]"));
  auto image_mlp = mlp<float>(Shape{1, 28, 28}, 10, 8, 0.0);
  image_mlp.init(rng);
  CHECK_NOTHROW(evaluate(image_mlp, right, idx));
  // Different sizes are named as shapes too.
  CHECK_THROWS_WITH(evaluate(cnn, images(Shape{1, 32, 32}, 4, 10), first(4)),
                    Contains("expects samples of shape [1x28x28], the data has samples of shape [1x32x32]"));
}

TEST_CASE("personalisation refuses client data of another shape before training", "[reliability][shapes]") {
  const Dataset<float> wide = images(Shape{1, 14, 56}, 30, 10);
  ClientSplit split{first(10), {10, 11, 12, 13, 14}, {0, 1, 2, 3, 4}, {}};
  const Client<float> client(0, wide, split, false);
  auto global = fashion_cnn<float>(10, 0.0);
  PersonalWorkspace ws(global, fashion_cnn_gate<float>(0.0));
  Rng rng(3);
  global.init(rng);
  PersonalizeConfig pc;
  pc.fit = {1, 1, 1, 5};
  const std::vector<Index> global_test = first(5);
  CHECK_THROWS_WITH(personalize(client, global, ws, wide, global_test, pc, 0.0),
                    Contains("the model expects samples of shape [1x28x28], the data has samples of shape [1x14x56]"));
}

TEST_CASE("a client algorithm refuses local data of another shape before its first step", "[reliability][shapes]") {
  const Dataset<float> wide = images(Shape{1, 14, 56}, 10, 10);
  auto model = fashion_cnn<float>(10, 0.0);
  Rng rng(4);
  model.init(rng);
  const Vector<float> global = model.parameters();
  const GlobalView<float> view{global, {}};
  const std::vector<Index> idx = first(10);
  const LocalData<float> local{wide, idx};
  NoClientState state;
  CHECK_THROWS_WITH(LocalTraining<Adam<float>>({1, 5}, Adam<float>(1e-3)).train(model, view, local, state, rng),
                    Contains("local training: the model expects samples of shape [1x28x28], the data has samples "
                             "of shape [1x14x56]"));
  CHECK(model.parameters() == global);  // nothing stepped
}

TEST_CASE("the mixture and the mixture-of-experts layer compare input shapes, not sizes", "[reliability][shapes]") {
  auto specialist = mlp<float>(Shape{1, 28, 28}, 10, 8, 0.0);
  auto global = mlp<float>(Shape{1, 28, 28}, 10, 8, 0.0);
  auto flat_gate = mlp_gate<float>(Shape{784, 1, 1}, 8, 0.0);
  auto image_gate = mlp_gate<float>(Shape{1, 28, 28}, 8, 0.0);
  CHECK_THROWS_WITH(Mixture(flat_gate, specialist, global),
                    Contains("Mixture: expected the gate and the global model to take samples of shape [1x28x28] (the "
                             "specialist's), got [784x1x1] (gate) and [1x28x28] (global)"));
  const Mixture mix(image_gate, specialist, global);
  CHECK(mix.input_shape() == Shape{1, 28, 28});

  using E = Sequential<float, Dense<float>>;
  CHECK_THROWS_WITH(MoeLayer(SoftmaxGate<float>(4, 2), E(Shape{4, 1, 1}, Dense<float>(3)),
                             E(Shape{1, 2, 2}, Dense<float>(3))),
                    Contains("MoeLayer: expected expert 1 to take samples of shape [4x1x1] (as expert 0), got "
                             "[1x2x2]"));
  using Trunk = Sequential<float, Dense<float>>;
  CHECK_THROWS_WITH(MoeLayer(ModelGate<Trunk>(Trunk(Shape{1, 2, 2}, Dense<float>(2))),
                             E(Shape{4, 1, 1}, Dense<float>(3)), E(Shape{4, 1, 1}, Dense<float>(3))),
                    Contains("MoeLayer: expected a gate taking samples of shape [4x1x1] (the experts'), got [1x2x2]"));
  // A linear gate reads any shape flattened; experts of one image shape are fine.
  const MoeLayer layer(SwitchGate<float>(4, 2), E(Shape{1, 2, 2}, Dense<float>(3)), E(Shape{1, 2, 2}, Dense<float>(3)));
  CHECK(layer.input_shape() == Shape{1, 2, 2});
}

// ---- item 8: no validation data ----

TEST_CASE("fit without validation data runs every epoch, keeps the last weights and says so", "[reliability][fit]") {
  const Dataset<float> data = images(Shape{6, 1, 1}, 40, 2);
  auto model = mlp<float>(Shape{6, 1, 1}, 2, 4, 0.0);
  Rng init(5);
  model.init(init);
  const std::vector<Index> train = first(30), val{30, 31, 32, 33, 34, 35, 36, 37, 38, 39};
  const FitConfig config{7, 2, 1, 8};
  auto unvalidated = model;
  Adam<float> opt(1e-2);
  Rng rng(1);
  const FitResult none = fit(unvalidated, opt, data, train, std::span<const Index>(), config, rng);
  CHECK_FALSE(none.validated);
  CHECK(none.epochs == 7);
  CHECK(none.best_epoch == 7);          // the weights kept are the last epoch's
  CHECK(std::isnan(none.best_val_loss));  // not a "best" loss of 0
  auto validated = model;
  Adam<float> opt2(1e-2);
  Rng rng2(1);
  const FitResult with = fit(validated, opt2, data, train, val, config, rng2);
  CHECK(with.validated);
  CHECK(std::isfinite(with.best_val_loss));
  CHECK(FitResult{}.validated == false);  // a FitResult not made by early_stopped_loop claims no validation
}

namespace {
enum Unscoped { unscoped_three = 3 };
enum class Scoped : std::int16_t { minus_two = -2 };

template <class... Args>
std::string streamed(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}
}  // namespace

TEST_CASE("error messages print every argument as std::ostream would, without iostreams", "[reliability][error]") {
  const std::string text = "text";
  const std::string_view view = "view";
  const unsigned char byte = 'A';
  const signed char schar = 'z';
  const char* cstr = "c-string";
  CHECK(detail::concat(text, ' ', view, ' ', cstr, ' ', byte, schar) ==
        streamed(text, ' ', view, ' ', cstr, ' ', byte, schar));
  CHECK(detail::concat(true, false) == streamed(true, false));
  CHECK(detail::concat(std::int64_t(-9223372036854775807 - 1), ' ', std::uint64_t(18446744073709551615u), ' ',
                       short(-7), ' ', 0u) ==
        streamed(std::int64_t(-9223372036854775807 - 1), ' ', std::uint64_t(18446744073709551615u), ' ', short(-7),
                 ' ', 0u));
  for (double v : {0.0, -0.0, 0.1, 1.0 / 3, 1e-7, 123456789.0, 2.5e300, -1e-300, 4.94e-324,
                   std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
                   std::numeric_limits<double>::quiet_NaN()}) {
    INFO(v);
    CHECK(detail::concat(v) == streamed(v));
    CHECK(detail::concat(float(v)) == streamed(float(v)));
  }
  CHECK(detail::concat(unscoped_three) == streamed(unscoped_three));
  CHECK(detail::concat(Scoped::minus_two) == "-2");
  CHECK(detail::concat(Shape{3, 32, 32}) == streamed(Shape{3, 32, 32}));
  CHECK(detail::concat(Shape{3, 32, 32}) == "[3x32x32]");
  CHECK(detail::concat(detail::GateCall{"SwitchGate", "forward"}) == "SwitchGate::forward");
  // A type without to_string is streamed (std::filesystem::path prints quoted).
  CHECK(detail::concat(std::filesystem::path("a b")) == streamed(std::filesystem::path("a b")));
}
