#pragma once
/// @file cross_entropy.hpp
/// @brief Class-label losses: CrossEntropy on logits and Nll on log-probabilities.
///
/// CrossEntropy: L = mean_j [ logsumexp(z_j) - z_j[y_j] ], computed with the max
/// subtracted (stable for any logits); dL/dz_j = (softmax(z_j) - onehot(y_j)) / N.
/// Nll: L = mean_j [ -a_j[y_j] ] for log-probabilities a; dL/da_j = -onehot(y_j) / N.
#include <cmath>

#include "loss.hpp"

namespace fedmoe {

template <class Scalar = float>
struct CrossEntropy {
  using scalar_type = Scalar;
  using target_type = Labels;

  template <class Out>
  Scalar value(const Out& logits, const Labels& labels) const {
    detail::check_labels("CrossEntropy", logits, labels);
    Scalar total = 0;
    for (Index j = 0; j < logits.cols(); ++j) {
      const Scalar m = logits.col(j).maxCoeff();
      total += m + std::log((logits.col(j).array() - m).exp().sum()) - logits(labels[j], j);
    }
    return total / Scalar(logits.cols());
  }

  template <class Out>
  Scalar gradient(const Out& logits, const Labels& labels, Matrix<Scalar>& grad) const {
    detail::check_labels("CrossEntropy", logits, labels);
    const Index n = logits.cols();
    grad.resize(logits.rows(), n);
    Scalar total = 0;
    for (Index j = 0; j < n; ++j) {
      const Scalar m = logits.col(j).maxCoeff();
      grad.col(j).array() = (logits.col(j).array() - m).exp();
      const Scalar sum = grad.col(j).sum();
      total += m + std::log(sum) - logits(labels[j], j);
      grad.col(j) /= sum * Scalar(n);
      grad(labels[j], j) -= Scalar(1) / Scalar(n);
    }
    return total / Scalar(n);
  }
};

template <class Scalar = float>
struct Nll {
  using scalar_type = Scalar;
  using target_type = Labels;

  template <class Out>
  Scalar value(const Out& log_probs, const Labels& labels) const {
    detail::check_labels("Nll", log_probs, labels);
    Scalar total = 0;
    for (Index j = 0; j < log_probs.cols(); ++j) total -= log_probs(labels[j], j);
    return total / Scalar(log_probs.cols());
  }

  template <class Out>
  Scalar gradient(const Out& log_probs, const Labels& labels, Matrix<Scalar>& grad) const {
    const Scalar v = value(log_probs, labels);
    grad.setZero(log_probs.rows(), log_probs.cols());
    for (Index j = 0; j < log_probs.cols(); ++j) grad(labels[j], j) = Scalar(-1) / Scalar(log_probs.cols());
    return v;
  }
};

}  // namespace fedmoe
