#pragma once
/// @file softmax.hpp
/// @brief Softmax and LogSoftmax over the features of each sample (each column),
/// computed with the max subtracted so that no exponential overflows.
#include "layer.hpp"

namespace fedmoe {

namespace detail {
/// y = log_softmax(x) column by column.
template <class In, class Scalar>
void log_softmax(const In& x, Matrix<Scalar>& y) {
  y.resize(x.rows(), x.cols());
  for (Index j = 0; j < x.cols(); ++j) {
    const Scalar m = x.col(j).maxCoeff();
    const Scalar lse = m + std::log((x.col(j).array() - m).exp().sum());
    y.col(j).array() = x.col(j).array() - lse;
  }
}
}  // namespace detail

template <class Scalar = float, bool Log = false>
class SoftmaxLayer {
public:
  using scalar_type = Scalar;

  Shape configure(Shape in) {
    m_shape = in;
    return in;
  }
  Index num_params() const { return 0; }
  std::string name() const { return Log ? "log_softmax" : "softmax"; }
  std::vector<TensorInfo> tensors() const { return {}; }
  void init(VectorMap<Scalar>, Rng&) const {}

  template <class In>
  void forward(ConstVectorMap<Scalar>, const In& x, Matrix<Scalar>& y, Mode, Rng&) {
    detail::check_batch<Scalar>(Log ? "LogSoftmax::forward" : "Softmax::forward", m_shape.size(), x.rows(), x.cols());
    detail::log_softmax(x, y);
    if constexpr (!Log) y.array() = y.array().exp();
  }
  template <class In>
  void backward(ConstVectorMap<Scalar>, const In&, const Matrix<Scalar>& y, const Matrix<Scalar>& dy,
                Matrix<Scalar>* dx, VectorMap<Scalar>) {
    if (!dx) return;
    dx->resize(dy.rows(), dy.cols());
    for (Index j = 0; j < dy.cols(); ++j) {
      if constexpr (Log) {  // dx = dy - softmax * sum(dy)
        dx->col(j).array() = dy.col(j).array() - y.col(j).array().exp() * dy.col(j).sum();
      } else {  // dx = y * (dy - <dy, y>)
        dx->col(j).array() = y.col(j).array() * (dy.col(j).array() - dy.col(j).dot(y.col(j)));
      }
    }
  }

private:
  Shape m_shape{};
};

template <class Scalar = float> using Softmax = SoftmaxLayer<Scalar, false>;
template <class Scalar = float> using LogSoftmax = SoftmaxLayer<Scalar, true>;

}  // namespace fedmoe
