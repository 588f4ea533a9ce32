#pragma once
/// @file label_shift_gate.hpp
/// @brief A gate trunk with one parameter per expert, from label shift: how much more likely an input
/// is under the client's distribution than under the federation's, read off the experts' predictions.
///
/// Under label shift the class-conditional p(x|y) is the same for every client and only the class
/// priors differ (the majority-class and Dirichlet partitions are exactly this). The density ratio
/// of the client's inputs to the federation's is then (Saerens et al. 2002; Lipton et al. 2018)
///
///     r(x) = p_local(x) / p_fed(x) = sum_c p_fed(c|x) pi_local(c) / pi_fed(c),
///
/// with p_fed(c|x) the global model's prediction. An expert trained under the client's prior (a
/// fine-tuned copy, a specialist) estimates the same ratio from its own prediction p_loc(c|x), since
/// p_fed(c|x) is proportional to p_loc(c|x) / w_c:  r(x) = 1 / sum_c p_loc(c|x) / w_c. The trunk reads a
/// mixture's stacked expert log-probabilities (GateInput::expert_log_probs) and outputs
///
///     h(x) = sigmoid(sum_k a_k log r_k(x) + b),
///     log r_k = logsumexp_c(log p_k(c|x) + log w_c)     (expert k trained under the federation's prior)
///     log r_k = -logsumexp_c(log p_k(c|x) - log w_c)    (under the client's),
///
/// with w_c = pi_local(c) / pi_fed(c) given at construction (the client's own label histogram,
/// smoothed, over the federation's prior). At a_k = 1/K, b = 0 (init) h is the posterior that x came
/// from the client's distribution when both are equally likely a priori, from the experts' mean log
/// ratio; training a and b on held-out data calibrates it. K + 1 parameters cannot overfit a hundred
/// samples, where a gate on pixels (thousands of weights) learns a constant.
///
/// Backward, with s_kc the softmax inside log r_k and dz = dL/dh h (1 - h):
///     dL/da_k = sum_j dz_j log r_kj,   dL/db = sum_j dz_j,   dL/d log p_k(c|x_j) = +-dz_j a_k s_kcj.
#include <cmath>
#include <vector>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../core/tensor.hpp"

namespace fedmoe {

/// Which prior an expert's predictions were trained under: the federation's (the global model) or the
/// client's own (a specialist, a fine-tuned copy).
enum class ExpertPrior { federation, client };

template <class Scalar = float>
class LabelShiftGate {
public:
  using scalar_type = Scalar;
  using S = Scalar;

  /// `log_weights[c]` = log(pi_local(c) / pi_fed(c)), finite; `priors[k]`: expert k's training prior. The
  /// trunk reads K x C values (K = priors.size()) and has K + 1 parameters (a_1..a_K, b).
  LabelShiftGate(const std::vector<ExpertPrior>& priors, const std::vector<double>& log_weights)
      : m_priors(priors), m_classes(Index(log_weights.size())), m_lw(m_classes),
        m_params(Index(priors.size()) + 1), m_grads(Index(priors.size()) + 1) {
    FEDMOE_CHECK(!priors.empty() && m_classes >= 1, "LabelShiftGate: expected >= 1 expert and >= 1 class, got ",
                 priors.size(), " and ", m_classes);
    for (Index c = 0; c < m_classes; ++c) {
      FEDMOE_CHECK(std::isfinite(log_weights[std::size_t(c)]), "LabelShiftGate: expected finite log weights, got ",
                   log_weights[std::size_t(c)], " for class ", c);
      m_lw[c] = S(log_weights[std::size_t(c)]);
    }
    Rng unused(0);
    init(unused);
    m_grads.setZero();
  }

  /// log(pi_local(c) / pi_fed(c)) from a client's label counts, add-one smoothed (a class the client
  /// never saw keeps a small weight), against a uniform federation prior 1 / C.
  static std::vector<double> log_weights_from_counts(const std::vector<double>& counts) {
    double n = 0;
    for (double k : counts) {
      FEDMOE_CHECK(k >= 0 && std::isfinite(k), "LabelShiftGate: expected counts >= 0, got ", k);
      n += k;
    }
    const double c = double(counts.size());
    std::vector<double> lw;
    for (double k : counts) lw.push_back(std::log((k + 1) / (n + c)) - std::log(1 / c));
    return lw;
  }

  Index experts() const { return Index(m_priors.size()); }
  Index num_params() const { return experts() + 1; }
  Index input_size() const { return experts() * m_classes; }
  Index output_size() const { return 1; }
  Shape input_shape() const { return Shape{input_size(), 1, 1}; }
  Vector<S>& parameters() { return m_params; }
  const Vector<S>& parameters() const { return m_params; }
  Vector<S>& gradients() { return m_grads; }
  const Vector<S>& gradients() const { return m_grads; }
  /// Every a_k equal, summing to 1, and b = 0: the label-shift posterior from the experts' mean log
  /// ratio (nothing random).
  void init(Rng&) {
    m_params.setConstant(S(1) / S(experts()));
    m_params[experts()] = S(0);
  }

  const Matrix<S>& forward(const Matrix<S>& x, Mode = Mode::eval, Rng* = nullptr) {
    FEDMOE_CHECK(x.rows() == input_size(), "LabelShiftGate: expected input with ", input_size(),
                 " rows (the experts' stacked log-probabilities), got ", x.rows());
    const Index n = x.cols(), c = m_classes, k_n = experts();
    m_logr.resize(k_n, n);
    m_soft.resize(k_n * c, n);
    m_h.resize(1, n);
    for (Index k = 0; k < k_n; ++k) {
      // federation prior: log r = lse(log p + log w); client prior: log r = -lse(log p - log w)
      const S sign = m_priors[std::size_t(k)] == ExpertPrior::federation ? S(1) : S(-1);
      for (Index j = 0; j < n; ++j) {
        auto s = m_soft.col(j).segment(k * c, c);
        s = x.col(j).segment(k * c, c) + sign * m_lw;
        const S mx = s.maxCoeff();
        s = (s.array() - mx).exp();
        const S sum = s.sum();
        s /= sum;
        m_logr(k, j) = sign * (mx + std::log(sum));
      }
    }
    for (Index j = 0; j < n; ++j) {
      const S z = m_params.head(k_n).dot(m_logr.col(j)) + m_params[k_n];
      m_h(0, j) = S(1) / (S(1) + std::exp(-z));
    }
    return m_h;
  }
  const Matrix<S>& forward(const Matrix<S>& x, Mode mode, Rng& rng) { return forward(x, mode, &rng); }

  const Matrix<S>& backward(const Matrix<S>& x, const Matrix<S>& dy, bool input_grad = false) {
    FEDMOE_CHECK(dy.rows() == 1 && dy.cols() == m_h.cols(), "LabelShiftGate::backward: expected dy of shape 1x",
                 m_h.cols(), ", got ", dy.rows(), "x", dy.cols());
    const Index k_n = experts(), c = m_classes;
    const Matrix<S> dz = dy.array() * m_h.array() * (S(1) - m_h.array());
    for (Index k = 0; k < k_n; ++k) m_grads[k] = (dz.array() * m_logr.row(k).array()).sum();
    m_grads[k_n] = dz.sum();
    if (!input_grad) {
      m_dx.resize(0, 0);
      return m_dx;
    }
    m_dx.resize(x.rows(), x.cols());
    for (Index k = 0; k < k_n; ++k) {  // d log r_k / d log p_k(c) = s_kc (federation prior) or -s_kc (client's)
      const S sign = m_priors[std::size_t(k)] == ExpertPrior::federation ? S(1) : S(-1);
      m_dx.middleRows(k * c, c) =
          (m_soft.middleRows(k * c, c).array().rowwise() * (dz.array() * (sign * m_params[k])).row(0)).matrix();
    }
    return m_dx;
  }

private:
  std::vector<ExpertPrior> m_priors;
  Index m_classes;
  Vector<S> m_lw, m_params, m_grads;
  Matrix<S> m_logr, m_soft, m_h, m_dx;
};

}  // namespace fedmoe
