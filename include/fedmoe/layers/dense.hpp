#pragma once
/// @file dense.hpp
/// @brief Dense (fully connected) layer: y = W x + b.
///
/// Parameters, in this order inside the layer's slice: W as PyTorch stores it
/// ([out, in], row-major), then b [out]. Eigen sees the weight as the column-major
/// matrix W^T (in x out), so the same bytes serve Eigen and PyTorch/NumPy.
#include "layer.hpp"

namespace fedmoe {

template <class Scalar = float>
class Dense {
public:
  using scalar_type = Scalar;

  /// A dense layer with `out` outputs; the input size comes from configure().
  explicit Dense(Index out) : m_out(out) {
    FEDMOE_CHECK(out > 0, "Dense: expected out > 0, got ", out);
  }
  Dense(Index in, Index out) : Dense(out) { configure(Shape{in, 1, 1}); }

  Shape configure(Shape in) {
    FEDMOE_CHECK(in.size() > 0, "Dense: expected a non-empty input shape, got ", in);
    m_in = in.size();
    return Shape{m_out, 1, 1};
  }
  Index num_params() const { return m_in * m_out + m_out; }
  Index in_features() const { return m_in; }
  Index out_features() const { return m_out; }
  std::string name() const { return "dense"; }
  std::vector<TensorInfo> tensors() const {
    return {{"weight", 0, {m_out, m_in}}, {"bias", m_in * m_out, {m_out}}};
  }

  void init(VectorMap<Scalar> params, Rng& rng) const {
    // PyTorch: kaiming_uniform_(a=sqrt(5)) and U(-1/sqrt(fan_in), 1/sqrt(fan_in)) both reduce to this bound.
    const double bound = 1.0 / std::sqrt(static_cast<double>(m_in));
    for (Index i = 0; i < params.size(); ++i) params[i] = rng.uniform<Scalar>(Scalar(-bound), Scalar(bound));
  }

  template <class In>
  void forward(ConstVectorMap<Scalar> params, const In& x, Matrix<Scalar>& y, Mode, Rng&) {
    detail::check_batch<Scalar>("Dense::forward", m_in, x.rows(), x.cols());
    y.resize(m_out, x.cols());
    y.noalias() = weight_t(params).transpose() * x;
    y.colwise() += bias(params);
  }

  template <class In>
  void backward(ConstVectorMap<Scalar> params, const In& x, const Matrix<Scalar>&, const Matrix<Scalar>& dy,
                Matrix<Scalar>* dx, VectorMap<Scalar> grad) {
    MatrixMap<Scalar> dw(grad.data(), m_in, m_out);
    dw.noalias() = x * dy.transpose();
    VectorMap<Scalar>(grad.data() + m_in * m_out, m_out).noalias() = dy.rowwise().sum();
    if (dx) {
      dx->resize(m_in, dy.cols());
      dx->noalias() = weight_t(params) * dy;
    }
  }

  /// W^T as an (in x out) column-major view of the layer's slice.
  ConstMatrixMap<Scalar> weight_t(ConstVectorMap<Scalar> params) const {
    return ConstMatrixMap<Scalar>(params.data(), m_in, m_out);
  }
  ConstVectorMap<Scalar> bias(ConstVectorMap<Scalar> params) const {
    return ConstVectorMap<Scalar>(params.data() + m_in * m_out, m_out);
  }

private:
  Index m_in = 0;
  Index m_out = 0;
};

}  // namespace fedmoe
