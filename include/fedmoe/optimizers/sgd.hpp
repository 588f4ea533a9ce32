#pragma once
/// @file sgd.hpp
/// @brief Stochastic gradient descent with momentum, Nesterov momentum and weight decay,
/// exactly as torch.optim.SGD (dampening 0):
///
///     g <- g + wd * p
///     b <- g                 (first step)      b <- mu * b + g   (later steps)
///     d <- g + mu * b        (Nesterov)        d <- b            (otherwise; d = g if mu = 0)
///     p <- p - lr * d
///
/// With momentum 0 it keeps no state but the step count (`first` stays as it is, unused).
/// The federated server optimizers FedAvg (lr = server learning rate) and FedAvgM (Hsu et al. 2019,
/// "Measuring the Effects of Non-Identical Data Distribution for Federated Visual Classification")
/// are this rule applied to the pseudo-gradient (federated/server_optimizer.hpp).
#include "optimizer.hpp"

namespace fedmoe {

template <class Scalar = float>
class Sgd {
public:
  using scalar_type = Scalar;
  using state_type = OptimizerState<Scalar>;

  explicit Sgd(double lr = 0.01, double momentum = 0.0, bool nesterov = false, double weight_decay = 0.0)
      : m_lr(lr), m_mu(momentum), m_nesterov(nesterov), m_wd(weight_decay) {
    FEDMOE_CHECK(lr > 0, "Sgd: expected lr > 0, got ", lr);
    FEDMOE_CHECK(momentum >= 0, "Sgd: expected momentum >= 0, got ", momentum);
    FEDMOE_CHECK(weight_decay >= 0, "Sgd: expected weight_decay >= 0, got ", weight_decay);
    FEDMOE_CHECK(!nesterov || momentum > 0, "Sgd: Nesterov needs momentum > 0, got ", momentum);
  }

  void step(Vector<Scalar>& params, const Vector<Scalar>& grads) {
    detail::check_step("Sgd::step", params, grads, m_state, moments());
    const Scalar lr = Scalar(m_lr), mu = Scalar(m_mu), wd = Scalar(m_wd);
    if (m_mu == 0) {
      if (m_wd == 0) params.noalias() -= lr * grads;
      else params.array() -= lr * (grads.array() + wd * params.array());
    } else {
      auto& b = m_state.first;
      if (m_state.steps == 0) b.resize(params.size());
      for (Index i = 0; i < params.size(); ++i) {
        const Scalar g = grads[i] + wd * params[i];
        b[i] = m_state.steps == 0 ? g : mu * b[i] + g;
        params[i] -= lr * (m_nesterov ? g + mu * b[i] : b[i]);
      }
    }
    ++m_state.steps;
  }

  void reset() { m_state = state_type{}; }
  const state_type& state() const { return m_state; }
  /// Refuses (with the state unchanged) a state with steps < 0; step() checks the sizes.
  void set_state(const state_type& s) {
    detail::check_state("Sgd::set_state", s, moments());
    m_state = s;
  }
  double learning_rate() const { return m_lr; }
  void set_learning_rate(double lr) { m_lr = lr; }

private:
  detail::MomentUse moments() const { return {m_mu != 0 ? "momentum buffer" : nullptr, nullptr}; }

  double m_lr, m_mu;
  bool m_nesterov;
  double m_wd;
  state_type m_state;
};

}  // namespace fedmoe
