// Every layer: shapes, known values, and the central-difference gradient check (parameters and input).
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include <fedmoe/fedmoe.hpp>
#include <fedmoe/layers/activation.hpp>

#include "gradient_check.hpp"

using namespace fedmoe;
using fedmoe::test::GradTolerance;
using fedmoe::test::model_gradient_error;
using fedmoe::test::random_batch;

namespace {
template <class S, class L>
void check_layer(const char* name, Shape in, L layer, Index batch = 3, Mode mode = Mode::eval) {
  Sequential<S, L> model(in, std::move(layer));
  Rng rng(11);
  model.init(rng);
  // Give zero-initialised or tiny parameters some spread so every path carries signal.
  for (Index i = 0; i < model.num_params(); ++i) model.parameters()[i] += rng.uniform<S>(S(-0.2), S(0.2));
  auto err = model_gradient_error(model, random_batch<S>(in.size(), batch, 5), mode);
  INFO(name << " params rel. error " << err.params << ", input rel. error " << err.input);
  CHECK(err.params <= GradTolerance<S>::max_rel_error);
  CHECK(err.input <= GradTolerance<S>::max_rel_error);
}
}  // namespace

TEMPLATE_TEST_CASE("every layer passes the gradient check", "[layers][gradcheck]", float, double) {
  using S = TestType;
  check_layer<S>("dense", Shape{7, 1, 1}, Dense<S>(4));
  check_layer<S>("conv2d k3 s1 p0", Shape{2, 6, 5}, Conv2d<S>(3, 3));
  check_layer<S>("conv2d k3 s2 same", Shape{2, 7, 6}, Conv2d<S>::same(3, 3, 2));
  check_layer<S>("conv2d k5 s1 same", Shape{1, 6, 6}, Conv2d<S>::same(2, 5, 1));
  check_layer<S>("conv2d k2 s2 p1", Shape{3, 5, 5}, Conv2d<S>(2, 2, 2, 1));
  // Stride 1, no padding: the im2col / col2im window paths for output widths 8, 16, 24 (compile-time
  // block counts) and 11 (blocks plus a tail).
  check_layer<S>("conv2d k3 s1 p0 ow8", Shape{2, 5, 10}, Conv2d<S>(2, 3), 2);
  check_layer<S>("conv2d k2 s1 p0 ow16", Shape{1, 3, 17}, Conv2d<S>(2, 2), 2);
  check_layer<S>("conv2d k3 s1 p0 ow24", Shape{1, 4, 26}, Conv2d<S>(2, 3), 2);
  check_layer<S>("conv2d k3 s1 p0 ow11", Shape{2, 4, 13}, Conv2d<S>(2, 3), 2);
  check_layer<S>("max_pool2d 2", Shape{2, 6, 4}, MaxPool2d<S>(2));
  // Output width 13 = 8 + 4 + 1: the float kernel's 8- and 4-lane blocks and the scalar tail.
  check_layer<S>("max_pool2d 2 ow13", Shape{2, 4, 26}, MaxPool2d<S>(2), 2);
  check_layer<S>("max_pool2d 3 s2", Shape{2, 7, 7}, MaxPool2d<S>(3, 2));
  check_layer<S>("flatten", Shape{2, 3, 3}, Flatten<S>());
  check_layer<S>("relu", Shape{9, 1, 1}, ReLU<S>());
  check_layer<S>("sigmoid", Shape{9, 1, 1}, Sigmoid<S>());
  check_layer<S>("tanh", Shape{9, 1, 1}, Tanh<S>());
  check_layer<S>("dropout eval", Shape{9, 1, 1}, Dropout<S>(0.3));
  check_layer<S>("dropout train", Shape{9, 1, 1}, Dropout<S>(0.3), 4, Mode::train);
  check_layer<S>("softmax", Shape{6, 1, 1}, Softmax<S>());
  check_layer<S>("log_softmax", Shape{6, 1, 1}, LogSoftmax<S>());
}

TEMPLATE_TEST_CASE("dense computes W x + b with W in PyTorch's [out, in] layout", "[layers]", float, double) {
  using S = TestType;
  Sequential<S, Dense<S>> m(Shape{3, 1, 1}, Dense<S>(2));
  // W = [[1, 2, 3], [4, 5, 6]] row-major, b = [10, 20]
  m.parameters() << 1, 2, 3, 4, 5, 6, 10, 20;
  Matrix<S> x(3, 1);
  x << 1, 0, -1;
  const Matrix<S>& y = m.forward(x);
  CHECK(y(0, 0) == S(1 - 3 + 10));
  CHECK(y(1, 0) == S(4 - 6 + 20));
}

/// A direct convolution in double of x (in, one column per sample) with a 3-output, k x k Conv2d's
/// parameters w ([O][C][k][k], then the bias): the reference the conv2d tests compare with.
template <class S>
Matrix<double> direct_conv3(const S* w, const Matrix<S>& x, Shape in, Shape out, Index k, Index stride, Index pad) {
  const Index outputs = 3, c_in = in.channels;
  const S* b = w + outputs * c_in * k * k;
  Matrix<double> y(out.size(), x.cols());
  for (Index s = 0; s < x.cols(); ++s)
    for (Index o = 0; o < outputs; ++o)
      for (Index oy = 0; oy < out.height; ++oy)
        for (Index ox = 0; ox < out.width; ++ox) {
          double acc = b[o];
          for (Index c = 0; c < c_in; ++c)
            for (Index ky = 0; ky < k; ++ky)
              for (Index kx = 0; kx < k; ++kx) {
                const Index iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                if (iy < 0 || iy >= in.height || ix < 0 || ix >= in.width) continue;
                acc += double(w[((o * c_in + c) * k + ky) * k + kx]) *
                       double(x((c * in.height + iy) * in.width + ix, s));
              }
          y((o * out.height + oy) * out.width + ox, s) = acc;
        }
  return y;
}

TEMPLATE_TEST_CASE("conv2d matches a direct convolution", "[layers]", float, double) {
  using S = TestType;
  const Shape in{2, 5, 4};
  Sequential<S, Conv2d<S>> m(in, Conv2d<S>(3, 3, 2, 1));
  Rng rng(3);
  m.init(rng);
  const Matrix<S> x = random_batch<S>(in.size(), 2, 9);
  const Matrix<S> y = m.forward(x);
  const Shape out = m.output_shape();
  REQUIRE(out == Shape{3, 3, 2});
  const Matrix<double> want = direct_conv3(m.parameters().data(), x, in, out, 3, 2, 1);
  for (Index i = 0; i < want.size(); ++i) CHECK(double(y.data()[i]) == Approx(want.data()[i]).epsilon(1e-5));
}

TEMPLATE_TEST_CASE("max_pool2d takes window maxima and routes gradients to them", "[layers]", float, double) {
  using S = TestType;
  Sequential<S, MaxPool2d<S>> m(Shape{1, 2, 4}, MaxPool2d<S>(2));
  Matrix<S> x(8, 1);
  x << 1, 5, 2, 0,  //
      3, 4, 7, 8;
  const Matrix<S> y = m.forward(x);
  REQUIRE(y.rows() == 2);
  CHECK(y(0, 0) == S(5));
  CHECK(y(1, 0) == S(8));
  Matrix<S> dy(2, 1);
  dy << 1, 2;
  const Matrix<S> dx = m.backward(x, dy, true);
  Matrix<S> expected(8, 1);
  expected << 0, 1, 0, 0, 0, 0, 0, 2;
  CHECK(dx == expected);
}

TEMPLATE_TEST_CASE("conv2d with stride 1 and no padding matches a direct convolution at every width",
                   "[layers]", float, double) {
  using S = TestType;
  // Output widths 3 (tail only), 8, 16, 24 (whole 8-float blocks) and 11 (blocks and a tail).
  for (Index width : {5, 10, 18, 26, 13}) {
    const Shape in{2, 4, width};
    Sequential<S, Conv2d<S>> m(in, Conv2d<S>(3, 3));
    Rng rng(3);
    m.init(rng);
    const Matrix<S> x = random_batch<S>(in.size(), 2, 9);
    const Matrix<S> y = m.forward(x);
    const Shape out = m.output_shape();
    REQUIRE(out == Shape{3, 2, width - 2});
    const Matrix<double> want = direct_conv3(m.parameters().data(), x, in, out, 3, 1, 0);
    for (Index i = 0; i < want.size(); ++i) {
      INFO("width " << width << " output " << i);
      // A margin too: some outputs are sums that cancel to ~1e-3, where float's relative error grows.
      CHECK(double(y.data()[i]) == Approx(want.data()[i]).epsilon(1e-5).margin(1e-6));
    }
  }
}

TEMPLATE_TEST_CASE("max_pool2d picks the first maximum of each window, a NaN winning, at every width", "[layers]",
                   float, double) {
  using S = TestType;
  // Few distinct values, so that windows hold ties; some NaNs. Output widths 1 to 13 cover the float
  // kernel's 8- and 4-lane blocks and the scalar tail. Reference: the row-major scan of the window.
  for (Index ow = 1; ow <= 13; ++ow) {
    const Shape in{2, 6, 2 * ow + 1};  // an odd width: the last column belongs to no window
    Sequential<S, MaxPool2d<S>> m(in, MaxPool2d<S>(2));
    Rng rng(100 + std::uint64_t(ow));
    Matrix<S> x(in.size(), 3);
    for (Index i = 0; i < x.size(); ++i) {
      const auto r = rng.uniform_int(20);
      x.data()[i] = r == 0 ? std::numeric_limits<S>::quiet_NaN() : S(r % 4) - S(1.5);
    }
    const Matrix<S> y = m.forward(x);
    Matrix<S> dy(y.rows(), y.cols());
    for (Index i = 0; i < dy.size(); ++i) dy.data()[i] = S(i + 1);
    const Matrix<S> dx = m.backward(x, dy, true);
    Matrix<S> expected_dx = Matrix<S>::Zero(x.rows(), x.cols());
    for (Index s = 0; s < x.cols(); ++s)
      for (Index c = 0; c < in.channels; ++c)
        for (Index oy = 0; oy < in.height / 2; ++oy)
          for (Index ox = 0; ox < ow; ++ox) {
            Index best = -1;
            for (Index ky = 0; ky < 2; ++ky)
              for (Index kx = 0; kx < 2; ++kx) {
                const Index i = (c * in.height + 2 * oy + ky) * in.width + 2 * ox + kx;
                const bool nan = std::isnan(x(i, s));
                if (best < 0 || (nan && !std::isnan(x(best, s))) || (!std::isnan(x(best, s)) && x(i, s) > x(best, s)))
                  best = i;
              }
            const Index o = (c * (in.height / 2) + oy) * ow + ox;
            INFO("output width " << ow << " sample " << s << " output " << o);
            if (std::isnan(x(best, s))) CHECK(std::isnan(y(o, s)));
            else CHECK(y(o, s) == x(best, s));
            expected_dx(best, s) += dy(o, s);
          }
    INFO("output width " << ow);
    CHECK(dx == expected_dx);
  }
}

TEMPLATE_TEST_CASE("dropout draws exactly uniform01() >= p per unit, in order", "[layers]", float, double) {
  using S = TestType;
  // The layer tests the raw integer against ceil(p 2^53) instead of converting to double: the same
  // mask and the same generator state afterwards, for any p (0.3 and 0.1 are not dyadic).
  for (double p : {0.5, 0.25, 0.3, 0.1, 1e-9, 0.999999}) {
    Sequential<S, Dropout<S>> m(Shape{37, 1, 1}, Dropout<S>(p));
    const Matrix<S> x = Matrix<S>::Ones(37, 5);
    Rng rng(7), reference(7);
    const Matrix<S> y = m.forward(x, Mode::train, rng);
    const S scale = S(1.0 / (1.0 - p));
    for (Index i = 0; i < y.size(); ++i) {
      INFO("p " << p << " unit " << i);
      CHECK(y.data()[i] == (reference.uniform01() >= p ? scale : S(0)));
    }
    CHECK(rng() == reference());
  }
}

TEST_CASE("dropout: eval is identity, train keeps 1-p of the units scaled by 1/(1-p), seeded", "[layers]") {
  Sequential<double, Dropout<double>> m(Shape{10000, 1, 1}, Dropout<double>(0.25));
  const Matrix<double> x = Matrix<double>::Ones(10000, 1);
  CHECK(m.forward(x) == x);
  Rng a(1), b(1);
  const Matrix<double> y1 = m.forward(x, Mode::train, a);
  const Matrix<double> y2 = m.forward(x, Mode::train, b);
  CHECK(y1 == y2);
  const double kept = double((y1.array() > 0).count()) / 10000.0;
  CHECK(kept == Approx(0.75).margin(0.02));
  CHECK(y1.maxCoeff() == Approx(1.0 / 0.75));
}

TEST_CASE("softmax is stable for huge logits", "[layers]") {
  Sequential<double, Softmax<double>> m(Shape{3, 1, 1}, Softmax<double>());
  Matrix<double> x(3, 1);
  x << 1000, 1000, -1000;
  const Matrix<double> y = m.forward(x);
  CHECK(y(0, 0) == Approx(0.5));
  CHECK(y(2, 0) == Approx(0.0).margin(1e-300));
  CHECK(y.allFinite());
}

TEST_CASE("layers reject bad shapes and configurations with the expected and actual values", "[layers][errors]") {
  Sequential<float, Dense<float>> m(Shape{4, 1, 1}, Dense<float>(2));
  CHECK_THROWS_WITH(m.forward(Matrix<float>::Zero(5, 2)), Catch::Contains("expected input with 4 rows") &&
                                                                Catch::Contains("got 5"));
  CHECK_THROWS_WITH(m.forward(Matrix<float>::Zero(4, 0)), Catch::Contains("non-empty batch"));
  CHECK_THROWS_WITH(Conv2d<float>(0, 3), Catch::Contains("out_channels > 0") && Catch::Contains("got 0"));
  CHECK_THROWS_WITH((Sequential<float, Conv2d<float>>(Shape{1, 3, 3}, Conv2d<float>(2, 5))),
                    Catch::Contains("does not fit input [1x3x3]"));
  CHECK_THROWS_WITH(Dropout<float>(1.0), Catch::Contains("0 <= p < 1") && Catch::Contains("got 1"));
  CHECK_THROWS_WITH(MaxPool2d<float>(0), Catch::Contains("window > 0"));
  m.forward(Matrix<float>::Zero(4, 2));
  CHECK_THROWS_WITH(m.backward(Matrix<float>::Zero(4, 2), Matrix<float>::Zero(2, 3)),
                    Catch::Contains("expected dy of shape 2x2") && Catch::Contains("got 2x3"));
}
