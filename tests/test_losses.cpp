// Losses: values against direct formulas, stability, gradient checks, bad input.
#include <catch2/catch.hpp>

#include <cmath>
#include <fedmoe/fedmoe.hpp>

#include "gradient_check.hpp"

using namespace fedmoe;
using fedmoe::test::GradTolerance;
using fedmoe::test::gradient_error;
using fedmoe::test::random_batch;

namespace {
template <class S, class L>
double loss_gradient_error(const L& loss, Matrix<S> out, const typename L::target_type& target) {
  Matrix<S> grad;
  loss.gradient(out, target, grad);
  Vector<S> theta = Eigen::Map<Vector<S>>(out.data(), out.size());
  const Vector<S> analytic = Eigen::Map<Vector<S>>(grad.data(), grad.size());
  return gradient_error<S>(theta, analytic, [&]() {
    return double(loss.value(Eigen::Map<Matrix<S>>(theta.data(), out.rows(), out.cols()), target));
  });
}
Labels labels_of(std::initializer_list<int> v) {
  Labels l(Index(v.size()));
  Index i = 0;
  for (int x : v) l[i++] = x;
  return l;
}
}  // namespace

TEMPLATE_TEST_CASE("every loss passes the gradient check", "[losses][gradcheck]", float, double) {
  using S = TestType;
  const Labels y = labels_of({0, 3, 2, 3});
  const Matrix<S> logits = random_batch<S>(4, 4, 1) * S(3);
  INFO("cross-entropy");
  CHECK(loss_gradient_error<S>(CrossEntropy<S>{}, logits, y) <= GradTolerance<S>::max_rel_error);
  Matrix<S> log_probs;
  detail::log_softmax(logits, log_probs);
  INFO("nll");
  CHECK(loss_gradient_error<S>(Nll<S>{}, log_probs, y) <= GradTolerance<S>::max_rel_error);
  Matrix<S> p = (random_batch<S>(3, 5, 2).array() * S(0.4) + S(0.5)).matrix();
  Matrix<S> t = (random_batch<S>(3, 5, 3).array() * S(0.5) + S(0.5)).matrix();
  INFO("bce");
  CHECK(loss_gradient_error<S>(BinaryCrossEntropy<S>{}, p, t) <= GradTolerance<S>::max_rel_error);
  INFO("mse");
  CHECK(loss_gradient_error<S>(Mse<S>{}, random_batch<S>(3, 5, 4), random_batch<S>(3, 5, 5).eval()) <=
        GradTolerance<S>::max_rel_error);
}

TEST_CASE("cross-entropy equals -log softmax at the label, and nll of log_softmax agrees", "[losses]") {
  Matrix<double> z(3, 2);
  z << 1, 0, 2, 0, 3, 5;
  const Labels y = labels_of({2, 0});
  const double l0 = -std::log(std::exp(3.0) / (std::exp(1.0) + std::exp(2.0) + std::exp(3.0)));
  const double l1 = -std::log(1.0 / (2.0 + std::exp(5.0)));
  CHECK(CrossEntropy<double>{}.value(z, y) == Approx((l0 + l1) / 2));
  Matrix<double> lp;
  detail::log_softmax(z, lp);
  CHECK(Nll<double>{}.value(lp, y) == Approx((l0 + l1) / 2));
}

TEST_CASE("cross-entropy is finite for huge logits", "[losses]") {
  Matrix<float> z(2, 1);
  z << 1e4f, -1e4f;
  Matrix<float> g;
  const float v = CrossEntropy<float>{}.gradient(z, labels_of({1}), g);
  CHECK(std::isfinite(v));
  CHECK(v == Approx(2e4f));
  CHECK(g.allFinite());
}

TEST_CASE("bce clamps the log like PyTorch", "[losses]") {
  Matrix<double> p(1, 2), t(1, 2);
  p << 0.0, 1.0;
  t << 1.0, 1.0;
  CHECK(BinaryCrossEntropy<double>{}.value(p, t) == Approx(50.0));
}

TEST_CASE("losses reject bad labels and shapes with expected and actual values", "[losses][errors]") {
  const Matrix<float> z = Matrix<float>::Zero(3, 2);
  CHECK_THROWS_WITH(CrossEntropy<float>{}.value(z, labels_of({0, 3})),
                    Catch::Contains("labels in [0, 3)") && Catch::Contains("got 3"));
  CHECK_THROWS_WITH(CrossEntropy<float>{}.value(z, labels_of({0})),
                    Catch::Contains("expected 2 labels") && Catch::Contains("got 1"));
  CHECK_THROWS_WITH(Nll<float>{}.value(z, labels_of({-1, 0})), Catch::Contains("got -1"));
  CHECK_THROWS_WITH(Mse<float>{}.value(z, Matrix<float>::Zero(2, 2)),
                    Catch::Contains("target of shape 3x2") && Catch::Contains("got 2x2"));
  CHECK_THROWS_WITH(BinaryCrossEntropy<float>{}.value(Matrix<float>::Constant(1, 1, 1.5f), Matrix<float>::Zero(1, 1)),
                    Catch::Contains("probabilities in [0, 1]") && Catch::Contains("1.5"));
}
