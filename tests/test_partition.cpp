// Partitioners: exact sizes, the majority recipe, disjoint train/val across all clients,
// test indices from the test split, determinism, skew of Dirichlet / quantity skew, errors.
// Synthetic labels only: 6,000 training and 1,000 test samples per class, like Fashion-MNIST.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>
#include <vector>

#include <fedmoe/core/rng.hpp>
#include <fedmoe/data/partition.hpp>

using namespace fedmoe;

namespace {
/// Labels with per_class[c] samples of class c, in a random (seeded) order.
Labels synthetic_labels(const std::vector<Index>& per_class, std::uint64_t seed) {
  std::vector<std::int32_t> v;
  for (std::size_t c = 0; c < per_class.size(); ++c) v.insert(v.end(), std::size_t(per_class[c]), std::int32_t(c));
  Rng rng(seed);
  rng.shuffle(v.begin(), v.end());
  Labels out(Index(v.size()));
  for (std::size_t i = 0; i < v.size(); ++i) out[Index(i)] = v[i];
  return out;
}
Labels balanced_labels(Index classes, Index per_class, std::uint64_t seed) {
  return synthetic_labels(std::vector<Index>(std::size_t(classes), per_class), seed);
}

/// Histogram computed here, independently of fedmoe::class_histogram.
std::vector<Index> count_classes(const std::vector<Index>& idx, const Labels& labels, Index classes) {
  std::vector<Index> h(std::size_t(classes), 0);
  for (Index i : idx) ++h[std::size_t(labels[i])];
  return h;
}

/// Checks the invariants every partitioner guarantees: index ranges, train/val disjoint within
/// and across clients, test indices distinct per client, lists sorted.
void check_invariants(const Partition& part, const Labels& train_labels, const Labels& test_labels) {
  REQUIRE(part.train_pool == train_labels.size());
  REQUIRE(part.test_pool == test_labels.size());
  std::vector<int> used(std::size_t(train_labels.size()), 0);
  Index duplicates = 0, out_of_range = 0, test_repeats = 0;
  for (const ClientSplit& s : part) {
    for (const auto* list : {&s.train, &s.val}) {
      CHECK(std::is_sorted(list->begin(), list->end()));
      for (Index i : *list) {
        if (i < 0 || i >= train_labels.size()) {
          ++out_of_range;
          continue;
        }
        if (used[std::size_t(i)]++) ++duplicates;
      }
    }
    CHECK(std::is_sorted(s.test.begin(), s.test.end()));
    for (Index i : s.test)
      if (i < 0 || i >= test_labels.size()) ++out_of_range;
    test_repeats += Index(s.test.size() - std::set<Index>(s.test.begin(), s.test.end()).size());
  }
  CHECK(out_of_range == 0);
  CHECK(duplicates == 0);
  CHECK(test_repeats == 0);
  CHECK_NOTHROW(part.validate());
}

bool same_partition(const Partition& a, const Partition& b) {
  if (a.size() != b.size()) return false;
  for (Index k = 0; k < a.size(); ++k)
    if (a[k].train != b[k].train || a[k].val != b[k].val || a[k].test != b[k].test ||
        a[k].majority_classes != b[k].majority_classes)
      return false;
  return true;
}

/// The majority recipe for one split of n samples with histogram h and pair (a, b).
void check_majority_split(const std::vector<Index>& h, Index n, double p, int a, int b) {
  const Index classes = Index(h.size());
  Index total = 0;
  for (Index v : h) total += v;
  REQUIRE(total == n);
  const Index m = h[std::size_t(a)] + h[std::size_t(b)];
  // m is p n rounded: the majority fraction is within half a sample of p.
  CHECK(std::abs(double(m) - p * double(n)) <= 0.5 + 1e-9);
  // p/2 each: the first majority class takes the odd sample.
  CHECK(h[std::size_t(a)] - h[std::size_t(b)] == m % 2);
  // The rest spread evenly over the other classes.
  Index lo = n, hi = 0;
  for (Index c = 0; c < classes; ++c)
    if (c != a && c != b) {
      lo = std::min(lo, h[std::size_t(c)]);
      hi = std::max(hi, h[std::size_t(c)]);
    }
  if (classes > 2) {
    CHECK(hi - lo <= 1);
    CHECK(lo == (n - m) / (classes - 2));
  }
}

void check_majority(const Partition& part, const PartitionSpec& spec, const Labels& train_labels,
                    const Labels& test_labels, Index classes) {
  REQUIRE(part.size() == spec.clients);
  check_invariants(part, train_labels, test_labels);
  std::vector<Index> times_majority(std::size_t(classes), 0);
  for (const ClientSplit& s : part) {
    REQUIRE(Index(s.train.size()) == spec.n_train);
    REQUIRE(Index(s.val.size()) == spec.n_val);
    REQUIRE(Index(s.test.size()) == spec.n_test);
    REQUIRE(s.majority_classes.size() == 2);
    const int a = s.majority_classes[0], b = s.majority_classes[1];
    CHECK(a != b);
    REQUIRE((a >= 0 && a < classes && b >= 0 && b < classes));
    ++times_majority[std::size_t(a)];
    ++times_majority[std::size_t(b)];
    check_majority_split(count_classes(s.train, train_labels, classes), spec.n_train, spec.p, a, b);
    check_majority_split(count_classes(s.val, train_labels, classes), spec.n_val, spec.p, a, b);
    check_majority_split(count_classes(s.test, test_labels, classes), spec.n_test, spec.p, a, b);
  }
  // Classes spread evenly over the clients' majority slots.
  const auto [lo, hi] = std::minmax_element(times_majority.begin(), times_majority.end());
  CHECK(*hi - *lo <= 1);
  CHECK(*lo == 2 * spec.clients / classes);
}

const Labels& fmnist_train() {
  static const Labels l = balanced_labels(10, 6000, 101);
  return l;
}
const Labels& fmnist_test() {
  static const Labels l = balanced_labels(10, 1000, 202);
  return l;
}
}  // namespace

TEST_CASE("majority partition follows the paper's recipe for every p", "[data][partition]") {
  for (double p : {0.2, 0.5, 0.8, 1.0}) {
    INFO("p = " << p);
    PartitionSpec spec;  // the paper: 100 clients, 100 / 200 / 200
    spec.p = p;
    Rng rng(17);
    const Partition part = partition_majority(fmnist_train(), fmnist_test(), 10, spec, rng);
    check_majority(part, spec, fmnist_train(), fmnist_test(), 10);
    CHECK(part.scheme.find("majority") != std::string::npos);
  }
}

TEST_CASE("majority partition: odd sizes, odd class counts, pairs across permutation boundaries",
          "[data][partition]") {
  // 5 classes: the 2K slots come from permutations of odd length, so pairs straddle them.
  const Labels train = balanced_labels(5, 400, 3), test = balanced_labels(5, 100, 4);
  for (std::uint64_t seed = 1; seed <= 40; ++seed) {
    INFO("seed " << seed);
    PartitionSpec spec{7, 13, 7, 9, 0.3};
    Rng rng(seed);
    check_majority(partition_majority(train, test, 5, spec, rng), spec, train, test, 5);
    spec.p = 0.7;
    spec.clients = 23;
    check_majority(partition_majority(train, test, 5, spec, rng), spec, train, test, 5);
  }
  // Two classes are allowed when p = 1 (nothing else is needed).
  const Labels train2 = balanced_labels(2, 500, 5), test2 = balanced_labels(2, 100, 6);
  PartitionSpec spec{4, 20, 10, 10, 1.0};
  Rng rng(8);
  check_majority(partition_majority(train2, test2, 2, spec, rng), spec, train2, test2, 2);
}

TEST_CASE("majority partition at p = 1 with 100 clients x 300 samples fits Fashion-MNIST exactly",
          "[data][partition]") {
  PartitionSpec spec;
  spec.p = 1.0;
  spec.n_train = 100;
  spec.n_val = 200;
  Rng rng(5);
  const Partition part = partition_majority(fmnist_train(), fmnist_test(), 10, spec, rng);
  check_majority(part, spec, fmnist_train(), fmnist_test(), 10);
  // Each class is a majority class of 2K/C = 20 clients, each taking (n_train + n_val) / 2 of it.
  std::vector<Index> used(10, 0);
  for (const ClientSplit& s : part) {
    for (const auto* list : {&s.train, &s.val})
      for (Index i : *list) ++used[std::size_t(fmnist_train()[i])];
  }
  for (Index c = 0; c < 10; ++c) CHECK(used[std::size_t(c)] == 2 * spec.clients / 10 * (spec.n_train + spec.n_val) / 2);
}

TEST_CASE("partitions are deterministic in the seed", "[data][partition]") {
  PartitionSpec spec{20, 50, 30, 40, 0.6};
  const auto& tr = fmnist_train();
  const auto& te = fmnist_test();
  auto run = [&](int scheme, std::uint64_t seed) {
    Rng rng(seed);
    switch (scheme) {
      case 0: return partition_majority(tr, te, 10, spec, rng);
      case 1: return partition_iid(tr, te, 10, spec, rng);
      case 2: return partition_dirichlet(tr, te, 10, spec, 0.5, rng);
      default: return partition_quantity_skew(tr, te, 10, spec, 1.0, rng);
    }
  };
  for (int scheme = 0; scheme < 4; ++scheme) {
    INFO("scheme " << scheme);
    CHECK(same_partition(run(scheme, 77), run(scheme, 77)));
    CHECK_FALSE(same_partition(run(scheme, 77), run(scheme, 78)));
  }
}

TEST_CASE("partitions reject impossible requests, naming the numbers", "[data][partition]") {
  const auto& tr = fmnist_train();
  const auto& te = fmnist_test();
  Rng rng(1);
  // 300 clients x 300 samples = 90,000 > 60,000.
  PartitionSpec big{300, 100, 200, 200, 0.5};
  const std::string needed = std::to_string(big.clients * (big.n_train + big.n_val));
  const std::string have = std::to_string(tr.size());
  CHECK_THROWS_WITH(partition_majority(tr, te, 10, big, rng), Catch::Contains(needed) && Catch::Contains(have));
  CHECK_THROWS_WITH(partition_iid(tr, te, 10, big, rng), Catch::Contains(needed) && Catch::Contains(have));
  CHECK_THROWS_WITH(partition_dirichlet(tr, te, 10, big, 0.3, rng), Catch::Contains(needed) && Catch::Contains(have));
  CHECK_THROWS_WITH(partition_quantity_skew(tr, te, 10, big, 0.5, rng),
                    Catch::Contains(needed) && Catch::Contains(have));

  // p = 1 with a class too small: class 3 has 100 training samples but is a majority class of
  // 2K/C = 20 clients, each needing (100 + 200) / 2 of it.
  std::vector<Index> per_class(10, 6000);
  per_class[3] = 100;
  const Labels short_train = synthetic_labels(per_class, 9);
  PartitionSpec spec;
  spec.p = 1.0;
  const Index demand = 2 * spec.clients / 10 * (spec.n_train + spec.n_val) / 2;
  CHECK_THROWS_WITH(partition_majority(short_train, te, 10, spec, rng),
                    Catch::Contains("class 3") && Catch::Contains("needs " + std::to_string(demand)) &&
                        Catch::Contains("only 100"));

  // A test class too small for one client's local test set.
  std::vector<Index> test_per_class(10, 1000);
  test_per_class[5] = 50;
  const Labels short_test = synthetic_labels(test_per_class, 10);
  CHECK_THROWS_WITH(partition_majority(tr, short_test, 10, spec, rng),
                    Catch::Contains("class 5") && Catch::Contains("needs " + std::to_string(spec.n_test / 2)) &&
                        Catch::Contains("only 50"));
  // A local test set larger than the test split.
  PartitionSpec huge_test{2, 10, 10, 20000, 0.5};
  CHECK_THROWS_WITH(partition_iid(tr, te, 10, huge_test, rng),
                    Catch::Contains("20000") && Catch::Contains(std::to_string(te.size())));
  CHECK_THROWS_WITH(partition_dirichlet(tr, te, 10, huge_test, 1.0, rng),
                    Catch::Contains("20000") && Catch::Contains(std::to_string(te.size())));
}

TEST_CASE("partition specs are validated with expected and actual values", "[data][partition]") {
  const auto& tr = fmnist_train();
  const auto& te = fmnist_test();
  Rng rng(2);
  auto with = [](auto change) {
    PartitionSpec s;
    change(s);
    return s;
  };
  CHECK_THROWS_WITH(partition_majority(tr, te, 10, with([](auto& s) { s.clients = 0; }), rng),
                    Catch::Contains("clients > 0") && Catch::Contains("got 0"));
  CHECK_THROWS_WITH(partition_iid(tr, te, 10, with([](auto& s) { s.n_train = 0; }), rng),
                    Catch::Contains("n_train > 0") && Catch::Contains("got 0"));
  CHECK_THROWS_WITH(partition_dirichlet(tr, te, 10, with([](auto& s) { s.n_val = -1; }), 1.0, rng),
                    Catch::Contains("n_val >= 0") && Catch::Contains("got -1"));
  CHECK_THROWS_WITH(partition_quantity_skew(tr, te, 10, with([](auto& s) { s.n_test = -2; }), 1.0, rng),
                    Catch::Contains("n_test >= 0") && Catch::Contains("got -2"));
  CHECK_THROWS_WITH(partition_majority(tr, te, 10, with([](auto& s) { s.p = 1.5; }), rng),
                    Catch::Contains("0 <= p <= 1") && Catch::Contains("got 1.5"));
  CHECK_THROWS_WITH(partition_majority(tr, te, 10, with([](auto& s) { s.p = -0.1; }), rng),
                    Catch::Contains("got -0.1"));
  CHECK_THROWS_WITH(partition_dirichlet(tr, te, 10, PartitionSpec{}, 0.0, rng),
                    Catch::Contains("alpha > 0") && Catch::Contains("got 0"));
  CHECK_THROWS_WITH(partition_quantity_skew(tr, te, 10, PartitionSpec{}, -1.0, rng),
                    Catch::Contains("sigma >= 0") && Catch::Contains("got -1"));
  // Majority needs two majority classes plus another one unless p = 1.
  const Labels two = balanced_labels(2, 100, 1);
  CHECK_THROWS_WITH(partition_majority(two, two, 2, PartitionSpec{2, 10, 10, 10, 0.5}, rng),
                    Catch::Contains("classes >= 3") && Catch::Contains("classes = 2"));
  const Labels one = balanced_labels(1, 100, 1);
  CHECK_THROWS_WITH(partition_majority(one, one, 1, PartitionSpec{2, 10, 10, 10, 1.0}, rng),
                    Catch::Contains("classes >= 2") && Catch::Contains("got 1"));
  // Labels outside [0, classes).
  Labels bad = balanced_labels(10, 10, 1);
  bad[7] = 10;
  CHECK_THROWS_WITH(partition_iid(bad, te, 10, PartitionSpec{2, 10, 10, 10, 0.5}, rng),
                    Catch::Contains("[0, 10)") && Catch::Contains("got 10"));
  CHECK_THROWS_WITH(partition_majority(tr, bad, 10, PartitionSpec{2, 10, 10, 10, 0.5}, rng),
                    Catch::Contains("test labels") && Catch::Contains("got 10"));
}

TEST_CASE("iid partition: exact sizes, disjoint, class mix close to the pool's", "[data][partition]") {
  PartitionSpec spec;  // 100 clients x 300 = half the training split
  Rng rng(23);
  const Partition part = partition_iid(fmnist_train(), fmnist_test(), 10, spec, rng);
  REQUIRE(part.size() == spec.clients);
  check_invariants(part, fmnist_train(), fmnist_test());
  std::vector<Index> all(10, 0);
  for (const ClientSplit& s : part) {
    CHECK(Index(s.train.size()) == spec.n_train);
    CHECK(Index(s.val.size()) == spec.n_val);
    CHECK(Index(s.test.size()) == spec.n_test);
    CHECK(s.majority_classes.empty());
    const auto h = count_classes(s.train, fmnist_train(), 10);
    for (std::size_t c = 0; c < 10; ++c) all[c] += h[c];
  }
  // 10,000 draws of a 10% class: standard deviation 0.3 percentage points.
  for (Index c = 0; c < 10; ++c) CHECK(std::abs(double(all[std::size_t(c)]) / 10000.0 - 0.1) < 0.02);
}

TEST_CASE("dirichlet partition: small alpha skews, large alpha is near uniform", "[data][partition]") {
  PartitionSpec spec;
  auto mean_max_fraction = [&](double alpha, std::uint64_t seed) {
    Rng rng(seed);
    const Partition part = partition_dirichlet(fmnist_train(), fmnist_test(), 10, spec, alpha, rng);
    REQUIRE(part.size() == spec.clients);
    check_invariants(part, fmnist_train(), fmnist_test());
    double sum = 0;
    for (const ClientSplit& s : part) {
      REQUIRE(Index(s.train.size()) == spec.n_train);
      REQUIRE(Index(s.val.size()) == spec.n_val);
      REQUIRE(Index(s.test.size()) == spec.n_test);
      REQUIRE(s.majority_classes.size() == 2);
      const auto h = count_classes(s.train, fmnist_train(), 10);
      sum += double(*std::max_element(h.begin(), h.end())) / double(spec.n_train);
    }
    return sum / double(spec.clients);
  };
  const double skewed = mean_max_fraction(0.1, 31), flat = mean_max_fraction(100.0, 32);
  INFO("mean max-class fraction: alpha 0.1 -> " << skewed << ", alpha 100 -> " << flat);
  CHECK(skewed > 0.5);
  CHECK(flat < 0.25);
}

TEST_CASE("dirichlet partition renormalises when classes run out and can use the whole pool",
          "[data][partition]") {
  // 20 clients x 300 = all 6,000 samples: classes must run out along the way.
  const Labels train = balanced_labels(10, 600, 41), test = balanced_labels(10, 100, 42);
  PartitionSpec spec{20, 100, 200, 150, 0.0};
  for (double alpha : {0.05, 1.0}) {
    INFO("alpha " << alpha);
    Rng rng(43);
    const Partition part = partition_dirichlet(train, test, 10, spec, alpha, rng);
    check_invariants(part, train, test);
    Index total = 0;
    for (const ClientSplit& s : part) {
      CHECK(Index(s.train.size()) == spec.n_train);
      CHECK(Index(s.val.size()) == spec.n_val);
      CHECK(Index(s.test.size()) == spec.n_test);  // 150 > 100 per test class: spills over
      total += Index(s.train.size() + s.val.size());
    }
    CHECK(total == train.size());
  }
  spec.clients = 21;
  Rng rng(44);
  CHECK_THROWS_WITH(partition_dirichlet(train, test, 10, spec, 0.5, rng),
                    Catch::Contains(std::to_string(21 * 300)) && Catch::Contains("only 6000"));
}

TEST_CASE("quantity skew: sizes vary with sigma, totals exact, labels iid", "[data][partition]") {
  PartitionSpec spec{50, 100, 40, 60, 0.0};
  Rng rng0(51);
  const Partition equal = partition_quantity_skew(fmnist_train(), fmnist_test(), 10, spec, 0.0, rng0);
  check_invariants(equal, fmnist_train(), fmnist_test());
  for (const ClientSplit& s : equal) {
    CHECK(Index(s.train.size()) == spec.n_train);
    CHECK(Index(s.val.size()) == spec.n_val);
    CHECK(Index(s.test.size()) == spec.n_test);
  }
  Rng rng(52);
  const Partition part = partition_quantity_skew(fmnist_train(), fmnist_test(), 10, spec, 1.0, rng);
  check_invariants(part, fmnist_train(), fmnist_test());
  Index total_train = 0, total_val = 0, total_test = 0, lo = spec.n_train * spec.clients, hi = 0;
  for (const ClientSplit& s : part) {
    total_train += Index(s.train.size());
    total_val += Index(s.val.size());
    total_test += Index(s.test.size());
    lo = std::min(lo, Index(s.train.size()));
    hi = std::max(hi, Index(s.train.size()));
    CHECK(!s.train.empty());
    CHECK(!s.val.empty());
    CHECK(!s.test.empty());
  }
  CHECK(total_train == spec.clients * spec.n_train);
  CHECK(total_val == spec.clients * spec.n_val);
  CHECK(total_test == spec.clients * spec.n_test);
  INFO("client train sizes in [" << lo << ", " << hi << "]");
  CHECK(hi > 3 * lo);  // log-normal with sigma 1 over 50 clients spreads sizes widely
}

TEST_CASE("class_histogram and partition_summary report the train class counts", "[data][partition]") {
  PartitionSpec spec{6, 40, 10, 10, 0.8};
  Rng rng(61);
  const Partition part = partition_majority(fmnist_train(), fmnist_test(), 10, spec, rng);
  for (const ClientSplit& s : part) CHECK(class_histogram(s.train, fmnist_train(), 10) == count_classes(s.train, fmnist_train(), 10));
  CHECK_THROWS_WITH(class_histogram(std::vector<Index>{fmnist_train().size()}, fmnist_train(), 10),
                    Catch::Contains("got " + std::to_string(fmnist_train().size())));

  const std::string table = partition_summary(part, fmnist_train(), 10);
  std::istringstream in(table);
  std::string line;
  std::getline(in, line);  // title
  CHECK(line.find("majority(p=0.8)") != std::string::npos);
  std::getline(in, line);  // column header
  std::vector<Index> total(10, 0);
  for (Index k = 0; k < spec.clients; ++k) {
    REQUIRE(std::getline(in, line));
    std::istringstream row(line);
    Index client = -1, n = -1;
    row >> client >> n;
    CHECK(client == k);
    CHECK(n == spec.n_train);
    const auto h = count_classes(part[k].train, fmnist_train(), 10);
    for (std::size_t c = 0; c < 10; ++c) {
      Index v = -1;
      row >> v;
      CHECK(v == h[c]);
      total[c] += h[c];
    }
    std::string majority;
    row >> majority;
    CHECK(majority == std::to_string(part[k].majority_classes[0]) + "," + std::to_string(part[k].majority_classes[1]));
  }
  REQUIRE(std::getline(in, line));
  std::istringstream row(line);
  std::string word;
  Index n = -1;
  row >> word >> n;
  CHECK(word == "total");
  CHECK(n == spec.clients * spec.n_train);
  for (std::size_t c = 0; c < 10; ++c) {
    Index v = -1;
    row >> v;
    CHECK(v == total[c]);
  }
}

TEST_CASE("Partition::validate catches overlapping or out-of-range indices", "[data][partition]") {
  PartitionSpec spec{3, 10, 5, 5, 0.5};
  Rng rng(71);
  Partition part = partition_iid(fmnist_train(), fmnist_test(), 10, spec, rng);
  CHECK_NOTHROW(part.validate());
  Partition overlap = part;
  overlap[1].val[0] = overlap[0].train[0];
  CHECK_THROWS_WITH(overlap.validate(), Catch::Contains("disjoint") && Catch::Contains(std::to_string(part[0].train[0])));
  Partition outside = part;
  outside[2].test[0] = fmnist_test().size();
  CHECK_THROWS_WITH(outside.validate(), Catch::Contains("[0, " + std::to_string(fmnist_test().size()) + ")"));
}
