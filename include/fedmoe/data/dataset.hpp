#pragma once
/// @file dataset.hpp
/// @brief Dataset: inputs (one column per sample, see core/tensor.hpp) and integer labels.
///
/// Clients never copy the dataset: a client's data is a list of indices into a shared
/// Dataset (see data/partition.hpp), and mini-batches are gathered into a reused workspace.
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"

namespace fedmoe {

template <class Scalar = float>
struct Dataset {
  Matrix<Scalar> inputs;  ///< shape.size() x n, one column per sample
  Labels labels;          ///< n labels in [0, classes)
  Shape shape{};          ///< shape of one sample
  Index classes = 0;

  Index size() const { return inputs.cols(); }

  /// Throws unless inputs, labels, shape and classes agree.
  void validate(const char* who = "Dataset") const {
    FEDMOE_CHECK(inputs.rows() == shape.size(), who, ": expected ", shape.size(), " input rows for samples of shape ",
                 shape, ", got ", inputs.rows());
    FEDMOE_CHECK(labels.size() == inputs.cols(), who, ": expected ", inputs.cols(), " labels (one per sample), got ",
                 labels.size());
    FEDMOE_CHECK(classes > 0, who, ": expected classes > 0, got ", classes);
    for (Index i = 0; i < labels.size(); ++i)
      FEDMOE_CHECK(labels[i] >= 0 && labels[i] < classes, who, ": expected labels in [0, ", classes, "), got ",
                   labels[i], " at sample ", i);
  }

  /// The samples at `indices`, copied into a new dataset (for tests and small subsets).
  Dataset subset(const std::vector<Index>& indices) const {
    Dataset out{Matrix<Scalar>(inputs.rows(), Index(indices.size())), Labels(Index(indices.size())), shape, classes};
    for (std::size_t j = 0; j < indices.size(); ++j) {
      FEDMOE_CHECK(indices[j] >= 0 && indices[j] < size(), "Dataset::subset: expected indices in [0, ", size(),
                   "), got ", indices[j]);
      out.inputs.col(Index(j)) = inputs.col(indices[j]);
      out.labels[Index(j)] = labels[indices[j]];
    }
    return out;
  }
};

}  // namespace fedmoe
