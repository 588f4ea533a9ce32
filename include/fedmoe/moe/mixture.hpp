#pragma once
/// @file mixture.hpp
/// @brief The paper's two-expert mixture: p(y|x) = h(x) p_s(y|x) + (1 - h(x)) p_g(y|x).
///
/// Listo Zec et al., "Specialized federated learning using a mixture of experts"
/// (arXiv 2010.02056). The gate h (any Model with one output in (0, 1)) and the local
/// specialist (any Model producing logits) are trained on the client's data; the global
/// expert (any Model producing logits, possibly of another architecture) is frozen and
/// evaluated in Mode::eval. The loss is the negative log of the mixture of
/// **probabilities** (not of log-probabilities: reference-code defect 3), averaged:
///
///     L = -1/N sum_j log q_j,   q_j = h_j s_j[y_j] + (1 - h_j) g_j[y_j],
///
/// computed in log space (log q = logaddexp(log h + log s_y, log(1-h) + log g_y)), so a
/// saturated gate (h = 0 or 1) or a tiny expert probability never gives NaN. With
/// r_j = h_j s_j[y_j] / q_j (the specialist's responsibility):
///
///     dL/dh_j          = -(s_j[y_j] - g_j[y_j]) / (q_j N)
///     dL/dz^s_j        = -r_j (onehot(y_j) - s_j) / N          (z^s: specialist logits)
///
/// The Mixture owns none of the three models: it refers to them, so a client keeps its models and
/// the mixture is a view that trains two of them. It is the K = 2 case of ExpertMixture
/// (expert_mixture.hpp): experts (specialist, global), a ProbabilityGate over the gate model, the
/// global expert frozen, so the two share one implementation of the loss and its gradients.
#include "../core/error.hpp"
#include "../models/model.hpp"
#include "expert_mixture.hpp"
#include "softmax_gate.hpp"

namespace fedmoe {

template <Model Gate, Model Specialist, Model Global>
class Mixture {
  using S = typename Specialist::scalar_type;
  static_assert(std::same_as<typename Gate::scalar_type, S> && std::same_as<typename Global::scalar_type, S>,
                "Mixture: gate, specialist and global model must share one scalar type");
  using GateAdapter = ProbabilityGate<ModelRef<Gate>>;

public:
  using scalar_type = S;

  Mixture(Gate& gate, Specialist& specialist, Global& global)
      : m_adapter(ModelRef<Gate>(checked(gate, specialist, global))), m_mix(m_adapter, specialist, global) {
    m_mix.set_trainable(1, false);  // the global expert is frozen
  }
  // The inner mixture refers to this object's gate adapter: a copy would refer to the original's.
  Mixture(const Mixture&) = delete;
  Mixture& operator=(const Mixture&) = delete;

  /// The shape of one input sample (the specialist's, which the gate and the global model share).
  Shape input_shape() const { return m_mix.input_shape(); }
  Index input_size() const { return m_mix.input_size(); }

  Gate& gate() { return m_adapter.trunk().get(); }
  Specialist& specialist() { return m_mix.template expert<0>(); }
  Global& global() { return m_mix.template expert<1>(); }

  /// Mixture class probabilities for x (classes x batch). The global expert runs in Mode::eval.
  const Matrix<S>& forward(const Matrix<S>& x, Mode mode, Rng& rng) { return m_mix.forward(x, mode, rng); }
  const Matrix<S>& forward(const Matrix<S>& x) { return m_mix.forward(x); }
  /// The gate values h(x) of the last forward / loss call (1 x batch).
  auto gate_values() const { return m_mix.weights().row(0); }
  /// The weights (h, 1 - h) of the specialist and the global expert (2 x batch), as ExpertMixture's.
  const Matrix<S>& weights() const { return m_mix.weights(); }

  /// Mean -log q over the batch, without gradients.
  S loss(const Matrix<S>& x, const Labels& y, Mode mode, Rng& rng) { return m_mix.loss(x, y, mode, rng); }

  /// Mean -log q, and sets gate().gradients() and specialist().gradients() to its gradient.
  /// The global model's gradients are not touched (it is frozen).
  S loss_and_gradient(const Matrix<S>& x, const Labels& y, Mode mode, Rng& rng) {
    return m_mix.loss_and_gradient(x, y, mode, rng);
  }

private:
  static Gate& checked(Gate& gate, Specialist& specialist, Global& global) {
    FEDMOE_CHECK(gate.output_size() == 1, "Mixture: expected a gate with 1 output, got ", gate.output_size());
    FEDMOE_CHECK(specialist.output_size() == global.output_size(), "Mixture: expected the global model to have ",
                 specialist.output_size(), " outputs (as the specialist), got ", global.output_size());
    FEDMOE_CHECK(gate.input_size() == specialist.input_size() && global.input_size() == specialist.input_size(),
                 "Mixture: expected gate, specialist and global inputs of size ", specialist.input_size(), ", got ",
                 gate.input_size(), " and ", global.input_size());
    // Shapes, not sizes (models/model.hpp): the three read the same samples.
    const Shape shape = input_shape_of(specialist);
    FEDMOE_CHECK(input_shape_of(gate) == shape && input_shape_of(global) == shape,
                 "Mixture: expected the gate and the global model to take samples of shape ", shape,
                 " (the specialist's), got ", input_shape_of(gate), " (gate) and ", input_shape_of(global),
                 " (global)");
    return gate;
  }

  GateAdapter m_adapter;
  ExpertMixture<GateAdapter, Specialist, Global> m_mix;
};

}  // namespace fedmoe
