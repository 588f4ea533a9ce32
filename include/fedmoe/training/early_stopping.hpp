#pragma once
/// @file early_stopping.hpp
/// @brief EarlyStopping: remembers a **copy** of the best parameters seen, counts checks
/// without improvement, and restores the best on request.
///
/// It stores values, never references to live weights (reference-code defect 2, where
/// "best" was really "last"), and the caller decides which vectors are snapshotted: for
/// FedAvg that is the averaged global model (defect 1 stored the last client's weights).
#include <functional>
#include <initializer_list>
#include <limits>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"

namespace fedmoe {

template <class Scalar = float>
class EarlyStopping {
public:
  /// Stop after `patience` consecutive checks without a strictly lower loss.
  explicit EarlyStopping(int patience) : m_patience(patience) {
    FEDMOE_CHECK(patience > 0, "EarlyStopping: expected patience > 0, got ", patience);
  }

  /// Records a check. If `loss` improves on the best, copies `params` as the new best.
  /// Returns true when training should stop. A non-finite loss never counts as an improvement.
  bool observe(double loss, std::initializer_list<std::reference_wrapper<const Vector<Scalar>>> params) {
    ++m_checks;
    if (std::isfinite(loss) && loss < m_best_loss) {
      m_best_loss = loss;
      m_best_check = m_checks;
      m_best.resize(params.size());
      std::size_t i = 0;
      for (const Vector<Scalar>& p : params) m_best[i++] = p;  // a copy, not a reference
      m_bad = 0;
    } else {
      ++m_bad;
    }
    return m_bad >= m_patience;
  }

  bool has_best() const { return !m_best.empty(); }
  double best_loss() const { return m_best_loss; }
  int checks() const { return m_checks; }
  /// 1-based index of the check that gave the best loss (0: none yet).
  int best_check() const { return m_best_check; }
  const Vector<Scalar>& best(std::size_t i = 0) const {
    FEDMOE_CHECK(i < m_best.size(), "EarlyStopping::best: expected a snapshot index < ", m_best.size(), ", got ", i);
    return m_best[i];
  }

  /// Copies the best snapshot back into `params` (same order and sizes as observed).
  void restore(std::initializer_list<std::reference_wrapper<Vector<Scalar>>> params) const {
    FEDMOE_CHECK(has_best(), "EarlyStopping::restore: no finite loss was ever observed, nothing to restore");
    FEDMOE_CHECK(params.size() == m_best.size(), "EarlyStopping::restore: expected ", m_best.size(),
                 " vectors (as observed), got ", params.size());
    std::size_t i = 0;
    for (Vector<Scalar>& p : params) {
      FEDMOE_CHECK(p.size() == m_best[i].size(), "EarlyStopping::restore: vector ", i, " has size ", p.size(),
                   ", expected ", m_best[i].size());
      p = m_best[i++];
    }
  }

  /// Everything but the patience (io/archive.hpp); each snapshot holds the archive's parameter count.
  template <class Ar>
  void serialize(Ar& ar) {
    ar("checks", m_checks)("bad", m_bad)("best_check", m_best_check)("best_loss", m_best_loss);
    std::uint64_t n = m_best.size();
    ar("best.size", n);
    if constexpr (Ar::loading) {
      FEDMOE_CHECK(n <= 64, "EarlyStopping: expected at most 64 snapshot vectors, got ", n);
      FEDMOE_CHECK(m_bad >= 0 && m_checks >= 0 && m_best_check >= 0 && m_best_check <= m_checks,
                   "EarlyStopping: inconsistent restored counters: checks ", m_checks, ", bad ", m_bad,
                   ", best check ", m_best_check);
      m_best.resize(std::size_t(n));
    }
    for (std::size_t i = 0; i < m_best.size(); ++i) ar.parameters("best." + std::to_string(i), m_best[i]);
  }

private:
  int m_patience;
  int m_checks = 0, m_bad = 0, m_best_check = 0;
  double m_best_loss = std::numeric_limits<double>::infinity();
  std::vector<Vector<Scalar>> m_best;
};

}  // namespace fedmoe
