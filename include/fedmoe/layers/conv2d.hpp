#pragma once
/// @file conv2d.hpp
/// @brief 2-D convolution (cross-correlation, as PyTorch's Conv2d) by per-sample im2col + GEMM.
///
/// Input C x H x W per sample, output O x Ho x Wo with Ho = (H + 2p - k) / s + 1.
/// Square kernel k, stride s >= 1, zero padding p >= 0; `Conv2d::same(o, k, s)` picks
/// p = (k - 1) / 2 for odd k (Ho = ceil(H / s)).
///
/// Parameters: weight [O, C, k, k] row-major (PyTorch's layout), then bias [O].
/// Eigen sees the weight as the column-major matrix W^T (C*k*k x O).
///
/// Per sample (so every workspace stays cache-resident whatever the batch), forward builds the
/// patch matrix P_s (Ho*Wo x C*k*k; column (c, ky, kx) is the shifted input plane) and computes
/// Y_s = P_s W^T + b with one GEMM written straight into the sample's output column, whose memory
/// is exactly the (Ho*Wo x O) column-major matrix (NCHW): no scatter. Backward rebuilds P_s from x
/// (an L2-resident copy, cheaper than streaming the whole batch's patches back from memory):
///     dW^T = sum_s P_s^T dY_s and db = sum_s colsum(dY_s), summed in sample order;
///     dP_s = dY_s W, then col2im into the sample's dx column.
#include <algorithm>
#include <type_traits>

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
    const Index n = x.cols(), hw = m_oh * m_ow, kk = patch();
    m_patches.resize(hw, kk);
    m_batch = n;
    y.resize(m_out * hw, n);
    const auto wt = weight_t(params);
    const auto b = bias(params);
    for (Index s = 0; s < n; ++s) {
      Scalar* ps = m_patches.data();
      im2col(x.col(s).data(), ps);
      MatrixMap<Scalar> ys(y.col(s).data(), hw, m_out);
      const ConstMatrixMap<Scalar> p(ps, hw, kk);
      for (Index r = 0; r < hw; r += rows_per_gemm()) {
        const Index m = std::min(rows_per_gemm(), hw - r);
        ys.middleRows(r, m).noalias() = p.middleRows(r, m) * wt;
      }
      ys.rowwise() += b.transpose();
    }
  }

  template <class In>
  void backward(ConstVectorMap<Scalar> params, const In& x, const Matrix<Scalar>&, const Matrix<Scalar>& dy,
                Matrix<Scalar>* dx, VectorMap<Scalar> grad) {
    const Index n = dy.cols(), hw = m_oh * m_ow, kk = patch();
    FEDMOE_CHECK(m_batch == n && x.cols() == n, "Conv2d::backward: expected the batch of the last forward (",
                 m_batch, " samples), got ", n);
    MatrixMap<Scalar> dwt(grad.data(), kk, m_out);
    VectorMap<Scalar> db(grad.data() + kk * m_out, m_out);
    if (dx) {
      dx->resize(m_in.size(), n);
      m_dpatches.resize(hw, kk);
    }
    const auto wt = weight_t(params);
    for (Index s = 0; s < n; ++s) {
      im2col(x.col(s).data(), m_patches.data());  // recomputed: cheaper than keeping the batch's patches
      const ConstMatrixMap<Scalar> ps(m_patches.data(), hw, kk);
      const ConstMatrixMap<Scalar> dys(dy.col(s).data(), hw, m_out);
      if (s == 0) {
        dwt.setZero();
        db.setZero();
      }
      for (Index r = 0; r < hw; r += rows_per_gemm()) {
        const Index m = std::min(rows_per_gemm(), hw - r);
        dwt.noalias() += ps.middleRows(r, m).transpose() * dys.middleRows(r, m);
      }
      db.noalias() += dys.colwise().sum().transpose();
      if (dx) {
        m_dpatches.noalias() = dys * wt.transpose();
        col2im(m_dpatches.data(), dx->col(s).data());
      }
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

  // GEMMs are split into row blocks of at most 64 KiB of patches, so that Eigen's packing buffers stay
  // on the stack (below EIGEN_STACK_ALLOCATION_LIMIT): a steady-state step never touches the heap.
  Index rows_per_gemm() const {
    return std::max<Index>(1, Index(65536 / sizeof(Scalar)) / std::max(patch(), m_out));
  }

  // One sample's image (C x H x W) -> its patch matrix P (hw x C*k*k, column-major).
  void im2col(const Scalar* img, Scalar* p) const {
    const Index hw = m_oh * m_ow, H = m_in.height, W = m_in.width;
    if (m_stride == 1 && m_pad == 0) {  // the paper's convolutions: every patch row is a contiguous input slice
      for (Index c = 0; c < m_in.channels; ++c)
        for (Index ky = 0; ky < m_k; ++ky)
          for (Index kx = 0; kx < m_k; ++kx)
            window<false>(img + (c * H + ky) * W + kx, p + ((c * m_k + ky) * m_k + kx) * hw);
      return;
    }
    for (Index c = 0; c < m_in.channels; ++c)
      for (Index ky = 0; ky < m_k; ++ky)
        for (Index kx = 0; kx < m_k; ++kx) {
          Scalar* out = p + ((c * m_k + ky) * m_k + kx) * hw;
          const Scalar* plane = img + c * H * W;
          for (Index oy = 0; oy < m_oh; ++oy, out += m_ow) {
            const Index iy = oy * m_stride - m_pad + ky;
            if (iy < 0 || iy >= H) {
              std::fill(out, out + m_ow, Scalar(0));
              continue;
            }
            const Scalar* row = plane + iy * W;
            for (Index ox = 0; ox < m_ow; ++ox) {
              const Index ix = ox * m_stride - m_pad + kx;
              out[ox] = (ix >= 0 && ix < W) ? row[ix] : Scalar(0);
            }
          }
        }
  }

  // The stride-1, unpadded patch column of one (c, ky, kx) is an oh x ow window of the image, with rows W
  // apart. window<false> copies the window at `img` into the contiguous column `col` (im2col);
  // window<true> adds the column into the window (col2im), element by element in the same order as the
  // general loops. Rows are moved in fixed 8-float blocks, which compile to inline vector moves (a memmove
  // call per row, what std::copy becomes, costs more than the copy); the usual widths (8, 16, 24: the
  // paper's 8 and 24) get a compile-time block count, so the per-row loop overhead disappears too.
  template <bool Add>
  using ImagePtr = std::conditional_t<Add, Scalar*, const Scalar*>;  // written by col2im, read by im2col
  template <bool Add>
  using ColumnPtr = std::conditional_t<Add, const Scalar*, Scalar*>;

  template <bool Add>
  void window(ImagePtr<Add> img, ColumnPtr<Add> col) const {
    switch (m_ow) {
      case 8: return window_blocks<Add, 1>(img, col);
      case 16: return window_blocks<Add, 2>(img, col);
      case 24: return window_blocks<Add, 3>(img, col);
      default: break;
    }
    using Block = Eigen::Matrix<Scalar, 8, 1>;
    const Index W = m_in.width;
    for (Index oy = 0; oy < m_oh; ++oy, img += W, col += m_ow) {
      Index i = 0;
      for (; i + 8 <= m_ow; i += 8) {
        if constexpr (Add) Eigen::Map<Block>(img + i) += Eigen::Map<const Block>(col + i);
        else Eigen::Map<Block>(col + i) = Eigen::Map<const Block>(img + i);
      }
      for (; i < m_ow; ++i) {
        if constexpr (Add) img[i] += col[i];
        else col[i] = img[i];
      }
    }
  }
  template <bool Add, int Blocks>
  void window_blocks(ImagePtr<Add> img, ColumnPtr<Add> col) const {
    using Block = Eigen::Matrix<Scalar, 8, 1>;
    const Index W = m_in.width;
    for (Index oy = 0; oy < m_oh; ++oy, img += W, col += 8 * Blocks)
      for (int b = 0; b < Blocks; ++b) {
        if constexpr (Add) Eigen::Map<Block>(img + 8 * b) += Eigen::Map<const Block>(col + 8 * b);
        else Eigen::Map<Block>(col + 8 * b) = Eigen::Map<const Block>(img + 8 * b);
      }
  }

  // One sample's patch gradients dP (hw x C*k*k) -> its image gradient (C x H x W), overwritten.
  void col2im(const Scalar* dp, Scalar* img) const {
    const Index hw = m_oh * m_ow, H = m_in.height, W = m_in.width;
    std::fill(img, img + m_in.size(), Scalar(0));
    if (m_stride == 1 && m_pad == 0) {  // as below, without the bounds tests (every row is inside the image)
      for (Index c = 0; c < m_in.channels; ++c)
        for (Index ky = 0; ky < m_k; ++ky)
          for (Index kx = 0; kx < m_k; ++kx)
            window<true>(img + (c * H + ky) * W + kx, dp + ((c * m_k + ky) * m_k + kx) * hw);
      return;
    }
    for (Index c = 0; c < m_in.channels; ++c)
      for (Index ky = 0; ky < m_k; ++ky)
        for (Index kx = 0; kx < m_k; ++kx) {
          const Scalar* in = dp + ((c * m_k + ky) * m_k + kx) * hw;
          Scalar* plane = img + c * H * W;
          for (Index oy = 0; oy < m_oh; ++oy, in += m_ow) {
            const Index iy = oy * m_stride - m_pad + ky;
            if (iy < 0 || iy >= H) continue;
            Scalar* row = plane + iy * W;
            for (Index ox = 0; ox < m_ow; ++ox) {
              const Index ix = ox * m_stride - m_pad + kx;
              if (ix >= 0 && ix < W) row[ix] += in[ox];
            }
          }
        }
  }

  Index m_out, m_k, m_stride, m_pad;
  Shape m_in{};
  Index m_oh = 0, m_ow = 0;
  Index m_batch = 0;          // batch of the last forward
  Matrix<Scalar> m_patches;   // hw x C*k*k: one sample's P_s (workspace; backward rebuilds it from x)
  Matrix<Scalar> m_dpatches;  // hw x C*k*k: one sample's dP_s (workspace)
};

}  // namespace fedmoe
