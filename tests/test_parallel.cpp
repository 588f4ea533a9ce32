// parallel_for: every task runs exactly once on at most `threads` workers; errors propagate.
#include <catch2/catch.hpp>

#include <atomic>
#include <fedmoe/core/parallel.hpp>
#include <set>
#include <vector>

using namespace fedmoe;

TEST_CASE("parallel_for runs every task once and uses only the allowed workers", "[parallel]") {
  for (std::size_t threads : {1u, 2u, 3u, 8u}) {
    std::vector<std::atomic<int>> runs(37);
    std::vector<std::atomic<int>> worker_used(threads);
    std::atomic<bool> bad_worker{false};  // Catch2 assertions are not thread-safe: record, check after
    parallel_for(runs.size(), threads, [&](std::size_t task, std::size_t worker) {
      if (worker >= threads) {
        bad_worker = true;
        return;
      }
      ++runs[task];
      ++worker_used[worker];
    });
    CHECK_FALSE(bad_worker.load());
    for (const auto& r : runs) CHECK(r.load() == 1);
    int total = 0;
    for (const auto& w : worker_used) total += w.load();
    CHECK(total == 37);
  }
  parallel_for(0, 2, [](std::size_t, std::size_t) { FAIL("no task expected"); });
}

TEST_CASE("parallel_for rethrows the first task error and rejects zero threads", "[parallel][errors]") {
  CHECK_THROWS_WITH(parallel_for(10, 2,
                                 [](std::size_t task, std::size_t) {
                                   if (task == 3) FEDMOE_FAIL("task ", task, " failed");
                                 }),
                    Catch::Contains("task 3 failed"));
  CHECK_THROWS_WITH(parallel_for(1, 0, [](std::size_t, std::size_t) {}),
                    Catch::Contains("threads > 0") && Catch::Contains("got 0"));
}
