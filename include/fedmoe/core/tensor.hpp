#pragma once
/// @file tensor.hpp
/// @brief Matrix/vector aliases, the batch convention, and Shape.
///
/// **Batch convention (everywhere in fedmoe):** a batch is a column-major Eigen
/// matrix with one **column per sample** (features x batch). An image sample of
/// shape C x H x W is flattened in C, H, W order (row-major within a channel), so a
/// batch of images is laid out in memory exactly as PyTorch's NCHW tensor.
///
/// Parameters and gradients of a model are each one contiguous Vector; layers see
/// their slice as an Eigen::Map built at call time, so copying or moving a model can
/// never leave a layer pointing into another model's storage.
#include <Eigen/Core>
#include <cstdint>
#include <ostream>
#include <string>

namespace fedmoe {

using Index = Eigen::Index;

template <class Scalar>
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
template <class Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
template <class Scalar>
using RowVector = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;
template <class Scalar>
using MatrixMap = Eigen::Map<Matrix<Scalar>>;
template <class Scalar>
using ConstMatrixMap = Eigen::Map<const Matrix<Scalar>>;
template <class Scalar>
using VectorMap = Eigen::Map<Vector<Scalar>>;
template <class Scalar>
using ConstVectorMap = Eigen::Map<const Vector<Scalar>>;

/// Integer class labels, one per sample (column) of a batch.
using Labels = Eigen::Matrix<std::int32_t, Eigen::Dynamic, 1>;

/// Shape of one sample: channels x height x width (a dense vector is {n, 1, 1}).
struct Shape {
  Index channels = 0;
  Index height = 1;
  Index width = 1;

  constexpr Index size() const { return channels * height * width; }
  friend constexpr bool operator==(const Shape&, const Shape&) = default;
  /// "[CxHxW]", as error messages name shapes (see error.hpp).
  friend std::string to_string(const Shape& s) {
    return '[' + std::to_string(s.channels) + 'x' + std::to_string(s.height) + 'x' + std::to_string(s.width) + ']';
  }
  friend std::ostream& operator<<(std::ostream& out, const Shape& s) { return out << to_string(s); }
};

/// Whether a forward pass trains (dropout active) or evaluates.
enum class Mode { train, eval };

}  // namespace fedmoe
