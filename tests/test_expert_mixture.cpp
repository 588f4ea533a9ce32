// ExpertMixture (moe/expert_mixture.hpp): K experts of different types under a dense moe gate.
// The loss against a direct double computation, central-difference gradient checks for the gate
// and every trainable expert (gate on the sample and on the experts' log-probabilities, where the
// experts also get the gradient through the gate's input), frozen experts untouched, the paper's
// Mixture as its K = 2 case, and the constructor's errors.
#include <catch2/catch.hpp>

#include <cmath>

#include <fedmoe/fedmoe.hpp>

#include "gradient_check.hpp"

using namespace fedmoe;
using Catch::Matchers::Contains;
using fedmoe::test::gradient_error;
using fedmoe::test::GradTolerance;
using fedmoe::test::random_batch;

namespace {

constexpr Index kIn = 6, kC = 4;

Labels labels_of(Index n, std::uint64_t seed) {
  Rng rng(seed);
  Labels y(n);
  for (Index j = 0; j < n; ++j) y[j] = std::int32_t(rng.uniform_int(std::uint64_t(kC)));
  return y;
}

Matrix<double> softmax_d(const Matrix<double>& z) {
  Matrix<double> p = z;
  for (Index j = 0; j < p.cols(); ++j) {
    p.col(j).array() = (p.col(j).array() - p.col(j).maxCoeff()).exp();
    p.col(j) /= p.col(j).sum();
  }
  return p;
}

/// Three experts of three architectures, and a softmax gate over an MLP trunk with 3 outputs.
struct Three {
  using S = double;
  Mlp<S> a = mlp<S>(Shape{kIn, 1, 1}, kC, 5);
  Mlp<S> b = mlp<S>(Shape{kIn, 1, 1}, kC, 7);
  Mlp<S> c = mlp<S>(Shape{kIn, 1, 1}, kC, 3);
  explicit Three(std::uint64_t seed) {
    Rng rng(seed);
    a.init(rng);
    b.init(rng);
    c.init(rng);
  }
};

/// Gradient error of every trainable part of `mix` (the gate, then the experts in order).
template <class Mix, class... E>
void check_gradients(Mix& mix, const Matrix<double>& x, const Labels& y, E&... experts) {
  Rng rng(0);
  mix.loss_and_gradient(x, y, Mode::eval, rng);
  const Vector<double> dgate = mix.gate().gradients();
  auto f = [&] {
    Rng r(0);
    return double(mix.loss(x, y, Mode::eval, r));
  };
  CHECK(gradient_error<double>(mix.gate().parameters(), dgate, f) < GradTolerance<double>::max_rel_error);
  std::size_t k = 0;
  auto check_expert = [&](auto& e) {
    INFO("expert " << k);
    if (mix.trainable(k)) {
      Rng r(0);
      mix.loss_and_gradient(x, y, Mode::eval, r);
      const Vector<double> de = e.gradients();
      CHECK(gradient_error<double>(e.parameters(), de, f) < GradTolerance<double>::max_rel_error);
    }
    ++k;
  };
  (check_expert(experts), ...);
}

}  // namespace

TEST_CASE("a K-expert mixture's loss is -mean log sum_k w_k p_k[y]", "[expert_mixture]") {
  Three e(1);
  ModelGate gate(mlp<double>(Shape{kIn, 1, 1}, 3, 6));
  Rng grng(2);
  gate.init(grng);
  ExpertMixture mix(gate, e.a, e.b, e.c);
  const Matrix<double> x = random_batch<double>(kIn, 9, 3);
  const Labels y = labels_of(9, 4);
  Rng rng(0);
  const double loss = mix.loss(x, y, Mode::eval, rng);
  const Matrix<double> w = gate.forward(x).weights;
  const Matrix<double> pa = softmax_d(e.a.forward(x)), pb = softmax_d(e.b.forward(x)), pc = softmax_d(e.c.forward(x));
  double expected = 0;
  for (Index j = 0; j < 9; ++j)
    expected -= std::log(w(0, j) * pa(y[j], j) + w(1, j) * pb(y[j], j) + w(2, j) * pc(y[j], j));
  CHECK(loss == Approx(expected / 9).epsilon(1e-12));
  const Matrix<double>& p = mix.forward(x);
  const Matrix<double> direct = pa.array().rowwise() * w.row(0).array() + pb.array().rowwise() * w.row(1).array() +
                                pc.array().rowwise() * w.row(2).array();
  CHECK((p - direct).cwiseAbs().maxCoeff() < 1e-12);
  CHECK((mix.weights().colwise().sum().array() - 1).abs().maxCoeff() < 1e-12);
}

TEST_CASE("a K-expert mixture passes the gradient check for its gate and its trainable experts", "[expert_mixture]") {
  const Matrix<double> x = random_batch<double>(kIn, 7, 5);
  const Labels y = labels_of(7, 6);
  SECTION("softmax gate on the sample, experts 0 and 2 trainable, expert 1 frozen") {
    Three e(7);
    ModelGate gate(mlp<double>(Shape{kIn, 1, 1}, 3, 6));
    Rng grng(8);
    gate.init(grng);
    ExpertMixture mix(gate, e.a, e.b, e.c);
    mix.set_trainable(1, false);
    e.b.gradients().setConstant(42);  // a frozen expert's gradients are never written
    check_gradients(mix, x, y, e.a, e.b, e.c);
    CHECK((e.b.gradients().array() == 42).all());
  }
  SECTION("softmax gate on the experts' log-probabilities: the experts also get the path through the gate") {
    Three e(9);
    ModelGate gate(mlp<double>(Shape{3 * kC, 1, 1}, 3, 6));
    Rng grng(10);
    gate.init(grng);
    ExpertMixture mix(GateInput::expert_log_probs, gate, e.a, e.b, e.c);
    mix.set_trainable(2, false);
    check_gradients(mix, x, y, e.a, e.b, e.c);
  }
  SECTION("a probability gate (trunk ending in Softmax) over two experts and the linear SoftmaxGate") {
    Three e(11);
    using Trunk = Sequential<double, Dense<double>, Softmax<double>>;
    ProbabilityGate gate(Trunk(Shape{kIn, 1, 1}, Dense<double>(2), Softmax<double>()));
    Rng grng(12);
    gate.init(grng);
    ExpertMixture mix(gate, e.a, e.b);
    check_gradients(mix, x, y, e.a, e.b);
    SoftmaxGate<double> linear(kIn, 3);
    linear.init(grng);
    ExpertMixture lmix(linear, e.a, e.b, e.c);
    check_gradients(lmix, x, y, e.a, e.b, e.c);
  }
}

TEST_CASE("the paper's Mixture is ExpertMixture with K = 2: the same loss, probabilities and gradients",
          "[expert_mixture]") {
  using S = float;
  Rng rng(13);
  auto spec = mlp<S>(Shape{kIn, 1, 1}, kC, 8), global = mlp<S>(Shape{kIn, 1, 1}, kC, 5);
  auto gate = mlp_gate<S>(Shape{kIn, 1, 1}, 7);
  spec.init(rng);
  global.init(rng);
  gate.init(rng);
  const Matrix<S> x = random_batch<S>(kIn, 10, 14);
  const Labels y = labels_of(10, 15);
  Mixture paper(gate, spec, global);
  Rng r1(3), r2(3);
  const S l1 = paper.loss_and_gradient(x, y, Mode::train, r1);
  const Vector<S> dg1 = gate.gradients(), ds1 = spec.gradients();
  ProbabilityGate<ModelRef<decltype(gate)>> adapter{ModelRef(gate)};
  ExpertMixture general(adapter, spec, global);
  general.set_trainable(1, false);
  const S l2 = general.loss_and_gradient(x, y, Mode::train, r2);
  CHECK(l1 == l2);
  CHECK(dg1 == gate.gradients());
  CHECK(ds1 == spec.gradients());
  CHECK(paper.forward(x) == general.forward(x));
}

TEST_CASE("with frozen experts, the cached (stacking) calls equal the full ones bitwise", "[expert_mixture]") {
  using S = float;
  Rng rng(17);
  auto a = mlp<S>(Shape{kIn, 1, 1}, kC, 5), b = mlp<S>(Shape{kIn, 1, 1}, kC, 7);
  a.init(rng);
  b.init(rng);
  const Matrix<S> x = random_batch<S>(kIn, 12, 18);
  const Labels y = labels_of(12, 19);
  std::array<Matrix<S>, 2> lp;
  fedmoe::detail::log_softmax(a.forward(x), lp[0]);
  fedmoe::detail::log_softmax(b.forward(x), lp[1]);
  for (const GateInput input : {GateInput::sample, GateInput::expert_log_probs}) {
    INFO(to_string(input));
    SoftmaxGate<S> gate(input == GateInput::sample ? kIn : 2 * kC, 2);
    Rng grng(20);
    gate.init(grng);
    ExpertMixture mix(input, gate, a, b);
    mix.set_trainable(0, false);
    mix.set_trainable(1, false);
    Rng r1(1), r2(1);
    const S full = mix.loss_and_gradient(x, y, Mode::train, r1);
    const Vector<S> g_full = gate.gradients();
    const Matrix<S> p_full = mix.forward(x);
    const S cached = mix.gate_loss_and_gradient_cached(x, lp, y, Mode::train, r2);
    CHECK(full == cached);
    CHECK(g_full == gate.gradients());
    CHECK(mix.loss_cached(x, lp, y, Mode::eval, r2) == full);
    CHECK(mix.forward_cached(x, lp, Mode::eval, r2) == p_full);
  }
  SoftmaxGate<S> gate(kIn, 2);
  ExpertMixture mix(gate, a, b);
  CHECK_THROWS_WITH(mix.forward_cached(x.leftCols(3), lp, Mode::eval, rng), Contains("expected 12 samples") && Contains("got 3"));
}

TEST_CASE("ExpertMixture refuses gates and experts that do not fit, naming both", "[expert_mixture]") {
  Three e(16);
  ModelGate two(mlp<double>(Shape{kIn, 1, 1}, 2, 4));
  CHECK_THROWS_WITH(ExpertMixture(two, e.a, e.b, e.c),
                    Contains("dense gate over 3 experts") && Contains("over 2 experts"));
  ModelGate wide(mlp<double>(Shape{kIn, 1, 1}, 3, 4));
  CHECK_THROWS_WITH(ExpertMixture(GateInput::expert_log_probs, wide, e.a, e.b, e.c),
                    Contains("reading 12 values") && Contains("got 6"));
  auto other = mlp<double>(Shape{kIn, 1, 1}, kC + 1, 4);
  ModelGate gate(mlp<double>(Shape{kIn, 1, 1}, 2, 4));
  CHECK_THROWS_WITH(ExpertMixture(gate, e.a, other), Contains("expert 1 to have 4 outputs") && Contains("got 5"));
  auto flat = mlp<double>(Shape{kIn, 1, 1}, kC, 4);
  auto image = mlp<double>(Shape{1, 2, 3}, kC, 4);
  CHECK_THROWS_WITH(ExpertMixture(gate, flat, image), Contains("shape [6x1x1]") && Contains("[1x2x3]"));
  ModelGate image_gate(mlp<double>(Shape{1, 2, 3}, 2, 4));
  CHECK_THROWS_WITH(ExpertMixture(image_gate, e.a, e.b), Contains("gate taking samples of shape [6x1x1]"));
  CHECK_THROWS_WITH(ExpertMixture(gate, e.a, e.b).set_trainable(2, false), Contains("[0, 2)") && Contains("got 2"));
}
