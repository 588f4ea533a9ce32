#pragma once
/// @file optimizer.hpp
/// @brief The Optimizer concept: an update rule on one flat parameter vector.
///
/// - `step(params, grads)`: one update; the step counter advances once per call;
/// - `reset()`: forget all state (a fresh optimizer with the same hyperparameters);
/// - `state()` / `set_state(s)`: the complete state (moments and step count), so training
///   saved and restored resumes bitwise exactly (see io/serialization.hpp).
/// The state is sized to the parameter vector on the first step; later steps allocate nothing.
///
/// Each optimizer keeps some of OptimizerState's two moment vectors (Sgd with momentum: `first`;
/// Adagrad: `second`, and `first` with momentum; Adam and Yogi: both) and leaves the others as they
/// are. Once steps > 0, every moment it keeps must have the parameters' size: `set_state` refuses a
/// state whose kept moments disagree in size, and `step` refuses one that does not match the
/// parameters, with a message naming the moment, its size and the expected one.
#include <algorithm>
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
  Vector<Scalar> first;   ///< Sgd: momentum buffer; Adagrad (beta1 > 0), Adam, Yogi: m
  Vector<Scalar> second;  ///< Adagrad: accumulator; Adam, Yogi: v; unused by Sgd
  std::int64_t steps = 0;
};

namespace detail {

/// The moment vectors an optimizer keeps in OptimizerState, by the name its messages give them
/// (nullptr: not kept, never read nor checked).
struct MomentUse {
  const char* first = nullptr;
  const char* second = nullptr;
};

/// The state an optimizer is given by set_state: steps >= 0 and, once steps > 0, the moments it
/// keeps have one size (the parameters' size is checked by check_step, which knows it).
template <class Scalar>
void check_state(const char* who, const OptimizerState<Scalar>& state, MomentUse use) {
  FEDMOE_CHECK(state.steps >= 0, who, ": expected steps >= 0, got ", state.steps);
  if (state.steps > 0 && use.first && use.second)
    FEDMOE_CHECK(state.first.size() == state.second.size(), who, ": inconsistent optimizer state after ",
                 state.steps, " steps: expected 'first' (", use.first, ") and 'second' (", use.second,
                 ") to have the same size, got ", state.first.size(), " and ", state.second.size(),
                 " (restore only a state saved from the same kind of optimizer)");
}

/// Before a step: gradients of the parameters' size and, once steps > 0, every kept moment too.
template <class Scalar>
void check_step(const char* who, const Vector<Scalar>& params, const Vector<Scalar>& grads,
                const OptimizerState<Scalar>& state, MomentUse use) {
  FEDMOE_CHECK(params.size() == grads.size(), who, ": expected gradients of size ", params.size(),
               " (the parameters), got ", grads.size());
  if (state.steps == 0) return;
  const auto check = [&](const char* record, const char* name, const Vector<Scalar>& moment) {
    FEDMOE_CHECK(moment.size() == params.size(), who, ": the optimizer state has size ", moment.size(), " in '",
                 record, "' (", name, ") after ", state.steps, " steps, expected ", params.size(),
                 " (the parameters' size; reset() between models, and restore only a state saved from the same "
                 "kind of optimizer on the same model)");
  };
  if (use.first) check("first", use.first, state.first);
  if (use.second) check("second", use.second, state.second);
}

/// Calls f(start, length) over [0, n) in chunks of L1-sized length, so an optimizer's per-element
/// updates of several vectors run back to back while each chunk is cache-resident.
template <class F>
void for_each_chunk(Index n, F&& f) {
  constexpr Index chunk = 1024;
  for (Index start = 0; start < n; start += chunk) f(start, std::min(chunk, n - start));
}

}  // namespace detail

}  // namespace fedmoe
