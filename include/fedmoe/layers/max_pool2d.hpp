#pragma once
/// @file max_pool2d.hpp
/// @brief 2-D max pooling, window k and stride s (default s = k), no padding, per channel.
///
/// Output Ho = (H - k) / s + 1. The argmax of each window is kept for backward; ties go
/// to the first maximum in row-major window order (as PyTorch on CPU).
#include <limits>

#include "layer.hpp"

namespace fedmoe {

template <class Scalar = float>
class MaxPool2d {
public:
  using scalar_type = Scalar;

  explicit MaxPool2d(Index window = 2, Index stride = 0) : m_k(window), m_stride(stride > 0 ? stride : window) {
    FEDMOE_CHECK(window > 0, "MaxPool2d: expected window > 0, got ", window);
    FEDMOE_CHECK(stride >= 0, "MaxPool2d: expected stride >= 0 (0 means = window), got ", stride);
  }

  Shape configure(Shape in) {
    FEDMOE_CHECK(in.height >= m_k && in.width >= m_k, "MaxPool2d: window ", m_k, " does not fit input ", in);
    m_in = in;
    m_oh = (in.height - m_k) / m_stride + 1;
    m_ow = (in.width - m_k) / m_stride + 1;
    return Shape{in.channels, m_oh, m_ow};
  }
  Index num_params() const { return 0; }
  std::string name() const { return "max_pool2d"; }
  std::vector<TensorInfo> tensors() const { return {}; }
  void init(VectorMap<Scalar>, Rng&) const {}

  template <class In>
  void forward(ConstVectorMap<Scalar>, const In& x, Matrix<Scalar>& y, Mode, Rng&) {
    detail::check_batch<Scalar>("MaxPool2d::forward", m_in.size(), x.rows(), x.cols());
    const Index n = x.cols(), H = m_in.height, W = m_in.width, out_size = m_in.channels * m_oh * m_ow;
    y.resize(out_size, n);
    m_argmax.resize(out_size, n);
    for (Index s = 0; s < n; ++s) {
      const Scalar* img = x.col(s).data();
      Scalar* out = y.col(s).data();
      std::int32_t* arg = m_argmax.col(s).data();
      for (Index c = 0; c < m_in.channels; ++c)
        for (Index oy = 0; oy < m_oh; ++oy) {
          const Index row0 = c * H * W + oy * m_stride * W;
          if (m_k == 2 && m_stride == 2) {  // the paper's pooling: four candidates, branch-free selects
            for (Index ox = 0; ox < m_ow; ++ox) {
              Index best = row0 + 2 * ox;
              Scalar best_v = img[best];
              const Index cand[3] = {best + 1, best + W, best + W + 1};
              for (Index idx : cand) {
                const Scalar v = img[idx];
                const bool take = v > best_v || (v != v && best_v == best_v);  // a NaN wins and stays
                best = take ? idx : best;
                best_v = take ? v : best_v;
              }
              out[ox] = best_v;
              arg[ox] = static_cast<std::int32_t>(best);
            }
            out += m_ow;
            arg += m_ow;
            continue;
          }
          for (Index ox = 0; ox < m_ow; ++ox, ++out, ++arg) {
            Index best = row0 + ox * m_stride;
            Scalar best_v = img[best];
            for (Index ky = 0; ky < m_k; ++ky) {
              const Index r = row0 + ky * W + ox * m_stride;
              for (Index kx = 0; kx < m_k; ++kx) {
                const Scalar v = img[r + kx];
                const bool take = v > best_v || (v != v && best_v == best_v);  // a NaN wins and stays (PyTorch)
                best = take ? r + kx : best;
                best_v = take ? v : best_v;
              }
            }
            *out = best_v;
            *arg = static_cast<std::int32_t>(best);
          }
        }
    }
  }

  template <class In>
  void backward(ConstVectorMap<Scalar>, const In&, const Matrix<Scalar>&, const Matrix<Scalar>& dy,
                Matrix<Scalar>* dx, VectorMap<Scalar>) {
    if (!dx) return;
    FEDMOE_CHECK(dy.cols() == m_argmax.cols(), "MaxPool2d::backward: expected the batch of the last forward (",
                 m_argmax.cols(), " samples), got ", dy.cols());
    dx->setZero(m_in.size(), dy.cols());
    for (Index s = 0; s < dy.cols(); ++s) {
      Scalar* d = dx->col(s).data();
      const Scalar* g = dy.col(s).data();
      const std::int32_t* arg = m_argmax.col(s).data();
      for (Index o = 0; o < dy.rows(); ++o) d[arg[o]] += g[o];
    }
  }

private:
  Index m_k, m_stride;
  Shape m_in{};
  Index m_oh = 0, m_ow = 0;
  Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic> m_argmax;
};

}  // namespace fedmoe
