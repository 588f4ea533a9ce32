#pragma once
/// @file model.hpp
/// @brief The Model concept: what every fedmoe model (and so every expert and gate trunk) provides.
///
/// - `scalar_type`; `num_params()`, `input_size()`, `output_size()`;
/// - `parameters()` / `gradients()`: each ONE contiguous Vector (aggregation, optimizers,
///   serialization and transport all work on these plain vectors);
/// - `init(rng)`: PyTorch's default initialisation, seeded;
/// - `forward(x, mode, rng) -> const Matrix&`: outputs for a batch (one column per sample);
///   the reference stays valid until the next forward;
/// - `backward(x, dy, input_grad) -> const Matrix&`: after forward(x), sets `gradients()` to
///   dL/dparams given dy = dL/doutput (overwrites, does not accumulate); returns dL/dx when
///   `input_grad` is true (else an empty matrix).
#include <concepts>

#include "../core/rng.hpp"
#include "../core/tensor.hpp"

namespace fedmoe {

template <class M>
concept Model = requires(M m, const M cm, const Matrix<typename M::scalar_type>& x, Rng& rng) {
  typename M::scalar_type;
  { cm.num_params() } -> std::convertible_to<Index>;
  { cm.input_size() } -> std::convertible_to<Index>;
  { cm.output_size() } -> std::convertible_to<Index>;
  { m.parameters() } -> std::same_as<Vector<typename M::scalar_type>&>;
  { cm.parameters() } -> std::same_as<const Vector<typename M::scalar_type>&>;
  { m.gradients() } -> std::same_as<Vector<typename M::scalar_type>&>;
  m.init(rng);
  { m.forward(x, Mode::train, rng) } -> std::same_as<const Matrix<typename M::scalar_type>&>;
  { m.backward(x, x, true) } -> std::same_as<const Matrix<typename M::scalar_type>&>;
};

}  // namespace fedmoe
