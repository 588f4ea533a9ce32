#pragma once
/// @file top2_gate.hpp
/// @brief GShard-style top-2 gating with renormalised weights and capacity (Lepikhin et al. 2020).
///
/// p_t = softmax(W x_t + b); the first choice e1 = argmax p_t, the second e2 = argmax over the
/// others (deterministic; GShard's random second-expert dispatch is not used). Capacity
/// C = min(ceil(2 T / E * capacity_factor), T) (an expert never gets more than T pairs). Positions
/// are assigned as in GShard / fairseq: all first choices in token order, then all second choices
/// in token order after them; a choice whose position is >= C is dropped (slot index -1). The kept
/// choices' weights are renormalised: w_i = p_{e_i} / sum_{kept j} p_{e_j} (both 0 when both are dropped). Slots = 2.
/// Auxiliary loss: balance = E * sum_e f_e P_e, f_e the fraction of tokens whose first choice is e
/// (before dropping), P_e = mean_t p_et. z-loss as everywhere. Selection fixed in backward.
#include "gate.hpp"

namespace fedmoe {

template <class Scalar = float>
class Top2Gate : public detail::CapacityGate<Scalar> {
public:
  using scalar_type = Scalar;

  /// Needs experts >= 2.
  Top2Gate(Index width, Index experts, double capacity_factor = 1.0)
      : detail::CapacityGate<Scalar>("Top2Gate", width, experts, 2, capacity_factor) {}

  template <class In>
  const Routing<Scalar>& forward(const In& x, Mode = Mode::eval, Rng* = nullptr) {
    const bool reuse = this->begin_routing(x);
    auto& r = this->m_routing;
    const Matrix<Scalar>& probs = this->m_probs;
    const Index e = this->experts(), t = x.cols();
    r.capacity = this->capacity(2 * t, t);
    if (!reuse) {
      m_choice.resize(2, t);
      m_count.setZero(e);
      for (Index j = 0; j < t; ++j) {
        const Scalar* p = probs.data() + j * e;
        Index b1 = 0, b2 = -1;
        for (Index i = 1; i < e; ++i) {
          if (p[i] > p[b1]) {
            b2 = b1;
            b1 = i;
          } else if (b2 < 0 || p[i] > p[b2]) {
            b2 = i;
          }
        }
        m_choice(0, j) = static_cast<std::int32_t>(b1);
        m_choice(1, j) = static_cast<std::int32_t>(b2);
        r.indices(0, j) = m_count[b1] < r.capacity ? static_cast<std::int32_t>(b1) : -1;
        ++m_count[b1];
      }
      m_fill = m_count;  // second choices queue behind all first choices
      r.dropped = 0;
      for (Index j = 0; j < t; ++j) {
        const std::int32_t b2 = m_choice(1, j);
        r.indices(1, j) = m_fill[b2] < r.capacity ? b2 : -1;
        ++m_fill[b2];
        r.dropped += (r.indices(0, j) < 0) + (r.indices(1, j) < 0);
      }
      r.build_dispatch();
    }
    m_denom.resize(t);
    for (Index j = 0; j < t; ++j) {
      const Scalar p1 = r.indices(0, j) >= 0 ? probs(m_choice(0, j), j) : Scalar(0);
      const Scalar p2 = r.indices(1, j) >= 0 ? probs(m_choice(1, j), j) : Scalar(0);
      const Scalar d = p1 + p2;
      m_denom[j] = d;
      r.weights(0, j) = d > 0 ? p1 / d : Scalar(0);
      r.weights(1, j) = d > 0 ? p2 / d : Scalar(0);
    }
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
    const Scalar bc = aux.balance * static_cast<Scalar>(e) / (static_cast<Scalar>(t) * static_cast<Scalar>(t));
    m_colgrad.noalias() = m_count.template cast<Scalar>() * bc;
    Matrix<Scalar>& dp = this->m_dp;
    dp.resize(e, t);
    dp.colwise() = m_colgrad;
    for (Index j = 0; j < t; ++j) {
      if (!(m_denom[j] > 0)) continue;
      // w_i = p_i / d:  dp_i = (dw_i - sum_j w_j dw_j) / d for the kept choices
      Scalar dot = 0;
      for (Index i = 0; i < 2; ++i)
        if (r.indices(i, j) >= 0) dot += r.weights(i, j) * Scalar(d_weights(i, j));
      for (Index i = 0; i < 2; ++i)
        if (r.indices(i, j) >= 0) dp(m_choice(i, j), j) += (Scalar(d_weights(i, j)) - dot) / m_denom[j];
    }
    return this->backward_probabilities(x, aux.z, input_grad);
  }

private:
  Vector<Scalar> m_mean_prob, m_colgrad, m_denom;
  IndexMatrix m_choice;
  IndexVector m_count, m_fill;
};

}  // namespace fedmoe
