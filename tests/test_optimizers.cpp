// Optimizers against hand-computed updates (PyTorch's formulas), state save/restore, training smoke.
#include <catch2/catch.hpp>

#include <cmath>
#include <fedmoe/fedmoe.hpp>

using namespace fedmoe;

namespace {
Vector<double> vec(std::initializer_list<double> v) {
  Vector<double> out(Index(v.size()));
  Index i = 0;
  for (double x : v) out[i++] = x;
  return out;
}
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
}
