#pragma once
/// @file switch_gate.hpp
/// @brief Switch top-1 routing with a capacity limit (Fedus et al. 2021, "Switch Transformers").
///
/// p_t = softmax(W x_t + b) over E experts; token t goes to e_t = argmax_e p_et (ties: lower index)
/// with combine weight p_{e_t t}. Capacity C = ceil(T / E * capacity_factor): tokens are admitted
/// in token order and an expert's tokens beyond its first C are dropped (slot index -1, weight 0;
/// the caller's residual path carries them). Slots = 1.
/// Auxiliary load-balancing loss: balance = E * sum_e f_e * P_e with f_e the fraction of tokens
/// whose argmax is e (before dropping, not differentiable) and P_e = mean_t p_et (differentiable).
/// z-loss = mean_t (logsumexp_e l_et)^2. Gradients flow through p (selection fixed, see gate.hpp).
#include "gate.hpp"

namespace fedmoe {

template <class Scalar = float>
class SwitchGate : public detail::GateStorage<Scalar> {
public:
  using scalar_type = Scalar;

  SwitchGate(Index width, Index experts, double capacity_factor = 1.0)
      : m_router{width, experts}, m_factor(capacity_factor) {
    detail::check_experts("SwitchGate", width, experts);
    detail::check_capacity_factor("SwitchGate", capacity_factor);
    this->allocate(m_router.num_params());
  }

  Index input_size() const { return m_router.width; }
  Index experts() const { return m_router.experts; }
  Index slots() const { return 1; }
  double capacity_factor() const { return m_factor; }
  void init(Rng& rng) { m_router.init(this->m_params.data(), rng); }

  /// Deterministic routing: mode and rng are unused.
  template <class In>
  const Routing<Scalar>& forward(const In& x, Mode = Mode::eval, Rng* = nullptr) {
    detail::check_gate_input("SwitchGate::forward", input_size(), x);
    auto& r = this->m_routing;
    const Index e = experts(), t = x.cols();
    const bool reuse = this->reuse_selection("SwitchGate::forward", t);
    r.resize(e, t, 1);
    r.capacity = detail::capacity(t, e, m_factor);
    m_router.forward(this->m_params.data(), x, m_logits);
    detail::softmax_columns(m_logits, m_probs, m_lse);
    if (!reuse) {
      m_choice.resize(t);
      m_count.setZero(e);
      r.dropped = 0;
      for (Index j = 0; j < t; ++j) {
        const Scalar* p = m_probs.data() + j * e;
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
    for (Index j = 0; j < t; ++j) r.weights(0, j) = r.indices(0, j) >= 0 ? m_probs(m_choice[j], j) : Scalar(0);
    m_mean_prob.noalias() = m_probs.rowwise().mean();
    r.aux = {};
    r.aux.balance = static_cast<Scalar>(e) * (m_count.template cast<Scalar>().dot(m_mean_prob) / static_cast<Scalar>(t));
    r.aux.z = static_cast<Scalar>(m_lse.squaredNorm() / static_cast<Scalar>(t));
    this->m_has_selection = true;
    return r;
  }
  template <class In>
  const Routing<Scalar>& forward(const In& x, Mode mode, Rng& rng) { return forward(x, mode, &rng); }

  template <class In, class DW>
  const Matrix<Scalar>& backward(const In& x, const DW& d_weights, const AuxWeights<Scalar>& aux = {},
                                 bool input_grad = true) {
    const auto& r = this->m_routing;
    detail::check_gate_grad("SwitchGate::backward", 1, r.tokens, d_weights);
    detail::check_gate_input("SwitchGate::backward", input_size(), x);
    const Index e = experts(), t = r.tokens;
    // d balance / d p_et = wb * E * f_e / T, f_e = count_e / T
    const Scalar bc = aux.balance * static_cast<Scalar>(e) / (static_cast<Scalar>(t) * static_cast<Scalar>(t));
    m_colgrad.noalias() = m_count.template cast<Scalar>() * bc;
    m_dp.resize(e, t);
    m_dp.colwise() = m_colgrad;
    for (Index j = 0; j < t; ++j)
      if (r.indices(0, j) >= 0) m_dp(m_choice[j], j) += Scalar(d_weights(0, j));
    detail::softmax_backward_columns(m_probs, m_dp, m_lse, aux.z, m_dlogits);
    m_router.backward(this->m_params.data(), x, m_dlogits, this->m_grads.data(), input_grad ? &this->m_dx : nullptr,
                      false);
    return this->m_dx;
  }

  /// Router probabilities softmax(W x + b) of the last forward (experts x tokens).
  const Matrix<Scalar>& probabilities() const { return m_probs; }

private:
  detail::LinearRouter<Scalar> m_router;
  double m_factor;
  Matrix<Scalar> m_logits, m_probs, m_dp, m_dlogits;
  Vector<Scalar> m_lse, m_mean_prob, m_colgrad;
  IndexVector m_choice, m_count;
};

}  // namespace fedmoe
