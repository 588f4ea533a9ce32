#pragma once
/// @file adam.hpp
/// @brief Adam (Kingma & Ba 2015) and AdamW (Loshchilov & Hutter 2019), by default exactly as
/// torch.optim.Adam / AdamW:
///
///     t <- t + 1
///     g <- g + wd * p                      (Adam's coupled L2; AdamW instead: p <- p (1 - lr wd))
///     m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
///     p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
///
/// starting from m = 0 and v = v0 (`initial_second`, default 0). The step counter t advances once
/// per step, for the whole vector.
///
/// With `bias_correction = false` the two factors 1 - b^t are dropped:
///
///     p <- p - lr * m / (sqrt(v) + eps)
///
/// which, with v0 = tau^2 and eps = tau, is the server update of FedAdam (Reddi et al. 2021,
/// "Adaptive Federated Optimization", Algorithm 2; see federated/server_optimizer.hpp).
#include <cmath>

#include "optimizer.hpp"

namespace fedmoe {

template <class Scalar = float, bool Decoupled = false>
class AdamBase {
public:
  using scalar_type = Scalar;
  using state_type = OptimizerState<Scalar>;

  /// @param initial_second v0, the value every entry of v starts from (>= 0).
  explicit AdamBase(double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8,
                    double weight_decay = Decoupled ? 1e-2 : 0.0, bool bias_correction = true,
                    double initial_second = 0.0)
      : m_lr(lr), m_b1(beta1), m_b2(beta2), m_eps(eps), m_wd(weight_decay), m_v0(initial_second),
        m_bias_correction(bias_correction) {
    FEDMOE_CHECK(lr > 0, "Adam: expected lr > 0, got ", lr);
    FEDMOE_CHECK(beta1 >= 0 && beta1 < 1, "Adam: expected 0 <= beta1 < 1, got ", beta1);
    FEDMOE_CHECK(beta2 >= 0 && beta2 < 1, "Adam: expected 0 <= beta2 < 1, got ", beta2);
    FEDMOE_CHECK(eps > 0, "Adam: expected eps > 0, got ", eps);
    FEDMOE_CHECK(weight_decay >= 0, "Adam: expected weight_decay >= 0, got ", weight_decay);
    FEDMOE_CHECK(initial_second >= 0 && std::isfinite(initial_second),
                 "Adam: expected a finite initial_second >= 0, got ", initial_second);
  }

  void step(Vector<Scalar>& params, const Vector<Scalar>& grads) {
    detail::check_step(who(), params, grads, m_state, moments());
    if (m_state.steps == 0) {
      m_state.first.setZero(params.size());
      m_state.second.setConstant(params.size(), Scalar(m_v0));
    }
    const std::int64_t t = ++m_state.steps;
    const Scalar b1 = Scalar(m_b1), b2 = Scalar(m_b2), wd = Scalar(m_wd), eps = Scalar(m_eps);
    const Scalar step_size = m_bias_correction ? Scalar(m_lr / (1.0 - std::pow(m_b1, double(t)))) : Scalar(m_lr);
    const Scalar bc2_sqrt = m_bias_correction ? Scalar(std::sqrt(1.0 - std::pow(m_b2, double(t)))) : Scalar(1);
    // One pass over the vector in L1-sized chunks: each chunk's m, v and p updates run back to back while
    // the chunk is cache-resident, instead of three sweeps that stream p, g, m and v through memory
    // (the MLP's vectors are 2.5 MB together, more than L2). Every element sees exactly the same
    // expressions as before, in the same order, so the result is bitwise unchanged. Without bias
    // correction, step_size = lr and sqrt(v) / 1 = sqrt(v) exactly.
    detail::for_each_chunk(params.size(), [&](Index start, Index len) {
      auto m = m_state.first.segment(start, len).array();
      auto v = m_state.second.segment(start, len).array();
      auto p = params.segment(start, len).array();
      const auto g = grads.segment(start, len).array();
      if constexpr (Decoupled) {
        if (m_wd != 0) p *= Scalar(1) - Scalar(m_lr) * wd;
        m = b1 * m + (Scalar(1) - b1) * g;
        v = b2 * v + (Scalar(1) - b2) * g.square();
      } else if (m_wd != 0) {
        m = b1 * m + (Scalar(1) - b1) * (g + wd * p);
        v = b2 * v + (Scalar(1) - b2) * (g + wd * p).square();
      } else {
        m = b1 * m + (Scalar(1) - b1) * g;
        v = b2 * v + (Scalar(1) - b2) * g.square();
      }
      p -= step_size * m / (v.sqrt() / bc2_sqrt + eps);
    });
  }

  void reset() { m_state = state_type{}; }
  const state_type& state() const { return m_state; }
  /// Refuses (with the state unchanged) steps < 0 or, once steps > 0, m and v of different sizes;
  /// step() checks them against the parameters.
  void set_state(const state_type& s) {
    detail::check_state(Decoupled ? "AdamW::set_state" : "Adam::set_state", s, moments());
    m_state = s;
  }
  double learning_rate() const { return m_lr; }
  void set_learning_rate(double lr) { m_lr = lr; }
  bool bias_correction() const { return m_bias_correction; }

private:
  static const char* who() { return Decoupled ? "AdamW::step" : "Adam::step"; }
  static detail::MomentUse moments() { return {"m", "v"}; }

  double m_lr, m_b1, m_b2, m_eps, m_wd, m_v0;
  bool m_bias_correction;
  state_type m_state;
};

template <class Scalar = float> using Adam = AdamBase<Scalar, false>;
template <class Scalar = float> using AdamW = AdamBase<Scalar, true>;

}  // namespace fedmoe
