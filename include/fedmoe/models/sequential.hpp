#pragma once
/// @file sequential.hpp
/// @brief Sequential: static composition of layers into a Model.
///
/// The layer types are template arguments, so every call is resolved at compile time
/// (no virtual dispatch) and a fixed architecture is one concrete type. The model owns
/// the parameter vector, the gradient vector, and each layer's output buffer; a layer
/// is handed its slice of the vectors at each call. Copies and moves are therefore
/// plain member-wise copies: no view can point into another model.
#include <algorithm>
#include <array>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../layers/layer.hpp"
#include "model.hpp"

namespace fedmoe {

template <class Scalar, class... Layers>
class Sequential {
  static_assert(sizeof...(Layers) > 0, "Sequential needs at least one layer");
  static_assert((Layer<Layers> && ...), "every Sequential element must satisfy fedmoe::Layer");
  static_assert((std::same_as<typename Layers::scalar_type, Scalar> && ...),
                "every layer of a Sequential must use the model's scalar type");

public:
  using scalar_type = Scalar;
  static constexpr std::size_t depth = sizeof...(Layers);

  /// Composes the layers for samples of shape `input`; parameters are zero until init().
  explicit Sequential(Shape input, Layers... layers) : m_layers(std::move(layers)...), m_input(input) {
    FEDMOE_CHECK(input.size() > 0, "Sequential: expected a non-empty input shape, got ", input);
    Shape s = input;
    Index offset = 0;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((m_offsets[I] = offset, s = std::get<I>(m_layers).configure(s), offset += std::get<I>(m_layers).num_params()),
       ...);
    }(std::make_index_sequence<depth>{});
    m_offsets[depth] = offset;
    m_output = s;
    m_params.setZero(offset);
    m_grads.setZero(offset);
  }

  Index num_params() const { return m_offsets[depth]; }
  Shape input_shape() const { return m_input; }
  Shape output_shape() const { return m_output; }
  Index input_size() const { return m_input.size(); }
  Index output_size() const { return m_output.size(); }

  Vector<Scalar>& parameters() { return m_params; }
  const Vector<Scalar>& parameters() const { return m_params; }
  Vector<Scalar>& gradients() { return m_grads; }
  const Vector<Scalar>& gradients() const { return m_grads; }

  template <std::size_t I> auto& layer() { return std::get<I>(m_layers); }
  template <std::size_t I> const auto& layer() const { return std::get<I>(m_layers); }
  /// Offset of layer I's slice in parameters().
  Index offset(std::size_t i) const { return m_offsets[i]; }

  /// PyTorch's default initialisation of every layer, drawn in layer order from rng.
  void init(Rng& rng) {
    [&]<std::size_t... I>(std::index_sequence<I...>) { (std::get<I>(m_layers).init(slice<I>(m_params), rng), ...); }
    (std::make_index_sequence<depth>{});
  }

  /// Outputs for the batch x (input_size() x batch). Dropout draws from rng in Mode::train.
  const Matrix<Scalar>& forward(const Eigen::Ref<const Matrix<Scalar>>& x, Mode mode, Rng& rng) {
    FEDMOE_CHECK(x.rows() == input_size(), "Sequential::forward: expected input with ", input_size(),
                 " rows (one column per sample, shape ", m_input, "), got ", x.rows());
    FEDMOE_CHECK(x.cols() > 0, "Sequential::forward: expected a non-empty batch, got 0 columns");
    forward_from<0>(x, mode, rng);
    return m_act[depth - 1];
  }
  /// Evaluation-mode forward (no randomness).
  const Matrix<Scalar>& forward(const Eigen::Ref<const Matrix<Scalar>>& x) {
    Rng unused(0);
    return forward(x, Mode::eval, unused);
  }

  /// Sizes every buffer an evaluation forward pass over batches of exactly `batch` columns uses, so that
  /// such passes allocate nothing from then on (embedded inference: examples/embedded_inference.cpp
  /// counts the allocations). It runs one such pass on zeros: the layers keep their outputs and
  /// workspaces between calls, and a pass of the same batch size finds them sized. A batch of another
  /// size resizes them again (Eigen matrices keep no spare capacity).
  void prepare(Index batch) {
    FEDMOE_CHECK(batch > 0, "Sequential::prepare: expected a batch size > 0, got ", batch);
    const Matrix<Scalar> zeros = Matrix<Scalar>::Zero(input_size(), batch);
    forward(zeros);
  }

  /// After forward(x): sets gradients() from dy = dL/doutput; returns dL/dx if input_grad.
  const Matrix<Scalar>& backward(const Eigen::Ref<const Matrix<Scalar>>& x, const Matrix<Scalar>& dy,
                                 bool input_grad = false) {
    FEDMOE_CHECK(dy.rows() == output_size() && dy.cols() == m_act[depth - 1].cols(),
                 "Sequential::backward: expected dy of shape ", output_size(), "x", m_act[depth - 1].cols(),
                 " (the output of the last forward), got ", dy.rows(), "x", dy.cols());
    FEDMOE_CHECK(x.rows() == input_size() && x.cols() == dy.cols(), "Sequential::backward: expected the input x of ",
                 "the last forward (", input_size(), "x", dy.cols(), "), got ", x.rows(), "x", x.cols());
    backward_from<depth - 1>(x, dy, input_grad);
    return input_grad ? m_delta[0] : m_no_input_grad;
  }

  /// Named parameter tensors, PyTorch nn.Sequential style: "<layer index>.weight", offsets into parameters().
  std::vector<TensorInfo> tensors() const {
    std::vector<TensorInfo> all;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (
          [&] {
            for (TensorInfo t : std::get<I>(m_layers).tensors()) {
              t.name = std::to_string(I) + "." + t.name;
              t.offset += m_offsets[I];
              all.push_back(std::move(t));
            }
          }(),
          ...);
    }(std::make_index_sequence<depth>{});
    return all;
  }

private:
  template <std::size_t I>
  ConstVectorMap<Scalar> slice(const Vector<Scalar>& v) const {
    return ConstVectorMap<Scalar>(v.data() + m_offsets[I], m_offsets[I + 1] - m_offsets[I]);
  }
  template <std::size_t I>
  VectorMap<Scalar> slice(Vector<Scalar>& v) {
    return VectorMap<Scalar>(v.data() + m_offsets[I], m_offsets[I + 1] - m_offsets[I]);
  }

  template <std::size_t I, class In>
  void forward_from(const In& in, Mode mode, Rng& rng) {
    std::get<I>(m_layers).forward(slice<I>(std::as_const(m_params)), in, m_act[I], mode, rng);
    if constexpr (I + 1 < depth) forward_from<I + 1>(m_act[I], mode, rng);
  }

  // Layer I reads dy from m_delta[I + 1] (or the caller's dy) and writes dx to m_delta[I]: one buffer per
  // layer, so each keeps its size from step to step and a steady-state backward never reallocates.
  template <std::size_t I>
  void backward_from(const Eigen::Ref<const Matrix<Scalar>>& x, const Matrix<Scalar>& dy_last, bool input_grad) {
    const Matrix<Scalar>& dy = (I + 1 == depth) ? dy_last : m_delta[std::min(I + 1, depth - 1)];
    Matrix<Scalar>* dx = (I > 0 || input_grad) ? &m_delta[I] : nullptr;
    auto grad = slice<I>(m_grads);
    if constexpr (I == 0) {
      std::get<0>(m_layers).backward(slice<0>(std::as_const(m_params)), x, m_act[0], dy, dx, grad);
    } else {
      std::get<I>(m_layers).backward(slice<I>(std::as_const(m_params)), m_act[I - 1], m_act[I], dy, dx, grad);
      backward_from<I - 1>(x, dy_last, input_grad);
    }
  }

  std::tuple<Layers...> m_layers;
  std::array<Index, depth + 1> m_offsets{};
  Shape m_input{}, m_output{};
  Vector<Scalar> m_params, m_grads;
  std::array<Matrix<Scalar>, depth> m_act;  // each layer's output
  std::array<Matrix<Scalar>, depth> m_delta;  // m_delta[I]: dL/d(input of layer I)
  Matrix<Scalar> m_no_input_grad;           // stays empty: returned when input_grad is false
};

}  // namespace fedmoe
