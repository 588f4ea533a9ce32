// Mixture-of-experts gates and the mixture layer: routing semantics, auxiliary losses, errors,
// and the central-difference gradient check with the selection held fixed.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

#include <fedmoe/fedmoe.hpp>
#include <fedmoe/moe/expert_choice_gate.hpp>
#include <fedmoe/moe/moe_layer.hpp>
#include <fedmoe/moe/noisy_top_k_gate.hpp>
#include <fedmoe/moe/softmax_gate.hpp>
#include <fedmoe/moe/switch_gate.hpp>
#include <fedmoe/moe/top2_gate.hpp>
#include <fedmoe/moe/z_loss.hpp>

#include "gradient_check.hpp"

using namespace fedmoe;
using fedmoe::test::gradient_error;
using fedmoe::test::GradTolerance;
using fedmoe::test::random_batch;

namespace {

template <class S>
Matrix<S> random_matrix(Index rows, Index cols, std::uint64_t seed) {
  return random_batch<S>(rows, cols, seed);
}

template <class S>
double aux_objective(const AuxLosses<S>& a, const AuxWeights<S>& w) {
  return double(w.importance) * double(a.importance) + double(w.load) * double(a.load) +
         double(w.balance) * double(a.balance) + double(w.z) * double(a.z);
}

/// Gradient check of f = sum(R .* weights) + aux objective, w.r.t. the gate's parameters and x,
/// with the selection frozen after the first forward (and the same noise stream at every forward).
template <class S, class G>
void check_gate_gradients(const char* name, G gate, Index tokens, Mode mode, AuxWeights<S> aux,
                          std::uint64_t seed = 3) {
  Rng init(seed);
  gate.init(init);
  for (Index i = 0; i < gate.num_params(); ++i) gate.parameters()[i] += init.uniform<S>(S(-0.3), S(0.3));
  Matrix<S> x = random_batch<S>(gate.input_size(), tokens, seed + 1);
  auto forward = [&]() -> const Routing<S>& {
    Rng noise(seed + 2);
    return gate.forward(x, mode, noise);
  };
  const Routing<S>& r0 = forward();
  const Matrix<S> w = random_matrix<S>(r0.slots, r0.tokens, seed + 3);
  gate.freeze_selection(true);
  auto f = [&]() {
    const Routing<S>& r = forward();
    return (r.weights.template cast<double>().array() * w.template cast<double>().array()).sum() +
           aux_objective(r.aux, aux);
  };
  forward();
  const Matrix<S> dx = gate.backward(x, w, aux, true);
  const Vector<S> grad = gate.gradients();
  const double ep = gradient_error<S>(gate.parameters(), grad, f);
  Vector<S> xv = Eigen::Map<Vector<S>>(x.data(), x.size());
  const Vector<S> dxv = Eigen::Map<const Vector<S>>(dx.data(), dx.size());
  const double ex = gradient_error<S>(xv, dxv, [&]() {
    x = Eigen::Map<Matrix<S>>(xv.data(), x.rows(), x.cols());
    return f();
  });
  INFO(name << ": params rel. error " << ep << ", input rel. error " << ex);
  CHECK(grad.norm() > 0);
  CHECK(ep <= GradTolerance<S>::max_rel_error);
  CHECK(ex <= GradTolerance<S>::max_rel_error);
}

template <class S>
using SmallExpert = Sequential<S, Dense<S>, Tanh<S>>;
template <class S>
using LinearExpert = Sequential<S, Dense<S>>;

}  // namespace

TEMPLATE_TEST_CASE("every gate passes the gradient check with the selection fixed", "[gates][gradcheck]", float,
                   double) {
  using S = TestType;
  AuxWeights<S> none;
  AuxWeights<S> all;
  all.importance = S(0.7);
  all.load = S(0.9);
  all.balance = S(0.5);
  all.z = S(0.3);
  check_gate_gradients<S>("softmax", SoftmaxGate<S>(5, 4), 6, Mode::eval, all);
  check_gate_gradients<S>("softmax K=2", SoftmaxGate<S>(5, 2), 6, Mode::eval, none);
  check_gate_gradients<S>("sigmoid", SigmoidGate<S>(5), 6, Mode::eval, all);
  check_gate_gradients<S>("noisy top-1 eval", NoisyTopKGate<S>(5, 4, 1), 8, Mode::eval, all);
  check_gate_gradients<S>("noisy top-2 train", NoisyTopKGate<S>(5, 4, 2), 8, Mode::train, all);
  check_gate_gradients<S>("noisy top-2 train, no aux", NoisyTopKGate<S>(5, 4, 2), 8, Mode::train, none);
  check_gate_gradients<S>("noisy top-3 of 3 train", NoisyTopKGate<S>(4, 3, 3), 5, Mode::train, all);
  check_gate_gradients<S>("switch", SwitchGate<S>(5, 3, 1.0), 9, Mode::eval, all);
  check_gate_gradients<S>("switch, tight capacity", SwitchGate<S>(5, 3, 0.5), 9, Mode::eval, all);
  check_gate_gradients<S>("top-2", Top2Gate<S>(5, 4, 1.0), 9, Mode::eval, all);
  check_gate_gradients<S>("top-2, tight capacity", Top2Gate<S>(5, 4, 0.4), 9, Mode::eval, all);
  check_gate_gradients<S>("expert choice", ExpertChoiceGate<S>(5, 3, 1.0), 7, Mode::eval, all);
  using Trunk = Sequential<S, Dense<S>, Tanh<S>, Dense<S>>;
  check_gate_gradients<S>("model gate", ModelGate<Trunk>(Trunk(Shape{5, 1, 1}, Dense<S>(6), Tanh<S>(), Dense<S>(3))),
                          4, Mode::eval, all);
}

TEMPLATE_TEST_CASE("the mixture layer passes the gradient check", "[gates][moe][gradcheck]", float, double) {
  using S = TestType;
  const Index width = 4, out = 3, tokens = 10;
  auto run = [&](const char* name, auto gate) {
    MoeLayer layer(std::move(gate), SmallExpert<S>(Shape{width, 1, 1}, Dense<S>(out), Tanh<S>()),
                   LinearExpert<S>(Shape{width, 1, 1}, Dense<S>(out)),
                   SmallExpert<S>(Shape{width, 1, 1}, Dense<S>(out), Tanh<S>()));
    Rng rng(21);
    layer.init(rng);
    for (Index i = 0; i < layer.gate().num_params(); ++i) layer.gate().parameters()[i] += rng.uniform<S>(S(-1), S(1));
    Matrix<S> x = random_batch<S>(width, tokens, 22);
    AuxWeights<S> aux;
    aux.balance = S(0.4);
    aux.z = S(0.2);
    aux.importance = S(0.3);
    const Matrix<S> w = random_batch<S>(out, tokens, 23);
    auto forward = [&]() -> const Matrix<S>& {
      Rng noise(24);
      return layer.forward(x, Mode::train, noise);
    };
    forward();
    layer.gate().freeze_selection(true);
    auto f = [&]() {
      const Matrix<S>& y = forward();
      return (y.template cast<double>().array() * w.template cast<double>().array()).sum() +
             aux_objective(layer.routing().aux, aux);
    };
    forward();
    const Matrix<S> dx = layer.backward(x, w, aux, true);
    const Vector<S> gg = layer.gate().gradients();
    const Vector<S> g0 = layer.template expert<0>().gradients();
    const Vector<S> g1 = layer.template expert<1>().gradients();
    const Vector<S> g2 = layer.template expert<2>().gradients();
    const double eg = gradient_error<S>(layer.gate().parameters(), gg, f);
    const double e0 = gradient_error<S>(layer.template expert<0>().parameters(), g0, f);
    const double e1 = gradient_error<S>(layer.template expert<1>().parameters(), g1, f);
    const double e2 = gradient_error<S>(layer.template expert<2>().parameters(), g2, f);
    Vector<S> xv = Eigen::Map<Vector<S>>(x.data(), x.size());
    const Vector<S> dxv = Eigen::Map<const Vector<S>>(dx.data(), dx.size());
    const double ex = gradient_error<S>(xv, dxv, [&]() {
      x = Eigen::Map<Matrix<S>>(xv.data(), x.rows(), x.cols());
      return f();
    });
    INFO(name << ": gate " << eg << ", experts " << e0 << " " << e1 << " " << e2 << ", input " << ex);
    CHECK(gg.norm() > 0);
    CHECK(eg <= GradTolerance<S>::max_rel_error);
    CHECK(e0 <= GradTolerance<S>::max_rel_error);
    CHECK(e1 <= GradTolerance<S>::max_rel_error);
    CHECK(e2 <= GradTolerance<S>::max_rel_error);
    CHECK(ex <= GradTolerance<S>::max_rel_error);
  };
  run("softmax", SoftmaxGate<S>(width, 3));
  run("noisy top-2", NoisyTopKGate<S>(width, 3, 2));
  run("switch", SwitchGate<S>(width, 3, 1.0));
  run("top-2", Top2Gate<S>(width, 3, 1.0));
  run("expert choice", ExpertChoiceGate<S>(width, 3, 1.0));
}

TEMPLATE_TEST_CASE("the softmax gate computes softmax(W x + b) and the sigmoid gate is its K=2 case", "[gates]",
                   float, double) {
  using S = TestType;
  SoftmaxGate<S> gate(3, 4);
  Rng rng(1);
  gate.init(rng);
  const Matrix<S> x = random_batch<S>(3, 5, 2);
  const Routing<S>& r = gate.forward(x);
  const Eigen::Map<const Matrix<S>> wt(gate.parameters().data(), 3, 4);
  const Eigen::Map<const Vector<S>> b(gate.parameters().data() + 12, 4);
  for (Index t = 0; t < 5; ++t) {
    Vector<S> l = wt.transpose() * x.col(t) + b;
    Vector<S> p = (l.array() - l.maxCoeff()).exp();
    p /= p.sum();
    CHECK((r.weights.col(t) - p).cwiseAbs().maxCoeff() < S(1e-5));
    CHECK(r.weights.col(t).sum() == Approx(1).epsilon(1e-5));
  }
  for (Index e = 0; e < 4; ++e) CHECK(r.expert_count(e) == 5);
  CHECK(r.aux.z == Approx(double(z_loss<S>(gate.logits()))).epsilon(1e-5));

  SigmoidGate<S> sig(3);
  sig.init(rng);
  SoftmaxGate<S> two(3, 2);
  two.parameters().setZero();
  for (Index i = 0; i < 3; ++i) two.parameters()[i] = sig.parameters()[i];  // first row of W, second row 0
  two.parameters()[6] = sig.parameters()[3];                                // first bias, second 0
  const Routing<S>& rs = sig.forward(x);
  const Routing<S>& rt = two.forward(x);
  for (Index t = 0; t < 5; ++t) {
    const double z = double(sig.parameters().head(3).dot(x.col(t)) + sig.parameters()[3]);
    CHECK(double(rs.weights(0, t)) == Approx(1.0 / (1.0 + std::exp(-z))).epsilon(1e-5));
    CHECK(double(rs.weights(1, t)) == Approx(1.0 - 1.0 / (1.0 + std::exp(-z))).epsilon(1e-5));
    CHECK(double(rs.weights(0, t)) == Approx(double(rt.weights(0, t))).epsilon(1e-5));
  }
  CHECK(double(rs.aux.z) == Approx(double(rt.aux.z)).epsilon(1e-5));
}

TEMPLATE_TEST_CASE("noisy top-k keeps the k largest values, is seeded and noise-free in eval", "[gates]", float,
                   double) {
  using S = TestType;
  const Index e = 6, k = 2, t = 12;
  NoisyTopKGate<S> gate(4, e, k);
  Rng rng(5);
  gate.init(rng);
  gate.parameters().tail(4 * e + e).setConstant(S(0.5));  // noise scale > 0
  const Matrix<S> x = random_batch<S>(4, t, 6);
  const Routing<S> eval = gate.forward(x);
  for (Index j = 0; j < t; ++j) {
    const Vector<S> c = gate.clean_logits().col(j);
    CHECK(eval.weights.col(j).sum() == Approx(1).epsilon(1e-5));
    const S kth = c[eval.indices(k - 1, j)];
    for (Index i = 0; i < e; ++i) {
      const bool chosen = (eval.indices.col(j).array() == static_cast<std::int32_t>(i)).any();
      if (!chosen) CHECK(c[i] <= kth);
    }
  }
  Rng other(99);
  const Routing<S> eval2 = gate.forward(x, Mode::eval, other);
  CHECK(eval2.weights == eval.weights);
  CHECK(eval2.indices == eval.indices);
  Rng a(7), b(7), c(8);
  const Routing<S> ta = gate.forward(x, Mode::train, a);
  const Matrix<S> ha = gate.values();
  const Routing<S> tb = gate.forward(x, Mode::train, b);
  CHECK(tb.weights == ta.weights);
  CHECK(gate.values() == ha);
  gate.forward(x, Mode::train, c);
  CHECK(gate.values() != ha);
  CHECK(ta.aux.importance >= 0);
  CHECK(ta.aux.load >= 0);
  // importance is the CV^2 of the per-expert weight sums
  Vector<S> imp = Vector<S>::Zero(e);
  for (Index j = 0; j < t; ++j)
    for (Index i = 0; i < k; ++i) imp[ta.indices(i, j)] += ta.weights(i, j);
  const double mean = imp.template cast<double>().mean();
  const double var = (imp.template cast<double>().array() - mean).square().sum() / double(e - 1);
  CHECK(double(ta.aux.importance) == Approx(var / (mean * mean + 1e-10)).epsilon(1e-4));
}

TEMPLATE_TEST_CASE("noisy top-k's chunks of tokens change no bit", "[gates]", float, double) {
  using S = TestType;
  // The forward works through its elementwise passes 256 tokens at a time. In eval mode a token's routing
  // depends on nothing else; in training its noise is the next draws of the stream, so a prefix of the
  // batch, run alone with the same seed, gets the same bits on its tokens, as long as the prefix fills its
  // last packet of (expert, token) values: Eigen's array functions (softplus, erf) take the scalar std::
  // functions after the last full packet, whose last bits can differ.
  for (Index e : {3, 8}) {
    CAPTURE(e);
    const Index t = 600, k = 2;
    NoisyTopKGate<S> gate(5, e, k);
    Rng init(5);
    gate.init(init);
    gate.parameters().tail(5 * e + e) = S(0.5) * random_matrix<S>(5 * e + e, 1, 3);  // noise scale varies
    const Matrix<S> x = random_batch<S>(5, t, 6);
    const Routing<S> all = gate.forward(x);
    const Matrix<S> w = all.weights, c = gate.clean_logits();
    const IndexMatrix idx = all.indices;
    for (auto [j0, n] : {std::pair<Index, Index>{250, 12}, {508, 9}, {0, 1}, {599, 1}}) {
      CAPTURE(j0, n);
      const Routing<S> part = gate.forward(Matrix<S>(x.middleCols(j0, n)));
      CHECK(part.weights == w.middleCols(j0, n));
      CHECK(part.indices == idx.middleCols(j0, n));
      CHECK(gate.clean_logits() == c.middleCols(j0, n));
    }
    Rng a(11);
    const Routing<S> train = gate.forward(x, Mode::train, a);
    const Matrix<S> h = gate.values(), tw = train.weights;
    for (Index n : {16, 256, 272, 304, 592}) {  // n * e a multiple of 16 lanes
      CAPTURE(n);
      Rng b(11);
      const Routing<S> part = gate.forward(Matrix<S>(x.leftCols(n)), Mode::train, b);
      CHECK(gate.values() == h.leftCols(n));
      CHECK(part.weights == tw.leftCols(n));
    }
  }
}

TEMPLATE_TEST_CASE("noisy top-k selection is a stable descending sort of each token's values, ties to the lower expert",
                   "[gates]", float, double) {
  using S = TestType;
  const Index t = 37;  // two full packets and a partial one on every SIMD target
  for (Index e : {2, 3, 8, 17})
    for (Index k : {Index(1), Index(2), e - 1, e}) {
      if (k < 1 || k > e) continue;
      CAPTURE(e, k);
      NoisyTopKGate<S> gate(2, e, k);
      Rng rng(static_cast<std::uint64_t>(31 * e + k));
      // integer weights and tokens give integer clean logits, with many ties
      for (Index i = 0; i < gate.num_params(); ++i) gate.parameters()[i] = S(int(rng() % 3) - 1);
      Matrix<S> x(2, t);
      for (Index i = 0; i < x.size(); ++i) x.data()[i] = S(int(rng() % 5) - 2);
      const Index kk = std::min(k + 1, e);
      auto check_token = [&](const Routing<S>& r, Index j, const std::vector<int>& ids) {
        const Matrix<S>& h = gate.values();
        double m = -1e300, s = 0;
        for (Index q = 0; q < k; ++q) m = std::max(m, double(h(ids[q], j)));
        for (Index q = 0; q < k; ++q) s += std::exp(double(h(ids[q], j)) - m);
        for (Index q = 0; q < k; ++q) {
          CHECK(r.indices(q, j) == ids[q]);
          CHECK(double(r.weights(q, j)) == Approx(std::exp(double(h(ids[q], j)) - m) / s).epsilon(1e-5));
        }
      };
      for (Mode mode : {Mode::eval, Mode::train}) {
        Rng noise(1);
        const Routing<S>& r = gate.forward(x, mode, noise);
        REQUIRE(gate.order().rows() == kk);
        REQUIRE(gate.order().cols() == t);
        for (Index j = 0; j < t; ++j) {
          std::vector<int> ids(static_cast<std::size_t>(e));
          std::iota(ids.begin(), ids.end(), 0);
          const Matrix<S>& h = gate.values();
          std::stable_sort(ids.begin(), ids.end(), [&](int a, int b) { return h(a, j) > h(b, j); });
          for (Index q = 0; q < kk; ++q) CHECK(gate.order()(q, j) == ids[q]);
          check_token(r, j, ids);
        }
      }
      // frozen: the same experts for other tokens, and the softmax over their (now unsorted) values
      gate.freeze_selection(true);
      const IndexMatrix frozen = gate.order();
      const Matrix<S> x2 = random_batch<S>(2, t, 9);
      const Routing<S>& r2 = gate.forward(x2);
      CHECK(gate.order() == frozen);
      for (Index j = 0; j < t; ++j) {
        std::vector<int> ids(static_cast<std::size_t>(kk));
        for (Index q = 0; q < kk; ++q) ids[q] = frozen(q, j);
        check_token(r2, j, ids);
      }
    }
}

TEMPLATE_TEST_CASE("switch routing drops tokens beyond capacity in token order", "[gates]", float, double) {
  using S = TestType;
  const Index e = 4, t = 10;
  SwitchGate<S> gate(3, e, 1.0);
  gate.parameters().setZero();
  gate.parameters()[3 * e + 0] = S(20);  // bias: everything prefers expert 0
  const Matrix<S> x = random_batch<S>(3, t, 1);
  const Routing<S>& r = gate.forward(x);
  const Index cap = (t + e - 1) / e;  // ceil(10 / 4 * 1.0) = 3
  CHECK(r.capacity == cap);
  CHECK(r.dropped == t - cap);
  for (Index j = 0; j < t; ++j) {
    CHECK(r.indices(0, j) == (j < cap ? 0 : -1));
    if (j >= cap) CHECK(r.weights(0, j) == S(0));
  }
  CHECK(r.expert_count(0) == cap);
  // balance = E * sum_e f_e * mean_prob_e with f_0 = 1
  const double mean_p0 = double(gate.probabilities().row(0).mean());
  CHECK(double(r.aux.balance) == Approx(double(e) * mean_p0).epsilon(1e-5));
  SwitchGate<S> roomy(3, e, 4.0);
  roomy.parameters() = gate.parameters();
  CHECK(roomy.forward(x).dropped == 0);
}

TEMPLATE_TEST_CASE("top-2 renormalises the two weights and queues second choices behind first", "[gates]", float,
                   double) {
  using S = TestType;
  const Index e = 4, t = 10;
  Top2Gate<S> gate(3, e, 1.0);
  Rng rng(3);
  gate.init(rng);
  const Matrix<S> x = random_batch<S>(3, t, 4);
  Top2Gate<S> roomy(3, e, 10.0);
  roomy.parameters() = gate.parameters();
  const Routing<S>& rr = roomy.forward(x);
  CHECK(rr.dropped == 0);
  for (Index j = 0; j < t; ++j) {
    CHECK(rr.weights.col(j).sum() == Approx(1).epsilon(1e-5));
    CHECK(rr.weights(0, j) >= rr.weights(1, j));
    CHECK(rr.indices(0, j) != rr.indices(1, j));
    const auto& p = roomy.probabilities();
    CHECK(double(rr.weights(0, j)) ==
          Approx(double(p(rr.indices(0, j), j) / (p(rr.indices(0, j), j) + p(rr.indices(1, j), j)))).epsilon(1e-5));
  }
  gate.parameters().setZero();
  gate.parameters()[3 * e + 0] = S(20);  // first choice expert 0,
  gate.parameters()[3 * e + 1] = S(10);  // second choice expert 1
  const Routing<S>& r = gate.forward(x);
  CHECK(r.capacity == 5);  // ceil(2 * 10 / 4)
  for (Index j = 0; j < t; ++j) {
    CHECK(r.indices(0, j) == (j < 5 ? 0 : -1));
    CHECK(r.indices(1, j) == (j < 5 ? 1 : -1));
  }
  CHECK(r.dropped == 10);
  CHECK(r.weights.rightCols(5).cwiseAbs().maxCoeff() == S(0));
}

TEMPLATE_TEST_CASE("expert choice gives every expert its top-c tokens", "[gates]", float, double) {
  using S = TestType;
  const Index e = 3, t = 11;
  ExpertChoiceGate<S> gate(4, e, 1.5);
  Rng rng(8);
  gate.init(rng);
  const Matrix<S> x = random_batch<S>(4, t, 9);
  const Routing<S>& r = gate.forward(x);
  const Index c = 6;  // ceil(11 * 1.5 / 3) = 6
  CHECK(r.capacity == c);
  for (Index i = 0; i < e; ++i) {
    CHECK(r.expert_count(i) == c);
    S lowest_taken = S(2), highest_left = S(-1);
    for (Index j = 0; j < t; ++j) {
      const S p = gate.probabilities()(i, j);
      if (r.indices(i, j) == i) {
        lowest_taken = std::min(lowest_taken, p);
        CHECK(r.weights(i, j) == p);
      } else {
        CHECK(r.indices(i, j) == -1);
        highest_left = std::max(highest_left, p);
      }
    }
    CHECK(lowest_taken >= highest_left);
  }
}

TEMPLATE_TEST_CASE("z-loss is the mean squared log-sum-exp and its gradient checks", "[gates]", float, double) {
  using S = TestType;
  Matrix<S> l = random_batch<S>(5, 4, 3) * S(3);
  double direct = 0;
  for (Index t = 0; t < 4; ++t) {
    const double lse = std::log(l.col(t).template cast<double>().array().exp().sum());
    direct += lse * lse / 4;
  }
  CHECK(double(z_loss<S>(l)) == Approx(direct).epsilon(1e-5));
  Matrix<S> g;
  z_loss_gradient<S>(l, S(1), g);
  Vector<S> lv = Eigen::Map<Vector<S>>(l.data(), l.size());
  const Vector<S> gv = Eigen::Map<Vector<S>>(g.data(), g.size());
  const double err = gradient_error<S>(lv, gv, [&]() {
    return double(z_loss<S>(Matrix<S>(Eigen::Map<Matrix<S>>(lv.data(), 5, 4))));
  });
  CHECK(err <= GradTolerance<S>::max_rel_error);
}

TEST_CASE("the mixture layer combines only the selected experts", "[gates][moe]") {
  using S = double;
  const Index width = 3, out = 2, t = 6;
  MoeLayer layer(SwitchGate<S>(width, 2, 2.0), LinearExpert<S>(Shape{width, 1, 1}, Dense<S>(out)),
                 SmallExpert<S>(Shape{width, 1, 1}, Dense<S>(out), Tanh<S>()));
  Rng rng(4);
  layer.init(rng);
  layer.gate().parameters().setZero();
  layer.gate().parameters()[width * 2] = 15;  // every token to expert 0
  const Matrix<S> x = random_batch<S>(width, t, 5);
  const Matrix<S> y = layer.forward(x);
  const Routing<S>& r = layer.routing();
  CHECK(r.expert_count(0) == t);
  CHECK(r.expert_count(1) == 0);
  const Matrix<S> y0 = layer.expert<0>().forward(x);
  for (Index j = 0; j < t; ++j) CHECK((y.col(j) - r.weights(0, j) * y0.col(j)).norm() < 1e-12);
  layer.forward(x);
  layer.expert<1>().gradients().setConstant(7);
  layer.backward(x, Matrix<S>::Ones(out, t));
  CHECK(layer.expert<1>().gradients().norm() == 0);
  CHECK(layer.expert<0>().gradients().norm() > 0);
}

TEST_CASE("bad gate configurations and shapes raise clear errors", "[gates]") {
  CHECK_THROWS_WITH(NoisyTopKGate<float>(4, 3, 4), Catch::Contains("expected 1 <= k <= experts (3), got k = 4"));
  CHECK_THROWS_WITH(NoisyTopKGate<float>(4, 3, 0), Catch::Contains("got k = 0"));
  // expert ids travel as float lanes in the selection: exact up to 2^24 (checked before any allocation)
  CHECK_THROWS_WITH(NoisyTopKGate<float>(4, (Index(1) << 24) + 1, 1),
                    Catch::Contains("expected experts <= 16777216, got 16777217"));
  CHECK_THROWS_WITH(SwitchGate<float>(4, 3, 0.0), Catch::Contains("capacity factor > 0, got 0"));
  CHECK_THROWS_WITH(Top2Gate<float>(4, 1), Catch::Contains("expected experts >= 2"));
  CHECK_THROWS_WITH(ExpertChoiceGate<float>(4, 3, -1.0), Catch::Contains("capacity factor > 0, got -1"));
  CHECK_THROWS_WITH(SoftmaxGate<float>(0, 3), Catch::Contains("expected width > 0, got 0"));
  SoftmaxGate<float> gate(4, 3);
  CHECK_THROWS_WITH(gate.forward(Matrix<float>::Zero(5, 2)), Catch::Contains("expected input with 4 rows") &&
                                                                 Catch::Contains("got 5"));
  const Matrix<float> x = Matrix<float>::Zero(4, 2);
  gate.forward(x);
  CHECK_THROWS_WITH(gate.backward(x, Matrix<float>::Zero(3, 3)),
                    Catch::Contains("expected d_weights of shape 3x2") && Catch::Contains("got 3x3"));
  SwitchGate<float> sw(4, 3);
  sw.forward(x);
  sw.freeze_selection(true);
  CHECK_THROWS_WITH(sw.forward(Matrix<float>::Zero(4, 5)), Catch::Contains("frozen for 2 tokens, got 5"));
  using E = Sequential<float, Dense<float>>;
  CHECK_THROWS_WITH(MoeLayer(SoftmaxGate<float>(4, 3), E(Shape{4, 1, 1}, Dense<float>(2)),
                             E(Shape{4, 1, 1}, Dense<float>(2))),
                    Catch::Contains("expected a gate over 2 experts") && Catch::Contains("got a gate over 3"));
  CHECK_THROWS_WITH(MoeLayer(SoftmaxGate<float>(4, 2), E(Shape{4, 1, 1}, Dense<float>(2)),
                             E(Shape{5, 1, 1}, Dense<float>(2))),
                    Catch::Contains("expected expert 1 to take 4 inputs") && Catch::Contains("got 5"));
}

TEMPLATE_TEST_CASE("softmax_columns: a double softmax's values, independent of the batch", "[gates]", float,
                   double) {
  using S = TestType;
  const double tol = std::is_same_v<S, float> ? 1e-6 : 1e-14;
  // 8, 16, 24, 64: the transposed path where packets of >= 8 lanes divide the experts (AVX, AVX-512);
  // 2, 3, 4, 65 (and all of them in SSE builds): the per-column path.
  for (Index e : {2, 3, 4, 8, 16, 24, 64, 65}) {
    CAPTURE(e);
    const Index t = 37;  // partial groups of tokens and a partial last packet for every packet width
    const Matrix<S> logits = S(4) * random_matrix<S>(e, t, 11 + std::uint64_t(e));
    Matrix<S> p;
    Vector<S> lse;
    detail::softmax_columns(logits, p, lse);
    REQUIRE(p.rows() == e);
    REQUIRE(p.cols() == t);
    REQUIRE(lse.size() == t);
    double worst_p = 0, worst_lse = 0;
    for (Index j = 0; j < t; ++j) {
      const double m = logits.col(j).template cast<double>().maxCoeff();
      double sum = 0;
      for (Index i = 0; i < e; ++i) sum += std::exp(double(logits(i, j)) - m);
      for (Index i = 0; i < e; ++i)
        worst_p = std::max(worst_p, std::abs(std::exp(double(logits(i, j)) - m) / sum - double(p(i, j))));
      const double l = m + std::log(sum);
      worst_lse = std::max(worst_lse, std::abs(l - double(lse[j])) / std::max(1.0, std::abs(l)));
    }
    CHECK(worst_p < tol);
    CHECK(worst_lse < tol);
    // Every slice of columns gets bitwise the big batch's values: before, the exponentials after the
    // matrix's last full packet went through std::exp instead of the packet exp.
    for (auto [j0, n] : {std::pair<Index, Index>{0, 1}, {3, 5}, {8, 9}, {16, 17}, {29, 8}, {36, 1}}) {
      CAPTURE(j0, n);
      Matrix<S> ps;
      Vector<S> ls;
      detail::softmax_columns(Matrix<S>(logits.middleCols(j0, n)), ps, ls);
      CHECK(ps == p.middleCols(j0, n));
      CHECK(ls == lse.segment(j0, n));
    }
  }
}

TEMPLATE_TEST_CASE("standard_normals inverts the normal CDF of seeded uniforms", "[gates]", float, double) {
  using S = TestType;
  const Index n = 100001;  // odd: the float path's last value uses half of a 64-bit draw
  Vector<S> a(n), b(n), c(37);
  Rng ra(3), rb(3), rc(3);
  detail::standard_normals(ra, a.data(), n);
  detail::standard_normals(rb, b.data(), n);
  CHECK(a == b);  // seeded
  detail::standard_normals(rc, c.data(), c.size());  // ends in a partial packet at any packet size
  CHECK(c == a.head(c.size()));
  // The uniforms the function draws (see its comment), and Phi(eps) = u for each.
  Rng ru(3);
  std::vector<double> u;
  while (static_cast<Index>(u.size()) < n) {
    const std::uint64_t bits = ru();
    if constexpr (std::is_same_v<S, float>) {
      u.push_back((double(bits >> 40) + 0.5) * 0x1p-24);
      u.push_back((double((bits >> 16) & 0xFFFFFFu) + 0.5) * 0x1p-24);
    } else {
      u.push_back((double(bits >> 11) + 0.5) * 0x1p-53);
    }
  }
  double worst = 0;
  for (Index i = 0; i < n; ++i)
    worst = std::max(worst, std::abs(0.5 * std::erfc(-double(a[i]) / std::sqrt(2.0)) - u[std::size_t(i)]));
  CHECK(worst < 2e-6);
  // ... in the tail polynomial's range too (-log(4u(1-u)) >= 5, |eps| > 2.93; run only for the packets that
  // have such a lane): about 0.34 % of the draws, so the sample has a few hundred of them.
  const auto tails = (a.array().abs() > S(2.93)).count();
  CHECK(tails > 200);
  const double mean = a.template cast<double>().mean();
  const double var = (a.template cast<double>().array() - mean).square().mean();
  CHECK(std::abs(mean) < 0.015);    // 4.7 standard errors
  CHECK(std::abs(var - 1) < 0.025);  // 5.6 standard errors
}
