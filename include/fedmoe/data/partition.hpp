#pragma once
/// @file partition.hpp
/// @brief Splitting a dataset over federated clients: majority-class label skew (the
/// paper's protocol), IID, Dirichlet label skew and quantity skew.
///
/// A client's data is three lists of indices (ClientSplit): `train` and `val` index into
/// the official *training* split, `test` into the official *test* split. Every
/// partitioner guarantees:
///
/// - exact sizes: each client gets exactly the requested numbers of train/val/test samples;
/// - train and val indices are drawn **without replacement** and are disjoint within and
///   across **all** clients (the reference code leaked validation samples into other
///   clients' training data: PAPER.md defect 7);
/// - a client's test indices are distinct, drawn from the test split with the client's own
///   recipe independently of the other clients (local test sets may overlap between
///   clients; they never touch the training split);
/// - determinism: the result depends only on the labels, the spec and the Rng state;
/// - each index list is sorted ascending (order carries no information: Batcher shuffles);
/// - a request the pools cannot satisfy throws before anything is drawn, naming the class,
///   how many samples were needed and how many the split has.
///
/// Schemes (PAPER.md, "Protocol"):
///
/// **Majority** (partition_majority, fraction p): client k has two distinct majority
/// classes (a_k, b_k). Of each of its splits of size n (train, val and test separately):
///
///     m = round(p n)                      (round half away from zero)
///     from a_k: ceil(m / 2),  from b_k: floor(m / 2)
///     the other n - m over the C - 2 other classes as evenly as possible:
///         floor((n - m) / (C - 2)) each, and one more for (n - m) mod (C - 2) of them
///         chosen uniformly at random (a balanced split, not a multinomial draw, so the
///         class histogram of every client is exactly determined by p up to that remainder).
///
/// Pairs: the 2K majority slots of K clients are filled with a sequence of independent
/// random permutations of the C classes, cut at 2K; client k takes slots (2k, 2k+1). Hence
/// every class is a majority class of floor(2K/C) or ceil(2K/C) clients (spread evenly), and
/// a pair never repeats a class: within a permutation classes are distinct, and where a pair
/// straddles two permutations the new permutation's first class is swapped with a random
/// other position of it if it equals the previous class (PAPER.md defect 8 produced
/// same-class pairs). Because a_k comes first in random order, which class of the pair gets
/// the odd extra sample is random too.
///
/// **IID** (partition_iid): train and val are consecutive chunks of one random permutation
/// of the training split; test is a uniform random subset of the test split per client.
///
/// **Dirichlet(alpha)** (partition_dirichlet): client k draws class weights
/// q_k ~ Dirichlet(alpha 1_C) (normalised Rng::gamma(alpha) draws; if every draw underflows
/// to 0, which only tiny alpha can cause, q_k is one-hot on a uniformly random class). Each
/// sample (train, then val, then test) draws its class c with probability proportional to
/// q_k[c] over the classes that still have samples in the pool, then a uniform random sample
/// of that class. When a class runs out the weights are thus renormalised over the classes
/// that remain; if every class with positive weight is exhausted, the class is drawn in
/// proportion to the samples that remain. The training pool is shared (drawn without
/// replacement over all clients); the test pool is per client. majority_classes holds the
/// two classes of largest q_k (ties: lower class first).
///
/// **Quantity skew** (partition_quantity_skew, sigma >= 0): labels IID, client sizes vary.
/// Client weights w_k = exp(sigma z_k), z_k ~ N(0, 1) (log-normal). For each split with
/// mean size n (n_train, n_val, n_test) the total K n is divided as: one sample per client
/// (when n > 0), and the remaining K n - K by largest remainders of w_k / sum(w) (ties: lower
/// client first). Totals are therefore exactly K n, every client has at least one sample of
/// each non-empty split, train/val/test sizes of a client are (nearly) proportional, and
/// sigma = 0 gives every client exactly n.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <iomanip>
#include <limits>
#include <numeric>
#include <span>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../core/tensor.hpp"

namespace fedmoe {

/// How many clients and how many samples each: the paper's defaults (100 clients,
/// 100 train / 200 val / 200 test, majority fraction p in {0.2, ..., 1.0}).
struct PartitionSpec {
  Index clients = 100;
  Index n_train = 100;  ///< training samples per client (the mean, for quantity skew)
  Index n_val = 200;    ///< validation samples per client, from the training split
  Index n_test = 200;   ///< local test samples per client, from the test split
  double p = 0.8;       ///< majority fraction (partition_majority only)
};

/// One client's data: indices into the training split (train, val) and the test split (test).
struct ClientSplit {
  std::vector<Index> train, val, test;
  std::vector<int> majority_classes;  ///< majority: the pair; dirichlet: top-2 weights; else empty
};

/// The clients' splits plus what they index into.
struct Partition {
  std::vector<ClientSplit> clients;
  Index classes = 0;
  Index train_pool = 0;  ///< size of the training split that train/val index into
  Index test_pool = 0;   ///< size of the test split that test indexes into
  std::string scheme;    ///< e.g. "majority(p=0.8)", "iid", "dirichlet(alpha=0.1)"

  Index size() const { return Index(clients.size()); }
  ClientSplit& operator[](Index k) { return clients[std::size_t(k)]; }
  const ClientSplit& operator[](Index k) const { return clients[std::size_t(k)]; }
  auto begin() { return clients.begin(); }
  auto end() { return clients.end(); }
  auto begin() const { return clients.begin(); }
  auto end() const { return clients.end(); }

  /// Throws unless every index is in range of its split and train/val indices are
  /// distinct within and across all clients.
  void validate() const {
    std::vector<std::int32_t> owner(std::size_t(train_pool), -1);
    for (std::size_t k = 0; k < clients.size(); ++k) {
      for (const auto* list : {&clients[k].train, &clients[k].val})
        for (Index i : *list) {
          FEDMOE_CHECK(i >= 0 && i < train_pool, "Partition: expected train/val indices in [0, ", train_pool,
                       "), got ", i, " (client ", k, ")");
          FEDMOE_CHECK(owner[std::size_t(i)] < 0, "Partition: expected disjoint train/val indices, got index ", i,
                       " in client ", owner[std::size_t(i)], " and client ", k);
          owner[std::size_t(i)] = std::int32_t(k);
        }
      std::vector<Index> test = clients[k].test;
      std::sort(test.begin(), test.end());
      for (std::size_t j = 0; j < test.size(); ++j) {
        FEDMOE_CHECK(test[j] >= 0 && test[j] < test_pool, "Partition: expected test indices in [0, ", test_pool,
                     "), got ", test[j], " (client ", k, ")");
        FEDMOE_CHECK(j == 0 || test[j] != test[j - 1], "Partition: expected distinct test indices per client, got ",
                     test[j], " twice in client ", k);
      }
    }
  }
};

/// Number of samples of each class among `indices` (labels[i] in [0, classes)).
inline std::vector<Index> class_histogram(std::span<const Index> indices, const Labels& labels, Index classes) {
  std::vector<Index> h(std::size_t(std::max<Index>(classes, 0)), 0);
  for (Index i : indices) {
    FEDMOE_CHECK(i >= 0 && i < labels.size(), "class_histogram: expected indices in [0, ", labels.size(), "), got ",
                 i);
    const auto c = labels[i];
    FEDMOE_CHECK(c >= 0 && c < classes, "class_histogram: expected labels in [0, ", classes, "), got ", c,
                 " at sample ", i);
    ++h[std::size_t(c)];
  }
  return h;
}

namespace detail {

/// Most samples per client and split: sizes go through double (round(p n), the quantity-skew
/// shares), which is exact for integers up to 2^53; a 32-bit Index (armhf) is the tighter limit there.
inline constexpr Index max_split_size =
    std::numeric_limits<Index>::digits > 53 ? Index(1) << 53 : std::numeric_limits<Index>::max();

inline void check_partition_spec(const PartitionSpec& s, const char* who) {
  FEDMOE_CHECK(s.clients > 0, who, ": expected clients > 0, got ", s.clients);
  FEDMOE_CHECK(s.n_train > 0, who, ": expected n_train > 0, got ", s.n_train);
  FEDMOE_CHECK(s.n_val >= 0, who, ": expected n_val >= 0, got ", s.n_val);
  FEDMOE_CHECK(s.n_test >= 0, who, ": expected n_test >= 0, got ", s.n_test);
  using Count = std::pair<const char*, Index>;
  for (const auto& [name, n] : {Count{"n_train", s.n_train}, Count{"n_val", s.n_val}, Count{"n_test", s.n_test}})
    FEDMOE_CHECK(n <= max_split_size, who, ": expected ", name,
                 max_split_size == std::numeric_limits<Index>::max() ? " <= the largest Index (" : " <= 2^53 (",
                 max_split_size, "), got ", n);
  FEDMOE_CHECK(s.p >= 0 && s.p <= 1, who, ": expected 0 <= p <= 1, got ", s.p);  // NaN fails too
  // The totals over all clients are computed in Index: refuse a product that would overflow (undefined
  // behaviour) before it is formed. n_train + n_val <= 2^54 cannot overflow.
  constexpr Index most = std::numeric_limits<Index>::max();
  FEDMOE_CHECK(s.clients <= most / (s.n_train + s.n_val), who, ": expected clients x (n_train + n_val) <= ", most,
               " (the largest Index), got ", s.clients, " x (", s.n_train, " + ", s.n_val, ")");
  FEDMOE_CHECK(s.n_test == 0 || s.clients <= most / s.n_test, who, ": expected clients x n_test <= ", most,
               " (the largest Index), got ", s.clients, " x ", s.n_test);
}

inline void check_partition_labels(const Labels& labels, Index classes, const char* who, const char* split) {
  FEDMOE_CHECK(classes > 0, who, ": expected classes > 0, got ", classes);
  for (Index i = 0; i < labels.size(); ++i)
    FEDMOE_CHECK(labels[i] >= 0 && labels[i] < classes, who, ": expected ", split, " labels in [0, ", classes,
                 "), got ", labels[i], " at sample ", i);
}

/// Indices of each class, in index order.
inline std::vector<std::vector<Index>> class_pools(const Labels& labels, Index classes) {
  std::vector<std::vector<Index>> pools(static_cast<std::size_t>(classes));
  for (Index i = 0; i < labels.size(); ++i) pools[std::size_t(labels[i])].push_back(i);
  return pools;
}

/// Moves k uniformly random elements of `pool` to `out`, removing them from the pool.
inline void draw_without_replacement(std::vector<Index>& pool, Index k, Rng& rng, std::vector<Index>& out) {
  for (Index t = 0; t < k; ++t) {
    const auto j = std::size_t(rng.uniform_int(pool.size()));
    out.push_back(pool[j]);
    pool[j] = pool.back();
    pool.pop_back();
  }
}

/// Appends k distinct uniformly random elements of `pool` to `out` (partial Fisher-Yates;
/// the pool keeps its elements, only their order changes).
inline void sample_without_replacement(std::vector<Index>& pool, Index k, Rng& rng, std::vector<Index>& out) {
  for (std::size_t t = 0; t < std::size_t(k); ++t) {
    const std::size_t j = t + std::size_t(rng.uniform_int(pool.size() - t));
    std::swap(pool[t], pool[j]);
    out.push_back(pool[t]);
  }
}

/// Class index drawn with probability weights[c] / sum(weights); sum must be > 0.
inline Index pick_weighted(std::span<const double> weights, double sum, Rng& rng) {
  const double u = rng.uniform01() * sum;
  double acc = 0;
  Index last_positive = 0;
  for (std::size_t c = 0; c < weights.size(); ++c) {
    if (weights[c] <= 0) continue;
    acc += weights[c];
    last_positive = Index(c);
    if (u < acc) return Index(c);
  }
  return last_positive;  // u rounded up to the sum
}

/// Majority pairs for `clients` clients over `classes` >= 2 classes (see the file comment).
inline std::vector<std::array<int, 2>> majority_pairs(Index clients, Index classes, Rng& rng) {
  const std::size_t slots_needed = std::size_t(2 * clients);
  std::vector<int> slots, perm(static_cast<std::size_t>(classes));
  slots.reserve(slots_needed);
  while (slots.size() < slots_needed) {
    std::iota(perm.begin(), perm.end(), 0);
    rng.shuffle(perm.begin(), perm.end());
    if (slots.size() % 2 == 1 && perm[0] == slots.back())
      std::swap(perm[0], perm[1 + std::size_t(rng.uniform_int(perm.size() - 1))]);
    for (int c : perm) {
      if (slots.size() == slots_needed) break;
      slots.push_back(c);
    }
  }
  std::vector<std::array<int, 2>> pairs(static_cast<std::size_t>(clients));
  for (std::size_t k = 0; k < pairs.size(); ++k) pairs[k] = {slots[2 * k], slots[2 * k + 1]};
  return pairs;
}

/// Per-class counts of a majority split of n samples for pair (a, b) (see the file comment).
inline std::vector<Index> majority_counts(Index n, double p, Index classes, std::array<int, 2> pair, Rng& rng) {
  std::vector<Index> counts(std::size_t(classes), 0);
  const Index m = std::min<Index>(n, Index(std::llround(p * double(n))));
  counts[std::size_t(pair[0])] = (m + 1) / 2;
  counts[std::size_t(pair[1])] = m / 2;
  const Index rest = n - m;
  if (rest > 0) {
    std::vector<int> others;
    for (int c = 0; c < int(classes); ++c)
      if (c != pair[0] && c != pair[1]) others.push_back(c);
    const Index per = rest / Index(others.size()), extra = rest % Index(others.size());
    rng.shuffle(others.begin(), others.end());
    for (std::size_t j = 0; j < others.size(); ++j) counts[std::size_t(others[j])] = per + (Index(j) < extra ? 1 : 0);
  }
  return counts;
}

/// Throws unless the training split holds clients x (n_train + n_val) samples (a spec that passed
/// check_partition_spec, so the product does not overflow).
inline void check_train_total(const PartitionSpec& s, Index available, const char* who) {
  const Index needed = s.clients * (s.n_train + s.n_val);
  FEDMOE_CHECK(needed <= available, who, ": needs ", needed, " training samples (train + val over all clients: ",
               s.clients, " clients x (n_train ", s.n_train, " + n_val ", s.n_val,
               ")), the training split has only ", available);
}

inline void sort_split(ClientSplit& s) {
  std::sort(s.train.begin(), s.train.end());
  std::sort(s.val.begin(), s.val.end());
  std::sort(s.test.begin(), s.test.end());
}

/// Largest-remainder division of clients * mean over the weights, at least one each when mean > 0.
inline std::vector<Index> quantity_sizes(const std::vector<double>& w, Index mean) {
  const Index k = Index(w.size());
  std::vector<Index> sizes(w.size(), mean > 0 ? 1 : 0);
  if (mean <= 1) return sizes;
  const Index rest = k * mean - k;
  const double sum = std::accumulate(w.begin(), w.end(), 0.0);
  std::vector<double> frac(w.size());
  Index given = 0;
  for (std::size_t j = 0; j < w.size(); ++j) {
    const double exact = double(rest) * w[j] / sum;
    const Index whole = std::min<Index>(rest - given, Index(std::floor(exact)));
    sizes[j] += whole;
    given += whole;
    frac[j] = exact - std::floor(exact);
  }
  std::vector<std::size_t> order(w.size());
  std::iota(order.begin(), order.end(), std::size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return frac[a] > frac[b]; });
  for (std::size_t t = 0; given < rest; t = (t + 1) % order.size(), ++given) ++sizes[order[t]];
  return sizes;
}

/// IID draws with per-client sizes: train/val from one permutation, test per client.
inline Partition partition_iid_sizes(const Labels& train_labels, const Labels& test_labels, Index classes,
                                     const std::vector<Index>& n_train, const std::vector<Index>& n_val,
                                     const std::vector<Index>& n_test, Rng& rng, const char* who) {
  const Index clients = Index(n_train.size());
  const Index needed = std::accumulate(n_train.begin(), n_train.end(), Index(0)) +
                       std::accumulate(n_val.begin(), n_val.end(), Index(0));
  FEDMOE_CHECK(needed <= train_labels.size(), who, ": needs ", needed,
               " training samples (train + val over all clients), the training split has only ",
               train_labels.size());
  const Index max_test = n_test.empty() ? 0 : *std::max_element(n_test.begin(), n_test.end());
  FEDMOE_CHECK(max_test <= test_labels.size(), who, ": needs ", max_test,
               " distinct test samples for one client, the test split has only ", test_labels.size());
  Partition out{std::vector<ClientSplit>(std::size_t(clients)), classes, train_labels.size(), test_labels.size(), ""};
  std::vector<Index> train_pool(std::size_t(train_labels.size())), test_pool(std::size_t(test_labels.size()));
  std::iota(train_pool.begin(), train_pool.end(), Index(0));
  std::iota(test_pool.begin(), test_pool.end(), Index(0));
  rng.shuffle(train_pool.begin(), train_pool.end());
  auto next = train_pool.begin();
  for (std::size_t k = 0; k < std::size_t(clients); ++k) {
    ClientSplit& s = out.clients[k];
    s.train.assign(next, next + n_train[k]);
    next += n_train[k];
    s.val.assign(next, next + n_val[k]);
    next += n_val[k];
    sample_without_replacement(test_pool, n_test[k], rng, s.test);
    sort_split(s);
  }
  return out;
}

}  // namespace detail

/// The paper's majority-class label skew (see the file comment for the exact recipe).
/// Requires classes >= 2, and classes >= 3 when p < 1 (two majority classes plus at least
/// one other). Throws if a class of the training split cannot supply its total train + val
/// demand over all clients, or a class of the test split cannot supply one client's demand.
inline Partition partition_majority(const Labels& train_labels, const Labels& test_labels, Index classes,
                                    const PartitionSpec& spec, Rng& rng) {
  constexpr const char* who = "partition_majority";
  detail::check_partition_spec(spec, who);
  FEDMOE_CHECK(classes >= 2, who, ": expected classes >= 2 (two distinct majority classes), got ", classes);
  FEDMOE_CHECK(spec.p == 1.0 || classes >= 3, who,
               ": expected classes >= 3 when p < 1 (two majority classes and at least one other), got classes = ",
               classes, " with p = ", spec.p);
  detail::check_partition_labels(train_labels, classes, who, "training");
  detail::check_partition_labels(test_labels, classes, who, "test");
  detail::check_train_total(spec, train_labels.size(), who);

  // Plan: pairs and per-client per-class counts, then check capacity, then draw.
  const auto pairs = detail::majority_pairs(spec.clients, classes, rng);
  const std::size_t K = std::size_t(spec.clients), C = std::size_t(classes);
  std::vector<std::vector<Index>> train_counts(K), val_counts(K), test_counts(K);
  for (std::size_t k = 0; k < K; ++k) {
    train_counts[k] = detail::majority_counts(spec.n_train, spec.p, classes, pairs[k], rng);
    val_counts[k] = detail::majority_counts(spec.n_val, spec.p, classes, pairs[k], rng);
    test_counts[k] = detail::majority_counts(spec.n_test, spec.p, classes, pairs[k], rng);
  }
  auto train_pools = detail::class_pools(train_labels, classes);
  auto test_pools = detail::class_pools(test_labels, classes);
  for (std::size_t c = 0; c < C; ++c) {
    Index needed = 0;
    for (std::size_t k = 0; k < K; ++k) needed += train_counts[k][c] + val_counts[k][c];
    FEDMOE_CHECK(needed <= Index(train_pools[c].size()), who, ": class ", c, " needs ", needed,
                 " training samples (train + val over all clients, p = ", spec.p,
                 "), the training split has only ", train_pools[c].size());
    for (std::size_t k = 0; k < K; ++k)
      FEDMOE_CHECK(test_counts[k][c] <= Index(test_pools[c].size()), who, ": class ", c, " needs ",
                   test_counts[k][c], " test samples for client ", k, " (p = ", spec.p,
                   "), the test split has only ", test_pools[c].size());
  }

  std::ostringstream scheme;
  scheme << "majority(p=" << spec.p << ")";
  Partition out{std::vector<ClientSplit>(K), classes, train_labels.size(), test_labels.size(), scheme.str()};
  for (std::size_t k = 0; k < K; ++k) {
    ClientSplit& s = out.clients[k];
    s.majority_classes = {pairs[k][0], pairs[k][1]};
    for (std::size_t c = 0; c < C; ++c) {
      detail::draw_without_replacement(train_pools[c], train_counts[k][c], rng, s.train);
      detail::draw_without_replacement(train_pools[c], val_counts[k][c], rng, s.val);
      detail::sample_without_replacement(test_pools[c], test_counts[k][c], rng, s.test);
    }
    detail::sort_split(s);
  }
  return out;
}

/// IID: every client gets n_train / n_val / n_test samples uniformly at random (spec.p unused).
inline Partition partition_iid(const Labels& train_labels, const Labels& test_labels, Index classes,
                               const PartitionSpec& spec, Rng& rng) {
  constexpr const char* who = "partition_iid";
  detail::check_partition_spec(spec, who);
  detail::check_partition_labels(train_labels, classes, who, "training");
  detail::check_partition_labels(test_labels, classes, who, "test");
  detail::check_train_total(spec, train_labels.size(), who);
  const std::size_t K = std::size_t(spec.clients);
  Partition out = detail::partition_iid_sizes(train_labels, test_labels, classes, std::vector<Index>(K, spec.n_train),
                                              std::vector<Index>(K, spec.n_val), std::vector<Index>(K, spec.n_test),
                                              rng, who);
  out.scheme = "iid";
  return out;
}

/// Dirichlet(alpha) label skew (see the file comment); spec.p unused. Small alpha: each
/// client concentrates on few classes; large alpha: close to IID.
inline Partition partition_dirichlet(const Labels& train_labels, const Labels& test_labels, Index classes,
                                     const PartitionSpec& spec, double alpha, Rng& rng) {
  constexpr const char* who = "partition_dirichlet";
  detail::check_partition_spec(spec, who);
  FEDMOE_CHECK(alpha > 0 && std::isfinite(alpha), who, ": expected a finite alpha > 0, got ", alpha);
  detail::check_partition_labels(train_labels, classes, who, "training");
  detail::check_partition_labels(test_labels, classes, who, "test");
  detail::check_train_total(spec, train_labels.size(), who);
  FEDMOE_CHECK(spec.n_test <= test_labels.size(), who, ": needs ", spec.n_test,
               " distinct test samples per client, the test split has only ", test_labels.size());

  const std::size_t K = std::size_t(spec.clients), C = std::size_t(classes);
  auto train_pools = detail::class_pools(train_labels, classes);
  auto test_pools = detail::class_pools(test_labels, classes);
  std::vector<double> q(C), w(C);
  std::vector<Index> test_taken(C);

  // One sample of class ~ q restricted to classes with remaining[c] > 0 (see the file comment).
  auto pick_class = [&](const auto& remaining) {
    double sum = 0;
    for (std::size_t c = 0; c < C; ++c) sum += (w[c] = remaining(c) > 0 ? q[c] : 0.0);
    if (!(sum > 0)) {
      sum = 0;
      for (std::size_t c = 0; c < C; ++c) sum += (w[c] = double(remaining(c)));
    }
    return std::size_t(detail::pick_weighted(w, sum, rng));
  };
  auto train_remaining = [&](std::size_t c) { return Index(train_pools[c].size()); };
  auto test_remaining = [&](std::size_t c) { return Index(test_pools[c].size()) - test_taken[c]; };

  std::ostringstream scheme;
  scheme << "dirichlet(alpha=" << alpha << ")";
  Partition out{std::vector<ClientSplit>(K), classes, train_labels.size(), test_labels.size(), scheme.str()};
  for (std::size_t k = 0; k < K; ++k) {
    ClientSplit& s = out.clients[k];
    double total = 0;
    for (std::size_t c = 0; c < C; ++c) total += (q[c] = rng.gamma(alpha));
    if (!(total > 0)) {
      std::fill(q.begin(), q.end(), 0.0);
      q[std::size_t(rng.uniform_int(C))] = 1.0;
      total = 1.0;
    }
    for (double& v : q) v /= total;
    for (auto* list : {&s.train, &s.val}) {
      const Index n = list == &s.train ? spec.n_train : spec.n_val;
      for (Index t = 0; t < n; ++t)
        detail::draw_without_replacement(train_pools[pick_class(train_remaining)], 1, rng, *list);
    }
    std::fill(test_taken.begin(), test_taken.end(), Index(0));
    for (Index t = 0; t < spec.n_test; ++t) {
      const std::size_t c = pick_class(test_remaining);
      auto& pool = test_pools[c];
      const std::size_t i = std::size_t(test_taken[c]++);
      std::swap(pool[i], pool[i + std::size_t(rng.uniform_int(pool.size() - i))]);
      s.test.push_back(pool[i]);
    }
    std::vector<std::size_t> order(C);
    std::iota(order.begin(), order.end(), std::size_t(0));
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return q[a] > q[b]; });
    if (C >= 2) s.majority_classes = {int(order[0]), int(order[1])};
    detail::sort_split(s);
  }
  return out;
}

/// Quantity skew (see the file comment): IID labels, log-normal client sizes with spread
/// sigma >= 0 (sigma = 0: every client gets exactly n_train / n_val / n_test); spec.p unused.
inline Partition partition_quantity_skew(const Labels& train_labels, const Labels& test_labels, Index classes,
                                         const PartitionSpec& spec, double sigma, Rng& rng) {
  constexpr const char* who = "partition_quantity_skew";
  detail::check_partition_spec(spec, who);
  FEDMOE_CHECK(sigma >= 0 && std::isfinite(sigma), who, ": expected a finite sigma >= 0, got ", sigma);
  detail::check_partition_labels(train_labels, classes, who, "training");
  detail::check_partition_labels(test_labels, classes, who, "test");
  detail::check_train_total(spec, train_labels.size(), who);
  std::vector<double> w(std::size_t(spec.clients));
  for (double& v : w) v = std::exp(sigma * rng.normal());
  Partition out = detail::partition_iid_sizes(train_labels, test_labels, classes,
                                              detail::quantity_sizes(w, spec.n_train),
                                              detail::quantity_sizes(w, spec.n_val),
                                              detail::quantity_sizes(w, spec.n_test), rng, who);
  std::ostringstream scheme;
  scheme << "quantity_skew(sigma=" << sigma << ")";
  out.scheme = scheme.str();
  return out;
}

/// A printable table: one row per client with its train size, the class histogram of its
/// training samples and its majority classes, then a total row.
inline std::string partition_summary(const Partition& partition, const Labels& train_labels, Index classes) {
  FEDMOE_CHECK(classes > 0, "partition_summary: expected classes > 0, got ", classes);
  std::ostringstream out;
  out << "partition " << (partition.scheme.empty() ? "(unnamed)" : partition.scheme) << ": " << partition.size()
      << " clients, " << classes << " classes (train class histograms)\n";
  out << std::setw(6) << "client" << std::setw(7) << "train";
  for (Index c = 0; c < classes; ++c) out << std::setw(6) << c;
  out << "  majority\n";
  std::vector<Index> total(std::size_t(classes), 0);
  Index total_n = 0;
  for (Index k = 0; k < partition.size(); ++k) {
    const ClientSplit& s = partition[k];
    const auto h = class_histogram(s.train, train_labels, classes);
    out << std::setw(6) << k << std::setw(7) << s.train.size();
    for (std::size_t c = 0; c < h.size(); ++c) {
      out << std::setw(6) << h[c];
      total[c] += h[c];
    }
    total_n += Index(s.train.size());
    out << "  ";
    for (std::size_t j = 0; j < s.majority_classes.size(); ++j) out << (j ? "," : "") << s.majority_classes[j];
    if (s.majority_classes.empty()) out << '-';
    out << '\n';
  }
  out << std::setw(6) << "total" << std::setw(7) << total_n;
  for (Index v : total) out << std::setw(6) << v;
  out << '\n';
  return out.str();
}

}  // namespace fedmoe
