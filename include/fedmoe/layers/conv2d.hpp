#pragma once
/// @file conv2d.hpp
/// @brief 2-D convolution (cross-correlation, as PyTorch's Conv2d) by im2col + one GEMM per batch.
///
/// Input C x H x W per sample, output O x Ho x Wo with Ho = (H + 2p - k) / s + 1.
/// Square kernel k, stride s >= 1, zero padding p >= 0; `Conv2d::same(o, k, s)` picks
/// p = (k - 1) / 2 for odd k (Ho = ceil(H / s)).
///
/// Parameters: weight [O, C, k, k] row-major (PyTorch's layout), then bias [O].
/// Eigen sees the weight as the column-major matrix W^T (C*k*k x O).
///
/// Forward builds, for the whole batch, the patch matrix P (N*Ho*Wo x C*k*k),
/// computes Z = P W^T + b in one GEMM, and scatters Z into NCHW columns.
/// Backward: dW^T = P^T dZ, db = column sums of dZ, dP = dZ W, then col2im.
#include <algorithm>

#include "layer.hpp"

namespace fedmoe {

template <class Scalar = float>
class Conv2d {
public:
  using scalar_type = Scalar;

  Conv2d(Index out_channels, Index kernel, Index stride = 1, Index padding = 0)
      : m_out(out_channels), m_k(kernel), m_stride(stride), m_pad(padding) {
    FEDMOE_CHECK(out_channels > 0, "Conv2d: expected out_channels > 0, got ", out_channels);
    FEDMOE_CHECK(kernel > 0, "Conv2d: expected kernel > 0, got ", kernel);
    FEDMOE_CHECK(stride > 0, "Conv2d: expected stride > 0, got ", stride);
    FEDMOE_CHECK(padding >= 0, "Conv2d: expected padding >= 0, got ", padding);
  }
  /// "same" padding for an odd kernel: p = (k - 1) / 2, so Ho = ceil(H / stride).
  static Conv2d same(Index out_channels, Index kernel, Index stride = 1) {
    FEDMOE_CHECK(kernel % 2 == 1, "Conv2d::same: expected an odd kernel, got ", kernel);
    return Conv2d(out_channels, kernel, stride, (kernel - 1) / 2);
  }

  Shape configure(Shape in) {
    FEDMOE_CHECK(in.channels > 0, "Conv2d: expected input channels > 0, got ", in);
    FEDMOE_CHECK(in.height + 2 * m_pad >= m_k && in.width + 2 * m_pad >= m_k, "Conv2d: kernel ", m_k,
                 " with padding ", m_pad, " does not fit input ", in);
    m_in = in;
    m_oh = (in.height + 2 * m_pad - m_k) / m_stride + 1;
    m_ow = (in.width + 2 * m_pad - m_k) / m_stride + 1;
    return Shape{m_out, m_oh, m_ow};
  }
  Index num_params() const { return patch() * m_out + m_out; }
  std::string name() const { return "conv2d"; }
  std::vector<TensorInfo> tensors() const {
    return {{"weight", 0, {m_out, m_in.channels, m_k, m_k}}, {"bias", patch() * m_out, {m_out}}};
  }

  void init(VectorMap<Scalar> params, Rng& rng) const {
    const double bound = 1.0 / std::sqrt(static_cast<double>(patch()));  // fan_in = C*k*k
    for (Index i = 0; i < params.size(); ++i) params[i] = rng.uniform<Scalar>(Scalar(-bound), Scalar(bound));
  }

  template <class In>
  void forward(ConstVectorMap<Scalar> params, const In& x, Matrix<Scalar>& y, Mode, Rng&) {
    detail::check_batch<Scalar>("Conv2d::forward", m_in.size(), x.rows(), x.cols());
    const Index n = x.cols(), hw = m_oh * m_ow;
    im2col(x);
    m_z.resize(n * hw, m_out);
    m_z.noalias() = m_patches * weight_t(params);
    y.resize(m_out * hw, n);
    const auto b = bias(params);
    for (Index s = 0; s < n; ++s)
      for (Index o = 0; o < m_out; ++o)
        y.col(s).segment(o * hw, hw) = m_z.col(o).segment(s * hw, hw).array() + b[o];
  }

  template <class In>
  void backward(ConstVectorMap<Scalar> params, const In& x, const Matrix<Scalar>&, const Matrix<Scalar>& dy,
                Matrix<Scalar>* dx, VectorMap<Scalar> grad) {
    const Index n = dy.cols(), hw = m_oh * m_ow;
    FEDMOE_CHECK(m_patches.rows() == n * hw && x.cols() == n,
                 "Conv2d::backward: expected the batch of the last forward (", m_patches.rows() / std::max<Index>(hw, 1),
                 " samples), got ", n);
    m_z.resize(n * hw, m_out);  // reused as dZ
    for (Index s = 0; s < n; ++s)
      for (Index o = 0; o < m_out; ++o) m_z.col(o).segment(s * hw, hw) = dy.col(s).segment(o * hw, hw);
    MatrixMap<Scalar>(grad.data(), patch(), m_out).noalias() = m_patches.transpose() * m_z;
    VectorMap<Scalar>(grad.data() + patch() * m_out, m_out).noalias() = m_z.colwise().sum().transpose();
    if (dx) {
      m_dpatches.resize(n * hw, patch());
      m_dpatches.noalias() = m_z * weight_t(params).transpose();
      col2im(*dx, n);
    }
  }

  ConstMatrixMap<Scalar> weight_t(ConstVectorMap<Scalar> params) const {
    return ConstMatrixMap<Scalar>(params.data(), patch(), m_out);
  }
  ConstVectorMap<Scalar> bias(ConstVectorMap<Scalar> params) const {
    return ConstVectorMap<Scalar>(params.data() + patch() * m_out, m_out);
  }

private:
  Index patch() const { return m_in.channels * m_k * m_k; }

  template <class In>
  void im2col(const In& x) {
    const Index n = x.cols(), hw = m_oh * m_ow, H = m_in.height, W = m_in.width;
    m_patches.resize(n * hw, patch());
    for (Index c = 0; c < m_in.channels; ++c)
      for (Index ky = 0; ky < m_k; ++ky)
        for (Index kx = 0; kx < m_k; ++kx) {
          Scalar* col = m_patches.col((c * m_k + ky) * m_k + kx).data();
          for (Index s = 0; s < n; ++s) {
            const Scalar* img = x.col(s).data() + c * H * W;
            Scalar* out = col + s * hw;
            for (Index oy = 0; oy < m_oh; ++oy) {
              const Index iy = oy * m_stride - m_pad + ky;
              if (iy < 0 || iy >= H) {
                std::fill(out + oy * m_ow, out + (oy + 1) * m_ow, Scalar(0));
                continue;
              }
              for (Index ox = 0; ox < m_ow; ++ox) {
                const Index ix = ox * m_stride - m_pad + kx;
                out[oy * m_ow + ox] = (ix >= 0 && ix < W) ? img[iy * W + ix] : Scalar(0);
              }
            }
          }
        }
  }

  void col2im(Matrix<Scalar>& dx, Index n) const {
    const Index hw = m_oh * m_ow, H = m_in.height, W = m_in.width;
    dx.setZero(m_in.size(), n);
    for (Index c = 0; c < m_in.channels; ++c)
      for (Index ky = 0; ky < m_k; ++ky)
        for (Index kx = 0; kx < m_k; ++kx) {
          const Scalar* col = m_dpatches.col((c * m_k + ky) * m_k + kx).data();
          for (Index s = 0; s < n; ++s) {
            Scalar* img = dx.col(s).data() + c * H * W;
            const Scalar* in = col + s * hw;
            for (Index oy = 0; oy < m_oh; ++oy) {
              const Index iy = oy * m_stride - m_pad + ky;
              if (iy < 0 || iy >= H) continue;
              for (Index ox = 0; ox < m_ow; ++ox) {
                const Index ix = ox * m_stride - m_pad + kx;
                if (ix >= 0 && ix < W) img[iy * W + ix] += in[oy * m_ow + ox];
              }
            }
          }
        }
  }

  Index m_out, m_k, m_stride, m_pad;
  Shape m_in{};
  Index m_oh = 0, m_ow = 0;
  Matrix<Scalar> m_patches, m_z, m_dpatches;  // workspaces, sized once per batch size
};

}  // namespace fedmoe
