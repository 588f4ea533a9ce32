#pragma once
/// @file metrics.hpp
/// @brief Evaluation metrics beyond accuracy: the area under the ROC curve of a score.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <vector>

#include "../core/error.hpp"

namespace fedmoe {

/// The area under the ROC curve of `scores` for separating the samples with `positive[j]` from the
/// others: the probability that a random positive scores above a random negative, ties counting
/// one half (Mann-Whitney U / (n_pos n_neg), with average ranks for tied scores). NaN when there is
/// no positive or no negative sample. Scores must be finite.
inline double roc_auc(std::span<const double> scores, std::span<const std::uint8_t> positive) {
  FEDMOE_CHECK(scores.size() == positive.size(), "roc_auc: expected ", scores.size(), " labels (one per score), got ",
               positive.size());
  std::vector<std::size_t> order(scores.size());
  std::iota(order.begin(), order.end(), std::size_t(0));
  for (std::size_t i = 0; i < scores.size(); ++i)
    FEDMOE_CHECK(std::isfinite(scores[i]), "roc_auc: expected finite scores, got ", scores[i], " at ", i);
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return scores[a] < scores[b]; });
  double rank_sum = 0, n_pos = 0;
  for (std::size_t i = 0; i < order.size();) {
    std::size_t j = i;
    while (j < order.size() && scores[order[j]] == scores[order[i]]) ++j;
    const double rank = 0.5 * double(i + 1 + j);  // the average of ranks i + 1 .. j
    for (std::size_t t = i; t < j; ++t)
      if (positive[order[t]]) {
        rank_sum += rank;
        n_pos += 1;
      }
    i = j;
  }
  const double n_neg = double(scores.size()) - n_pos;
  if (n_pos == 0 || n_neg == 0) return std::numeric_limits<double>::quiet_NaN();
  return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg);
}

}  // namespace fedmoe
