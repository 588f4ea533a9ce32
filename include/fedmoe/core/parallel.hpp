#pragma once
/// @file parallel.hpp
/// @brief parallel_for: run independent tasks on a few threads.
///
/// Tasks are handed out dynamically, so which thread runs a task varies from run to run;
/// results stay bitwise reproducible because every task draws from its own Rng stream and
/// writes only its own output slot, and reductions happen afterwards in a fixed order.
#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "error.hpp"

namespace fedmoe {

/// Calls fn(task, worker) for task in [0, tasks) on min(threads, tasks) workers
/// (worker in [0, threads)). The first exception thrown by a task is rethrown here.
template <class Fn>
void parallel_for(std::size_t tasks, std::size_t threads, Fn&& fn) {
  FEDMOE_CHECK(threads > 0, "parallel_for: expected threads > 0, got ", threads);
  threads = std::min(threads, tasks);
  if (threads <= 1) {
    for (std::size_t t = 0; t < tasks; ++t) fn(t, std::size_t(0));
    return;
  }
  std::atomic<std::size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&](std::size_t w) {
    for (std::size_t t; (t = next.fetch_add(1)) < tasks;) {
      try {
        fn(t, w);
      } catch (...) {
        std::lock_guard lock(error_mutex);
        if (!error) error = std::current_exception();
        next = tasks;  // stop handing out work
      }
    }
  };
  std::vector<std::thread> pool;
  for (std::size_t w = 1; w < threads; ++w) pool.emplace_back(worker, w);
  worker(0);
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace fedmoe
