// The linear router's register-blocked kernels against plain Eigen products, on every block remainder.
#include <catch2/catch.hpp>
#include <fedmoe/moe/linear_router.hpp>

#include "gradient_check.hpp"

using namespace fedmoe;
using fedmoe::test::random_batch;

namespace {

template <class S>
double rel_error(const Matrix<S>& a, const Matrix<S>& b) {
  return (a - b).template cast<double>().norm() / (1e-30 + b.template cast<double>().norm());
}

}  // namespace

// (Test names stay under one console line: Catch 2.13's wrapping of a long name with "(AVX-512:" in it
// printed dashes forever when the test failed.)
TEST_CASE("LinearRouter's logits add each packet in Eigen's predux order", "[router]") {
  // A width that is a whole number of packets reduces a 4 x 4 block's accumulators together (predux16 with
  // AVX-512); one more feature, with a zero weight, takes the per-output predux and adds 0 * x exactly. So
  // the logits are equal bit for bit exactly when the joint reduction adds in predux's order.
  for (Index width : {512, 64})
    for (Index tokens : {4, 37, 256})
      for (Index routers : {1, 2}) {
        CAPTURE(width, tokens, routers);
        const Index experts = 8;
        const detail::LinearRouter<float> joint{width, experts, routers}, tail{width + 1, experts, routers};
        const Vector<float> p = random_batch<float>(joint.num_params(), 1, 7);
        Vector<float> q(tail.num_params());  // the same parameters with a zero weight for the extra feature
        for (Index r = 0; r < routers; ++r)
          for (Index e = 0; e < experts; ++e) {
            q.segment(r * tail.router_params() + e * (width + 1), width) =
                p.segment(r * joint.router_params() + e * width, width);
            q[r * tail.router_params() + e * (width + 1) + width] = 0.0f;
            q[r * tail.router_params() + experts * (width + 1) + e] = p[r * joint.router_params() + experts * width + e];
          }
        Matrix<float> x(width + 1, tokens);
        x.topRows(width) = random_batch<float>(width, tokens, 8);
        x.row(width).setConstant(3.0f);
        const Matrix<float> xj = x.topRows(width);
        Matrix<float> a0, a1, b0, b1;
        if (routers == 1) {
          joint.forward(p.data(), xj, a0);
          tail.forward(q.data(), x, b0);
          CHECK(a0 == b0);
        } else {
          joint.forward<2>(p.data(), xj, {&a0, &a1});
          tail.forward<2>(q.data(), x, {&b0, &b1});
          CHECK(a0 == b0);
          CHECK(a1 == b1);
        }
      }
}

TEMPLATE_TEST_CASE("LinearRouter matches W x + b and its gradients for every block remainder", "[router]", float,
                   double) {
  using S = TestType;
  const double tol = std::is_same_v<S, float> ? 1e-5 : 1e-13;
  for (Index width : {1, 3, 16, 37, 69})
    for (Index experts : {1, 2, 3, 5, 8, 9})
      for (Index tokens : {1, 2, 3, 5, 17, 33})
        for (Index routers : {1, 2}) {
          CAPTURE(width, experts, tokens, routers);
          const detail::LinearRouter<S> router{width, experts, routers};
          const Vector<S> p = random_batch<S>(router.num_params(), 1, 3);
          const Matrix<S> x = random_batch<S>(width, tokens, 4);
          const Matrix<S> dl0 = random_batch<S>(experts, tokens, 5), dl1 = random_batch<S>(experts, tokens, 6);
          const Index rp = router.router_params();
          auto w = [&](Index r) { return ConstMatrixMap<S>(p.data() + r * rp, width, experts); };  // W_r^T
          auto b = [&](Index r) { return ConstVectorMap<S>(p.data() + r * rp + width * experts, experts); };

          Matrix<S> l0, l1;
          Vector<S> g(router.num_params());
          Matrix<S> dx;
          if (routers == 1) {
            router.forward(p.data(), x, l0);
            router.backward(p.data(), x, dl0, g.data(), &dx);
          } else {
            router.template forward<2>(p.data(), x, {&l0, &l1});
            router.template backward<2>(p.data(), x, {&dl0, &dl1}, g.data(), &dx);
          }
          Matrix<S> want = (w(0).transpose() * x).colwise() + b(0);
          CHECK(rel_error(l0, want) < tol);
          Matrix<S> gw = x * dl0.transpose();
          CHECK(rel_error<S>(ConstMatrixMap<S>(g.data(), width, experts), gw) < tol);
          CHECK(rel_error<S>(ConstVectorMap<S>(g.data() + width * experts, experts), dl0.rowwise().sum()) < tol);
          Matrix<S> wdx = w(0) * dl0;
          if (routers == 2) {
            want = (w(1).transpose() * x).colwise() + b(1);
            CHECK(rel_error(l1, want) < tol);
            gw = x * dl1.transpose();
            CHECK(rel_error<S>(ConstMatrixMap<S>(g.data() + rp, width, experts), gw) < tol);
            CHECK(rel_error<S>(ConstVectorMap<S>(g.data() + rp + width * experts, experts), dl1.rowwise().sum()) <
                  tol);
            wdx += w(1) * dl1;
          }
          CHECK(rel_error(dx, wdx) < tol);
        }
}

TEST_CASE("LinearRouter: a token's logits and input gradient do not depend on the rest of the batch", "[router]") {
  const detail::LinearRouter<float> router{67, 6, 1};
  const Vector<float> p = random_batch<float>(router.num_params(), 1, 7);
  const Matrix<float> x = random_batch<float>(67, 23, 8), dl = random_batch<float>(6, 23, 9);
  Matrix<float> all, one, dx_all, dx_one;
  Vector<float> g(router.num_params());
  router.forward(p.data(), x, all);
  router.backward(p.data(), x, dl, g.data(), &dx_all);
  for (Index j : {0, 5, 22}) {
    const Matrix<float> xj = x.col(j), dlj = dl.col(j);
    router.forward(p.data(), xj, one);
    router.backward(p.data(), xj, dlj, g.data(), &dx_one);
    CHECK(one.col(0) == all.col(j));  // bitwise: the sums run in the same order
    CHECK(dx_one.col(0) == dx_all.col(j));
  }
}

TEST_CASE("LinearRouter computes only the routers given and zeroes the other routers' gradients", "[router]") {
  const detail::LinearRouter<double> router{9, 3, 2};
  const Vector<double> p = random_batch<double>(router.num_params(), 1, 10);
  const Matrix<double> x = random_batch<double>(9, 4, 11), dl = random_batch<double>(3, 4, 12);
  Vector<double> g = Vector<double>::Constant(router.num_params(), 7.0);
  Matrix<double> dx;
  router.backward(p.data(), x, dl, g.data(), &dx);
  CHECK(g.tail(router.router_params()).isZero(0));
  CHECK_FALSE(g.head(router.router_params()).isZero(0));
  const Matrix<double> want = ConstMatrixMap<double>(p.data(), 9, 3) * dl;
  CHECK((dx - want).norm() < 1e-12 * want.norm());
}

TEST_CASE("LinearRouter: the streaming paths for large batches give the bits of the cached ones", "[router]") {
  // Large enough that x is prefetched from memory and dx is written with streaming stores; a token's
  // logits and input gradient must still be bitwise those of a small batch, and dW the plain product.
  // Both configurations run the tiled forward (weights over 16 KiB); the second splits each router into
  // groups of rows, has a row block of 2, a width with a scalar tail and a last tile ending in a 3-token block.
  struct Config {
    Index width, experts, tokens;
  };
  for (const Config c : {Config{512, 8, 8256}, Config{1040, 6, 4103}}) {
    CAPTURE(c.width, c.experts, c.tokens);
    const detail::LinearRouter<float> router{c.width, c.experts, 2};
    const Vector<float> p = random_batch<float>(router.num_params(), 1, 13);
    const Matrix<float> x = random_batch<float>(c.width, c.tokens, 14);
    const Matrix<float> dl0 = random_batch<float>(c.experts, c.tokens, 15);
    const Matrix<float> dl1 = random_batch<float>(c.experts, c.tokens, 16);
    Matrix<float> l0, l1, dx;
    Vector<float> g(router.num_params());
    router.forward<2>(p.data(), x, {&l0, &l1});
    router.backward<2>(p.data(), x, {&dl0, &dl1}, g.data(), &dx);
    REQUIRE(router.streams(x));
    REQUIRE(router.tiles(x, 2));
    REQUIRE(router.streams_out(dx));
    for (Index j0 : {Index(0), Index(4001), c.tokens - 7}) {
      CAPTURE(j0);
      const Matrix<float> xs = x.middleCols(j0, 7), d0 = dl0.middleCols(j0, 7), d1 = dl1.middleCols(j0, 7);
      Matrix<float> s0, s1, sdx;
      Vector<float> sg(router.num_params());
      router.forward<2>(p.data(), xs, {&s0, &s1});
      router.backward<2>(p.data(), xs, {&d0, &d1}, sg.data(), &sdx);
      CHECK(s0 == l0.middleCols(j0, 7));
      CHECK(s1 == l1.middleCols(j0, 7));
      CHECK(sdx == dx.middleCols(j0, 7));
    }
    const Index rp = router.router_params();
    for (Index r : {0, 1}) {
      const Matrix<float>& d = r == 0 ? dl0 : dl1;
      const Matrix<float> gw = x * d.transpose();
      CHECK(rel_error<float>(ConstMatrixMap<float>(g.data() + r * rp, c.width, c.experts), gw) < 1e-5);
    }
    // the first router alone gives the same bits (untiled in the first configuration: 16 KiB of weights)
    Matrix<float> one;
    router.forward(p.data(), x, one);
    CHECK(router.tiles(x, 1) == (c.width == 1040));
    CHECK(one == l0);
  }
}
