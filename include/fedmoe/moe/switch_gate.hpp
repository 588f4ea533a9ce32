#pragma once
/// @file switch_gate.hpp
/// @brief Switch top-1 routing with a capacity limit (Fedus et al. 2021, "Switch Transformers").
///
/// p_t = softmax(W x_t + b) over E experts; token t goes to e_t = argmax_e p_et (ties: lower index)
/// with combine weight p_{e_t t}. Capacity C = min(ceil(T / E * capacity_factor), T): tokens are admitted
/// in token order and an expert's tokens beyond its first C are dropped (slot index -1, weight 0;
/// the caller's residual path carries them). Slots = 1.
/// Auxiliary load-balancing loss: balance = E * sum_e f_e * P_e with f_e the fraction of tokens
/// whose argmax is e (before dropping, not differentiable) and P_e = mean_t p_et (differentiable).
/// z-loss = mean_t (logsumexp_e l_et)^2. Gradients flow through p (selection fixed, see gate.hpp).
#include "gate.hpp"

namespace fedmoe {

template <class Scalar = float>
class SwitchGate : public detail::CapacityGate<Scalar> {
public:
  using scalar_type = Scalar;

  SwitchGate(Index width, Index experts, double capacity_factor = 1.0)
      : detail::CapacityGate<Scalar>("SwitchGate", width, experts, 1, capacity_factor) {}

  /// Deterministic routing: mode and rng are unused.
  template <class In>
  const Routing<Scalar>& forward(const In& x, Mode = Mode::eval, Rng* = nullptr) {
    const bool reuse = this->begin_routing(x);
    auto& r = this->m_routing;
    const Matrix<Scalar>& probs = this->m_probs;
    const Index e = this->experts(), t = x.cols();
    r.capacity = this->capacity(t, t);
    if (!reuse) {
      m_choice.resize(t);
      m_count.setZero(e);
      r.dropped = 0;
      for (Index j = 0; j < t; ++j) {
        const Scalar* p = probs.data() + j * e;
        Index best = 0;
        for (Index i = 1; i < e; ++i)
          if (p[i] > p[best]) best = i;
        m_choice[j] = static_cast<std::int32_t>(best);
        const bool kept = m_count[best] < r.capacity;
        ++m_count[best];
        r.indices(0, j) = kept ? static_cast<std::int32_t>(best) : -1;
        r.dropped += kept ? 0 : 1;
      }
      r.build_dispatch();
    }
    for (Index j = 0; j < t; ++j) r.weights(0, j) = r.indices(0, j) >= 0 ? probs(m_choice[j], j) : Scalar(0);
    m_mean_prob.noalias() = probs.rowwise().mean();
    r.aux = {};
    r.aux.balance = static_cast<Scalar>(e) * (m_count.template cast<Scalar>().dot(m_mean_prob) / static_cast<Scalar>(t));
    return this->end_routing();
  }
  template <class In>
  const Routing<Scalar>& forward(const In& x, Mode mode, Rng& rng) { return forward(x, mode, &rng); }

  template <class In, class DW>
  const Matrix<Scalar>& backward(const In& x, const DW& d_weights, const AuxWeights<Scalar>& aux = {},
                                 bool input_grad = true) {
    this->check_backward(x, d_weights);
    const auto& r = this->m_routing;
    const Index e = this->experts(), t = r.tokens;
    // d balance / d p_et = wb * E * f_e / T, f_e = count_e / T
    const Scalar bc = aux.balance * static_cast<Scalar>(e) / (static_cast<Scalar>(t) * static_cast<Scalar>(t));
    m_colgrad.noalias() = m_count.template cast<Scalar>() * bc;
    Matrix<Scalar>& dp = this->m_dp;
    dp.resize(e, t);
    dp.colwise() = m_colgrad;
    for (Index j = 0; j < t; ++j)
      if (r.indices(0, j) >= 0) dp(m_choice[j], j) += Scalar(d_weights(0, j));
    return this->backward_probabilities(x, aux.z, input_grad);
  }

private:
  Vector<Scalar> m_mean_prob, m_colgrad;
  IndexVector m_choice, m_count;
};

}  // namespace fedmoe
