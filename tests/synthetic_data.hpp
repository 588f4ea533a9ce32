#pragma once
// Synthetic classification data shared by the federation, end-to-end and MPI tests.
#include <cstdint>

#include <fedmoe/core/rng.hpp>
#include <fedmoe/data/dataset.hpp>

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

}  // namespace fedmoe::test
