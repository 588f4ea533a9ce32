#pragma once
/// @file softmax_gate.hpp
/// @brief Dense softmax gate over K experts, its K = 2 sigmoid form (the paper's gate), and a
/// softmax gate whose trunk is any fedmoe Model.
///
/// SoftmaxGate: g_t = softmax(W x_t + b) over all E experts; slots = E, slot e is expert e.
/// SigmoidGate: the paper's two-expert gate h(x) = sigmoid(w.x + b); weights (h, 1 - h) for
/// experts (0, 1) = (specialist, global). It is the softmax gate with K = 2 and the second
/// logit fixed to 0: softmax(z, 0) = (sigmoid(z), 1 - sigmoid(z)); its z-loss is that of (z, 0).
/// ModelGate<M>: g_t = softmax(f(x_t)) where f is any Model with E outputs (e.g. the paper's
/// convolutional gate trunk); its parameters are the model's.
/// ProbabilityGate<M>: the trunk outputs the weights themselves: one output h in [0, 1] for two
/// experts, weights (h, 1 - h) (the paper's gate, whose trunk ends in a Sigmoid), or E >= 2 outputs
/// that already form a distribution (a trunk ending in Softmax).
#include "../models/model.hpp"
#include "gate.hpp"

namespace fedmoe {

namespace detail {

/// Sizes r for a dense routing of T tokens over E experts: slot e of every token is expert e, no
/// capacity limit, nothing dropped, aux losses reset. The selection is constant, so the indices and
/// the dispatch lists are rebuilt only when (E, T) changed; the caller then sets the weights and aux.z.
template <class Scalar>
void dense_routing(Routing<Scalar>& r, Index experts, Index tokens) {
  const bool fresh = r.tokens != tokens || r.experts != experts;
  r.resize(experts, tokens, experts);
  if (fresh) {
    for (Index j = 0; j < tokens; ++j)
      for (Index i = 0; i < experts; ++i) r.indices(i, j) = static_cast<std::int32_t>(i);
    r.build_dispatch();
  }
  r.capacity = tokens;
  r.dropped = 0;
  r.aux = {};
}

}  // namespace detail

template <class Scalar = float>
class SoftmaxGate : public detail::LinearGate<Scalar> {
public:
  using scalar_type = Scalar;

  SoftmaxGate(Index width, Index experts) : detail::LinearGate<Scalar>("SoftmaxGate", width, experts, experts) {}

  /// Routes the tokens x (width x T). Deterministic (no noise): mode and rng are unused.
  template <class In>
  const Routing<Scalar>& forward(const In& x, Mode = Mode::eval, Rng* = nullptr) {
    this->check_forward(x);
    auto& r = this->m_routing;
    const Index t = x.cols();
    detail::dense_routing(r, this->experts(), t);
    this->router_forward(x, m_logits);
    detail::softmax_columns(m_logits, r.weights, m_lse);
    r.aux.z = detail::lse_z_loss(m_lse);
    return this->keep_selection();
  }
  template <class In>
  const Routing<Scalar>& forward(const In& x, Mode mode, Rng& rng) { return forward(x, mode, &rng); }

  template <class In, class DW>
  const Matrix<Scalar>& backward(const In& x, const DW& d_weights, const AuxWeights<Scalar>& aux = {},
                                 bool input_grad = true) {
    this->check_backward(x, d_weights);
    detail::softmax_backward_columns(this->m_routing.weights, d_weights, m_lse, aux.z, m_dlogits);
    return this->router_backward(x, m_dlogits, input_grad);
  }

  /// The logits W x + b of the last forward.
  const Matrix<Scalar>& logits() const { return m_logits; }

private:
  Matrix<Scalar> m_logits, m_dlogits;
  Vector<Scalar> m_lse;
};

template <class Scalar = float>
class SigmoidGate : public detail::LinearGate<Scalar> {
public:
  using scalar_type = Scalar;

  /// h(x) = sigmoid(w.x + b): parameters w [1, width] then b [1] (a Dense(width, 1) slice).
  explicit SigmoidGate(Index width) : detail::LinearGate<Scalar>("SigmoidGate", width, 1, 2) {}

  /// Two experts (specialist, global) from the router's one logit.
  Index experts() const { return 2; }

  template <class In>
  const Routing<Scalar>& forward(const In& x, Mode = Mode::eval, Rng* = nullptr) {
    this->check_forward(x);
    auto& r = this->m_routing;
    const Index t = x.cols();
    detail::dense_routing(r, experts(), t);
    this->router_forward(x, m_logits);
    double z = 0;
    for (Index j = 0; j < t; ++j) {
      const Scalar l = m_logits(0, j);
      const Scalar h = Scalar(1) / (Scalar(1) + std::exp(-l));
      r.weights(0, j) = h;
      r.weights(1, j) = Scalar(1) - h;
      const double lse = std::max(double(l), 0.0) + std::log1p(std::exp(-std::abs(double(l))));  // softplus
      z += lse * lse;
    }
    r.aux.z = static_cast<Scalar>(z / static_cast<double>(t));
    return this->keep_selection();
  }
  template <class In>
  const Routing<Scalar>& forward(const In& x, Mode mode, Rng& rng) { return forward(x, mode, &rng); }

  /// dz = h (1 - h) (dw_0 - dw_1) + wz * 2 softplus(z) h / T.
  template <class In, class DW>
  const Matrix<Scalar>& backward(const In& x, const DW& d_weights, const AuxWeights<Scalar>& aux = {},
                                 bool input_grad = true) {
    this->check_backward(x, d_weights);
    const auto& r = this->m_routing;
    const Index t = r.tokens;
    m_dlogits.resize(1, t);
    const Scalar zc = aux.z * Scalar(2) / static_cast<Scalar>(t);
    for (Index j = 0; j < t; ++j) {
      const Scalar h = r.weights(0, j), l = m_logits(0, j);
      const Scalar sp = std::max(l, Scalar(0)) + std::log1p(std::exp(-std::abs(l)));
      m_dlogits(0, j) = h * (Scalar(1) - h) * (d_weights(0, j) - d_weights(1, j)) + zc * sp * h;
    }
    return this->router_backward(x, m_dlogits, input_grad);
  }

private:
  Matrix<Scalar> m_logits, m_dlogits;
};

/// A dense softmax gate whose logits come from any fedmoe Model (trunk) with `experts` outputs.
template <Model M>
class ModelGate {
public:
  using scalar_type = typename M::scalar_type;
  using Scalar = scalar_type;

  explicit ModelGate(M trunk) : m_trunk(std::move(trunk)) {
    FEDMOE_CHECK(m_trunk.output_size() > 0, "ModelGate: expected a trunk with >= 1 output, got ",
                 m_trunk.output_size());
  }

  Index num_params() const { return m_trunk.num_params(); }
  Index input_size() const { return m_trunk.input_size(); }
  /// The trunk's input shape (models/model.hpp: input_shape_of).
  Shape input_shape() const { return input_shape_of(m_trunk); }
  Index experts() const { return m_trunk.output_size(); }
  Index slots() const { return experts(); }
  Vector<Scalar>& parameters() { return m_trunk.parameters(); }
  const Vector<Scalar>& parameters() const { return m_trunk.parameters(); }
  Vector<Scalar>& gradients() { return m_trunk.gradients(); }
  const Vector<Scalar>& gradients() const { return m_trunk.gradients(); }
  void init(Rng& rng) { m_trunk.init(rng); }
  void freeze_selection(bool) {}  // the selection (all experts) never changes
  M& trunk() { return m_trunk; }
  const Routing<Scalar>& routing() const { return m_routing; }

  /// Routes x through the trunk (its dropout draws from rng in Mode::train).
  const Routing<Scalar>& forward(const Matrix<Scalar>& x, Mode mode, Rng& rng) {
    detail::check_gate_input("ModelGate::forward", input_size(), x);
    auto& r = m_routing;
    const Index t = x.cols();
    detail::dense_routing(r, experts(), t);
    const Matrix<Scalar>& logits = m_trunk.forward(x, mode, rng);
    detail::softmax_columns(logits, r.weights, m_lse);
    r.aux.z = detail::lse_z_loss(m_lse);
    return r;
  }
  const Routing<Scalar>& forward(const Matrix<Scalar>& x) {
    Rng unused(0);
    return forward(x, Mode::eval, unused);
  }

  template <class DW>
  const Matrix<Scalar>& backward(const Matrix<Scalar>& x, const DW& d_weights, const AuxWeights<Scalar>& aux = {},
                                 bool input_grad = true) {
    detail::check_gate_grad("ModelGate::backward", m_routing.slots, m_routing.tokens, d_weights);
    detail::softmax_backward_columns(m_routing.weights, d_weights, m_lse, aux.z, m_dlogits);
    return m_trunk.backward(x, m_dlogits, input_grad);
  }

private:
  M m_trunk;
  Routing<Scalar> m_routing;
  Matrix<Scalar> m_dlogits;
  Vector<Scalar> m_lse;
};

/// A dense gate whose trunk (any fedmoe Model) outputs the combine weights themselves: one output
/// h in [0, 1] gives two experts the weights (h, 1 - h) (the paper's gate: a trunk ending in a
/// Sigmoid), E >= 2 outputs are the weights of E experts (a trunk ending in Softmax; each column
/// must sum to 1 within 1e-3). Backward: for one output dL/dh = dL/dw_0 - dL/dw_1; else dL/dw goes
/// to the trunk unchanged. No z-loss (there are no logits): aux.z is 0.
template <Model M>
class ProbabilityGate {
public:
  using scalar_type = typename M::scalar_type;
  using Scalar = scalar_type;

  explicit ProbabilityGate(M trunk) : m_trunk(std::move(trunk)) {
    FEDMOE_CHECK(m_trunk.output_size() >= 1, "ProbabilityGate: expected a trunk with >= 1 output, got ",
                 m_trunk.output_size());
  }

  Index num_params() const { return m_trunk.num_params(); }
  Index input_size() const { return m_trunk.input_size(); }
  Shape input_shape() const { return input_shape_of(m_trunk); }
  Index experts() const { return m_trunk.output_size() == 1 ? 2 : m_trunk.output_size(); }
  Index slots() const { return experts(); }
  Vector<Scalar>& parameters() { return m_trunk.parameters(); }
  const Vector<Scalar>& parameters() const { return m_trunk.parameters(); }
  Vector<Scalar>& gradients() { return m_trunk.gradients(); }
  const Vector<Scalar>& gradients() const { return m_trunk.gradients(); }
  void init(Rng& rng) { m_trunk.init(rng); }
  void freeze_selection(bool) {}  // the selection (all experts) never changes
  M& trunk() { return m_trunk; }
  const Routing<Scalar>& routing() const { return m_routing; }

  const Routing<Scalar>& forward(const Matrix<Scalar>& x, Mode mode, Rng& rng) {
    detail::check_gate_input("ProbabilityGate::forward", input_size(), x);
    auto& r = m_routing;
    detail::dense_routing(r, experts(), x.cols());
    const Matrix<Scalar>& out = m_trunk.forward(x, mode, rng);
    FEDMOE_CHECK(out.allFinite() && out.minCoeff() >= Scalar(0) && out.maxCoeff() <= Scalar(1),
                 "ProbabilityGate: expected gate values in [0, 1] from the trunk, got range [", out.minCoeff(), ", ",
                 out.maxCoeff(), "]");
    if (out.rows() == 1) {
      r.weights.row(0) = out.row(0);
      r.weights.row(1) = Scalar(1) - out.row(0).array();
    } else {
      const Scalar worst = (out.colwise().sum().array() - Scalar(1)).abs().maxCoeff();
      FEDMOE_CHECK(worst <= Scalar(1e-3), "ProbabilityGate: expected the ", out.rows(),
                   " trunk outputs of every sample to sum to 1 (a Softmax last layer), off by up to ", worst);
      r.weights = out;
    }
    return r;
  }
  const Routing<Scalar>& forward(const Matrix<Scalar>& x) {
    Rng unused(0);
    return forward(x, Mode::eval, unused);
  }

  template <class DW>
  const Matrix<Scalar>& backward(const Matrix<Scalar>& x, const DW& d_weights, const AuxWeights<Scalar>& = {},
                                 bool input_grad = true) {
    detail::check_gate_grad("ProbabilityGate::backward", m_routing.slots, m_routing.tokens, d_weights);
    if (m_trunk.output_size() == 1) m_dout = d_weights.row(0) - d_weights.row(1);
    else m_dout = d_weights;
    return m_trunk.backward(x, m_dout, input_grad);
  }

private:
  M m_trunk;
  Routing<Scalar> m_routing;
  Matrix<Scalar> m_dout;
};

}  // namespace fedmoe
