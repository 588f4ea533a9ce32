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
class ExpertChoiceGate : public detail::CapacityGate<Scalar> {
public:
  using scalar_type = Scalar;

  ExpertChoiceGate(Index width, Index experts, double capacity_factor = 1.0)
      : detail::CapacityGate<Scalar>("ExpertChoiceGate", width, experts, experts, capacity_factor) {}

  template <class In>
  const Routing<Scalar>& forward(const In& x, Mode = Mode::eval, Rng* = nullptr) {
    const bool reuse = this->begin_routing(x);
    auto& r = this->m_routing;
    const Matrix<Scalar>& probs = this->m_probs;
    const Index e = this->experts(), t = x.cols();
    r.capacity = this->capacity(t, t);
    if (!reuse) {
      r.indices.setConstant(-1);
      m_perm.resize(t);
      const Index c = r.capacity;
      for (Index i = 0; i < e; ++i) {
        std::iota(m_perm.data(), m_perm.data() + t, 0);
        auto better = [&](std::int32_t a, std::int32_t b) {
          const Scalar pa = probs(i, a), pb = probs(i, b);
          return pa > pb || (pa == pb && a < b);
        };
        std::nth_element(m_perm.data(), m_perm.data() + (c - 1), m_perm.data() + t, better);
        for (Index q = 0; q < c; ++q) r.indices(i, m_perm[q]) = static_cast<std::int32_t>(i);
      }
      r.dropped = 0;
      for (Index j = 0; j < t; ++j) r.dropped += (r.indices.col(j).array() >= 0).any() ? 0 : 1;
      r.build_dispatch();
    }
    r.weights = (r.indices.array() >= 0).select(probs, Scalar(0));
    r.aux = {};
    return this->end_routing();
  }
  template <class In>
  const Routing<Scalar>& forward(const In& x, Mode mode, Rng& rng) { return forward(x, mode, &rng); }

  template <class In, class DW>
  const Matrix<Scalar>& backward(const In& x, const DW& d_weights, const AuxWeights<Scalar>& aux = {},
                                 bool input_grad = true) {
    this->check_backward(x, d_weights);
    const auto& r = this->m_routing;
    this->m_dp = (r.indices.array() >= 0).select(d_weights, Scalar(0));
    return this->backward_probabilities(x, aux.z, input_grad);
  }

private:
  IndexVector m_perm;
};

}  // namespace fedmoe
