// Optimizers against hand-computed updates (PyTorch's formulas), state save/restore, training smoke.
#include <catch2/catch.hpp>

#include <cmath>
#include <fedmoe/core/rng.hpp>
#include <fedmoe/losses/cross_entropy.hpp>
#include <fedmoe/models/paper.hpp>
#include <fedmoe/optimizers/adagrad.hpp>
#include <fedmoe/optimizers/adam.hpp>
#include <fedmoe/optimizers/sgd.hpp>
#include <fedmoe/optimizers/yogi.hpp>
#include <string>

#include "hand_computed.hpp"

using namespace fedmoe;

namespace {
using test::check_close;
using test::tolerance;
using test::vec;
using test::vec_as;

static_assert(Optimizer<Sgd<float>> && Optimizer<Adam<double>> && Optimizer<AdamW<float>>);
static_assert(Optimizer<Adagrad<float>> && Optimizer<Adagrad<double>>);
static_assert(Optimizer<Yogi<float>> && Optimizer<Yogi<double>>);
}  // namespace

TEST_CASE("Adam matches hand-computed steps, bias correction included", "[optimizers]") {
  const double lr = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  Adam<double> adam(lr, b1, b2, eps);
  Vector<double> p = vec({1.0, -2.0});
  const Vector<double> grads[3] = {vec({0.5, -1.0}), vec({0.1, 2.0}), vec({-0.3, 0.0})};
  double m[2] = {0, 0}, v[2] = {0, 0}, q[2] = {1.0, -2.0};
  for (int t = 1; t <= 3; ++t) {
    adam.step(p, grads[t - 1]);
    for (int i = 0; i < 2; ++i) {
      const double g = grads[t - 1][i];
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      const double mhat = m[i] / (1 - std::pow(b1, t)), vhat = v[i] / (1 - std::pow(b2, t));
      q[i] -= lr * mhat / (std::sqrt(vhat) + eps);
    }
    CHECK(p[0] == Approx(q[0]).epsilon(1e-12));
    CHECK(p[1] == Approx(q[1]).epsilon(1e-12));
  }
  CHECK(adam.state().steps == 3);
  // First step of Adam moves each coordinate by ~lr * sign(g).
  Adam<double> fresh(lr);
  Vector<double> r = vec({0.0});
  fresh.step(r, vec({123.0}));
  CHECK(r[0] == Approx(-lr).epsilon(1e-6));
}

TEST_CASE("AdamW decouples weight decay, Adam couples it", "[optimizers]") {
  const double lr = 0.01, wd = 0.5;
  AdamW<double> adamw(lr, 0.9, 0.999, 1e-8, wd);
  Vector<double> p = vec({2.0});
  adamw.step(p, vec({0.0}));  // zero gradient: only the decay acts
  CHECK(p[0] == Approx(2.0 * (1 - lr * wd)).epsilon(1e-14));
  Adam<double> adam(lr, 0.9, 0.999, 1e-8, wd);
  Vector<double> q = vec({2.0});
  adam.step(q, vec({0.0}));  // coupled: g = wd * p = 1, first Adam step moves by lr
  CHECK(q[0] == Approx(2.0 - lr).epsilon(1e-6));
}

TEMPLATE_TEST_CASE("Adam's chunked update equals the whole-vector update bitwise", "[optimizers]", float, double) {
  using S = TestType;
  // Adam updates the vector chunk by chunk (m, v and p per chunk while it is cache-resident); every
  // element must still see the whole-vector expressions exactly. 2,500 parameters: two full chunks
  // and a partial one. Coupled decay, decoupled decay (AdamW) and none.
  const Index n = 2500;
  Rng rng(5);
  Vector<S> p0(n);
  for (Index i = 0; i < n; ++i) p0[i] = rng.uniform<S>(S(-1), S(1));
  for (double wd : {0.0, 0.01}) {
    for (bool decoupled : {false, true}) {
      Vector<S> p = p0, q = p0, m = Vector<S>::Zero(n), v = Vector<S>::Zero(n);
      AdamBase<S, false> adam(1e-3, 0.9, 0.999, 1e-8, wd);
      AdamBase<S, true> adamw(1e-3, 0.9, 0.999, 1e-8, wd);
      for (int t = 1; t <= 3; ++t) {
        Vector<S> g(n);
        for (Index i = 0; i < n; ++i) g[i] = rng.uniform<S>(S(-1), S(1));
        if (decoupled) adamw.step(p, g);
        else adam.step(p, g);
        // The reference: the same expressions on whole vectors.
        const S b1 = S(0.9), b2 = S(0.999), eps = S(1e-8), w = S(wd);
        const S step_size = S(1e-3 / (1.0 - std::pow(0.9, double(t))));
        const S bc2_sqrt = S(std::sqrt(1.0 - std::pow(0.999, double(t))));
        if (decoupled) {
          if (wd != 0) q.array() *= S(1) - S(1e-3) * w;
          m.array() = b1 * m.array() + (S(1) - b1) * g.array();
          v.array() = b2 * v.array() + (S(1) - b2) * g.array().square();
        } else if (wd != 0) {
          m.array() = b1 * m.array() + (S(1) - b1) * (g.array() + w * q.array());
          v.array() = b2 * v.array() + (S(1) - b2) * (g.array() + w * q.array()).square();
        } else {
          m.array() = b1 * m.array() + (S(1) - b1) * g.array();
          v.array() = b2 * v.array() + (S(1) - b2) * g.array().square();
        }
        q.array() -= step_size * m.array() / (v.array().sqrt() / bc2_sqrt + eps);
        INFO("weight decay " << wd << (decoupled ? " decoupled" : " coupled") << ", step " << t);
        CHECK(p == q);
      }
    }
  }
}

TEST_CASE("SGD with momentum, Nesterov and weight decay matches torch.optim.SGD", "[optimizers]") {
  const double lr = 0.1, mu = 0.9, wd = 0.01;
  for (bool nesterov : {false, true}) {
    Sgd<double> sgd(lr, mu, nesterov, wd);
    Vector<double> p = vec({1.0});
    double q = 1.0, b = 0.0;
    const double gs[3] = {1.0, -0.5, 0.25};
    for (int t = 0; t < 3; ++t) {
      sgd.step(p, vec({gs[t]}));
      const double g = gs[t] + wd * q;
      b = t == 0 ? g : mu * b + g;
      q -= lr * (nesterov ? g + mu * b : b);
      CHECK(p[0] == Approx(q).epsilon(1e-14));
    }
  }
  Sgd<double> plain(0.5);
  Vector<double> p = vec({1.0, 2.0});
  plain.step(p, vec({1.0, -1.0}));
  CHECK(p == vec({0.5, 2.5}));
}

TEST_CASE("optimizer state restores so training resumes bitwise", "[optimizers]") {
  Adam<float> a(0.01);
  Vector<float> p = Vector<float>::LinSpaced(5, -1, 1);
  Vector<float> g = Vector<float>::LinSpaced(5, 0.3f, -0.2f);
  a.step(p, g);
  a.step(p, g);
  Adam<float> b(0.01);
  b.set_state(a.state());
  Vector<float> pa = p, pb = p;
  a.step(pa, g);
  b.step(pb, g);
  CHECK(pa == pb);
  CHECK(b.state().steps == 3);
}

TEST_CASE("optimizers reject bad hyperparameters and mismatched vectors", "[optimizers][errors]") {
  CHECK_THROWS_WITH(Adam<float>(-1.0), Catch::Contains("lr > 0") && Catch::Contains("got -1"));
  CHECK_THROWS_WITH(Adam<float>(0.1, 1.0), Catch::Contains("beta1 < 1") && Catch::Contains("got 1"));
  CHECK_THROWS_WITH(Sgd<float>(0.1, 0.0, true), Catch::Contains("Nesterov needs momentum > 0"));
  Adam<float> a;
  Vector<float> p = Vector<float>::Zero(3);
  CHECK_THROWS_WITH(a.step(p, Vector<float>::Zero(2)),
                    Catch::Contains("gradients of size 3") && Catch::Contains("got 2"));
  a.step(p, Vector<float>::Zero(3));
  Vector<float> other = Vector<float>::Zero(4);
  CHECK_THROWS_WITH(a.step(other, Vector<float>::Zero(4)), Catch::Contains("state has size 3"));
}

// ------------------------------------------------------------------------------------------------
// State validation: each optimizer checks exactly the moments it keeps

TEMPLATE_TEST_CASE("Sgd without momentum steps repeatedly and keeps no moment", "[optimizers]", float, double) {
  using S = TestType;
  // It used to fail on its second step: the step count advanced while its (unused) momentum buffer
  // stayed empty, and the state check read it.
  const double lr = 0.1;
  const Vector<double> grads[4] = {vec({0.5, -1.0, 2.0}), vec({0.25, 0.75, -1.5}), vec({-2.0, 0.5, 0.125}),
                                   vec({1.0, 1.0, -1.0})};
  for (double wd : {0.0, 0.5}) {
    Sgd<S> sgd(lr, 0.0, false, wd);
    Vector<S> p = vec_as<S>({1.0, -2.0, 3.0});
    Vector<double> q = vec({1.0, -2.0, 3.0}), sum = Vector<double>::Zero(3);
    for (int t = 0; t < 4; ++t) {
      sgd.step(p, grads[t].cast<S>());
      q -= lr * (grads[t] + wd * q);
      sum += grads[t];
    }
    INFO("weight decay " << wd);
    check_close(p, q);
    if (wd == 0) check_close(p, vec({1.0, -2.0, 3.0}) - lr * sum);  // p - lr * sum(g)
    CHECK(sgd.state().steps == 4);
    CHECK(sgd.state().first.size() == 0);
    CHECK(sgd.state().second.size() == 0);
  }
  // A restored momentum-free state of any step count is valid: there is no moment to check.
  Sgd<S> restored(lr);
  OptimizerState<S> s;
  s.steps = 7;
  restored.set_state(s);
  Vector<S> p = vec_as<S>({1.0, 2.0, 3.0});
  restored.step(p, vec_as<S>({1.0, 1.0, 1.0}));
  CHECK(restored.state().steps == 8);
  check_close(p, vec({0.9, 1.9, 2.9}));
}

namespace {
/// A state of `steps` steps whose first and second moments have the given sizes.
template <class S>
OptimizerState<S> state_of(Index first, Index second, std::int64_t steps) {
  OptimizerState<S> s;
  s.first = Vector<S>::Constant(first, S(0.5));
  s.second = Vector<S>::Constant(second, S(0.25));
  s.steps = steps;
  return s;
}

/// `opt` refuses a restored state: at set_state when it can tell (steps < 0; kept moments of
/// different sizes), otherwise on the next step, with the parameters and its state unchanged.
template <class Opt>
void check_refuses(Opt opt, const OptimizerState<typename Opt::scalar_type>& bad, const std::string& at,
                   const std::string& message) {
  using S = typename Opt::scalar_type;
  Vector<S> p = vec_as<S>({1.0, 2.0, 3.0});
  const Vector<S> g = vec_as<S>({0.5, -0.5, 1.0}), p0 = p;
  if (at == "set_state") {
    CHECK_THROWS_WITH(opt.set_state(bad), Catch::Contains(message));
    CHECK(opt.state().steps == 0);  // unchanged
  } else {
    opt.set_state(bad);
    CHECK_THROWS_WITH(opt.step(p, g), Catch::Contains(message));
    CHECK(p == p0);
    CHECK(opt.state().steps == bad.steps);
  }
}
}  // namespace

TEMPLATE_TEST_CASE("every optimizer refuses an inconsistent restored state with a clear error", "[optimizers][errors]",
                   float, double) {
  using S = TestType;
  // Kept moments missing after steps > 0 (Adam with m of 3 and v of 0 used to read past v's end).
  check_refuses(Adam<S>(), state_of<S>(3, 0, 2), "set_state",
                "Adam::set_state: inconsistent optimizer state after 2 steps: expected 'first' (m) and 'second' (v) "
                "to have the same size, got 3 and 0");
  check_refuses(AdamW<S>(), state_of<S>(0, 3, 1), "set_state", "got 0 and 3");
  check_refuses(Yogi<S>(), state_of<S>(3, 0, 2), "set_state", "Yogi::set_state: inconsistent optimizer state");
  check_refuses(Adagrad<S>(0.1, 0.9), state_of<S>(0, 3, 2), "set_state",
                "Adagrad::set_state: inconsistent optimizer state after 2 steps: expected 'first' (m)");
  // ... or both missing, or of the wrong size: only the step knows the parameters' size (3).
  check_refuses(Adam<S>(), state_of<S>(0, 0, 2), "step",
                "Adam::step: the optimizer state has size 0 in 'first' (m) after 2 steps, expected 3");
  check_refuses(AdamW<S>(), state_of<S>(4, 4, 1), "step", "AdamW::step: the optimizer state has size 4 in 'first'");
  check_refuses(Yogi<S>(), state_of<S>(2, 2, 5), "step", "Yogi::step: the optimizer state has size 2 in 'first'");
  check_refuses(Sgd<S>(0.1, 0.9), state_of<S>(0, 3, 2), "step",
                "Sgd::step: the optimizer state has size 0 in 'first' (momentum buffer) after 2 steps, expected 3");
  check_refuses(Adagrad<S>(), state_of<S>(3, 0, 2), "step",
                "Adagrad::step: the optimizer state has size 0 in 'second' (accumulator v) after 2 steps, expected 3");
  check_refuses(Adagrad<S>(0.1, 0.9), state_of<S>(5, 5, 2), "step", "has size 5 in 'first' (m)");
  // A negative step count, for every optimizer.
  const std::string negative = "expected steps >= 0, got -1";
  check_refuses(Sgd<S>(), state_of<S>(0, 0, -1), "set_state", "Sgd::set_state: " + negative);
  check_refuses(Adam<S>(), state_of<S>(3, 3, -1), "set_state", "Adam::set_state: " + negative);
  check_refuses(AdamW<S>(), state_of<S>(3, 3, -1), "set_state", "AdamW::set_state: " + negative);
  check_refuses(Adagrad<S>(), state_of<S>(3, 3, -1), "set_state", "Adagrad::set_state: " + negative);
  check_refuses(Yogi<S>(), state_of<S>(3, 3, -1), "set_state", "Yogi::set_state: " + negative);

  // The moments an optimizer does not keep are not checked: Sgd without momentum and Adagrad
  // without momentum accept anything there, and a fresh state (steps 0) is sized by the first step.
  auto accepts = [](auto opt, const OptimizerState<S>& s) {
    Vector<S> p = vec_as<S>({1.0, 2.0, 3.0});
    opt.set_state(s);
    opt.step(p, vec_as<S>({0.5, -0.5, 1.0}));
    CHECK(opt.state().steps == s.steps + 1);
  };
  accepts(Sgd<S>(0.1), state_of<S>(7, 1, 3));
  accepts(Sgd<S>(0.1, 0.9), state_of<S>(3, 1, 3));
  accepts(Adagrad<S>(), state_of<S>(1, 3, 3));
  accepts(Adam<S>(), state_of<S>(1, 2, 0));
  accepts(Yogi<S>(), state_of<S>(0, 5, 0));
}

// ------------------------------------------------------------------------------------------------
// Adam's options, Adagrad and Yogi against hand-computed steps

TEMPLATE_TEST_CASE("Adam without bias correction and with an initial v matches its formula", "[optimizers]", float,
                   double) {
  using S = TestType;
  const double lr = 0.05, b1 = 0.8, b2 = 0.95, eps = 1e-3, v0 = 0.04;
  Adam<S> adam(lr, b1, b2, eps, 0.0, /*bias_correction=*/false, v0);
  CHECK_FALSE(adam.bias_correction());
  Vector<S> p = vec_as<S>({1.0, -2.0, 0.5});
  Vector<double> q = vec({1.0, -2.0, 0.5}), m = Vector<double>::Zero(3), v = Vector<double>::Constant(3, v0);
  const Vector<double> grads[3] = {vec({0.5, -1.0, 0.1}), vec({0.1, 2.0, -0.3}), vec({-0.3, 0.0, 0.2})};
  for (int t = 0; t < 3; ++t) {
    adam.step(p, grads[t].cast<S>());
    for (Index i = 0; i < 3; ++i) {
      const double g = grads[t][i];
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      q[i] -= lr * m[i] / (std::sqrt(v[i]) + eps);  // no 1 - b^t factors
    }
    INFO("step " << t + 1);
    check_close(p, q);
    check_close(adam.state().first, m);
    check_close(adam.state().second, v);
  }
  // With bias correction and v0 the correction applies to v0 too (v / (1 - b2^t)).
  Adam<S> corrected(lr, b1, b2, eps, 0.0, true, v0);
  Vector<S> r = vec_as<S>({1.0});
  corrected.step(r, vec_as<S>({0.5}));
  const double m1 = (1 - b1) * 0.5, v1 = b2 * v0 + (1 - b2) * 0.25;
  CHECK(double(r[0]) == Approx(1.0 - lr * (m1 / (1 - b1)) / (std::sqrt(v1 / (1 - b2)) + eps)).epsilon(tolerance<S>()));
  CHECK_THROWS_WITH(Adam<S>(0.1, 0.9, 0.99, 1e-8, 0.0, true, -1.0),
                    Catch::Contains("expected a finite initial_second >= 0, got -1"));
}

TEMPLATE_TEST_CASE("Adagrad's defaults are torch.optim.Adagrad", "[optimizers]", float, double) {
  using S = TestType;
  // torch.optim.Adagrad(lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10):
  // state_sum += g^2; p -= lr * g / (sqrt(state_sum) + eps).
  Adagrad<S> adagrad;
  Vector<S> p = vec_as<S>({1.0, -2.0, 0.5});
  Vector<double> q = vec({1.0, -2.0, 0.5}), sum = Vector<double>::Zero(3);
  const Vector<double> grads[3] = {vec({0.5, -1.0, 0.1}), vec({0.1, 2.0, -0.3}), vec({-0.3, 0.25, 0.2})};
  for (int t = 0; t < 3; ++t) {
    adagrad.step(p, grads[t].cast<S>());
    for (Index i = 0; i < 3; ++i) {
      const double g = grads[t][i];
      sum[i] += g * g;
      q[i] -= 1e-2 * g / (std::sqrt(sum[i]) + 1e-10);
    }
    INFO("step " << t + 1);
    check_close(p, q);
    check_close(adagrad.state().second, sum);
  }
  CHECK(adagrad.state().first.size() == 0);  // no momentum, no m
  CHECK(adagrad.state().steps == 3);
  // Its first step moves every coordinate by lr * sign(g) (v = g^2).
  Adagrad<double> fresh;
  Vector<double> r = vec({0.0, 0.0});
  fresh.step(r, vec({123.0, -0.001}));
  CHECK(r[0] == Approx(-1e-2).epsilon(1e-9));
  CHECK(r[1] == Approx(1e-2).epsilon(1e-6));
}

TEMPLATE_TEST_CASE("Adagrad with momentum and an initial accumulator matches its formula", "[optimizers]", float,
                   double) {
  using S = TestType;
  const double lr = 0.1, b1 = 0.9, eps = 0.01, v0 = 0.09;
  Adagrad<S> adagrad(lr, b1, eps, v0);
  Vector<S> p = vec_as<S>({1.0, -2.0, 0.5});
  Vector<double> q = vec({1.0, -2.0, 0.5}), m = Vector<double>::Zero(3), v = Vector<double>::Constant(3, v0);
  const Vector<double> grads[3] = {vec({0.5, -1.0, 0.1}), vec({0.1, 2.0, -0.3}), vec({-0.3, 0.25, 0.2})};
  for (int t = 0; t < 3; ++t) {
    adagrad.step(p, grads[t].cast<S>());
    for (Index i = 0; i < 3; ++i) {
      const double g = grads[t][i];
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = v[i] + g * g;
      q[i] -= lr * m[i] / (std::sqrt(v[i]) + eps);
    }
    INFO("step " << t + 1);
    check_close(p, q);
    check_close(adagrad.state().first, m);
    check_close(adagrad.state().second, v);
  }
  CHECK_THROWS_WITH(Adagrad<S>(0.1, 1.0), Catch::Contains("Adagrad: expected 0 <= beta1 < 1, got 1"));
  CHECK_THROWS_WITH(Adagrad<S>(0.1, 0.0, 0.0), Catch::Contains("Adagrad: expected eps > 0, got 0"));
  CHECK_THROWS_WITH(Adagrad<S>(0.1, 0.0, 1e-10, -0.5),
                    Catch::Contains("expected a finite initial_accumulator >= 0, got -0.5"));
}

TEMPLATE_TEST_CASE("Yogi matches its formula, without bias correction", "[optimizers]", float, double) {
  using S = TestType;
  const double lr = 0.05, b1 = 0.9, b2 = 0.99, eps = 1e-3, v0 = 1e-6;
  Yogi<S> yogi(lr, b1, b2, eps, v0);
  Vector<S> p = vec_as<S>({1.0, -2.0, 0.5});
  Vector<double> q = vec({1.0, -2.0, 0.5}), m = Vector<double>::Zero(3), v = Vector<double>::Constant(3, v0);
  // Large then small gradients, so v both grows and shrinks.
  const Vector<double> grads[3] = {vec({0.5, -1.0, 0.1}), vec({0.1, 2.0, -0.3}), vec({-0.03, 0.25, 0.02})};
  const auto sign = [](double x) { return double((x > 0) - (x < 0)); };
  for (int t = 0; t < 3; ++t) {
    yogi.step(p, grads[t].cast<S>());
    for (Index i = 0; i < 3; ++i) {
      const double g = grads[t][i];
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = v[i] - (1 - b2) * sign(v[i] - g * g) * g * g;
      q[i] -= lr * m[i] / (std::sqrt(v[i]) + eps);
    }
    INFO("step " << t + 1);
    check_close(p, q);
    check_close(yogi.state().first, m);
    check_close(yogi.state().second, v);
  }
  CHECK(yogi.state().steps == 3);
  // The paper's defaults.
  Yogi<double> defaults, explicit_defaults(1e-2, 0.9, 0.999, 1e-3, 1e-6);
  Vector<double> a = vec({1.0, 2.0}), b = a;
  defaults.step(a, vec({0.5, -0.25}));
  explicit_defaults.step(b, vec({0.5, -0.25}));
  CHECK(a == b);
  check_close(defaults.state().second, vec({1e-6 + 0.001 * 0.25, 1e-6 + 0.001 * 0.0625}));  // v0 + (1 - b2) g^2
  CHECK_THROWS_WITH(Yogi<S>(0.1, 0.9, 1.0), Catch::Contains("Yogi: expected 0 <= beta2 < 1, got 1"));
  CHECK_THROWS_WITH(Yogi<S>(0.1, 0.9, 0.99, 1e-3, -1.0), Catch::Contains("initial_second >= 0, got -1"));
}

TEMPLATE_TEST_CASE("Yogi's v grows where g^2 > v, shrinks where g^2 < v, by (1 - b2) g^2", "[optimizers]", float,
                   double) {
  using S = TestType;
  const double b2 = 0.9;
  // v0 = 0.25; g^2 = 1 (> v), 0.01 (< v), 0.25 (= v: sign 0, v stays), 0 (v stays).
  Yogi<S> yogi(0.1, 0.5, b2, 1e-3, 0.25);
  Vector<S> p = Vector<S>::Zero(4);
  yogi.step(p, vec_as<S>({1.0, 0.1, 0.5, 0.0}));
  const Vector<S>& v = yogi.state().second;
  check_close(v, vec({0.25 + 0.1 * 1.0, 0.25 - 0.1 * 0.01, 0.25, 0.25}));
  CHECK(v[0] > S(0.25));
  CHECK(v[1] < S(0.25));
  CHECK(v[2] == S(0.25));
  CHECK(v[3] == S(0.25));
  // Adam would have moved v[1] by (1 - b2)(g^2 - v) = -0.024, Yogi by only -(1 - b2) g^2 = -0.001.
  CHECK(double(v[1]) == Approx(0.249).epsilon(tolerance<S>()));
  // A long run of tiny gradients shrinks v only slowly and never below 0.
  for (int t = 0; t < 200; ++t) yogi.step(p, vec_as<S>({0.01, 0.01, 0.01, 0.01}));
  CHECK((yogi.state().second.array() > S(0)).all());
  CHECK(double(yogi.state().second[1]) == Approx(0.249 - 200 * 0.1 * 1e-4).epsilon(1e-4));
}

TEST_CASE("later steps of Adagrad, Adam and Yogi reuse the first step's state storage", "[optimizers]") {
  auto check_reuse = [](auto opt, bool uses_first) {
    Vector<double> p = Vector<double>::Ones(2000), g = Vector<double>::Constant(2000, 0.5);
    opt.step(p, g);
    const double* first = opt.state().first.data();
    const double* second = opt.state().second.data();
    for (int t = 0; t < 3; ++t) opt.step(p, g);
    if (uses_first) CHECK(opt.state().first.data() == first);
    CHECK(opt.state().second.data() == second);
  };
  check_reuse(Adagrad<double>(), false);
  check_reuse(Adagrad<double>(0.1, 0.9), true);
  check_reuse(Adam<double>(), true);
  check_reuse(Adam<double>(0.1, 0.9, 0.99, 1e-3, 0.0, false, 1e-6), true);
  check_reuse(Yogi<double>(), true);
}

TEMPLATE_TEST_CASE("Adagrad and Yogi states restore so training resumes bitwise", "[optimizers]", float, double) {
  using S = TestType;
  auto check_resume = [](auto a, auto b) {
    Vector<S> p = Vector<S>::LinSpaced(5, -1, 1);
    const Vector<S> g = Vector<S>::LinSpaced(5, S(0.3), S(-0.2)), h = Vector<S>::LinSpaced(5, S(-0.1), S(0.4));
    a.step(p, g);
    a.step(p, h);
    b.set_state(a.state());
    Vector<S> pa = p, pb = p;
    for (int t = 0; t < 2; ++t) {
      a.step(pa, t ? g : h);
      b.step(pb, t ? g : h);
    }
    CHECK(pa == pb);
    CHECK(a.state().first == b.state().first);
    CHECK(a.state().second == b.state().second);
    CHECK(b.state().steps == 4);
  };
  check_resume(Adagrad<S>(0.1), Adagrad<S>(0.1));
  check_resume(Adagrad<S>(0.1, 0.9, 1e-3, 1e-6), Adagrad<S>(0.1, 0.9, 1e-3, 1e-6));
  check_resume(Yogi<S>(0.05), Yogi<S>(0.05));
  check_resume(Adam<S>(0.05, 0.9, 0.99, 1e-3, 0.0, false, 1e-6), Adam<S>(0.05, 0.9, 0.99, 1e-3, 0.0, false, 1e-6));
}

namespace {
// Two interleaved spirals-like blobs in 2-D lifted to 8-D: a small non-linear problem.
void make_problem(Matrix<float>& x, Labels& y, Index n, Rng& rng) {
  x.resize(8, n);
  y.resize(n);
  for (Index j = 0; j < n; ++j) {
    const int c = int(rng.uniform_int(3));
    const double a = rng.uniform01() * 2.0, r = 0.3 + rng.uniform01();
    const double angle = a + c * 2.0943951;
    const double u = r * std::cos(angle), v = r * std::sin(angle);
    const double f[8] = {u, v, u * v, u * u, v * v, std::sin(3 * u), std::cos(3 * v), 0.1};
    for (int i = 0; i < 8; ++i) x(i, j) = float(f[i] + 0.05 * rng.normal());
    y[j] = c;
  }
}

template <class Opt>
void check_learns(Opt opt, const char* name) {
  Rng rng(17);
  Matrix<float> x;
  Labels y;
  make_problem(x, y, 600, rng);
  auto model = mlp<float>(Shape{8, 1, 1}, 3, 64, 0.0);
  model.init(rng);
  CrossEntropy<float> loss;
  Matrix<float> grad;
  const float first = loss.value(model.forward(x), y);
  for (int epoch = 0; epoch < 300; ++epoch) {
    for (Index b = 0; b < 600; b += 50) {
      const auto xb = x.middleCols(b, 50);
      const Labels yb = y.segment(b, 50);
      loss.gradient(model.forward(xb, Mode::train, rng), yb, grad);
      model.backward(xb, grad);
      opt.step(model.parameters(), model.gradients());
    }
  }
  const Matrix<float>& out = model.forward(x);
  const float last = loss.value(out, y);
  Index correct = 0;
  for (Index j = 0; j < 600; ++j) {
    Index arg;
    out.col(j).maxCoeff(&arg);
    correct += arg == y[j];
  }
  INFO(name << ": loss " << first << " -> " << last << ", train accuracy " << double(correct) / 600);
  CHECK(last * 10 <= first);
  CHECK(double(correct) / 600 >= 0.95);
}
}  // namespace

TEST_CASE("the MLP learns a small synthetic problem with every optimizer", "[optimizers][training]") {
  check_learns(Sgd<float>(0.2, 0.9), "sgd+momentum");
  check_learns(Sgd<float>(0.2, 0.9, true), "sgd+nesterov");
  check_learns(Adam<float>(0.01), "adam");
  check_learns(AdamW<float>(0.01, 0.9, 0.999, 1e-8, 1e-4), "adamw");
  check_learns(Adagrad<float>(0.05), "adagrad");
  check_learns(Adagrad<float>(0.05, 0.9, 1e-3, 1e-6), "adagrad+momentum");
  check_learns(Yogi<float>(0.01), "yogi");
}
