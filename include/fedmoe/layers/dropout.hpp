#pragma once
/// @file dropout.hpp
/// @brief Inverted dropout: in training, y = x * m / (1 - p) with m ~ Bernoulli(1 - p)
/// drawn from the Rng passed to forward; in evaluation, y = x.
#include <cmath>
#include <cstdint>

#include "layer.hpp"

namespace fedmoe {

template <class Scalar = float>
class Dropout {
public:
  using scalar_type = Scalar;

  explicit Dropout(double p = 0.5) : m_p(p) {
    FEDMOE_CHECK(p >= 0.0 && p < 1.0, "Dropout: expected 0 <= p < 1, got ", p);
  }
  double p() const { return m_p; }

  Shape configure(Shape in) {
    m_shape = in;
    return in;
  }
  Index num_params() const { return 0; }
  std::string name() const { return "dropout"; }
  std::vector<TensorInfo> tensors() const { return {}; }
  void init(VectorMap<Scalar>, Rng&) const {}

  template <class In>
  void forward(ConstVectorMap<Scalar>, const In& x, Matrix<Scalar>& y, Mode mode, Rng& rng) {
    detail::check_batch<Scalar>("Dropout::forward", m_shape.size(), x.rows(), x.cols());
    m_train = (mode == Mode::train && m_p > 0.0);
    if (!m_train) {
      y = x;
      return;
    }
    const Scalar scale = Scalar(1.0 / (1.0 - m_p));
    m_mask.resize(x.rows(), x.cols());
    // The draw is rng.uniform01() >= p, i.e. (r >> 11) * 2^-53 >= p for the raw 64-bit value r: both sides
    // scaled by 2^53 exactly, that is the integer test (r >> 11) >= ceil(p 2^53), with no conversion to
    // double. The generator runs on a local copy so its state stays in registers (stores to the mask
    // could otherwise alias it); the same values are drawn in the same order as with uniform01(). The
    // mask value is looked up, not branched on: a branch on a random bit mispredicts half the time.
    const auto keep_from = static_cast<std::uint64_t>(std::ceil(m_p * 0x1p53));
    const Scalar value[2] = {Scalar(0), scale};
    Rng local = rng;
    Scalar* mask = m_mask.data();
    for (Index i = 0; i < m_mask.size(); ++i) mask[i] = value[(local() >> 11) >= keep_from];
    rng = local;
    y.resize(x.rows(), x.cols());
    y.array() = x.array() * m_mask.array();
  }
  template <class In>
  void backward(ConstVectorMap<Scalar>, const In&, const Matrix<Scalar>&, const Matrix<Scalar>& dy,
                Matrix<Scalar>* dx, VectorMap<Scalar>) {
    if (!dx) return;
    if (!m_train) {
      *dx = dy;
      return;
    }
    dx->resize(dy.rows(), dy.cols());
    dx->array() = dy.array() * m_mask.array();
  }

private:
  double m_p;
  Shape m_shape{};
  bool m_train = false;
  Matrix<Scalar> m_mask;
};

}  // namespace fedmoe
