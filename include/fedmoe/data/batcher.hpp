#pragma once
/// @file batcher.hpp
/// @brief Batcher: seeded, shuffled mini-batches over a client's indices into a shared Dataset.
///
/// A client's data is a list of sample indices into one shared Dataset (see
/// data/partition.hpp); the Batcher never copies the dataset. Each epoch:
///
///     batcher.shuffle(rng);                       // new order (Fisher-Yates with rng)
///     for (Index b = 0; b < batcher.num_batches(); ++b) {
///       batcher.gather(b);                        // fills inputs() and labels()
///       step(batcher.inputs(), batcher.labels());
///     }
///
/// With n indices and batch size B there are ceil(n / B) batches; batch b holds the
/// samples at positions [b B, min((b + 1) B, n)) of the current order, so every index
/// is visited exactly once per epoch and only the last batch may be smaller
/// (n - (ceil(n / B) - 1) B samples, like PyTorch's DataLoader with drop_last=False).
///
/// Workspaces: one for full batches and one for the smaller last batch, both sized in
/// the constructor, so gather() never allocates. inputs() / labels() refer to the
/// workspace filled by the last gather() and stay valid until the next gather() of a
/// batch of the other size (or the Batcher's destruction).
#include <algorithm>
#include <span>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../core/tensor.hpp"
#include "dataset.hpp"

namespace fedmoe {

/// Copies the samples at `indices` of `data` into `inputs` (one column per sample) and
/// `labels`. Resizes the outputs only if their size differs, so a reused workspace of the
/// right size is filled without allocating. Throws if an index is outside [0, data.size()).
template <class Scalar>
void gather_samples(const Dataset<Scalar>& data, std::span<const Index> indices, Matrix<Scalar>& inputs,
                    Labels& labels) {
  const Index n = Index(indices.size());
  // Samples are columns of inputs; a dataset with fewer labels would be read past its labels' end.
  FEDMOE_CHECK(data.labels.size() == data.inputs.cols(), "gather_samples: expected ", data.inputs.cols(),
               " dataset labels (one per sample), got ", data.labels.size());
  for (Index j = 0; j < n; ++j)
    FEDMOE_CHECK(indices[std::size_t(j)] >= 0 && indices[std::size_t(j)] < data.size(),
                 "gather_samples: expected indices in [0, ", data.size(), "), got ", indices[std::size_t(j)],
                 " at position ", j);
  inputs.resize(data.inputs.rows(), n);  // no-op when the size already matches
  labels.resize(n);
  for (Index j = 0; j < n; ++j) {
    const Index i = indices[std::size_t(j)];
    inputs.col(j) = data.inputs.col(i);
    labels[j] = data.labels[i];
  }
}

/// Seeded shuffled mini-batches over `indices` into a Dataset the Batcher does not own
/// (the dataset must outlive the Batcher; binding a temporary is rejected at compile time).
template <class Scalar = float>
class Batcher {
public:
  using scalar_type = Scalar;

  /// Batches over `indices` (each in [0, data.size()), repeats allowed) of `batch_size`
  /// samples. The initial order is `indices` as given; call shuffle() before each epoch.
  Batcher(const Dataset<Scalar>& data, std::vector<Index> indices, Index batch_size)
      : m_data(&data), m_order(std::move(indices)), m_batch_size(batch_size) {
    FEDMOE_CHECK(batch_size > 0, "Batcher: expected batch_size > 0, got ", batch_size);
    FEDMOE_CHECK(!m_order.empty(), "Batcher: expected a non-empty index list, got 0 indices");
    FEDMOE_CHECK(data.labels.size() == data.inputs.cols(), "Batcher: expected ", data.inputs.cols(),
                 " dataset labels (one per sample), got ", data.labels.size());
    for (std::size_t j = 0; j < m_order.size(); ++j)
      FEDMOE_CHECK(m_order[j] >= 0 && m_order[j] < data.size(), "Batcher: expected indices in [0, ", data.size(),
                   "), got ", m_order[j], " at position ", j);
    const Index n = size();
    m_num_batches = n / batch_size + (n % batch_size != 0);  // ceil without n + batch_size - 1 (overflows)
    const Index full = std::min(batch_size, n);
    const Index tail = n - (m_num_batches - 1) * batch_size;
    m_full_inputs.resize(data.inputs.rows(), full);
    m_full_labels.resize(full);
    if (tail != full) {
      m_tail_inputs.resize(data.inputs.rows(), tail);
      m_tail_labels.resize(tail);
    }
  }

  /// Same, from a span of indices (copied).
  Batcher(const Dataset<Scalar>& data, std::span<const Index> indices, Index batch_size)
      : Batcher(data, std::vector<Index>(indices.begin(), indices.end()), batch_size) {}

  Batcher(const Dataset<Scalar>&&, std::vector<Index>, Index) = delete;
  Batcher(const Dataset<Scalar>&&, std::span<const Index>, Index) = delete;

  /// Reorders the indices uniformly at random (Rng::shuffle: portable Fisher-Yates).
  void shuffle(Rng& rng) { rng.shuffle(m_order.begin(), m_order.end()); }

  /// Number of indices (samples per epoch).
  Index size() const { return Index(m_order.size()); }
  Index batch_size() const { return m_batch_size; }
  /// ceil(size() / batch_size()).
  Index num_batches() const { return m_num_batches; }

  /// Number of samples in batch b: batch_size(), except possibly for the last batch.
  Index batch_length(Index b) const {
    check_batch(b, "Batcher::batch_length");
    return std::min(m_batch_size, size() - b * m_batch_size);
  }

  /// The dataset indices of batch b in the current order.
  std::span<const Index> batch_indices(Index b) const {
    const Index len = batch_length(b);
    return std::span<const Index>(m_order).subspan(std::size_t(b * m_batch_size), std::size_t(len));
  }

  /// The current order of all indices.
  std::span<const Index> order() const { return m_order; }

  /// Fills inputs() (features x batch_length(b)) and labels() with batch b. Never allocates.
  void gather(Index b) {
    check_batch(b, "Batcher::gather");
    const std::span<const Index> idx = batch_indices(b);
    const bool tail = Index(idx.size()) != m_full_inputs.cols();
    Matrix<Scalar>& inputs = tail ? m_tail_inputs : m_full_inputs;
    Labels& labels = tail ? m_tail_labels : m_full_labels;
    // Indices were range-checked in the constructor; copy columns directly.
    for (Index j = 0; j < Index(idx.size()); ++j) {
      const Index i = idx[std::size_t(j)];
      inputs.col(j) = m_data->inputs.col(i);
      labels[j] = m_data->labels[i];
    }
    m_current_tail = tail;
  }

  /// Inputs of the last gathered batch (one column per sample).
  const Matrix<Scalar>& inputs() const { return m_current_tail ? m_tail_inputs : m_full_inputs; }
  /// Labels of the last gathered batch.
  const Labels& labels() const { return m_current_tail ? m_tail_labels : m_full_labels; }

  const Dataset<Scalar>& dataset() const { return *m_data; }

private:
  void check_batch(Index b, const char* who) const {
    FEDMOE_CHECK(b >= 0 && b < m_num_batches, who, ": expected a batch in [0, ", m_num_batches, "), got ", b);
  }

  const Dataset<Scalar>* m_data;
  std::vector<Index> m_order;
  Index m_batch_size;
  Index m_num_batches = 0;
  Matrix<Scalar> m_full_inputs, m_tail_inputs;
  Labels m_full_labels, m_tail_labels;
  bool m_current_tail = false;
};

}  // namespace fedmoe
