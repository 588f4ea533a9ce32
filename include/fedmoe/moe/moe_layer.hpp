#pragma once
/// @file moe_layer.hpp
/// @brief A sparse mixture-of-experts layer, generic over the gate and over each expert's type.
///
///     y_t = sum_{slots j of t, e = indices(j, t) >= 0} weights(j, t) * f_e(x_t)
///
/// The gate routes the tokens (see gate.hpp); expert e runs once, on the batch of the tokens
/// dispatched to it (gathered into a contiguous matrix); an expert that receives no token does
/// not run (its gradient is set to zero). Dropped tokens get output 0 (the caller adds its
/// residual path). Experts may be different Model types (a std::tuple, resolved at compile time).
///
/// Backward, given dy = dL/dy: dL/dweights(j, t) = <dy_t, f_e(x_t)>, expert e back-propagates
/// weights(j, t) * dy_t, and the gate back-propagates dL/dweights plus the auxiliary losses
/// (weighted by AuxWeights), with the selection held fixed. dL/dx sums the experts' and the gate's.
/// Each part keeps its own parameter and gradient vectors: gate().parameters(), expert<I>().parameters().
///
/// The gate's workspaces do not reallocate at a fixed token count; the experts' batches change
/// size with the routing, so the experts' own buffers may reallocate between steps.
#include <array>
#include <tuple>
#include <utility>

#include "../models/model.hpp"
#include "gate.hpp"

namespace fedmoe {

template <Gate G, Model... Experts>
class MoeLayer {
public:
  using scalar_type = typename G::scalar_type;
  using Scalar = scalar_type;
  static constexpr std::size_t num_experts = sizeof...(Experts);
  static_assert(num_experts > 0, "MoeLayer needs at least one expert");
  static_assert((std::same_as<typename Experts::scalar_type, Scalar> && ...),
                "every expert must use the gate's scalar type");

  explicit MoeLayer(G gate, Experts... experts) : m_gate(std::move(gate)), m_experts(std::move(experts)...) {
    FEDMOE_CHECK(m_gate.experts() == static_cast<Index>(num_experts), "MoeLayer: expected a gate over ", num_experts,
                 " experts (one per expert model), got a gate over ", m_gate.experts());
    m_out = std::get<0>(m_experts).output_size();
    for_each_expert([&](auto& ex, Index e) {
      FEDMOE_CHECK(ex.input_size() == m_gate.input_size(), "MoeLayer: expected expert ", e, " to take ",
                   m_gate.input_size(), " inputs (the gate's width), got ", ex.input_size());
      FEDMOE_CHECK(ex.output_size() == m_out, "MoeLayer: expected expert ", e, " to have ", m_out,
                   " outputs (as expert 0), got ", ex.output_size());
    });
    // Shapes, not sizes (models/model.hpp): every expert reads the samples in one shape, and a gate with
    // an input shape (ModelGate) reads them in that shape too; a linear gate reads any shape flattened.
    m_shape = input_shape_of(std::get<0>(m_experts));
    for_each_expert([&](auto& ex, Index e) {
      FEDMOE_CHECK(input_shape_of(ex) == m_shape, "MoeLayer: expected expert ", e, " to take samples of shape ",
                   m_shape, " (as expert 0), got ", input_shape_of(ex));
    });
    if constexpr (requires { { m_gate.input_shape() } -> std::convertible_to<Shape>; })
      FEDMOE_CHECK(m_gate.input_shape() == m_shape, "MoeLayer: expected a gate taking samples of shape ", m_shape,
                   " (the experts'), got ", m_gate.input_shape());
  }

  Index input_size() const { return m_gate.input_size(); }
  /// The shape of one input sample: the experts' (models/model.hpp: input_shape_of).
  Shape input_shape() const { return m_shape; }
  Index output_size() const { return m_out; }
  G& gate() { return m_gate; }
  const G& gate() const { return m_gate; }
  template <std::size_t I> auto& expert() { return std::get<I>(m_experts); }
  template <std::size_t I> const auto& expert() const { return std::get<I>(m_experts); }
  /// The routing of the last forward.
  const Routing<Scalar>& routing() const { return m_gate.routing(); }

  /// Initialises the gate, then each expert in order, from rng.
  void init(Rng& rng) {
    m_gate.init(rng);
    for_each_expert([&](auto& ex, Index) { ex.init(rng); });
  }

  /// y = sum over the selected experts of weight * expert(x). The gate draws from rng first, then
  /// the experts in index order.
  const Matrix<Scalar>& forward(const Matrix<Scalar>& x, Mode mode, Rng& rng) {
    FEDMOE_CHECK(x.rows() == input_size(), "MoeLayer::forward: expected input with ", input_size(), " rows, got ",
                 x.rows());
    const Routing<Scalar>& r = m_gate.forward(x, mode, rng);
    m_has_forward = true;
    m_y.setZero(m_out, x.cols());
    for_each_expert([&](auto& ex, Index e) {
      const Index n = r.expert_count(e), off = r.expert_offsets[e];
      m_ye[e] = nullptr;
      if (n == 0) return;
      m_xe[e].resize(x.rows(), n);
      for (Index q = 0; q < n; ++q) m_xe[e].col(q) = x.col(r.dispatch_tokens[off + q]);
      const Matrix<Scalar>& ye = ex.forward(m_xe[e], mode, rng);
      m_ye[e] = &ye;
      for (Index q = 0; q < n; ++q) {
        const Index t = r.dispatch_tokens[off + q], j = r.dispatch_slots[off + q];
        m_y.col(t) += r.weights(j, t) * ye.col(q);
      }
    });
    return m_y;
  }
  const Matrix<Scalar>& forward(const Matrix<Scalar>& x) {
    Rng unused(0);
    return forward(x, Mode::eval, unused);
  }

  /// After forward(x): sets the gate's and every expert's gradients from dy = dL/dy (plus the
  /// weighted auxiliary losses); returns dL/dx when input_grad.
  const Matrix<Scalar>& backward(const Matrix<Scalar>& x, const Matrix<Scalar>& dy, const AuxWeights<Scalar>& aux = {},
                                 bool input_grad = true) {
    FEDMOE_CHECK(m_has_forward, "MoeLayer::backward: expected a forward before backward, got none");
    const Routing<Scalar>& r = m_gate.routing();
    FEDMOE_CHECK(dy.rows() == m_out && dy.cols() == r.tokens, "MoeLayer::backward: expected dy of shape ", m_out, "x",
                 r.tokens, ", got ", dy.rows(), "x", dy.cols());
    FEDMOE_CHECK(x.rows() == input_size() && x.cols() == r.tokens, "MoeLayer::backward: expected the input x of the ",
                 "last forward (", input_size(), "x", r.tokens, "), got ", x.rows(), "x", x.cols());
    m_dw.setZero(r.slots, r.tokens);
    if (input_grad) m_dx.setZero(x.rows(), x.cols());
    for_each_expert([&](auto& ex, Index e) {
      const Index n = r.expert_count(e), off = r.expert_offsets[e];
      if (n == 0 || m_ye[e] == nullptr) {
        ex.gradients().setZero();
        return;
      }
      const Matrix<Scalar>& ye = *m_ye[e];
      m_dye[e].resize(m_out, n);
      for (Index q = 0; q < n; ++q) {
        const Index t = r.dispatch_tokens[off + q], j = r.dispatch_slots[off + q];
        m_dye[e].col(q) = r.weights(j, t) * dy.col(t);
        m_dw(j, t) = dy.col(t).dot(ye.col(q));
      }
      const Matrix<Scalar>& dxe = ex.backward(m_xe[e], m_dye[e], input_grad);
      if (input_grad)
        for (Index q = 0; q < n; ++q) m_dx.col(r.dispatch_tokens[off + q]) += dxe.col(q);
    });
    const Matrix<Scalar>& dxg = m_gate.backward(x, m_dw, aux, input_grad);
    if (input_grad) m_dx += dxg;
    return m_dx;
  }

private:
  template <class F>
  void for_each_expert(F&& f) {
    [&]<std::size_t... I>(std::index_sequence<I...>) { (f(std::get<I>(m_experts), static_cast<Index>(I)), ...); }
    (std::make_index_sequence<num_experts>{});
  }

  G m_gate;
  std::tuple<Experts...> m_experts;
  Index m_out = 0;
  Shape m_shape{};
  bool m_has_forward = false;
  Matrix<Scalar> m_y, m_dw, m_dx;
  std::array<Matrix<Scalar>, num_experts> m_xe, m_dye;
  std::array<const Matrix<Scalar>*, num_experts> m_ye{};
};

}  // namespace fedmoe
