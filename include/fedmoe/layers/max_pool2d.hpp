#pragma once
/// @file max_pool2d.hpp
/// @brief 2-D max pooling, window k and stride s (default s = k), no padding, per channel.
///
/// Output Ho = (H - k) / s + 1. The argmax of each window is kept for backward; ties go
/// to the first maximum in row-major window order (as PyTorch on CPU).
#include <concepts>
#include <cstdint>
#include <cstring>
#include <limits>

#include "layer.hpp"

namespace fedmoe {

#if defined(__GNUC__)  // GCC and Clang; other compilers take the scalar loop
#define FEDMOE_VECTOR_EXTENSIONS 1
namespace detail {
// GCC/Clang vector extensions for the 2x2 pooling kernel (plain SSE2 code without AVX, ymm with it).
typedef float f32x4 __attribute__((vector_size(16)));
typedef float f32x8 __attribute__((vector_size(32)));
typedef std::int32_t i32x4 __attribute__((vector_size(16)));
typedef std::int32_t i32x8 __attribute__((vector_size(32)));
}  // namespace detail
#endif

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
            // Blocks of 8 outputs with the compiler's vector extensions (GCC and Clang): the compares become
            // vector compares and blends. Scalar code compiles to data-dependent branches, which mispredict.
            const Scalar* r0 = img + row0;
            const Scalar* r1 = r0 + W;
            const auto i0 = static_cast<std::int32_t>(row0), w = static_cast<std::int32_t>(W);
            Index ox = 0;
#ifdef FEDMOE_VECTOR_EXTENSIONS
            if constexpr (std::same_as<Scalar, float>) {
              for (; ox + 8 <= m_ow; ox += 8)
                pool_lanes<detail::f32x8, detail::i32x8>(r0 + 2 * ox, r1 + 2 * ox, i0 + 2 * std::int32_t(ox), w,
                                                         out + ox, arg + ox);
              for (; ox + 4 <= m_ow; ox += 4)
                pool_lanes<detail::f32x4, detail::i32x4>(r0 + 2 * ox, r1 + 2 * ox, i0 + 2 * std::int32_t(ox), w,
                                                         out + ox, arg + ox);
            }
#endif
            for (; ox < m_ow; ++ox) {
              const auto base = i0 + 2 * static_cast<std::int32_t>(ox);
              std::int32_t best = base;
              Scalar best_v = r0[2 * ox];
              pool_candidate(r0[2 * ox + 1], base + 1, best_v, best);
              pool_candidate(r1[2 * ox], base + w, best_v, best);
              pool_candidate(r1[2 * ox + 1], base + w + 1, best_v, best);
              out[ox] = best_v;
              arg[ox] = best;
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
  // Takes candidate v (at index i) if it beats the running maximum: strictly greater (ties keep the first),
  // or a NaN over a number (a NaN wins and stays, as PyTorch).
  static void pool_candidate(Scalar v, std::int32_t i, Scalar& best_v, std::int32_t& best) {
    const bool take = v > best_v || (v != v && best_v == best_v);
    best = take ? i : best;
    best_v = take ? v : best_v;
  }

  // N = 4 or 8 (the vector width) adjacent 2x2 windows starting at r0 (top row) and r1 (bottom row), the
  // first one's top-left element at index i: the same candidate order and rule as pool_candidate, lane by
  // lane, hence bitwise the same maxima and argmax. Compares give -1 (all bits) or 0 per lane; blends are
  // bitwise and/or, the float lanes reinterpreted as integers by the vector casts.
#ifdef FEDMOE_VECTOR_EXTENSIONS
  template <class fv, class iv>
  static void pool_lanes(const float* r0, const float* r1, std::int32_t i, std::int32_t w, float* out,
                         std::int32_t* arg) {
    constexpr int N = sizeof(fv) / sizeof(float);
    fv a{}, b{}, c{}, d{};
    iv ia{};
    for (int j = 0; j < N; ++j) {
      a[j] = r0[2 * j];
      b[j] = r0[2 * j + 1];
      c[j] = r1[2 * j];
      d[j] = r1[2 * j + 1];
      ia[j] = i + 2 * j;
    }
    fv best_v = a;
    iv best = ia;
    const auto take = [&](const fv& v, const iv& idx) {  // by reference: no vector ABI in a call
      const iv t = (v > best_v) | ((v != v) & (best_v == best_v));  // lanes: -1 (take) or 0
      best = (idx & t) | (best & ~t);
      best_v = (fv)(((iv)v & t) | ((iv)best_v & ~t));
    };
    take(b, ia + 1);
    take(c, ia + w);
    take(d, ia + w + 1);
    std::memcpy(out, &best_v, sizeof best_v);
    std::memcpy(arg, &best, sizeof best);
  }
#endif

  Index m_k, m_stride;
  Shape m_in{};
  Index m_oh = 0, m_ow = 0;
  Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic> m_argmax;
};

}  // namespace fedmoe
