// The paper's models: parameter counts, gradient checks, copy/move semantics, initialisation.
#include <catch2/catch.hpp>

#include <fedmoe/fedmoe.hpp>
#include <fedmoe/models/sequential.hpp>

#include "gradient_check.hpp"

using namespace fedmoe;
using fedmoe::test::GradTolerance;
using fedmoe::test::model_gradient_error;
using fedmoe::test::random_batch;

static_assert(Model<FashionCnn<float>> && Model<FashionCnnGate<double>> && Model<CifarCnn<float>> &&
              Model<Mlp<double>> && Model<MlpGate<float>>);

TEST_CASE("paper models have the PyTorch parameter counts", "[models]") {
  CHECK(fashion_cnn<float>().num_params() == 22180);
  CHECK(fashion_cnn_gate<float>().num_params() == 21793);
  CHECK(cifar_cnn<float>().num_params() == 62006);
  CHECK(cifar_cnn_gate<float>().num_params() == 61241);
  CHECK(mlp<float>().num_params() == 159010);
  CHECK(mlp_gate<float>().num_params() == 157201);
  CHECK(cifar_cnn<float>(100).num_params() == 62006 - 850 + 84 * 100 + 100);
}

namespace {
template <class M>
void check_model(const char* name, M model, Mode mode) {
  using S = typename M::scalar_type;
  Rng rng(42);
  model.init(rng);
  const auto err = model_gradient_error(model, random_batch<S>(model.input_size(), 2, 3), mode);
  INFO(name << (mode == Mode::train ? " (train)" : " (eval)") << ": params rel. error " << err.params
            << ", input rel. error " << err.input);
  CHECK(err.params <= GradTolerance<S>::max_rel_error);
  CHECK(err.input <= GradTolerance<S>::max_rel_error);
}
}  // namespace

TEMPLATE_TEST_CASE("every paper model passes the gradient check", "[models][gradcheck]", float, double) {
  using S = TestType;
  check_model("fashion_cnn", fashion_cnn<S>(), Mode::train);
  check_model("fashion_cnn_gate", fashion_cnn_gate<S>(), Mode::eval);
  check_model("cifar_cnn", cifar_cnn<S>(), Mode::eval);
  check_model("cifar_cnn_gate", cifar_cnn_gate<S>(), Mode::eval);
  check_model("mlp", mlp<S>(Shape{30, 1, 1}, 5, 20), Mode::train);
  check_model("mlp_gate", mlp_gate<S>(Shape{30, 1, 1}, 20), Mode::eval);
}

TEST_CASE("gates output values in (0, 1)", "[models]") {
  auto gate = fashion_cnn_gate<float>();
  Rng rng(1);
  gate.init(rng);
  const Matrix<float> h = gate.forward(random_batch<float>(784, 16, 2));
  REQUIRE(h.rows() == 1);
  CHECK(h.minCoeff() > 0.0f);
  CHECK(h.maxCoeff() < 1.0f);
}

TEST_CASE("copies and moves own their parameters: views are rebound", "[models]") {
  auto a = mlp<double>(Shape{6, 1, 1}, 3, 4);
  Rng rng(5);
  a.init(rng);
  const Matrix<double> x = random_batch<double>(6, 2, 9);
  const Matrix<double> ya = a.forward(x);

  auto b = a;  // copy
  CHECK(b.parameters().data() != a.parameters().data());
  CHECK(b.forward(x) == ya);
  b.parameters().setZero();
  CHECK(a.forward(x) == ya);             // the original is untouched
  CHECK(b.forward(x).isZero());          // the copy computes with its own (zero) parameters

  auto c = std::move(b);  // move
  CHECK(c.forward(x).isZero());
  c = a;  // copy-assign
  CHECK(c.forward(x) == ya);
  c.parameters()[0] += 1.0;
  CHECK(a.forward(x) == ya);
  CHECK(c.forward(x) != ya);
}

TEST_CASE("initialisation follows PyTorch's bounds and is seeded", "[models]") {
  auto m1 = fashion_cnn<float>();
  auto m2 = fashion_cnn<float>();
  Rng r1(3), r2(3);
  m1.init(r1);
  m2.init(r2);
  CHECK(m1.parameters() == m2.parameters());
  // fc 192 -> 84 (tensor "7.weight"): U(-1/sqrt(192), 1/sqrt(192))
  const auto tensors = m1.tensors();
  REQUIRE(tensors.size() == 10);
  CHECK(tensors[0].name == "0.weight");
  CHECK(tensors[0].dims == std::vector<Index>{6, 1, 5, 5});
  CHECK(tensors[4].name == "7.weight");
  CHECK(tensors[4].dims == std::vector<Index>{84, 192});
  const auto w = m1.parameters().segment(tensors[4].offset, tensors[4].size());
  const float bound = 1.0f / std::sqrt(192.0f);
  CHECK(w.cwiseAbs().maxCoeff() <= bound);
  CHECK(w.cwiseAbs().maxCoeff() > 0.95f * bound);   // fills the range
  CHECK(std::abs(w.mean()) < 0.02f * bound);         // centred (std of the mean ~0.0045 bound)
}
