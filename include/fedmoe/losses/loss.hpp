#pragma once
/// @file loss.hpp
/// @brief The Loss concept: a batch of model outputs and targets -> the mean loss, and dL/doutput.
///
/// - `target_type`: Labels for class losses, Matrix<Scalar> for regression-style losses;
/// - `value(out, target)`: the loss averaged over the batch (PyTorch's reduction='mean');
/// - `gradient(out, target, grad)`: writes dL/dout into grad (sized like out), returns the value.
#include <concepts>

#include "../core/error.hpp"
#include "../core/tensor.hpp"

namespace fedmoe {

template <class L>
concept Loss = requires(L loss, const Matrix<typename L::scalar_type>& out, const typename L::target_type& target,
                        Matrix<typename L::scalar_type>& grad) {
  typename L::scalar_type;
  typename L::target_type;
  { loss.value(out, target) } -> std::convertible_to<typename L::scalar_type>;
  { loss.gradient(out, target, grad) } -> std::convertible_to<typename L::scalar_type>;
};

namespace detail {
template <class Out>
void check_labels(const char* who, const Out& out, const Labels& labels) {
  FEDMOE_CHECK(out.cols() > 0, who, ": expected a non-empty batch, got 0 columns");
  FEDMOE_CHECK(labels.size() == out.cols(), who, ": expected ", out.cols(), " labels (one per column), got ",
               labels.size());
  for (Index j = 0; j < labels.size(); ++j)
    FEDMOE_CHECK(labels[j] >= 0 && labels[j] < out.rows(), who, ": expected labels in [0, ", out.rows(),
                 "), got ", labels[j], " at sample ", j);
}
template <class Out, class Target>
void check_same_shape(const char* who, const Out& out, const Target& target) {
  FEDMOE_CHECK(out.cols() > 0, who, ": expected a non-empty batch, got 0 columns");
  FEDMOE_CHECK(out.rows() == target.rows() && out.cols() == target.cols(), who, ": expected a target of shape ",
               out.rows(), "x", out.cols(), ", got ", target.rows(), "x", target.cols());
}
}  // namespace detail

}  // namespace fedmoe
