#pragma once
/// @file flatten.hpp
/// @brief Flatten: C x H x W -> (C*H*W) x 1 x 1. The batch layout is already flat, so
/// forward and backward are copies (no allocation once the batch size is fixed).
#include "layer.hpp"

namespace fedmoe {

template <class Scalar = float>
class Flatten {
public:
  using scalar_type = Scalar;

  Shape configure(Shape in) {
    m_size = in.size();
    return Shape{m_size, 1, 1};
  }
  Index num_params() const { return 0; }
  std::string name() const { return "flatten"; }
  std::vector<TensorInfo> tensors() const { return {}; }
  void init(VectorMap<Scalar>, Rng&) const {}

  template <class In>
  void forward(ConstVectorMap<Scalar>, const In& x, Matrix<Scalar>& y, Mode, Rng&) {
    detail::check_batch<Scalar>("Flatten::forward", m_size, x.rows(), x.cols());
    y = x;
  }
  template <class In>
  void backward(ConstVectorMap<Scalar>, const In&, const Matrix<Scalar>&, const Matrix<Scalar>& dy,
                Matrix<Scalar>* dx, VectorMap<Scalar>) {
    if (dx) *dx = dy;
  }

private:
  Index m_size = 0;
};

}  // namespace fedmoe
