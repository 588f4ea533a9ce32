#pragma once
/// @file geometric_median.hpp
/// @brief GeometricMedian: robust federated aggregation (RFA) by the smoothed Weiszfeld algorithm
/// (Pillutla, Kakade and Harchaoui 2022, "Robust aggregation for federated learning", IEEE TSP 70).
///
/// Approximates the weighted geometric median  z* = argmin_z sum_i alpha_i |z - d_i|,  alpha_i the
/// sample counts normalised to sum 1, from z_0 = the weighted mean:
///
///     beta_i = alpha_i / max(nu, |z_t - d_i|),   z_{t+1} = sum_i beta_i d_i / sum_i beta_i
///
/// (nu > 0 smooths the objective so that no weight is infinite when z_t meets an update). Stops after
/// max_iter iterations or when the objective g(z) = sum_i alpha_i max(nu, |z - d_i|) changes by at most
/// tol g relative to the previous iterate. The paper reports that a few iterations (about 3) suffice in
/// practice; the default budget of 100 with tol = 1e-6 is the tolerance-driven variant (RFA's reference
/// implementation also stops on the relative change of the objective).
///
/// Each iteration is two passes over the updates: the distances to z_t (one blocked pass over all
/// updates, accumulated in double) and the weighted sum. Non-finite updates are rejected by the first
/// weighted mean (WeightedMean's screening). Uses every valid update: report.discarded stays empty.
#include <algorithm>
#include <cmath>
#include <span>
#include <vector>

#include "../../core/error.hpp"
#include "common.hpp"

namespace fedmoe {

class GeometricMedian {
public:
  /// max_iter >= 0 Weiszfeld iterations at most; tol >= 0 relative objective change to stop; nu > 0 smoothing.
  explicit GeometricMedian(Index max_iter = 100, double tol = 1e-6, double nu = 1e-6)
      : m_max_iter(max_iter), m_tol(tol), m_nu(nu) {
    FEDMOE_CHECK(max_iter >= 0, "GeometricMedian: expected max_iter >= 0, got max_iter = ", max_iter);
    FEDMOE_CHECK(tol >= 0 && std::isfinite(tol), "GeometricMedian: expected a finite tolerance tol >= 0, got tol = ", tol);
    FEDMOE_CHECK(nu > 0 && std::isfinite(nu), "GeometricMedian: expected a finite smoothing nu > 0, got nu = ", nu);
  }
  Index max_iter() const { return m_max_iter; }
  double tol() const { return m_tol; }
  double nu() const { return m_nu; }
  /// Weiszfeld iterations run by the last aggregate() on this thread.
  static Index last_iterations() { return iterations_slot(); }

  template <class Scalar>
  AggregationReport aggregate(std::span<const ClientUpdate<Scalar>> updates, Vector<Scalar>& out) const {
    const auto refs = detail::refs_of(updates);
    return aggregate(detail::UpdateRefs<Scalar>(refs), out);
  }

  /// The same over updates by reference (see common.hpp).
  template <class Scalar>
  AggregationReport aggregate(detail::UpdateRefs<Scalar> updates, Vector<Scalar>& out) const {
    AggregationReport report;
    iterations_slot() = 0;
    auto use = detail::screen_shapes(updates, out.size(), report);
    Vector<Scalar>& z = detail::scratch<GeometricMedian, Scalar>();
    Vector<Scalar>& z_next = detail::scratch<Next, Scalar>();
    const bool ok = detail::screened_weighted_sum(use, out.size(), detail::sample_weights<Scalar>, z, report);
    detail::sort_rejected(report);
    if (!ok) return report;
    const std::vector<const Scalar*> rows = detail::data_of(use);
    std::vector<double> alpha;
    double total = 0;
    for (const auto* u : use) total += double(u->num_samples);
    for (const auto* u : use) alpha.push_back(double(u->num_samples) / total);
    std::vector<double> dist(use.size());
    const auto objective = [&](const Vector<Scalar>& at) {
      distances<Scalar>(rows, at, dist);
      double g = 0;
      for (std::size_t i = 0; i < dist.size(); ++i) g += alpha[i] * std::max(m_nu, dist[i]);
      return g;
    };
    double g = objective(z);
    std::vector<Scalar> w(use.size());
    for (Index t = 0; t < m_max_iter; ++t) {
      double sum = 0;
      for (std::size_t i = 0; i < dist.size(); ++i) sum += alpha[i] / std::max(m_nu, dist[i]);
      for (std::size_t i = 0; i < dist.size(); ++i) w[i] = Scalar(alpha[i] / std::max(m_nu, dist[i]) / sum);
      if (detail::weighted_sum<Scalar>(rows, w, out.size(), z_next) >= 0) break;  // overflow: keep z_t
      z.swap(z_next);
      iterations_slot() = t + 1;
      const double g_next = objective(z);
      const bool converged = std::abs(g - g_next) <= m_tol * g_next;
      g = g_next;
      if (converged) break;
    }
    out.swap(z);
    report.ok = true;
    report.used = Index(use.size());
    return report;
  }

private:
  struct Next {};
  static Index& iterations_slot() {
    thread_local Index iterations = 0;
    return iterations;
  }

  /// dist[i] = |rows[i] - z| for every row, in one blocked pass over the rows (z's block stays in cache).
  template <class Scalar>
  static void distances(const std::vector<const Scalar*>& rows, const Vector<Scalar>& z, std::vector<double>& dist) {
    std::fill(dist.begin(), dist.end(), 0.0);
    const Index size = z.size(), block = detail::mean_block;
    for (Index start = 0; start < size; start += block) {
      const Index len = std::min(block, size - start);
      const auto zb = z.segment(start, len);
      for (std::size_t i = 0; i < rows.size(); ++i)
        dist[i] += double((Eigen::Map<const Vector<Scalar>>(rows[i] + start, len) - zb).squaredNorm());
    }
    for (double& d : dist) d = std::sqrt(d);
  }

  Index m_max_iter;
  double m_tol;
  double m_nu;
};

}  // namespace fedmoe
