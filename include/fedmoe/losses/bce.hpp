#pragma once
/// @file bce.hpp
/// @brief Binary cross-entropy on probabilities (PyTorch's BCELoss, mean over all elements).
///
/// L = -mean[ t log p + (1 - t) log(1 - p) ], with log clamped at -100 as PyTorch does,
/// so p = 0 or 1 gives a finite loss. dL/dp = (p - t) / (p (1 - p)) / numel, with the
/// denominator kept away from 0 by the same clamp.
#include <algorithm>
#include <cmath>

#include "loss.hpp"

namespace fedmoe {

template <class Scalar = float>
struct BinaryCrossEntropy {
  using scalar_type = Scalar;
  using target_type = Matrix<Scalar>;

  template <class Out>
  Scalar value(const Out& p, const Matrix<Scalar>& t) const {
    detail::check_same_shape("BinaryCrossEntropy", p, t);
    Scalar total = 0;
    for (Index j = 0; j < p.cols(); ++j)
      for (Index i = 0; i < p.rows(); ++i) {
        const Scalar pi = p(i, j), ti = t(i, j);
        FEDMOE_CHECK(pi >= 0 && pi <= 1, "BinaryCrossEntropy: expected probabilities in [0, 1], got ", pi,
                     " at (", i, ", ", j, ")");
        total -= ti * clamped_log(pi) + (1 - ti) * clamped_log(1 - pi);
      }
    return total / Scalar(p.size());
  }

  template <class Out>
  Scalar gradient(const Out& p, const Matrix<Scalar>& t, Matrix<Scalar>& grad) const {
    const Scalar v = value(p, t);
    grad.resize(p.rows(), p.cols());
    constexpr Scalar tiny = Scalar(1e-12);
    for (Index j = 0; j < p.cols(); ++j)
      for (Index i = 0; i < p.rows(); ++i)
        grad(i, j) = (p(i, j) - t(i, j)) / std::max(p(i, j) * (1 - p(i, j)), tiny) / Scalar(p.size());
    return v;
  }

private:
  static Scalar clamped_log(Scalar x) { return std::max(std::log(x), Scalar(-100)); }
};

}  // namespace fedmoe
