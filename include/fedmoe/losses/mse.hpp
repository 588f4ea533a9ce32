#pragma once
/// @file mse.hpp
/// @brief Mean squared error over all elements: L = mean (out - t)^2, dL/dout = 2 (out - t) / numel.
#include "loss.hpp"

namespace fedmoe {

template <class Scalar = float>
struct Mse {
  using scalar_type = Scalar;
  using target_type = Matrix<Scalar>;

  template <class Out>
  Scalar value(const Out& out, const Matrix<Scalar>& t) const {
    detail::check_same_shape("Mse", out, t);
    return (out - t).squaredNorm() / Scalar(out.size());
  }
  template <class Out>
  Scalar gradient(const Out& out, const Matrix<Scalar>& t, Matrix<Scalar>& grad) const {
    const Scalar v = value(out, t);
    grad = (out - t) * (Scalar(2) / Scalar(out.size()));
    return v;
  }
};

}  // namespace fedmoe
