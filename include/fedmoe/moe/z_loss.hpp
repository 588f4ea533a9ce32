#pragma once
/// @file z_loss.hpp
/// @brief Router z-loss (Zoph et al. 2022, ST-MoE): z = (1/T) sum_t (log sum_e exp l_et)^2.
///
/// It keeps router logits small. Its gradient is dz/dl_et = 2 lse_t softmax(l_t)_e / T.
/// Every linear gate reports it in Routing::aux.z and adds its gradient when AuxWeights::z != 0;
/// these free functions serve logits computed elsewhere.
#include "gate.hpp"

namespace fedmoe {

/// z-loss of a logits matrix (experts x tokens).
template <class Scalar>
Scalar z_loss(const Matrix<Scalar>& logits) {
  FEDMOE_CHECK(logits.rows() > 0 && logits.cols() > 0, "z_loss: expected non-empty logits, got ", logits.rows(), "x",
               logits.cols());
  double z = 0;
  for (Index t = 0; t < logits.cols(); ++t) {
    const Scalar m = logits.col(t).maxCoeff();
    const double lse = double(m) + std::log(double((logits.col(t).array() - m).exp().sum()));
    z += lse * lse;
  }
  return static_cast<Scalar>(z / static_cast<double>(logits.cols()));
}

/// dlogits = weight * dz/dlogits (overwrites; sized like logits). Returns the z-loss value.
template <class Scalar>
Scalar z_loss_gradient(const Matrix<Scalar>& logits, Scalar weight, Matrix<Scalar>& dlogits) {
  FEDMOE_CHECK(logits.rows() > 0 && logits.cols() > 0, "z_loss_gradient: expected non-empty logits, got ",
               logits.rows(), "x", logits.cols());
  dlogits.resize(logits.rows(), logits.cols());
  const double t = static_cast<double>(logits.cols());
  double z = 0;
  for (Index j = 0; j < logits.cols(); ++j) {
    const Scalar m = logits.col(j).maxCoeff();
    dlogits.col(j).array() = (logits.col(j).array() - m).exp();
    const Scalar s = dlogits.col(j).sum();
    const double lse = double(m) + std::log(double(s));
    z += lse * lse;
    dlogits.col(j) *= static_cast<Scalar>(double(weight) * 2.0 * lse / t) / s;
  }
  return static_cast<Scalar>(z / t);
}

}  // namespace fedmoe
