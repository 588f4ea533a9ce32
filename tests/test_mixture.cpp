// The paper's two-expert Mixture: a saturated gate reproduces one expert, the loss is
// -mean log(h p_s[y] + (1 - h) p_g[y]) (mixing probabilities, not log-probabilities:
// PAPER.md defect 3), central-difference gradient checks for the gate and the specialist,
// the frozen global model, and errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <type_traits>

#include <fedmoe/fedmoe.hpp>

#include "gradient_check.hpp"
#include "synthetic_data.hpp"

using namespace fedmoe;
using Catch::Matchers::Contains;
using fedmoe::test::gradient_error;
using fedmoe::test::GradTolerance;
using fedmoe::test::random_batch;

namespace {

/// A gate with one parameter that IS its output: h(x) = theta for every sample.
template <class S>
class ConstantGate {
public:
  using scalar_type = S;
  ConstantGate(Index inputs, S h) : m_inputs(inputs), m_params(Vector<S>::Constant(1, h)), m_grads(Vector<S>::Zero(1)) {}

  Index num_params() const { return 1; }
  Index input_size() const { return m_inputs; }
  Index output_size() const { return 1; }
  Vector<S>& parameters() { return m_params; }
  const Vector<S>& parameters() const { return m_params; }
  Vector<S>& gradients() { return m_grads; }
  const Vector<S>& gradients() const { return m_grads; }
  void init(Rng&) {}
  const Matrix<S>& forward(const Matrix<S>& x, Mode, Rng&) {
    m_out.setConstant(1, x.cols(), m_params[0]);
    return m_out;
  }
  const Matrix<S>& backward(const Matrix<S>& x, const Matrix<S>& dy, bool input_grad = false) {
    m_grads[0] = dy.sum();
    if (input_grad) m_dx.setZero(x.rows(), x.cols());
    else m_dx.resize(0, 0);
    return m_dx;
  }

private:
  Index m_inputs;
  Vector<S> m_params, m_grads;
  Matrix<S> m_out, m_dx;
};
static_assert(Model<ConstantGate<float>> && Model<ConstantGate<double>>);

constexpr Index kInputs = 6, kClasses = 4;

using test::random_labels;

/// A specialist, a global model of another width, and an MLP gate, initialised from `seed`.
template <class S>
struct Experts {
  Mlp<S> specialist = mlp<S>(Shape{kInputs, 1, 1}, kClasses, 8);
  Mlp<S> global = mlp<S>(Shape{kInputs, 1, 1}, kClasses, 5);
  MlpGate<S> gate = mlp_gate<S>(Shape{kInputs, 1, 1}, 7);
  explicit Experts(std::uint64_t seed) {
    Rng rng(seed);
    specialist.init(rng);
    global.init(rng);
    gate.init(rng);
  }
};

/// Column-wise softmax, in double.
template <class S>
Matrix<double> softmax(const Matrix<S>& logits) {
  Matrix<double> p = logits.template cast<double>();
  for (Index j = 0; j < p.cols(); ++j) {
    p.col(j).array() -= p.col(j).maxCoeff();
    p.col(j).array() = p.col(j).array().exp();
    p.col(j) /= p.col(j).sum();
  }
  return p;
}

/// -mean_j log(h_j p_s[y_j] + (1 - h_j) p_g[y_j]), computed directly in double.
double direct_mixture_loss(const Matrix<double>& h, const Matrix<double>& ps, const Matrix<double>& pg,
                           const Labels& y) {
  double total = 0;
  for (Index j = 0; j < y.size(); ++j) total -= std::log(h(0, j) * ps(y[j], j) + (1 - h(0, j)) * pg(y[j], j));
  return total / double(y.size());
}

/// Sets the last Dense of an MLP gate to zero weights and the given bias, so h = sigmoid(bias).
template <class S>
void saturate_gate(MlpGate<S>& gate, S bias) {
  bool found_weight = false, found_bias = false;
  for (const TensorInfo& t : gate.tensors()) {
    Index n = 1;
    for (const auto d : t.dims) n *= Index(d);
    if (t.name == "3.weight") {
      gate.parameters().segment(t.offset, n).setZero();
      found_weight = true;
    } else if (t.name == "3.bias") {
      gate.parameters().segment(t.offset, n).setConstant(bias);
      found_bias = true;
    }
  }
  REQUIRE(found_weight);
  REQUIRE(found_bias);
}

}  // namespace

TEMPLATE_TEST_CASE("a saturated gate makes the mixture reproduce one expert's softmax", "[mixture]", float, double) {
  using S = TestType;
  const double tol = std::is_same_v<S, float> ? 1e-6 : 1e-12;
  Experts<S> e(1);
  const Matrix<S> x = random_batch<S>(kInputs, 9, 2);
  const Matrix<double> ps = softmax<S>(e.specialist.forward(x));
  const Matrix<double> pg = softmax<S>(e.global.forward(x));
  REQUIRE((ps - pg).cwiseAbs().maxCoeff() > 1e-2);  // the experts disagree, so the checks below discriminate
  Mixture mix(e.gate, e.specialist, e.global);

  SECTION("MLP gate, last layer zero weights and bias +50: h == 1") {
    saturate_gate<S>(e.gate, S(50));
    const Matrix<double> p = mix.forward(x).template cast<double>();
    CHECK(mix.gate_values().minCoeff() == S(1));
    CHECK((p - ps).cwiseAbs().maxCoeff() <= tol);
  }
  SECTION("MLP gate, last layer zero weights and bias -50: h ~ 0") {
    saturate_gate<S>(e.gate, S(-50));
    const Matrix<double> p = mix.forward(x).template cast<double>();
    CHECK(mix.gate_values().maxCoeff() < S(1e-20));
    CHECK((p - pg).cwiseAbs().maxCoeff() <= tol);
  }
  SECTION("constant gate at exactly 1 and 0") {
    for (const S h : {S(1), S(0)}) {
      INFO("h = " << h);
      ConstantGate<S> gate(kInputs, h);
      Mixture cmix(gate, e.specialist, e.global);
      const Matrix<double> p = cmix.forward(x).template cast<double>();
      CHECK((p - (h == S(1) ? ps : pg)).cwiseAbs().maxCoeff() <= tol);
    }
  }
}

TEMPLATE_TEST_CASE("the mixture loss is -mean log(h p_s[y] + (1 - h) p_g[y])", "[mixture]", float, double) {
  using S = TestType;
  const double tol = std::is_same_v<S, float> ? 1e-5 : 1e-12;
  Experts<S> e(3);
  const Matrix<S> x = random_batch<S>(kInputs, 11, 4);
  const Labels y = random_labels(11, kClasses, 5);
  const Matrix<double> h = e.gate.forward(x).template cast<double>();
  REQUIRE(h.minCoeff() > 0.01);
  REQUIRE(h.maxCoeff() < 0.99);
  const Matrix<double> ps = softmax<S>(e.specialist.forward(x));
  const Matrix<double> pg = softmax<S>(e.global.forward(x));
  const double expected = direct_mixture_loss(h, ps, pg, y);

  Mixture mix(e.gate, e.specialist, e.global);
  Rng rng(0);
  CHECK(double(mix.loss(x, y, Mode::eval, rng)) == Approx(expected).epsilon(tol));
  CHECK(double(mix.loss_and_gradient(x, y, Mode::eval, rng)) == Approx(expected).epsilon(tol));
  // forward gives the mixture probabilities: h p_s + (1 - h) p_g, columns summing to 1.
  const Matrix<double> p = mix.forward(x).template cast<double>();
  for (Index j = 0; j < x.cols(); ++j) {
    INFO("sample " << j);
    CHECK(p.col(j).sum() == Approx(1.0).epsilon(tol));
    const Vector<double> q = h(0, j) * ps.col(j) + (1 - h(0, j)) * pg.col(j);
    CHECK((p.col(j) - q).cwiseAbs().maxCoeff() <= tol);
  }
  CHECK((mix.gate_values().template cast<double>() - h).cwiseAbs().maxCoeff() <= tol);
}

TEST_CASE("the mixture loss is not linear in the gate (probabilities are mixed, not log-probabilities)",
          "[mixture]") {
  using S = double;
  Experts<S> e(6);
  const Matrix<S> x = random_batch<S>(kInputs, 16, 7);
  const Labels y = random_labels(16, kClasses, 8);
  ConstantGate<S> gate(kInputs, 0);
  Mixture mix(gate, e.specialist, e.global);
  Rng rng(0);
  auto loss_at = [&](S h) {
    gate.parameters()[0] = h;
    return double(mix.loss(x, y, Mode::eval, rng));
  };
  const double l0 = loss_at(0), l1 = loss_at(1), lh = loss_at(0.5);
  const Matrix<double> ps = softmax<S>(e.specialist.forward(x)), pg = softmax<S>(e.global.forward(x));
  CHECK(l0 == Approx(direct_mixture_loss(Matrix<double>::Zero(1, 16), ps, pg, y)).epsilon(1e-12));
  CHECK(l1 == Approx(direct_mixture_loss(Matrix<double>::Ones(1, 16), ps, pg, y)).epsilon(1e-12));
  CHECK(lh == Approx(direct_mixture_loss(Matrix<double>::Constant(1, 16, 0.5), ps, pg, y)).epsilon(1e-12));
  // Mixing log-probabilities (defect 3) would give exactly the average; -log is convex, so the
  // mixture of probabilities lies strictly below it.
  INFO("L(0) = " << l0 << ", L(1) = " << l1 << ", L(0.5) = " << lh);
  CHECK(std::abs(lh - 0.5 * (l0 + l1)) > 1e-3);
  CHECK(lh < 0.5 * (l0 + l1));
}

TEMPLATE_TEST_CASE("mixture gradients pass the central-difference check", "[mixture][gradcheck]", float, double) {
  using S = TestType;
  const double max_err = GradTolerance<S>::max_rel_error;
  Experts<S> e(9);
  const Matrix<S> x = random_batch<S>(kInputs, 5, 10);
  const Labels y = random_labels(5, kClasses, 11);

  for (const Mode mode : {Mode::eval, Mode::train}) {
    INFO((mode == Mode::train ? "train mode (fixed dropout masks)" : "eval mode"));
    Mixture mix(e.gate, e.specialist, e.global);
    constexpr std::uint64_t seed = 12;
    auto f = [&]() {
      Rng r(seed);
      return double(mix.loss(x, y, mode, r));
    };
    e.global.gradients().setConstant(S(7));
    const Vector<S> global_params = e.global.parameters();
    {
      Rng r(seed);
      mix.loss_and_gradient(x, y, mode, r);
    }
    const Vector<S> dgate = e.gate.gradients(), dspec = e.specialist.gradients();
    REQUIRE(dgate.norm() > 0);
    REQUIRE(dspec.norm() > 0);
    // The frozen global model: gradients and parameters untouched.
    CHECK((e.global.gradients().array() == S(7)).all());
    CHECK((e.global.parameters().array() == global_params.array()).all());

    const double err_gate = gradient_error<S>(e.gate.parameters(), dgate, f);
    const double err_spec = gradient_error<S>(e.specialist.parameters(), dspec, f);
    INFO("gate rel. error " << err_gate << ", specialist rel. error " << err_spec);
    CHECK(err_gate <= max_err);
    CHECK(err_spec <= max_err);
  }

  // A constant gate: dL/dh = -1/N sum_j (s_j[y_j] - g_j[y_j]) / q_j, checked the same way.
  ConstantGate<S> gate(kInputs, S(0.3));
  Mixture cmix(gate, e.specialist, e.global);
  Rng rng(0);
  cmix.loss_and_gradient(x, y, Mode::eval, rng);
  const Vector<S> dh = gate.gradients();
  const double err_h = gradient_error<S>(gate.parameters(), dh, [&] {
    Rng r(0);
    return double(cmix.loss(x, y, Mode::eval, r));
  });
  INFO("constant gate rel. error " << err_h);
  CHECK(err_h <= max_err);
}

TEST_CASE("a gate at 0 gives the specialist no gradient and at 1 the global model does not matter", "[mixture]") {
  using S = double;
  Experts<S> e(13);
  const Matrix<S> x = random_batch<S>(kInputs, 6, 14);
  const Labels y = random_labels(6, kClasses, 15);
  ConstantGate<S> gate(kInputs, 0);
  Mixture mix(gate, e.specialist, e.global);
  Rng rng(0);
  e.specialist.gradients().setConstant(1);
  const double l0 = double(mix.loss_and_gradient(x, y, Mode::eval, rng));
  CHECK(e.specialist.gradients().isZero(0));
  // h = 0: the loss is the global model's cross-entropy, and dL/dh = -1/N sum (s_y / g_y - 1).
  const Matrix<double> ps = softmax<S>(e.specialist.forward(x)), pg = softmax<S>(e.global.forward(x));
  double ce = 0, dh = 0;
  for (Index j = 0; j < 6; ++j) {
    ce -= std::log(pg(y[j], j)) / 6;
    dh -= (ps(y[j], j) / pg(y[j], j) - 1) / 6;
  }
  CHECK(l0 == Approx(ce).epsilon(1e-12));
  CHECK(gate.gradients()[0] == Approx(dh).epsilon(1e-12));

  // h = 1: the global model's parameters do not change the loss.
  gate.parameters()[0] = 1;
  const double l1 = double(mix.loss(x, y, Mode::eval, rng));
  e.global.parameters() *= 3;
  CHECK(double(mix.loss(x, y, Mode::eval, rng)) == l1);
}

TEST_CASE("Mixture rejects mismatched models, gate values outside [0, 1] and bad labels", "[mixture]") {
  using S = float;
  Experts<S> e(16);
  auto two_output_gate = mlp<S>(Shape{kInputs, 1, 1}, 2, 4);
  CHECK_THROWS_WITH(Mixture(two_output_gate, e.specialist, e.global),
                    Contains("expected a gate with 1 output") && Contains("got 2"));
  auto other_classes = mlp<S>(Shape{kInputs, 1, 1}, kClasses + 1, 4);
  CHECK_THROWS_WITH(Mixture(e.gate, e.specialist, other_classes),
                    Contains("expected the global model to have 4 outputs") && Contains("got 5"));
  auto other_inputs = mlp<S>(Shape{kInputs + 2, 1, 1}, kClasses, 4);
  CHECK_THROWS_WITH(Mixture(e.gate, e.specialist, other_inputs), Contains("inputs of size 6") && Contains("8"));

  const Matrix<S> x = random_batch<S>(kInputs, 3, 17);
  ConstantGate<S> bad_gate(kInputs, S(1.5));
  Mixture mix(bad_gate, e.specialist, e.global);
  Rng rng(0);
  CHECK_THROWS_WITH(mix.loss(x, random_labels(3, kClasses, 1), Mode::eval, rng),
                    Contains("gate values in [0, 1]") && Contains("1.5"));
  bad_gate.parameters()[0] = S(0.5);
  Labels y = random_labels(3, kClasses, 1);
  y[1] = std::int32_t(kClasses);
  CHECK_THROWS_WITH(mix.loss_and_gradient(x, y, Mode::eval, rng), Contains("[0, 4)") && Contains("got 4"));
  CHECK_THROWS_WITH(mix.loss(x, random_labels(2, kClasses, 1), Mode::eval, rng),
                    Contains("expected 3 labels") && Contains("got 2"));
}
