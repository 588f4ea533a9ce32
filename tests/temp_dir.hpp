#pragma once
/// @file temp_dir.hpp
/// @brief test::TempDir: a fresh directory under the system temp dir for a test's files, removed with its
/// contents at the end of the scope (the reader, checkpoint, portability and CIFAR tests).
#include <chrono>
#include <filesystem>
#include <string>
#include <system_error>

namespace fedmoe::test {

struct TempDir {
  std::filesystem::path path;
  /// tag names the directory: fedmoe-<tag>-<time>-<counter>.
  explicit TempDir(const std::string& tag) {
    static int counter = 0;
    const auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
    path = std::filesystem::temp_directory_path() /
           ("fedmoe-" + tag + "-" + std::to_string(stamp) + "-" + std::to_string(counter++));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path / name).string(); }
};

}  // namespace fedmoe::test
