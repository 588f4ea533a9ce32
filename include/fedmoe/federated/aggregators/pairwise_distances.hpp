#pragma once
/// @file pairwise_distances.hpp
/// @brief Squared Euclidean distances between all pairs of n updates from ONE Gram-matrix product
/// (fedmoe::detail; used by Krum, Multi-Krum and Bulyan):
///
///     G = U^T U   (U: P x n, the updates as columns),   D_ij = G_ii + G_jj - 2 G_ij
///
/// G is accumulated over blocks of coordinates: a block of rows of all n updates is copied into a
/// contiguous (block x n) buffer B and G += B^T B with Eigen's GEMM, each block's product added to a
/// double-precision G (so the error grows with the block, not with P). One read of every update, and
/// the O(n^2 P) work runs at GEMM speed instead of n^2 separate vector loops.
///
/// Cancellation: for nearly equal a, b the expanded form loses relative accuracy (|a|^2 + |b|^2 and
/// 2 a.b agree in their leading digits), and D_ij may come out slightly negative; it is clamped to 0.
/// A distance that is not finite (finite but huge updates whose squares overflow Scalar) counts as
/// +inf: such an update is infinitely far from everything, which is what a robust rule should see.
/// Updates with a non-finite value are found in the same copy and reported (their rows of D are not
/// meaningful; the other entries are unaffected, G_ij depending on columns i and j only).
#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include "../aggregator.hpp"

namespace fedmoe::detail {

struct PairwiseDistances {
  Matrix<double> squared;             ///< n x n, symmetric, zero diagonal
  std::vector<std::size_t> non_finite;  ///< rows (indices into the input) holding a NaN or inf
};

/// Coordinates per block: the (block x n) buffer is ~256 KiB (stays in L2 while GEMM packs it).
template <class Scalar>
Index gram_block(Index n) {
  return std::clamp<Index>(Index(262144 / sizeof(Scalar)) / std::max<Index>(n, 1), 64, 16384);
}

template <class Scalar>
PairwiseDistances pairwise_squared_distances(std::span<const Scalar* const> rows, Index size) {
  const Index n = Index(rows.size());
  PairwiseDistances result;
  result.squared = Matrix<double>::Zero(n, n);
  if (n == 0) return result;
  const Index block = std::min(gram_block<Scalar>(n), std::max<Index>(size, 1));
  Matrix<Scalar> buf(block, n);
  Matrix<Scalar> part(n, n);
  Matrix<double>& gram = result.squared;  // G first, D in place at the end
  std::vector<char> bad(std::size_t(n), 0);
  for (Index start = 0; start < size; start += block) {
    const Index len = std::min(block, size - start);
    for (Index k = 0; k < n; ++k) {
      auto col = buf.col(k).head(len);
      col = Eigen::Map<const Vector<Scalar>>(rows[std::size_t(k)] + start, len);
      if (!bad[std::size_t(k)] && !all_finite(col)) bad[std::size_t(k)] = 1;
    }
    const auto b = buf.topRows(len);
    part.noalias() = b.transpose() * b;
    gram += part.template cast<double>();
  }
  const Vector<double> norms = gram.diagonal();
  for (Index j = 0; j < n; ++j)
    for (Index i = 0; i < n; ++i) {
      double d = norms[i] + norms[j] - 2 * gram(i, j);
      if (!(d >= 0)) d = std::isnan(d) ? std::numeric_limits<double>::infinity() : 0.0;  // NaN: inf - inf
      gram(i, j) = d;
    }
  // Exactly symmetric with a zero diagonal (GEMM need not produce a bitwise-symmetric product).
  for (Index j = 0; j < n; ++j) {
    gram(j, j) = 0;
    for (Index i = j + 1; i < n; ++i) gram(j, i) = gram(i, j);
  }
  for (Index k = 0; k < n; ++k)
    if (bad[std::size_t(k)]) result.non_finite.push_back(std::size_t(k));
  return result;
}

}  // namespace fedmoe::detail
