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
/// The Mixture owns none of the three models: it refers to them, so a client keeps its
/// models and the mixture is a view that trains two of them.
#include <algorithm>
#include <cmath>
#include <limits>

#include "../core/error.hpp"
#include "../layers/softmax.hpp"
#include "../losses/loss.hpp"
#include "../models/model.hpp"

namespace fedmoe {

template <Model Gate, Model Specialist, Model Global>
class Mixture {
  using S = typename Specialist::scalar_type;
  static_assert(std::same_as<typename Gate::scalar_type, S> && std::same_as<typename Global::scalar_type, S>,
                "Mixture: gate, specialist and global model must share one scalar type");

public:
  using scalar_type = S;

  Mixture(Gate& gate, Specialist& specialist, Global& global) : m_gate(&gate), m_spec(&specialist), m_global(&global) {
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
  }

  /// The shape of one input sample (the specialist's, which the gate and the global model share).
  Shape input_shape() const { return input_shape_of(*m_spec); }
  Index input_size() const { return m_spec->input_size(); }

  Gate& gate() { return *m_gate; }
  Specialist& specialist() { return *m_spec; }
  Global& global() { return *m_global; }

  /// Mixture class probabilities for x (classes x batch). The global expert runs in Mode::eval.
  const Matrix<S>& forward(const Matrix<S>& x, Mode mode, Rng& rng) {
    run_experts(x, mode, rng);
    m_prob.resize(m_ls.rows(), m_ls.cols());
    for (Index j = 0; j < m_prob.cols(); ++j) {
      const S h = m_h(0, j);
      m_prob.col(j).array() = h * m_ls.col(j).array().exp() + (S(1) - h) * m_lg.col(j).array().exp();
    }
    return m_prob;
  }
  const Matrix<S>& forward(const Matrix<S>& x) {
    Rng unused(0);
    return forward(x, Mode::eval, unused);
  }
  /// The gate values h(x) of the last forward / loss call (1 x batch).
  const Matrix<S>& gate_values() const { return m_h; }

  /// Mean -log q over the batch, without gradients.
  S loss(const Matrix<S>& x, const Labels& y, Mode mode, Rng& rng) {
    run_experts(x, mode, rng);
    detail::check_labels("Mixture::loss", m_ls, y);
    double total = 0;
    for (Index j = 0; j < y.size(); ++j) total -= double(log_q(j, y[j]));
    return S(total / double(y.size()));
  }

  /// Mean -log q, and sets gate().gradients() and specialist().gradients() to its gradient.
  /// The global model's gradients are not touched (it is frozen).
  S loss_and_gradient(const Matrix<S>& x, const Labels& y, Mode mode, Rng& rng) {
    run_experts(x, mode, rng);
    detail::check_labels("Mixture::loss_and_gradient", m_ls, y);
    const Index n = y.size();
    m_dh.resize(1, n);
    m_dz.resize(m_ls.rows(), n);
    double total = 0;
    for (Index j = 0; j < n; ++j) {
      const S lq = log_q(j, y[j]);
      total -= double(lq);
      const S ls_y = m_ls(y[j], j), lg_y = m_lg(y[j], j), h = m_h(0, j);
      m_dh(0, j) = -(std::exp(ls_y - lq) - std::exp(lg_y - lq)) / S(n);
      const S r = h > S(0) ? std::exp(std::log(h) + ls_y - lq) : S(0);
      m_dz.col(j).array() = r * m_ls.col(j).array().exp() / S(n);
      m_dz(y[j], j) -= r / S(n);
    }
    m_gate->backward(x, m_dh);
    m_spec->backward(x, m_dz);
    return S(total / double(n));
  }

private:
  void run_experts(const Matrix<S>& x, Mode mode, Rng& rng) {
    m_h = m_gate->forward(x, mode, rng);
    FEDMOE_CHECK(m_h.allFinite() && m_h.minCoeff() >= S(0) && m_h.maxCoeff() <= S(1),
                 "Mixture: expected gate values in [0, 1], got range [", m_h.minCoeff(), ", ", m_h.maxCoeff(), "]");
    detail::log_softmax(m_spec->forward(x, mode, rng), m_ls);
    detail::log_softmax(m_global->forward(x), m_lg);
  }
  // log q_j for class c, as logaddexp(log h + log s_c, log(1 - h) + log g_c).
  S log_q(Index j, Index c) const {
    const S h = m_h(0, j);
    constexpr S neg_inf = -std::numeric_limits<S>::infinity();
    const S a = h > S(0) ? std::log(h) + m_ls(c, j) : neg_inf;
    const S b = h < S(1) ? std::log1p(-h) + m_lg(c, j) : neg_inf;
    const S m = std::max(a, b);
    return m + std::log(std::exp(a - m) + std::exp(b - m));
  }

  Gate* m_gate;
  Specialist* m_spec;
  Global* m_global;
  Matrix<S> m_h, m_ls, m_lg, m_prob, m_dh, m_dz;
};

}  // namespace fedmoe
