#pragma once
/// @file activation.hpp
/// @brief Elementwise activations: ReLU, Sigmoid, Tanh (one template, one op struct each).
///
/// Each op gives f(x) and f'(x) expressed through x and y = f(x), whichever is cheaper.
#include <cmath>

#include "layer.hpp"

namespace fedmoe {

namespace detail {
struct ReluOp {
  static constexpr const char* name = "relu";
  template <class A> static auto f(const A& x) { return x.cwiseMax(typename A::Scalar(0)); }
  template <class A, class B> static auto df(const A& x, const B&) {
    return (x > typename A::Scalar(0)).template cast<typename A::Scalar>();
  }
  // dy * f'(x) without the multiply: y > 0 exactly where x > 0.
  template <class D, class A, class B> static auto backward(const D& dy, const A& x, const B&) {
    return (x > typename A::Scalar(0)).select(dy, typename D::Scalar(0));
  }
};
struct SigmoidOp {
  static constexpr const char* name = "sigmoid";
  // 1 / (1 + e^-x), written so that neither branch overflows.
  template <class A> static auto f(const A& x) {
    using S = typename A::Scalar;
    return (x >= S(0)).select(S(1) / (S(1) + (-x).exp()), x.exp() / (S(1) + x.exp()));
  }
  template <class A, class B> static auto df(const A&, const B& y) { return y * (typename B::Scalar(1) - y); }
};
struct TanhOp {
  static constexpr const char* name = "tanh";
  template <class A> static auto f(const A& x) { return x.tanh(); }
  template <class A, class B> static auto df(const A&, const B& y) { return typename B::Scalar(1) - y.square(); }
};
}  // namespace detail

template <class Op, class Scalar = float>
class Activation {
public:
  using scalar_type = Scalar;

  Shape configure(Shape in) {
    m_shape = in;
    return in;
  }
  Index num_params() const { return 0; }
  std::string name() const { return Op::name; }
  std::vector<TensorInfo> tensors() const { return {}; }
  void init(VectorMap<Scalar>, Rng&) const {}

  template <class In>
  void forward(ConstVectorMap<Scalar>, const In& x, Matrix<Scalar>& y, Mode, Rng&) {
    detail::check_batch<Scalar>(Op::name, m_shape.size(), x.rows(), x.cols());
    y.resize(x.rows(), x.cols());
    y.array() = Op::f(x.array());
  }
  template <class In>
  void backward(ConstVectorMap<Scalar>, const In& x, const Matrix<Scalar>& y, const Matrix<Scalar>& dy,
                Matrix<Scalar>* dx, VectorMap<Scalar>) {
    if (!dx) return;
    dx->resize(dy.rows(), dy.cols());
    if constexpr (requires { Op::backward(dy.array(), x.array(), y.array()); })
      dx->array() = Op::backward(dy.array(), x.array(), y.array());
    else
      dx->array() = dy.array() * Op::df(x.array(), y.array());
  }

private:
  Shape m_shape{};
};

template <class Scalar = float> using ReLU = Activation<detail::ReluOp, Scalar>;
template <class Scalar = float> using Sigmoid = Activation<detail::SigmoidOp, Scalar>;
template <class Scalar = float> using Tanh = Activation<detail::TanhOp, Scalar>;

}  // namespace fedmoe
