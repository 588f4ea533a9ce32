#pragma once
// The one shared central-difference gradient checker that every layer, loss, gate and model passes.
//
// For a scalar function f(theta) it compares the analytic gradient a with central differences
//     n[i] = (f(theta + h e_i) - f(theta - h e_i)) / (2 h)
// and returns the relative error over the vector, as mlpack's CheckGradient does:
//     ||a - n||_2 / (||a||_2 + ||n||_2)      (0 when both vanish).
// Bounds: double, h = 1e-6, error <= 1e-6. float, h = 1e-3, error <= 5e-2: f itself is then
// computed in float, whose rounding (~6e-8 relative) divided by h dominates the difference.
#include <algorithm>
#include <cmath>
#include <functional>

#include <fedmoe/core/tensor.hpp>

namespace fedmoe::test {

template <class Scalar>
struct GradTolerance;
template <>
struct GradTolerance<double> {
  static constexpr double step = 1e-6;
  static constexpr double max_rel_error = 1e-6;
};
template <>
struct GradTolerance<float> {
  static constexpr double step = 1e-3;
  static constexpr double max_rel_error = 5e-2;
};

/// Relative error between `analytic` and the central differences of f at theta.
/// theta is perturbed in place (one coordinate at a time) and restored. Vectors longer than
/// max_coords are checked on an evenly spread, deterministic subset of coordinates.
template <class Scalar>
double gradient_error(Vector<Scalar>& theta, const Vector<Scalar>& analytic, const std::function<double()>& f,
                      Index max_coords = 600) {
  const double h = GradTolerance<Scalar>::step;
  const Index n = theta.size();
  const Index stride = std::max<Index>(1, (n + max_coords - 1) / max_coords);
  double diff2 = 0, a2 = 0, n2 = 0;
  for (Index i = 0; i < n; i += stride) {
    const Scalar saved = theta[i];
    theta[i] = Scalar(double(saved) + h);
    const double up = f();
    theta[i] = Scalar(double(saved) - h);
    const double down = f();
    theta[i] = saved;
    const double numeric = (up - down) / (2 * h);
    const double a = double(analytic[i]);
    diff2 += (a - numeric) * (a - numeric);
    a2 += a * a;
    n2 += numeric * numeric;
  }
  const double denom = std::sqrt(a2) + std::sqrt(n2);
  return denom == 0 ? 0.0 : std::sqrt(diff2) / denom;
}

}  // namespace fedmoe::test

#include <fedmoe/core/rng.hpp>
#include <fedmoe/models/model.hpp>

namespace fedmoe::test {

struct ModelGradError {
  double params = 0;
  double input = 0;
};

/// Checks a Model's parameter and input gradients for f(theta, x) = sum(w .* forward(x)) with a
/// random w. With Mode::train, every forward reuses the same dropout stream (seed), so the
/// function checked is the one with a fixed mask.
template <Model M>
ModelGradError model_gradient_error(M& model, Matrix<typename M::scalar_type> x, Mode mode = Mode::eval,
                                    std::uint64_t seed = 7) {
  using S = typename M::scalar_type;
  Rng wr(seed + 1);
  auto forward = [&](const Matrix<S>& in) -> const Matrix<S>& {
    Rng r(seed);
    return model.forward(in, mode, r);
  };
  const Matrix<S>& out0 = forward(x);
  Matrix<S> w(out0.rows(), out0.cols());
  for (Index i = 0; i < w.size(); ++i) w.data()[i] = wr.uniform<S>(S(-1), S(1));
  auto f = [&]() {
    const Matrix<S>& out = forward(x);
    return (out.template cast<double>().array() * w.template cast<double>().array()).sum();
  };
  forward(x);
  const Matrix<S> dx = model.backward(x, w, true);
  const Vector<S> dtheta = model.gradients();
  ModelGradError e;
  e.params = gradient_error<S>(model.parameters(), dtheta, f);
  Vector<S> xv = Eigen::Map<Vector<S>>(x.data(), x.size());
  const Vector<S> dxv = Eigen::Map<const Vector<S>>(dx.data(), dx.size());
  e.input = gradient_error<S>(xv, dxv, [&]() {
    x = Eigen::Map<Matrix<S>>(xv.data(), x.rows(), x.cols());
    return f();
  });
  x = Eigen::Map<Matrix<S>>(xv.data(), x.rows(), x.cols());
  return e;
}

/// A batch of uniform(-1, 1) inputs.
template <class S>
Matrix<S> random_batch(Index rows, Index cols, std::uint64_t seed) {
  Rng r(seed);
  Matrix<S> x(rows, cols);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = r.uniform<S>(S(-1), S(1));
  return x;
}

}  // namespace fedmoe::test
