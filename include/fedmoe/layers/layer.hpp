#pragma once
/// @file layer.hpp
/// @brief The Layer concept: what a layer provides to a Sequential model.
///
/// A layer does not own its parameters. The model owns one contiguous parameter
/// vector and one gradient vector; at each call a layer is handed the slice that is
/// its own (`num_params()` values, as an Eigen::Map). A layer owns only its
/// workspaces (sized once per batch size, then reused: a steady-state step does not
/// allocate) and whatever it must remember between forward and backward (a max-pool's
/// argmax, a dropout mask).
///
/// Steps, as in mlpack:
/// - `configure(Shape in) -> Shape out`: fixes the input shape, returns the output shape.
/// - `forward(params, x, y, mode, rng)`: y = f(x) for a batch (one column per sample).
/// - `backward(params, x, y, dy, dx, grad)`: given dL/dy, writes dL/dparams into `grad`
///   (overwrites, does not accumulate) and, when `dx` is not null, dL/dx into `*dx`.
/// - `init(params, rng)`: PyTorch's default initialisation.
/// - `tensors()`: the named parameter tensors in PyTorch's layout, for serialization.
#include <concepts>
#include <string>
#include <vector>

#include "../core/rng.hpp"
#include "../core/tensor.hpp"

namespace fedmoe {

/// A named parameter tensor inside a layer's slice, dims in PyTorch's order (row-major).
struct TensorInfo {
  std::string name;        ///< "weight", "bias"
  Index offset = 0;        ///< first element, relative to the layer's slice
  std::vector<Index> dims; ///< e.g. {out, in} for a dense weight, {out, in, kh, kw} for a conv
  Index size() const {
    Index n = 1;
    for (Index d : dims) n *= d;
    return n;
  }
};

template <class L>
concept Layer = requires(L layer, const L clayer, Shape shape, ConstVectorMap<typename L::scalar_type> params,
                         VectorMap<typename L::scalar_type> grad, const Matrix<typename L::scalar_type>& x,
                         Matrix<typename L::scalar_type>& y, Matrix<typename L::scalar_type>* dx, Mode mode,
                         Rng& rng) {
  typename L::scalar_type;
  { layer.configure(shape) } -> std::same_as<Shape>;
  { clayer.num_params() } -> std::convertible_to<Index>;
  { clayer.name() } -> std::convertible_to<std::string>;
  { clayer.tensors() } -> std::same_as<std::vector<TensorInfo>>;
  layer.forward(params, x, y, mode, rng);
  layer.backward(params, x, x, x, dx, grad);
  layer.init(grad, rng);
};

namespace detail {
template <class Scalar>
inline void check_batch(const char* who, Index expected_rows, Index rows, Index cols) {
  FEDMOE_CHECK(rows == expected_rows, who, ": expected input with ", expected_rows,
               " rows (features per sample), got ", rows);
  FEDMOE_CHECK(cols > 0, who, ": expected a non-empty batch (>= 1 column), got 0 columns");
}
}  // namespace detail

}  // namespace fedmoe
