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
///
/// Optionally `input_shape() -> Shape`, the shape of one input sample (Sequential has it). A model
/// without it reads flat vectors: its input shape is {input_size(), 1, 1} (input_shape_of).
///
/// **Shapes, not sizes.** Wherever a model meets a Dataset (evaluate, train_epoch, fit, the mixture
/// and the mixture-of-experts layer), the model's input shape must equal the data's sample shape, not
/// only its size: a 14 x 56 image has the 784 values of a 28 x 28 one, and a CNN built for 28 x 28 would
/// train on it without a complaint. A model whose first layer is Dense reads any shape (it flattens), so
/// build it for the data's shape (mlp(Shape{1, 28, 28}) for Fashion-MNIST).
#include <concepts>

#include "../core/error.hpp"
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

/// The shape of one input sample of `model`: its input_shape(), or {input_size(), 1, 1} for a model
/// that reads flat vectors.
template <class M>
Shape input_shape_of(const M& model) {
  if constexpr (requires { { model.input_shape() } -> std::convertible_to<Shape>; }) return model.input_shape();
  else return Shape{model.input_size(), 1, 1};
}

/// Throws unless a model whose samples have shape `model_shape` may read data whose samples have shape
/// `data_shape`: the shapes must be equal (see "Shapes, not sizes" above). The message names both.
inline void check_sample_shape(const char* who, Shape model_shape, Shape data_shape) {
  FEDMOE_CHECK(model_shape == data_shape, who, ": the model expects samples of shape ", model_shape,
               ", the data has samples of shape ", data_shape,
               (model_shape.size() == data_shape.size() ? " (the same number of values, in another shape)" : ""));
}

/// A Model that refers to another one (never owns it): every call goes to `*model`. Lets a type that
/// stores its models by value (a gate adapter, an expert list) work on models the caller keeps, as the
/// mixtures do (a client's models are the client's).
template <Model M>
class ModelRef {
public:
  using scalar_type = typename M::scalar_type;
  using S = scalar_type;
  explicit ModelRef(M& model) : m_model(&model) {}
  Index num_params() const { return m_model->num_params(); }
  Index input_size() const { return m_model->input_size(); }
  Index output_size() const { return m_model->output_size(); }
  Shape input_shape() const { return input_shape_of(*m_model); }
  Vector<S>& parameters() { return m_model->parameters(); }
  const Vector<S>& parameters() const { return m_model->parameters(); }
  Vector<S>& gradients() { return m_model->gradients(); }
  void init(Rng& rng) { m_model->init(rng); }
  const Matrix<S>& forward(const Matrix<S>& x, Mode mode, Rng& rng) { return m_model->forward(x, mode, rng); }
  const Matrix<S>& backward(const Matrix<S>& x, const Matrix<S>& dy, bool input_grad = false) {
    return m_model->backward(x, dy, input_grad);
  }
  M& get() const { return *m_model; }

private:
  M* m_model;
};

}  // namespace fedmoe
