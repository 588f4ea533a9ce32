// Server optimizers (federated/server_optimizer.hpp): FedAvg, FedAvgM, FedAdagrad, FedAdam and FedYogi
// against Reddi et al. 2021 (Algorithm 2) and Hsu et al. 2019, computed by hand in double.
#include <catch2/catch.hpp>

#include <cmath>
#include <sstream>
#include <string>
#include <variant>

#include <fedmoe/federated/server_optimizer.hpp>
#include <fedmoe/io/serialization.hpp>

#include "hand_computed.hpp"

using namespace fedmoe;
using Catch::Matchers::Contains;

namespace {

using test::check_close;
using test::vec;

/// Three rounds of aggregated client deltas Delta = aggregate - x on a 3-parameter model.
const Vector<double> deltas[3] = {vec({0.5, -1.0, 0.2}), vec({0.3, 0.8, -0.4}), vec({0.02, -0.05, 0.1})};
const Vector<double> x0 = vec({1.0, -2.0, 0.5});

/// The server's step: the pseudo-gradient g = x - aggregate = -Delta, given to the optimizer.
template <class S>
void server_round(AnyOptimizer<S>& opt, Vector<S>& x, const Vector<double>& delta) {
  const Vector<S> g = (-delta).cast<S>();
  opt.step(x, g);
}

static_assert(Optimizer<AnyOptimizer<float>> && Optimizer<AnyOptimizer<double>>);

}  // namespace

TEMPLATE_TEST_CASE("fedavg with server lr 1 gives x + Delta exactly", "[federated][server_optimizer]", float, double) {
  using S = TestType;
  const ServerOptimizerSpec spec;  // the defaults: fedavg, lr 1
  CHECK(spec.name == "fedavg");
  CHECK(is_plain_fedavg(spec));
  AnyOptimizer<S> opt = make_server_optimizer<S>(spec);
  CHECK(std::holds_alternative<Sgd<S>>(opt.get()));
  CHECK(opt.learning_rate() == 1.0);
  // Values that round: x + Delta is not exact in S, yet x - 1 * (-Delta) is bitwise it.
  Vector<S> x = vec({0.1, -0.7, 3.3}).cast<S>();
  const Vector<S> round_deltas[3] = {vec({0.2, 0.05, -1e-3}).cast<S>(), vec({1.0 / 3, -0.3, 7e-5}).cast<S>(),
                                     vec({-0.11, 0.013, 2.9}).cast<S>()};
  for (int t = 0; t < 3; ++t) {  // several rounds: Sgd without momentum used to throw on the second
    const Vector<S> expected = x + round_deltas[t];
    const Vector<S> g = -round_deltas[t];
    opt.step(x, g);
    INFO("round " << t + 1);
    CHECK(x == expected);
  }
  CHECK(opt.state().steps == 3);
  CHECK(opt.state().first.size() == 0);  // FedAvg keeps no moment

  // A server lr scales the step: x <- x + lr Delta.
  AnyOptimizer<S> half = make_server_optimizer<S>({.name = "fedavg", .lr = 0.5});
  CHECK_FALSE(is_plain_fedavg({.name = "fedavg", .lr = 0.5}));
  CHECK_FALSE(is_plain_fedavg({.name = "fedavgm"}));
  Vector<S> y = x0.cast<S>();
  server_round(half, y, deltas[0]);
  check_close(y, x0 + 0.5 * deltas[0]);
  // The default-constructed AnyOptimizer is FedAvg with lr 1.
  AnyOptimizer<S> fallback;
  CHECK(std::holds_alternative<Sgd<S>>(fallback.get()));
  CHECK(fallback.learning_rate() == 1.0);
}

TEMPLATE_TEST_CASE("fedavgm is server momentum: b <- beta b + g, x <- x - lr b", "[federated][server_optimizer]", float,
                   double) {
  using S = TestType;
  for (const ServerOptimizerSpec& spec :
       {ServerOptimizerSpec{.name = "fedavgm"}, ServerOptimizerSpec{.name = "fedavgm", .lr = 0.5, .momentum = 0.7}}) {
    INFO("lr " << spec.lr << ", momentum " << spec.momentum);
    AnyOptimizer<S> opt = make_server_optimizer<S>(spec);
    Vector<S> x = x0.cast<S>();
    Vector<double> q = x0, b = Vector<double>::Zero(3);
    for (int t = 0; t < 3; ++t) {
      server_round(opt, x, deltas[t]);
      const Vector<double> g = -deltas[t];
      b = t == 0 ? g : Vector<double>(spec.momentum * b + g);  // first round: b = g
      q -= spec.lr * b;
      INFO("round " << t + 1);
      check_close(x, q);
      check_close(opt.state().first, b);
    }
  }
  // With no history, the first round equals FedAvg's.
  AnyOptimizer<double> m = make_server_optimizer<double>({.name = "fedavgm"});
  AnyOptimizer<double> a = make_server_optimizer<double>({});
  Vector<double> xm = x0, xa = x0;
  server_round(m, xm, deltas[0]);
  server_round(a, xa, deltas[0]);
  CHECK(xm == xa);
}

TEMPLATE_TEST_CASE("fedadagrad, fedadam and fedyogi follow Reddi et al.'s Algorithm 2", "[federated][server_optimizer]",
                   float, double) {
  using S = TestType;
  // Algorithm 2 in the paper's own terms (Delta, not the pseudo-gradient): m_{-1} = 0, v_{-1} = tau^2,
  //   m <- b1 m + (1 - b1) Delta
  //   v <- v + Delta^2                               (FedAdagrad)
  //   v <- b2 v + (1 - b2) Delta^2                   (FedAdam: no bias correction)
  //   v <- v - (1 - b2) Delta^2 sign(v - Delta^2)    (FedYogi)
  //   x <- x + eta m / (sqrt(v) + tau)
  // The optimizers see g = -Delta: their m is -m, their v is v.
  const auto sign = [](double x) { return double((x > 0) - (x < 0)); };
  for (const char* name : {"fedadagrad", "fedadam", "fedyogi"}) {
    for (ServerOptimizerSpec spec : {ServerOptimizerSpec{.lr = 1.0},  // Reddi's b1 0.9, b2 0.99, tau 1e-3
                                     ServerOptimizerSpec{.lr = 0.3, .beta1 = 0.8, .beta2 = 0.95, .tau = 0.1},
                                     ServerOptimizerSpec{.lr = 0.01, .beta1 = 0.9, .beta2 = 0.99, .tau = 1e-3}}) {
      spec.name = name;
      const double eta = spec.lr, b1 = spec.beta1, b2 = spec.beta2, tau = spec.tau;
      INFO(name << ": eta " << eta << ", beta1 " << b1 << ", beta2 " << b2 << ", tau " << tau);
      AnyOptimizer<S> opt = make_server_optimizer<S>(spec);
      CHECK(opt.learning_rate() == eta);
      Vector<S> x = x0.cast<S>();
      Vector<double> q = x0, m = Vector<double>::Zero(3), v = Vector<double>::Constant(3, tau * tau);
      for (int t = 0; t < 3; ++t) {
        server_round(opt, x, deltas[t]);
        for (Index i = 0; i < 3; ++i) {
          const double d = deltas[t][i];
          m[i] = b1 * m[i] + (1 - b1) * d;
          if (std::string(name) == "fedadagrad") v[i] = v[i] + d * d;
          else if (std::string(name) == "fedadam") v[i] = b2 * v[i] + (1 - b2) * d * d;
          else v[i] = v[i] - (1 - b2) * d * d * sign(v[i] - d * d);
          q[i] = q[i] + eta * m[i] / (std::sqrt(v[i]) + tau);
        }
        INFO("round " << t + 1);
        check_close(x, q);
        check_close(opt.state().first, Vector<double>(-m));
        check_close(opt.state().second, v);
        CHECK(opt.state().steps == t + 1);
      }
    }
  }
}

TEST_CASE("each server optimizer name makes the optimizer Reddi et al. describe", "[federated][server_optimizer]") {
  CHECK(std::holds_alternative<Sgd<float>>(make_server_optimizer<float>({.name = "fedavg"}).get()));
  CHECK(std::holds_alternative<Sgd<float>>(make_server_optimizer<float>({.name = "fedavgm"}).get()));
  CHECK(std::holds_alternative<Adagrad<float>>(make_server_optimizer<float>({.name = "fedadagrad"}).get()));
  const AnyOptimizer<float> fedadam = make_server_optimizer<float>({.name = "fedadam"});
  REQUIRE(std::holds_alternative<Adam<float>>(fedadam.get()));
  CHECK_FALSE(std::get<Adam<float>>(fedadam.get()).bias_correction());
  CHECK(std::holds_alternative<Yogi<float>>(make_server_optimizer<float>({.name = "fedyogi"}).get()));
  // FedAdam differs from (bias-corrected) Adam from the first round on with these betas.
  AnyOptimizer<double> reddi = make_server_optimizer<double>({.name = "fedadam", .lr = 0.1, .beta2 = 0.95});
  Adam<double> corrected(0.1, 0.9, 0.95, 1e-3, 0.0, true, 1e-6);
  Vector<double> a = x0, b = x0;
  const Vector<double> g = -deltas[0];
  reddi.step(a, g);
  corrected.step(b, g);
  CHECK((a - b).cwiseAbs().minCoeff() > 1e-3);
}

TEMPLATE_TEST_CASE("server optimizer states round-trip bitwise through state()/set_state and optimizer files",
                   "[federated][server_optimizer]", float, double) {
  using S = TestType;
  for (std::string_view name : server_optimizer_names) {
    const ServerOptimizerSpec spec{.name = std::string(name), .lr = 0.3, .momentum = 0.8, .beta1 = 0.8, .tau = 0.01};
    INFO(spec.name);
    AnyOptimizer<S> a = make_server_optimizer<S>(spec);
    Vector<S> x = x0.cast<S>();
    server_round(a, x, deltas[0]);
    server_round(a, x, deltas[1]);
    AnyOptimizer<S> b = make_server_optimizer<S>(spec), c = make_server_optimizer<S>(spec);
    b.set_state(a.state());
    std::stringstream file;
    save_optimizer(file, a);
    load_optimizer(file, c, 3);
    Vector<S> xa = x, xb = x, xc = x;
    server_round(a, xa, deltas[2]);
    server_round(b, xb, deltas[2]);
    server_round(c, xc, deltas[2]);
    CHECK(xa == xb);
    CHECK(xa == xc);
    CHECK(a.state().first == b.state().first);
    CHECK(a.state().second == c.state().second);
    CHECK(c.state().steps == 3);
    CHECK(xa != x);  // the third round did move x
    // reset() forgets the state: the next round is a first round again.
    b.reset();
    CHECK(b.state().steps == 0);
    Vector<S> fresh = x0.cast<S>(), again = x0.cast<S>();
    AnyOptimizer<S> d = make_server_optimizer<S>(spec);
    server_round(b, fresh, deltas[0]);
    server_round(d, again, deltas[0]);
    CHECK(fresh == again);
  }
}

TEST_CASE("AnyOptimizer dispatches learning rates and refuses inconsistent states", "[federated][server_optimizer]") {
  AnyOptimizer<double> opt = make_server_optimizer<double>({.name = "fedyogi", .lr = 0.01});
  opt.set_learning_rate(0.5);
  CHECK(opt.learning_rate() == 0.5);
  CHECK(std::get<Yogi<double>>(opt.get()).learning_rate() == 0.5);
  OptimizerState<double> bad;
  bad.first = Vector<double>::Zero(3);
  bad.steps = 4;
  CHECK_THROWS_WITH(opt.set_state(bad), Contains("Yogi::set_state: inconsistent optimizer state after 4 steps"));
  bad.second = Vector<double>::Zero(2);
  bad.first = Vector<double>::Zero(2);
  opt.set_state(bad);
  Vector<double> x = x0;
  CHECK_THROWS_WITH(opt.step(x, -deltas[0]), Contains("Yogi::step: the optimizer state has size 2 in 'first' (m)") &&
                                                 Contains("expected 3"));
  CHECK(x == x0);
}

TEST_CASE("unknown server optimizer names and bad hyperparameters are rejected", "[federated][server_optimizer][errors]") {
  for (const char* name : {"fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi"}) CHECK(server_optimizer_exists(name));
  for (const char* name : {"", "FedAvg", "fedsgd", "adam", "fedadam "}) {
    INFO("'" << name << "'");
    CHECK_FALSE(server_optimizer_exists(name));
    CHECK_THROWS_WITH(make_server_optimizer<float>({.name = name}),
                      Contains("make_server_optimizer: unknown server optimizer '" + std::string(name) + "'") &&
                          Contains("expected one of fedavg, fedavgm, fedadagrad, fedadam, fedyogi"));
  }
  CHECK(server_optimizer_list() == "fedavg, fedavgm, fedadagrad, fedadam, fedyogi");
  CHECK_THROWS_WITH(make_server_optimizer<float>({.name = "fedavg", .lr = 0}),
                    Contains("make_server_optimizer('fedavg'): expected a finite lr > 0, got 0"));
  CHECK_THROWS_WITH(make_server_optimizer<float>({.name = "fedadam", .lr = -0.5}), Contains("lr > 0, got -0.5"));
  CHECK_THROWS_WITH(make_server_optimizer<float>({.name = "fedavgm", .momentum = 1.0}),
                    Contains("make_server_optimizer('fedavgm'): expected 0 <= momentum < 1, got 1"));
  CHECK_THROWS_WITH(make_server_optimizer<float>({.name = "fedyogi", .beta1 = -0.1}),
                    Contains("make_server_optimizer('fedyogi'): expected 0 <= beta1 < 1, got -0.1"));
  CHECK_THROWS_WITH(make_server_optimizer<float>({.name = "fedadam", .beta2 = 1.0}),
                    Contains("make_server_optimizer('fedadam'): expected 0 <= beta2 < 1, got 1"));
  CHECK_THROWS_WITH(make_server_optimizer<float>({.name = "fedadagrad", .tau = 0}),
                    Contains("make_server_optimizer('fedadagrad'): expected a finite tau > 0, got 0"));
  // Fields a name does not use are not checked.
  CHECK_NOTHROW(make_server_optimizer<float>({.name = "fedavg", .momentum = 5, .tau = -1}));
  CHECK_NOTHROW(make_server_optimizer<float>({.name = "fedadagrad", .beta2 = 2}));
}
