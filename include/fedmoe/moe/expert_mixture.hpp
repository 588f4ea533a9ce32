#pragma once
/// @file expert_mixture.hpp
/// @brief A personal mixture of K experts: p(y|x) = sum_k w_k(x) p_k(y|x), the weights w from
/// any dense moe gate (softmax_gate.hpp: ModelGate over any Model trunk, ProbabilityGate for a
/// trunk that outputs the weights, SoftmaxGate, SigmoidGate).
///
/// The experts are any Models producing logits over the same classes, of any (different) types:
/// the global model, a fine-tuned copy, a specialist. Each is trainable or frozen: a frozen expert
/// runs in Mode::eval and its gradients are never touched. The paper's two-expert mixture
/// (mixture.hpp) is the case K = 2, experts (specialist, global), a ProbabilityGate over the
/// sigmoid-ended gate trunk, the global expert frozen.
///
/// What the gate reads (GateInput):
/// - `sample`: the input x, as the paper's gate;
/// - `expert_log_probs`: the experts' log-probabilities stacked, [log p_1(.|x); ...; log p_K(.|x)]
///   (K C features for C classes). A small gate on these learns from a few hundred samples which
///   classes each expert knows (the global model's prediction says which class x probably is),
///   where a gate on pixels must learn the classes from scratch.
///
/// Loss: L = -1/N sum_j log q_j, q_j = sum_k w_kj P_kj, P_kj = p_k(y_j | x_j), in log space
/// (log q = logsumexp_k(log w_kj + log P_kj)), so a saturated gate or a tiny probability never
/// gives NaN. With the responsibilities r_kj = w_kj P_kj / q_j:
///
///     dL/dw_kj        = -P_kj / (q_j N)                       (to the gate's backward)
///     dL/dz^k_j       = r_kj (p_k(.|x_j) - onehot(y_j)) / N   (expert k's logits, if trainable)
///
/// and with GateInput::expert_log_probs a trainable expert also gets the gradient through the
/// gate's input, dL/dz^k = g - p_k sum(g) for g = dL/d(log p_k) from the gate.
///
/// Forward order (each draws dropout from the Rng in Mode::train): the experts 1..K, then the gate.
/// The mixture owns none of its models: it refers to them (a client's models are the client's).
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <tuple>
#include <utility>

#include "../core/error.hpp"
#include "../layers/softmax.hpp"
#include "../losses/loss.hpp"
#include "../models/model.hpp"
#include "gate.hpp"

namespace fedmoe {

/// What a mixture's gate reads: the sample, or the experts' stacked log-probabilities.
enum class GateInput { sample, expert_log_probs };
inline const char* to_string(GateInput g) { return g == GateInput::sample ? "sample" : "expert-log-probs"; }

template <Gate G, Model... E>
class ExpertMixture {
  using S = typename G::scalar_type;
  static_assert(sizeof...(E) >= 2, "ExpertMixture: expected at least two experts");
  static_assert((std::same_as<typename E::scalar_type, S> && ...),
                "ExpertMixture: the gate and every expert must share one scalar type");

public:
  using scalar_type = S;
  static constexpr std::size_t K = sizeof...(E);

  /// Every expert trainable; the gate reads `input`.
  ExpertMixture(GateInput input, G& gate, E&... experts) : m_gate(&gate), m_experts(&experts...), m_input(input) {
    m_trainable.fill(true);
    const Index c = std::get<0>(m_experts)->output_size();
    const Shape shape = input_shape_of(*std::get<0>(m_experts));
    for_each_expert([&](auto& e, std::size_t k) {
      FEDMOE_CHECK(e.output_size() == c, "ExpertMixture: expected expert ", k, " to have ", c,
                   " outputs (the classes of expert 0), got ", e.output_size());
      FEDMOE_CHECK(input_shape_of(e) == shape, "ExpertMixture: expected expert ", k, " to take samples of shape ",
                   shape, " (expert 0's), got ", input_shape_of(e));
    });
    FEDMOE_CHECK(gate.experts() == Index(K) && gate.slots() == Index(K), "ExpertMixture: expected a dense gate over ",
                 K, " experts (", K, " slots), got one over ", gate.experts(), " experts with ", gate.slots(),
                 " slots");
    const Index width = input == GateInput::sample ? shape.size() : Index(K) * c;
    FEDMOE_CHECK(gate.input_size() == width, "ExpertMixture: expected a gate reading ", width, " values (",
                 input == GateInput::sample ? "one sample" : "the experts' stacked log-probabilities", "), got ",
                 gate.input_size());
    if constexpr (requires { gate.input_shape(); })
      if (input == GateInput::sample)
        FEDMOE_CHECK(gate.input_shape() == shape, "ExpertMixture: expected a gate taking samples of shape ", shape,
                     " (the experts'), got ", gate.input_shape());
  }
  ExpertMixture(G& gate, E&... experts) : ExpertMixture(GateInput::sample, gate, experts...) {}
  ExpertMixture(const ExpertMixture&) = default;
  ExpertMixture& operator=(const ExpertMixture&) = default;

  /// Expert k trains (its gradients are set by loss_and_gradient) or stays frozen (Mode::eval, untouched).
  void set_trainable(std::size_t k, bool trainable) {
    FEDMOE_CHECK(k < K, "ExpertMixture::set_trainable: expected an expert index in [0, ", K, "), got ", k);
    m_trainable[k] = trainable;
  }
  /// Every expert frozen (stacking: only the gate trains).
  void freeze_experts() { m_trainable.fill(false); }
  bool trainable(std::size_t k) const { return m_trainable.at(k); }
  GateInput gate_input() const { return m_input; }

  Shape input_shape() const { return input_shape_of(*std::get<0>(m_experts)); }
  Index input_size() const { return std::get<0>(m_experts)->input_size(); }
  Index classes() const { return std::get<0>(m_experts)->output_size(); }
  G& gate() { return *m_gate; }
  template <std::size_t k>
  auto& expert() {
    return *std::get<k>(m_experts);
  }

  /// Mixture class probabilities (classes x batch).
  const Matrix<S>& forward(const Matrix<S>& x, Mode mode, Rng& rng) {
    run(x, mode, rng);
    mix_probabilities();
    return m_prob;
  }
  const Matrix<S>& forward(const Matrix<S>& x) {
    Rng unused(0);
    return forward(x, Mode::eval, unused);
  }
  /// The weights of the last forward / loss call (K x batch; column j sums to 1).
  const Matrix<S>& weights() const { return m_gate->routing().weights; }
  /// Expert k's log-probabilities of the last call (classes x batch).
  const Matrix<S>& log_probs(std::size_t k) const { return m_lp.at(k); }

  /// Mean -log q over the batch, without gradients.
  S loss(const Matrix<S>& x, const Labels& y, Mode mode, Rng& rng) {
    run(x, mode, rng);
    detail::check_labels("ExpertMixture::loss", m_lp[0], y);
    double total = 0;
    for (Index j = 0; j < y.size(); ++j) total -= double(log_q(j, y[j]));
    return S(total / double(y.size()));
  }

  /// Mean -log q; sets the gate's gradients and those of every trainable expert (frozen ones untouched).
  S loss_and_gradient(const Matrix<S>& x, const Labels& y, Mode mode, Rng& rng) {
    run(x, mode, rng);
    return gradients(x, y, true);
  }

  /// Stacking with frozen experts: their log-probabilities were computed once (`log_probs[k]`, classes x
  /// batch: log_softmax of expert k's outputs in Mode::eval) and only the gate runs. `x` holds the same
  /// samples; a gate on GateInput::expert_log_probs does not read it (it may then be empty).
  const Matrix<S>& forward_cached(const Matrix<S>& x, const std::array<Matrix<S>, K>& log_probs, Mode mode,
                                  Rng& rng) {
    use_cached(log_probs);
    run_gate(x, mode, rng);
    mix_probabilities();
    return m_prob;
  }
  S loss_cached(const Matrix<S>& x, const std::array<Matrix<S>, K>& log_probs, const Labels& y, Mode mode, Rng& rng) {
    use_cached(log_probs);
    run_gate(x, mode, rng);
    detail::check_labels("ExpertMixture::loss_cached", m_lp[0], y);
    double total = 0;
    for (Index j = 0; j < y.size(); ++j) total -= double(log_q(j, y[j]));
    return S(total / double(y.size()));
  }
  /// Mean -log q and the gate's gradients only (the experts are not run and not touched).
  S gate_loss_and_gradient_cached(const Matrix<S>& x, const std::array<Matrix<S>, K>& log_probs, const Labels& y,
                                  Mode mode, Rng& rng) {
    use_cached(log_probs);
    run_gate(x, mode, rng);
    return gradients(x, y, false);
  }

private:
  template <class F>
  void for_each_expert(F&& f) {
    [&]<std::size_t... k>(std::index_sequence<k...>) { (f(*std::get<k>(m_experts), k), ...); }
    (std::make_index_sequence<K>{});
  }
  const Matrix<S>& gate_in(const Matrix<S>& x) const { return m_input == GateInput::sample ? x : m_features; }

  void run(const Matrix<S>& x, Mode mode, Rng& rng) {
    for_each_expert([&](auto& e, std::size_t k) {
      detail::log_softmax(e.forward(x, m_trainable[k] ? mode : Mode::eval, rng), m_lp[k]);
    });
    run_gate(x, mode, rng);
  }
  void use_cached(const std::array<Matrix<S>, K>& log_probs) {
    for (std::size_t k = 0; k < K; ++k) {
      FEDMOE_CHECK(log_probs[k].rows() == classes() && log_probs[k].cols() == log_probs[0].cols(),
                   "ExpertMixture: expected cached log-probabilities of shape ", classes(), "x", log_probs[0].cols(),
                   " for expert ", k, ", got ", log_probs[k].rows(), "x", log_probs[k].cols());
      m_lp[k] = log_probs[k];
    }
  }
  void mix_probabilities() {
    const Matrix<S>& w = weights();
    m_prob.setZero(classes(), m_lp[0].cols());
    for (std::size_t k = 0; k < K; ++k)
      for (Index j = 0; j < m_prob.cols(); ++j) m_prob.col(j).array() += w(Index(k), j) * m_lp[k].col(j).array().exp();
  }
  // The loss of the last run and its gradients: the gate's, and the trainable experts' if `experts`.
  S gradients(const Matrix<S>& x, const Labels& y, bool experts) {
    detail::check_labels("ExpertMixture::loss_and_gradient", m_lp[0], y);
    const Index n = y.size();
    const Matrix<S>& w = weights();
    const auto trains = [&](std::size_t k) { return experts && m_trainable[k]; };
    m_dw.resize(Index(K), n);
    for (std::size_t k = 0; k < K; ++k)
      if (trains(k)) m_dz[k].setZero(classes(), n);
    double total = 0;
    for (Index j = 0; j < n; ++j) {
      const S lq = log_q(j, y[j]);
      total -= double(lq);
      for (std::size_t k = 0; k < K; ++k) {
        const S lp_y = m_lp[k](y[j], j), wk = w(Index(k), j);
        m_dw(Index(k), j) = -std::exp(lp_y - lq) / S(n);
        if (!trains(k)) continue;
        const S r = wk > S(0) ? std::exp(std::log(wk) + lp_y - lq) : S(0);
        m_dz[k].col(j).array() = r * m_lp[k].col(j).array().exp() / S(n);
        m_dz[k](y[j], j) -= r / S(n);
      }
    }
    bool any = false;
    for (std::size_t k = 0; k < K; ++k) any = any || trains(k);
    const bool through_input = m_input == GateInput::expert_log_probs && any;
    const Matrix<S>& dg = m_gate->backward(gate_in(x), m_dw, AuxWeights<S>{}, through_input);
    if (any)
      for_each_expert([&](auto& e, std::size_t k) {
        if (!trains(k)) return;
        if (through_input) {  // d log_softmax: dz = g - softmax * sum(g), column by column
          const auto g = dg.middleRows(Index(k) * classes(), classes());
          m_dz[k].array() += g.array() - m_lp[k].array().exp().rowwise() * g.colwise().sum().array();
        }
        e.backward(x, m_dz[k], false);
      });
    return S(total / double(n));
  }
  void run_gate(const Matrix<S>& x, Mode mode, Rng& rng) {
    if (m_input == GateInput::expert_log_probs) {
      m_features.resize(Index(K) * classes(), m_lp[0].cols());
      for (std::size_t k = 0; k < K; ++k) m_features.middleRows(Index(k) * classes(), classes()) = m_lp[k];
    } else {
      FEDMOE_CHECK(x.cols() == m_lp[0].cols(), "ExpertMixture: expected ", m_lp[0].cols(),
                   " samples for the gate (as the experts' log-probabilities), got ", x.cols());
    }
    const Matrix<S>& w = m_gate->forward(gate_in(x), mode, rng).weights;
    FEDMOE_CHECK(w.allFinite() && w.minCoeff() >= S(0) && w.maxCoeff() <= S(1),
                 "ExpertMixture: expected gate weights in [0, 1], got range [", w.minCoeff(), ", ", w.maxCoeff(), "]");
  }
  // log q_j for class c: logsumexp_k(log w_kj + log p_k(c | x_j)), -inf terms for zero weights.
  S log_q(Index j, Index c) const {
    constexpr S neg_inf = -std::numeric_limits<S>::infinity();
    const Matrix<S>& w = weights();
    std::array<S, K> a;
    S m = neg_inf;
    for (std::size_t k = 0; k < K; ++k) {
      const S wk = w(Index(k), j);
      a[k] = wk > S(0) ? std::log(wk) + m_lp[k](c, j) : neg_inf;
      m = std::max(m, a[k]);
    }
    S sum = 0;
    for (std::size_t k = 0; k < K; ++k) sum += std::exp(a[k] - m);
    return m + std::log(sum);
  }

  G* m_gate;
  std::tuple<E*...> m_experts;
  GateInput m_input;
  std::array<bool, K> m_trainable{};
  std::array<Matrix<S>, K> m_lp, m_dz;
  Matrix<S> m_features, m_prob, m_dw;
};

}  // namespace fedmoe
