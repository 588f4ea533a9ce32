#pragma once
/// @file yogi.hpp
/// @brief Yogi (Zaheer, Reddi, Sachan, Kale & Kumar 2018, "Adaptive Methods for Nonconvex
/// Optimization", NeurIPS, Algorithm 2):
///
///     m <- b1 m + (1 - b1) g
///     v <- v - (1 - b2) sign(v - g^2) g^2
///     p <- p - lr * m / (sqrt(v) + eps)
///
/// starting from m = 0 and v = v0 (`initial_second`). Unlike Adam's v <- v - (1 - b2)(v - g^2),
/// v changes by at most (1 - b2) g^2 and only in the direction of g^2: it grows where g^2 > v,
/// shrinks where g^2 < v, and stays where they are equal. No bias correction, as both papers'
/// algorithms. Defaults are the paper's (lr 1e-2, b1 0.9, b2 0.999, eps 1e-3, v0 1e-6).
/// FedYogi (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2) is
/// Yogi(eta, 0.9, 0.99, tau, tau^2) applied to the pseudo-gradient (federated/server_optimizer.hpp).
///
/// State: `first` holds m, `second` holds v.
#include <cmath>

#include "optimizer.hpp"

namespace fedmoe {

template <class Scalar = float>
class Yogi {
public:
  using scalar_type = Scalar;
  using state_type = OptimizerState<Scalar>;

  /// @param initial_second v0, the value every entry of v starts from (>= 0).
  explicit Yogi(double lr = 1e-2, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-3,
                double initial_second = 1e-6)
      : m_lr(lr), m_b1(beta1), m_b2(beta2), m_eps(eps), m_v0(initial_second) {
    FEDMOE_CHECK(lr > 0, "Yogi: expected lr > 0, got ", lr);
    FEDMOE_CHECK(beta1 >= 0 && beta1 < 1, "Yogi: expected 0 <= beta1 < 1, got ", beta1);
    FEDMOE_CHECK(beta2 >= 0 && beta2 < 1, "Yogi: expected 0 <= beta2 < 1, got ", beta2);
    FEDMOE_CHECK(eps > 0, "Yogi: expected eps > 0, got ", eps);
    FEDMOE_CHECK(initial_second >= 0 && std::isfinite(initial_second),
                 "Yogi: expected a finite initial_second >= 0, got ", initial_second);
  }

  void step(Vector<Scalar>& params, const Vector<Scalar>& grads) {
    detail::check_step("Yogi::step", params, grads, m_state, moments());
    if (m_state.steps == 0) {
      m_state.first.setZero(params.size());
      m_state.second.setConstant(params.size(), Scalar(m_v0));
    }
    ++m_state.steps;
    const Scalar lr = Scalar(m_lr), b1 = Scalar(m_b1), b2 = Scalar(m_b2), eps = Scalar(m_eps);
    detail::for_each_chunk(params.size(), [&](Index start, Index len) {
      auto m = m_state.first.segment(start, len).array();
      auto v = m_state.second.segment(start, len).array();
      auto p = params.segment(start, len).array();
      const auto g = grads.segment(start, len).array();
      m = b1 * m + (Scalar(1) - b1) * g;
      // v >= 0 stays so: where v < g^2 it grows; where v > g^2 it loses (1 - b2) g^2 < v.
      v -= (Scalar(1) - b2) * (v - g.square()).sign() * g.square();
      p -= lr * m / (v.sqrt() + eps);
    });
  }

  void reset() { m_state = state_type{}; }
  const state_type& state() const { return m_state; }
  /// Refuses (with the state unchanged) steps < 0 or, once steps > 0, m and v of different sizes;
  /// step() checks them against the parameters.
  void set_state(const state_type& s) {
    detail::check_state("Yogi::set_state", s, moments());
    m_state = s;
  }
  double learning_rate() const { return m_lr; }
  void set_learning_rate(double lr) { m_lr = lr; }

private:
  static detail::MomentUse moments() { return {"m", "v"}; }

  double m_lr, m_b1, m_b2, m_eps, m_v0;
  state_type m_state;
};

}  // namespace fedmoe
