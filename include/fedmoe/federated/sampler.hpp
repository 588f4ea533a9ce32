#pragma once
/// @file sampler.hpp
/// @brief Client samplers: which of the eligible (opted-in) clients take part in a round.
///
/// The ClientSampler concept:
/// - `sample(eligible, rng)`: a subset of `eligible` (positions into the client list), sorted
///   ascending. It may be empty (Poisson sampling); the round then changes nothing.
/// - `expected(n)`: the expected number of clients per round out of n eligible ones, for
///   checking a robust aggregator's feasibility before any work (and a privacy accountant's rate);
/// - `validate(n)`: throws, before any round, if the sampler cannot draw from n eligible clients.
///
/// The federation draws each round's sample from its own stream Rng::stream(seed, round stream),
/// so round r's sample depends on (seed, r) alone: the same on every process of a distributed
/// run without communication, and independent of how many rounds ran before (resumable).
#include <algorithm>
#include <cmath>
#include <concepts>
#include <span>
#include <vector>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../core/tensor.hpp"

namespace fedmoe {

template <class S>
concept ClientSampler = requires(const S s, std::span<const std::size_t> eligible, Rng& rng, Index n) {
  { s.sample(eligible, rng) } -> std::same_as<std::vector<std::size_t>>;
  { s.expected(n) } -> std::convertible_to<double>;
  s.validate(n);
};

/// m distinct clients, uniformly without replacement (McMahan et al. 2017; the paper: 5 of 100).
struct UniformSampler {
  Index count = 5;

  explicit UniformSampler(Index clients_per_round = 5) : count(clients_per_round) {
    FEDMOE_CHECK(count > 0, "UniformSampler: expected clients per round > 0, got ", count);
  }

  /// Partial Fisher-Yates over a copy of `eligible`, then sorted. Refuses m > |eligible| (never a silent clamp).
  std::vector<std::size_t> sample(std::span<const std::size_t> eligible, Rng& rng) const {
    FEDMOE_CHECK(std::size_t(count) <= eligible.size(), "UniformSampler: expected clients per round <= ",
                 eligible.size(), " (the eligible clients), got ", count);
    std::vector<std::size_t> pool(eligible.begin(), eligible.end());
    for (std::size_t i = 0; i < std::size_t(count); ++i)
      std::swap(pool[i], pool[i + std::size_t(rng.uniform_int(pool.size() - i))]);
    pool.resize(std::size_t(count));
    std::sort(pool.begin(), pool.end());
    return pool;
  }
  double expected(Index) const { return double(count); }
  void validate(Index eligible) const {
    FEDMOE_CHECK(count <= eligible, "UniformSampler: expected clients per round in [1, ", eligible,
                 "] (the opted-in clients), got ", count);
  }
};

/// Each eligible client independently with probability q (the sampling that the privacy
/// analysis of DP-FedAvg assumes, McMahan et al. 2018). A round may sample no client.
struct PoissonSampler {
  double rate = 0.05;

  explicit PoissonSampler(double q = 0.05) : rate(q) {
    FEDMOE_CHECK(q > 0 && q <= 1, "PoissonSampler: expected a sampling rate q in (0, 1], got ", q);
  }

  std::vector<std::size_t> sample(std::span<const std::size_t> eligible, Rng& rng) const {
    std::vector<std::size_t> out;
    for (std::size_t i : eligible)
      if (rng.uniform01() < rate) out.push_back(i);
    std::sort(out.begin(), out.end());
    return out;
  }
  double expected(Index n) const { return rate * double(n); }
  void validate(Index) const {}  // any number of eligible clients will do
};

}  // namespace fedmoe
