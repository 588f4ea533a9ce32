// Batcher: every index once per epoch, seeded shuffling, gathered columns, the short last batch,
// reused workspaces, and errors.
#include <catch2/catch.hpp>

#include <algorithm>
#include <vector>

#include <fedmoe/core/rng.hpp>
#include <fedmoe/data/batcher.hpp>

using namespace fedmoe;

namespace {
/// n samples of `rows` features; column i holds i * 100 + r in row r (so a column names its
/// sample), label i % classes.
template <class S>
Dataset<S> numbered_dataset(Index rows, Index n, Index classes = 4) {
  Dataset<S> d{Matrix<S>(rows, n), Labels(n), Shape{rows, 1, 1}, classes};
  for (Index i = 0; i < n; ++i) {
    for (Index r = 0; r < rows; ++r) d.inputs(r, i) = S(i * 100 + r);
    d.labels[i] = std::int32_t(i % classes);
  }
  return d;
}

/// A random subset of [0, n) of size m, in random order.
std::vector<Index> random_indices(Index n, Index m, std::uint64_t seed) {
  std::vector<Index> all(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) all[std::size_t(i)] = i;
  Rng rng(seed);
  rng.shuffle(all.begin(), all.end());
  all.resize(std::size_t(m));
  return all;
}
}  // namespace

TEMPLATE_TEST_CASE("batcher visits every index exactly once per epoch and gathers its column", "[data][batcher]",
                   float, double) {
  using S = TestType;
  const auto data = numbered_dataset<S>(3, 41);
  const auto indices = random_indices(41, 23, 7);
  const Index batch = 5;
  Batcher<S> batcher(data, indices, batch);
  REQUIRE(batcher.size() == 23);
  REQUIRE(batcher.num_batches() == (23 + batch - 1) / batch);
  Rng rng(3);
  for (int epoch = 0; epoch < 3; ++epoch) {
    batcher.shuffle(rng);
    std::vector<Index> seen;
    for (Index b = 0; b < batcher.num_batches(); ++b) {
      batcher.gather(b);
      const auto idx = batcher.batch_indices(b);
      const Index expected_len = std::min(batch, Index(indices.size()) - b * batch);
      REQUIRE(batcher.inputs().cols() == expected_len);
      REQUIRE(batcher.labels().size() == expected_len);
      REQUIRE(Index(idx.size()) == expected_len);
      CHECK(batcher.batch_length(b) == expected_len);
      REQUIRE(batcher.inputs().rows() == 3);
      for (Index j = 0; j < expected_len; ++j) {
        const Index i = idx[std::size_t(j)];
        CHECK(batcher.inputs().col(j) == data.inputs.col(i));
        CHECK(batcher.labels()[j] == data.labels[i]);
        // The column names its sample: the gathered sample is the one the order says.
        CHECK(Index(batcher.inputs()(0, j)) / 100 == i);
        seen.push_back(i);
      }
    }
    auto sorted_seen = seen, sorted_indices = indices;
    std::sort(sorted_seen.begin(), sorted_seen.end());
    std::sort(sorted_indices.begin(), sorted_indices.end());
    CHECK(sorted_seen == sorted_indices);
  }
}

TEMPLATE_TEST_CASE("batcher shuffling is seeded", "[data][batcher]", float, double) {
  using S = TestType;
  const auto data = numbered_dataset<S>(2, 50);
  const auto indices = random_indices(50, 50, 1);
  Batcher<S> a(data, indices, 8), b(data, indices, 8), c(data, indices, 8);
  CHECK(std::equal(a.order().begin(), a.order().end(), indices.begin(), indices.end()));  // unshuffled: as given
  Rng ra(42), rb(42), rc(43);
  a.shuffle(ra);
  b.shuffle(rb);
  c.shuffle(rc);
  CHECK(std::equal(a.order().begin(), a.order().end(), b.order().begin(), b.order().end()));
  CHECK_FALSE(std::equal(a.order().begin(), a.order().end(), c.order().begin(), c.order().end()));
  const std::vector<Index> first(a.order().begin(), a.order().end());
  a.shuffle(ra);
  CHECK_FALSE(std::equal(a.order().begin(), a.order().end(), first.begin(), first.end()));  // new order per epoch
}

TEMPLATE_TEST_CASE("batcher handles the short last batch and reuses its workspaces", "[data][batcher]", float,
                   double) {
  using S = TestType;
  const auto data = numbered_dataset<S>(4, 30);
  const auto indices = random_indices(30, 17, 5);  // batch 5: 5 + 5 + 5 + 2
  Batcher<S> batcher(data, indices, 5);
  REQUIRE(batcher.num_batches() == 4);
  CHECK(batcher.batch_length(3) == 17 - 3 * 5);
  Rng rng(9);
  batcher.shuffle(rng);
  batcher.gather(0);
  const S* full = batcher.inputs().data();
  const auto* full_labels = batcher.labels().data();
  batcher.gather(3);
  const S* tail = batcher.inputs().data();
  REQUIRE(batcher.inputs().cols() == 2);
  for (Index j = 0; j < 2; ++j) CHECK(batcher.inputs().col(j) == data.inputs.col(batcher.batch_indices(3)[j]));
  for (int epoch = 0; epoch < 3; ++epoch) {
    batcher.shuffle(rng);
    for (Index b = 0; b < batcher.num_batches(); ++b) {
      batcher.gather(b);
      // Same storage every time: gathering does not allocate.
      CHECK(batcher.inputs().data() == (b == 3 ? tail : full));
      if (b < 3) CHECK(batcher.labels().data() == full_labels);
    }
  }
}

TEMPLATE_TEST_CASE("batcher with batch_size >= size gives one batch and allows repeated indices",
                   "[data][batcher]", float, double) {
  using S = TestType;
  const auto data = numbered_dataset<S>(2, 10);
  const std::vector<Index> indices{4, 4, 9, 0};
  Batcher<S> batcher(data, indices, 16);
  REQUIRE(batcher.num_batches() == 1);
  batcher.gather(0);
  REQUIRE(batcher.inputs().cols() == 4);
  for (Index j = 0; j < 4; ++j) CHECK(batcher.inputs().col(j) == data.inputs.col(indices[std::size_t(j)]));
  // Exact multiple: no tail batch.
  Batcher<S> even(data, std::vector<Index>{0, 1, 2, 3, 4, 5}, 3);
  REQUIRE(even.num_batches() == 2);
  even.gather(1);
  CHECK(even.inputs().cols() == 3);
}

TEMPLATE_TEST_CASE("gather_samples fills a reused workspace", "[data][batcher]", float, double) {
  using S = TestType;
  const auto data = numbered_dataset<S>(3, 12);
  const std::vector<Index> idx{11, 2, 5};
  Matrix<S> x(3, 3);
  Labels y(3);
  const S* storage = x.data();
  gather_samples<S>(data, idx, x, y);
  CHECK(x.data() == storage);
  for (Index j = 0; j < 3; ++j) {
    CHECK(x.col(j) == data.inputs.col(idx[std::size_t(j)]));
    CHECK(y[j] == data.labels[idx[std::size_t(j)]]);
  }
  const auto sub = data.subset(idx);
  CHECK(sub.inputs == x);
  CHECK(sub.labels == y);
  CHECK_THROWS_WITH(gather_samples<S>(data, std::vector<Index>{0, 12}, x, y),
                    Catch::Contains("[0, 12)") && Catch::Contains("got 12"));
}

TEMPLATE_TEST_CASE("batcher rejects bad arguments with the expected and actual values", "[data][batcher]", float,
                   double) {
  using S = TestType;
  const auto data = numbered_dataset<S>(2, 10);
  CHECK_THROWS_WITH(Batcher<S>(data, std::vector<Index>{1, 2}, 0),
                    Catch::Contains("batch_size > 0") && Catch::Contains("got 0"));
  CHECK_THROWS_WITH(Batcher<S>(data, std::vector<Index>{1, 2}, -3), Catch::Contains("got -3"));
  CHECK_THROWS_WITH(Batcher<S>(data, std::vector<Index>{}, 4),
                    Catch::Contains("non-empty") && Catch::Contains("got 0 indices"));
  CHECK_THROWS_WITH(Batcher<S>(data, std::vector<Index>{1, 10}, 4),
                    Catch::Contains("[0, 10)") && Catch::Contains("got 10"));
  CHECK_THROWS_WITH(Batcher<S>(data, std::vector<Index>{-1}, 4),
                    Catch::Contains("[0, 10)") && Catch::Contains("got -1"));
  Batcher<S> ok(data, std::vector<Index>{1, 2, 3}, 2);
  CHECK_THROWS_WITH(ok.gather(2), Catch::Contains("[0, 2)") && Catch::Contains("got 2"));
  CHECK_THROWS_WITH(ok.gather(-1), Catch::Contains("got -1"));
  CHECK_THROWS_WITH(ok.batch_length(5), Catch::Contains("[0, 2)") && Catch::Contains("got 5"));
}

TEMPLATE_TEST_CASE("every reader of samples refuses a dataset with fewer labels than samples", "[data][batcher]",
                   float, double) {
  // The index checks compare with inputs.cols(); with fewer labels, labels[i] was read past the end
  // (ASan: heap over-read; release: garbage labels). gather_samples is the one path of evaluate(),
  // for_each_chunk and the mixture's losses; the Batcher checks the same in its constructor.
  Dataset<TestType> d = numbered_dataset<TestType>(3, 12);
  d.labels.conservativeResize(7);
  const std::vector<Index> idx{0, 5, 11};
  Matrix<TestType> x;
  Labels y;
  CHECK_THROWS_WITH(gather_samples(d, std::span<const Index>(idx), x, y),
                    Catch::Matchers::Contains("expected 12 dataset labels (one per sample), got 7"));
  CHECK_THROWS_WITH(Batcher<TestType>(d, idx, 2), Catch::Matchers::Contains("expected 12 dataset labels"));
  d.labels.conservativeResize(12);  // consistent again: both work
  gather_samples(d, std::span<const Index>(idx), x, y);
  CHECK(y.size() == 3);
}
