#pragma once
/// @file aggregator.hpp
/// @brief ClientUpdate (what a client sends up), AggregationReport (what the server learns of a
/// round's updates) and the Aggregator concept: a pure reduction of one round's updates.
///
/// An aggregator reduces the round's model deltas (w_local - w_global) to one delta:
///
///     report = aggregator.aggregate(updates, out);   // out.size() on entry: the model size P
///
/// Contract, shared by every aggregator in federated/aggregators/:
/// - It never throws on a hostile update. An update with the wrong size, a non-finite value
///   (NaN/inf), a non-positive sample count or the wrong number of extra vectors is **rejected**
///   (listed in `report.rejected` with the reason) and the round proceeds with the rest.
/// - A robust rule that leaves updates out (Krum, trimmed mean's whole-update variants, Bulyan)
///   lists them in `report.discarded`; coordinate-wise rules (median, trimmed mean), which use a
///   part of every update, discard none.
/// - If nothing can be aggregated (no valid update, or fewer than the rule needs), `report.ok` is
///   false, `report.note` says why, and `out` is left unchanged: the server skips its step.
/// - The result depends only on the updates and their order (the server passes them sorted by
///   client id), never on threads or timing: bitwise reproducible.
/// Misconfiguration (a negative trim fraction, f < 0) is a programming error and throws at
/// construction, before any round.
#include <algorithm>
#include <concepts>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../core/tensor.hpp"

namespace fedmoe {

/// What a participating client sends up after local training: nothing else crosses.
template <class Scalar>
struct ClientUpdate {
  std::int64_t client = -1;            ///< sender id
  Vector<Scalar> delta;                ///< w_local - w_global: the locally trained change of the GLOBAL model
  Index num_samples = 0;               ///< training samples behind the update (the mean's weight)
  std::vector<Vector<Scalar>> extras;  ///< algorithm-defined vectors of the model's size (SCAFFOLD: delta c_i)
};

/// Why an update was not used.
enum class Rejection : std::uint8_t {
  wrong_size,    ///< delta (or an extra) has another length than the global model
  non_finite,    ///< NaN or inf anywhere in delta or an extra
  bad_weight,    ///< num_samples <= 0
  wrong_extras,  ///< another number of extra vectors than the algorithm exchanges
};
inline const char* to_string(Rejection r) {
  switch (r) {
    case Rejection::wrong_size: return "wrong_size";
    case Rejection::non_finite: return "non_finite";
    case Rejection::bad_weight: return "bad_weight";
    case Rejection::wrong_extras: return "wrong_extras";
  }
  return "unknown";
}

struct RejectedUpdate {
  std::int64_t client = -1;
  Rejection reason = Rejection::wrong_size;
};

/// What an aggregation did with a round's updates.
struct AggregationReport {
  bool ok = false;                          ///< false: nothing aggregated, `out` unchanged (see note)
  Index used = 0;                           ///< updates that entered the result (fully or coordinate-wise)
  std::vector<RejectedUpdate> rejected;     ///< malformed updates, never used
  std::vector<std::int64_t> discarded;      ///< well-formed updates a robust rule left out (outliers)
  std::string note;                         ///< why ok is false (empty otherwise)
};

template <class A, class Scalar = float>
concept Aggregator = requires(A agg, std::span<const ClientUpdate<Scalar>> updates, Vector<Scalar>& out) {
  { agg.aggregate(updates, out) } -> std::same_as<AggregationReport>;
};

/// A randomised aggregation (a differentially private release, privacy/dp_mean.hpp): the same contract,
/// plus the round's own random stream, which the federation draws from (seed, round) alone.
template <class A, class Scalar = float>
concept RandomizedAggregator =
    requires(A agg, std::span<const ClientUpdate<Scalar>> updates, Vector<Scalar>& out, Rng& rng) {
      { agg.aggregate(updates, out, rng) } -> std::same_as<AggregationReport>;
    };

/// What the server can reduce a round with.
template <class A, class Scalar = float>
concept AnyAggregation = Aggregator<A, Scalar> || RandomizedAggregator<A, Scalar>;

namespace detail {
/// True iff every element is finite, as one vectorised reduction: x - x is +0 exactly for a
/// finite x and NaN otherwise (Eigen's allFinite() is an element-by-element early-exit loop).
template <class V>
bool all_finite(const V& v) {
  return (v.array() - v.array()).sum() == typename V::Scalar(0);
}

}  // namespace detail

}  // namespace fedmoe
