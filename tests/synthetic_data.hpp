#pragma once
// Synthetic classification data shared by the federation, end-to-end and MPI tests, the small
// label-skewed federation (Blobs) of the strategy, privacy, secure-aggregation and baseline tests, and
// the small helpers several test files use (each defined once: the test files build as unity batches).
#include <cstdint>
#include <vector>

#include <fedmoe/core/rng.hpp>
#include <fedmoe/data/dataset.hpp>
#include <fedmoe/data/partition.hpp>
#include <fedmoe/federated/client.hpp>
#include <fedmoe/federated/local_training.hpp>
#include <fedmoe/models/paper.hpp>

namespace fedmoe::test {

/// n samples of `classes` Gaussian classes in `dim` dimensions: sample j has label j % classes and
/// input prototype[label] + N(0, noise^2) per coordinate. The prototypes are N(0, 1) draws from
/// Rng(proto_seed), so datasets with the same proto_seed (train and test) share them.
template <class S>
Dataset<S> gaussian_classes(Index n, Index dim, Index classes, double noise, std::uint64_t seed,
                            std::uint64_t proto_seed = 99) {
  Rng proto_rng(proto_seed);
  Matrix<double> protos(dim, classes);
  for (Index i = 0; i < protos.size(); ++i) protos.data()[i] = proto_rng.normal();
  Rng rng(seed);
  Dataset<S> d{Matrix<S>(dim, n), Labels(n), Shape{dim, 1, 1}, classes};
  for (Index j = 0; j < n; ++j) {
    const Index c = j % classes;
    d.labels[j] = std::int32_t(c);
    for (Index r = 0; r < dim; ++r) d.inputs(r, j) = S(protos(r, c) + noise * rng.normal());
  }
  d.validate();
  return d;
}

/// Label-skewed 4-class blobs (gaussian_classes, noise 0.9) over `n` clients, majority p = 0.8 with
/// 20 train / 10 val / 5 test samples each; client k opts out when opt_out[k] is true.
struct Blobs {
  static constexpr Index dim = 8, classes = 4;
  Dataset<float> train;
  std::vector<Client<float>> clients;
  explicit Blobs(Index n, std::vector<bool> opt_out = {}, Index samples = 800)
      : train(gaussian_classes<float>(samples, dim, classes, 0.9, 1)) {
    Rng rng(11);
    const Partition part =
        partition_majority(train.labels, train.labels, classes, PartitionSpec{n, 20, 10, 5, 0.8}, rng);
    for (Index k = 0; k < n; ++k)
      clients.emplace_back(k, train, part[k], std::size_t(k) < opt_out.size() && opt_out[std::size_t(k)]);
  }
  /// The MLP every such test trains (16 hidden units), initialised from Rng(5).
  Mlp<float> model() const {
    Mlp<float> m = mlp<float>(Shape{dim, 1, 1}, classes, 16);
    Rng rng(5);
    m.init(rng);
    return m;
  }
};

template <class S>
bool same_vector(const Vector<S>& a, const Vector<S>& b) {
  return a.size() == b.size() && (a.array() == b.array()).all();
}

/// n labels drawn uniformly from [0, classes) by Rng(seed).
inline Labels random_labels(Index n, Index classes, std::uint64_t seed) {
  Rng rng(seed);
  Labels y(n);
  for (Index j = 0; j < n; ++j) y[j] = std::int32_t(rng.uniform_int(std::uint64_t(classes)));
  return y;
}

/// One local epoch at batch 10.
inline const LocalUpdateConfig one_epoch{1, 10};

}  // namespace fedmoe::test
