#pragma once
/// @file server_optimizer.hpp
/// @brief Server optimizers for federated learning: FedAvg, FedAvgM, FedAdagrad, FedAdam, FedYogi
/// (Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar & McMahan 2021, "Adaptive Federated
/// Optimization", ICLR, Algorithm 2).
///
/// Each round the server aggregates the clients' deltas Delta = aggregate - x (x: the global model)
/// and treats the **pseudo-gradient**
///
///     g = x - aggregate = -Delta
///
/// as a gradient of an ordinary optimizer on x (any fedmoe Optimizer, here an AnyOptimizer):
///
///     fedavg      x <- x - lr g                                        (Sgd(lr); lr 1: x <- x + Delta)
///     fedavgm     b <- beta b + g (first round b = g);  x <- x - lr b  (Sgd(lr, beta), torch form;
///                 Hsu, Qi & Brown 2019, "Measuring the Effects of Non-Identical Data Distribution
///                 for Federated Visual Classification")
///     fedadagrad  m <- b1 m + (1-b1) g,  v <- v + g^2,                        x <- x - lr m / (sqrt(v) + tau)
///     fedadam     m <- b1 m + (1-b1) g,  v <- b2 v + (1-b2) g^2,              x <- x - lr m / (sqrt(v) + tau)
///     fedyogi     m <- b1 m + (1-b1) g,  v <- v - (1-b2) sign(v - g^2) g^2,   x <- x - lr m / (sqrt(v) + tau)
///
/// with m = 0 and v = tau^2 initially (Reddi et al.'s v_{-1} = tau^2) and no bias correction, as
/// Algorithm 2 (with g = -Delta, m and x's update are Algorithm 2's with the signs flipped; v is the
/// same). These are Adagrad(lr, b1, tau, tau^2), Adam(lr, b1, b2, tau, 0, false, tau^2) and
/// Yogi(lr, b1, b2, tau, tau^2).
///
/// Defaults (ServerOptimizerSpec) are Reddi et al.'s: b1 0.9, b2 0.99, tau 1e-3; FedAvgM's beta 0.9.
/// The server learning rate lr defaults to 1, which is FedAvg's and FedAvgM's usual value. For the
/// adaptive ones lr 1 is rarely right: the paper tunes eta over a grid in {1e-3, ..., 1} (and tau
/// over a grid as well), e.g. eta 1e-2 with tau 1e-3; the best values depend on the task. lr is
/// whatever the user passes, never changed here.
///
/// Note: with lr 1 FedAvg gives x + Delta, which is x - (x - aggregate) and not always bitwise the
/// aggregate; a server that must reproduce plain averaging bitwise can test is_plain_fedavg(spec)
/// and take the aggregate itself.
#include <array>
#include <cmath>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../optimizers/adagrad.hpp"
#include "../optimizers/adam.hpp"
#include "../optimizers/optimizer.hpp"
#include "../optimizers/sgd.hpp"
#include "../optimizers/yogi.hpp"

namespace fedmoe {

/// One of Sgd, Adagrad, Adam, Yogi chosen at run time; itself an Optimizer (step, reset, state,
/// set_state), dispatching to the one it holds. Default: FedAvg, Sgd(1).
template <class Scalar = float>
class AnyOptimizer {
public:
  using scalar_type = Scalar;
  using state_type = OptimizerState<Scalar>;
  using variant_type = std::variant<Sgd<Scalar>, Adagrad<Scalar>, Adam<Scalar>, Yogi<Scalar>>;

  AnyOptimizer() : m_opt(Sgd<Scalar>(1.0)) {}
  /// Holds `opt`, one of the variant's alternatives.
  template <class O>
    requires std::is_constructible_v<variant_type, O&&> &&
             (!std::is_same_v<std::remove_cvref_t<O>, AnyOptimizer>)
  AnyOptimizer(O&& opt) : m_opt(std::forward<O>(opt)) {}  // NOLINT(google-explicit-constructor)

  void step(Vector<Scalar>& params, const Vector<Scalar>& grads) {
    std::visit([&](auto& o) { o.step(params, grads); }, m_opt);
  }
  void reset() {
    std::visit([](auto& o) { o.reset(); }, m_opt);
  }
  const state_type& state() const {
    return std::visit([](const auto& o) -> const state_type& { return o.state(); }, m_opt);
  }
  void set_state(const state_type& s) {
    std::visit([&](auto& o) { o.set_state(s); }, m_opt);
  }
  double learning_rate() const {
    return std::visit([](const auto& o) { return o.learning_rate(); }, m_opt);
  }
  void set_learning_rate(double lr) {
    std::visit([&](auto& o) { o.set_learning_rate(lr); }, m_opt);
  }
  /// The optimizer held (std::get_if / std::holds_alternative on it).
  const variant_type& get() const { return m_opt; }

private:
  variant_type m_opt;
};

/// Which server optimizer, with its hyperparameters (Reddi et al. 2021 defaults). `momentum` is
/// FedAvgM's beta; beta1, beta2 and tau are the adaptive ones' (beta2 unused by FedAdagrad).
struct ServerOptimizerSpec {
  std::string name = "fedavg";
  double lr = 1;
  double momentum = 0.9;
  double beta1 = 0.9;
  double beta2 = 0.99;
  double tau = 1e-3;
};

/// The names make_server_optimizer accepts.
inline constexpr std::array<std::string_view, 5> server_optimizer_names = {"fedavg", "fedavgm", "fedadagrad",
                                                                           "fedadam", "fedyogi"};

/// Whether make_server_optimizer accepts `name` (for validating a command line).
inline bool server_optimizer_exists(std::string_view name) {
  for (std::string_view n : server_optimizer_names)
    if (n == name) return true;
  return false;
}

/// The valid names as "fedavg, fedavgm, ..." (for messages and --help).
inline std::string server_optimizer_list() {
  std::string out;
  for (std::string_view n : server_optimizer_names) {
    if (!out.empty()) out += ", ";
    out += n;
  }
  return out;
}

/// FedAvg with server learning rate 1: the update is x + Delta, the plain average of the clients.
inline bool is_plain_fedavg(const ServerOptimizerSpec& spec) { return spec.name == "fedavg" && spec.lr == 1; }

/// The server optimizer `spec` names (see the file comment for the update rules). An unknown name
/// fails listing the valid ones; so does a hyperparameter out of range (lr finite and > 0; for
/// fedavgm 0 <= momentum < 1; for the adaptive ones 0 <= beta1 < 1, 0 <= beta2 < 1 where used, and
/// tau finite and > 0), naming the spec's field. Fields a name does not use are not checked.
template <class Scalar = float>
AnyOptimizer<Scalar> make_server_optimizer(const ServerOptimizerSpec& spec) {
  const std::string& name = spec.name;
  const double tau = spec.tau;
  FEDMOE_CHECK(server_optimizer_exists(name), "make_server_optimizer: unknown server optimizer '", name,
               "', expected one of ", server_optimizer_list());
  FEDMOE_CHECK(spec.lr > 0 && std::isfinite(spec.lr), "make_server_optimizer('", name,
               "'): expected a finite lr > 0, got ", spec.lr);
  if (name == "fedavgm")
    FEDMOE_CHECK(spec.momentum >= 0 && spec.momentum < 1,
                 "make_server_optimizer('fedavgm'): expected 0 <= momentum < 1, got ", spec.momentum);
  if (name == "fedadagrad" || name == "fedadam" || name == "fedyogi") {
    FEDMOE_CHECK(spec.beta1 >= 0 && spec.beta1 < 1, "make_server_optimizer('", name,
                 "'): expected 0 <= beta1 < 1, got ", spec.beta1);
    FEDMOE_CHECK(name == "fedadagrad" || (spec.beta2 >= 0 && spec.beta2 < 1), "make_server_optimizer('", name,
                 "'): expected 0 <= beta2 < 1, got ", spec.beta2);
    FEDMOE_CHECK(tau > 0 && std::isfinite(tau), "make_server_optimizer('", name, "'): expected a finite tau > 0, got ",
                 tau);
  }
  if (name == "fedavg") return Sgd<Scalar>(spec.lr);
  if (name == "fedavgm") return Sgd<Scalar>(spec.lr, spec.momentum);
  if (name == "fedadagrad") return Adagrad<Scalar>(spec.lr, spec.beta1, tau, tau * tau);
  if (name == "fedadam")
    return Adam<Scalar>(spec.lr, spec.beta1, spec.beta2, tau, 0.0, /*bias_correction=*/false, tau * tau);
  if (name == "fedyogi") return Yogi<Scalar>(spec.lr, spec.beta1, spec.beta2, tau, tau * tau);
  FEDMOE_FAIL("make_server_optimizer: unknown server optimizer '", name, "'");  // unreachable: checked above
}

static_assert(Optimizer<AnyOptimizer<float>> && Optimizer<AnyOptimizer<double>>);

}  // namespace fedmoe
