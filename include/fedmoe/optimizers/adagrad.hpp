#pragma once
/// @file adagrad.hpp
/// @brief Adagrad (Duchi, Hazan & Singer 2011, "Adaptive Subgradient Methods for Online Learning and
/// Stochastic Optimization"), with optional first-moment momentum as in FedAdagrad (Reddi et al.
/// 2021, "Adaptive Federated Optimization", Algorithm 2):
///
///     m <- b1 m + (1 - b1) g                  (m = g when b1 = 0: no momentum, m is not kept)
///     v <- v + g^2
///     p <- p - lr * m / (sqrt(v) + eps)
///
/// starting from m = 0 and v = v0 (`initial_accumulator`). The defaults (lr 1e-2, b1 0, eps 1e-10,
/// v0 0) are plain Adagrad exactly as torch.optim.Adagrad (lr_decay 0, weight_decay 0):
/// p <- p - lr * g / (sqrt(v) + eps). FedAdagrad is Adagrad(eta, 0.9, tau, tau^2) applied to the
/// pseudo-gradient (federated/server_optimizer.hpp). No bias correction, as both papers.
///
/// State: `second` holds v; `first` holds m when b1 > 0 (left unused otherwise).
#include <cmath>

#include "optimizer.hpp"

namespace fedmoe {

template <class Scalar = float>
class Adagrad {
public:
  using scalar_type = Scalar;
  using state_type = OptimizerState<Scalar>;

  /// @param beta1 momentum of the first moment m (0: none, m = g).
  /// @param initial_accumulator v0, the value every entry of v starts from (>= 0).
  explicit Adagrad(double lr = 1e-2, double beta1 = 0.0, double eps = 1e-10, double initial_accumulator = 0.0)
      : m_lr(lr), m_b1(beta1), m_eps(eps), m_v0(initial_accumulator) {
    FEDMOE_CHECK(lr > 0, "Adagrad: expected lr > 0, got ", lr);
    FEDMOE_CHECK(beta1 >= 0 && beta1 < 1, "Adagrad: expected 0 <= beta1 < 1, got ", beta1);
    FEDMOE_CHECK(eps > 0, "Adagrad: expected eps > 0, got ", eps);
    FEDMOE_CHECK(initial_accumulator >= 0 && std::isfinite(initial_accumulator),
                 "Adagrad: expected a finite initial_accumulator >= 0, got ", initial_accumulator);
  }

  void step(Vector<Scalar>& params, const Vector<Scalar>& grads) {
    detail::check_step("Adagrad::step", params, grads, m_state, moments());
    if (m_state.steps == 0) {
      if (m_b1 != 0) m_state.first.setZero(params.size());
      m_state.second.setConstant(params.size(), Scalar(m_v0));
    }
    ++m_state.steps;
    const Scalar lr = Scalar(m_lr), b1 = Scalar(m_b1), eps = Scalar(m_eps);
    detail::for_each_chunk(params.size(), [&](Index start, Index len) {
      auto v = m_state.second.segment(start, len).array();
      auto p = params.segment(start, len).array();
      const auto g = grads.segment(start, len).array();
      v += g.square();
      if (m_b1 == 0) {
        p -= lr * g / (v.sqrt() + eps);
      } else {
        auto m = m_state.first.segment(start, len).array();
        m = b1 * m + (Scalar(1) - b1) * g;
        p -= lr * m / (v.sqrt() + eps);
      }
    });
  }

  void reset() { m_state = state_type{}; }
  const state_type& state() const { return m_state; }
  /// Refuses (with the state unchanged) steps < 0 or, with momentum and steps > 0, m and v of
  /// different sizes; step() checks them against the parameters.
  void set_state(const state_type& s) {
    detail::check_state("Adagrad::set_state", s, moments());
    m_state = s;
  }
  double learning_rate() const { return m_lr; }
  void set_learning_rate(double lr) { m_lr = lr; }

private:
  detail::MomentUse moments() const { return {m_b1 != 0 ? "m" : nullptr, "accumulator v"}; }

  double m_lr, m_b1, m_eps, m_v0;
  state_type m_state;
};

}  // namespace fedmoe
