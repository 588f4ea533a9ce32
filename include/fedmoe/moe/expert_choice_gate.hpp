#pragma once
/// @file expert_choice_gate.hpp
/// @brief Expert-choice routing (Zhou et al. 2022, "Mixture-of-experts with expert choice routing").
///
/// S = softmax(W x + b) over experts, per token (experts x tokens). Each expert e takes its
/// c = min(T, ceil(T * capacity_factor / E)) tokens with the largest S_e. (ties: lower token index),
/// with combine weight S_et. A token may be taken by several experts or by none (Routing::dropped
/// counts the tokens no expert took). Slots = E: slot e of token t is expert e (index -1 when e did
/// not take t). No balance loss is needed (every expert takes exactly c tokens); z-loss as
/// everywhere. Gradients flow through S_et of the chosen pairs (selection fixed, see gate.hpp).
#include <numeric>

#include "gate.hpp"

namespace fedmoe {

template <class Scalar = float>
class ExpertChoiceGate : public detail::GateStorage<Scalar> {
public:
  using scalar_type = Scalar;

  ExpertChoiceGate(Index width, Index experts, double capacity_factor = 1.0)
      : m_router{width, experts}, m_factor(capacity_factor) {
    detail::check_experts("ExpertChoiceGate", width, experts);
    detail::check_capacity_factor("ExpertChoiceGate", capacity_factor);
    this->allocate(m_router.num_params());
  }

  Index input_size() const { return m_router.width; }
  Index experts() const { return m_router.experts; }
  Index slots() const { return m_router.experts; }
  double capacity_factor() const { return m_factor; }
  void init(Rng& rng) { m_router.init(this->m_params.data(), rng); }

  template <class In>
  const Routing<Scalar>& forward(const In& x, Mode = Mode::eval, Rng* = nullptr) {
    detail::check_gate_input("ExpertChoiceGate::forward", input_size(), x);
    auto& r = this->m_routing;
    const Index e = experts(), t = x.cols();
    const bool reuse = this->reuse_selection("ExpertChoiceGate::forward", t);
    r.resize(e, t, e);
    r.capacity = std::min(t, detail::capacity(t, e, m_factor));
    m_router.forward(this->m_params.data(), x, m_logits);
    detail::softmax_columns(m_logits, m_probs, m_lse);
    if (!reuse) {
      r.indices.setConstant(-1);
      m_perm.resize(t);
      const Index c = r.capacity;
      for (Index i = 0; i < e; ++i) {
        std::iota(m_perm.data(), m_perm.data() + t, 0);
        auto better = [&](std::int32_t a, std::int32_t b) {
          const Scalar pa = m_probs(i, a), pb = m_probs(i, b);
          return pa > pb || (pa == pb && a < b);
        };
        std::nth_element(m_perm.data(), m_perm.data() + (c - 1), m_perm.data() + t, better);
        for (Index q = 0; q < c; ++q) r.indices(i, m_perm[q]) = static_cast<std::int32_t>(i);
      }
      r.dropped = 0;
      for (Index j = 0; j < t; ++j) r.dropped += (r.indices.col(j).array() >= 0).any() ? 0 : 1;
      r.build_dispatch();
    }
    r.weights = (r.indices.array() >= 0).select(m_probs, Scalar(0));
    r.aux = {};
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
    detail::check_gate_grad("ExpertChoiceGate::backward", r.slots, r.tokens, d_weights);
    detail::check_gate_input("ExpertChoiceGate::backward", input_size(), x);
    m_dp = (r.indices.array() >= 0).select(d_weights, Scalar(0));
    detail::softmax_backward_columns(m_probs, m_dp, m_lse, aux.z, m_dlogits);
    m_router.backward(this->m_params.data(), x, m_dlogits, this->m_grads.data(), input_grad ? &this->m_dx : nullptr,
                      false);
    return this->m_dx;
  }

  const Matrix<Scalar>& probabilities() const { return m_probs; }

private:
  detail::LinearRouter<Scalar> m_router;
  double m_factor;
  Matrix<Scalar> m_logits, m_probs, m_dp, m_dlogits;
  Vector<Scalar> m_lse;
  IndexVector m_perm;
};

}  // namespace fedmoe
