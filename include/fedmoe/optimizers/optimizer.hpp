#pragma once
/// @file optimizer.hpp
/// @brief The Optimizer concept: an update rule on one flat parameter vector.
///
/// - `step(params, grads)`: one update; the step counter advances once per call;
/// - `reset()`: forget all state (a fresh optimizer with the same hyperparameters);
/// - `state()` / `set_state(s)`: the complete state (moments and step count), so training
///   saved and restored resumes bitwise exactly (see io/serialization.hpp).
/// The state is sized to the parameter vector on the first step; later steps allocate nothing.
#include <concepts>
#include <cstdint>

#include "../core/error.hpp"
#include "../core/tensor.hpp"

namespace fedmoe {

template <class O>
concept Optimizer = requires(O opt, const O copt, Vector<typename O::scalar_type>& params,
                             const Vector<typename O::scalar_type>& grads, const typename O::state_type& state) {
  typename O::scalar_type;
  typename O::state_type;
  opt.step(params, grads);
  opt.reset();
  { copt.state() } -> std::convertible_to<const typename O::state_type&>;
  opt.set_state(state);
};

/// Optimizer state: up to two moment vectors and the number of steps taken.
template <class Scalar>
struct OptimizerState {
  Vector<Scalar> first;   ///< SGD: momentum buffer; Adam: m
  Vector<Scalar> second;  ///< Adam: v; unused by SGD
  std::int64_t steps = 0;
};

namespace detail {
template <class Scalar>
void check_step(const char* who, const Vector<Scalar>& params, const Vector<Scalar>& grads,
                const OptimizerState<Scalar>& state) {
  FEDMOE_CHECK(params.size() == grads.size(), who, ": expected gradients of size ", params.size(),
               " (the parameters), got ", grads.size());
  FEDMOE_CHECK(state.steps == 0 || state.first.size() == params.size(), who, ": the optimizer state has size ",
               state.first.size(), " but the parameters have size ", params.size(), " (reset() between models)");
}
}  // namespace detail

}  // namespace fedmoe
