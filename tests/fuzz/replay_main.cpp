/// @file replay_main.cpp
/// @brief main() for a fuzz target built without libFuzzer: feeds each file named on the command line,
/// or each file in a directory named there (in name order), to LLVMFuzzerTestOneInput once. Any crash
/// or sanitizer report fails the run; an argument naming nothing, or no input at all, fails too (a replay
/// that ran nothing proves nothing). `--valid DIR` names inputs that must all be accepted (the seeds:
/// a seed the parser refuses means the writer and the reader disagree, and fuzzing from it is blind).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fuzz_target.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  struct Input {
    fs::path path;
    bool must_be_valid;
  };
  std::vector<Input> inputs;
  bool valid = false;
  for (int a = 1; a < argc; ++a) {
    if (std::string(argv[a]) == "--valid") {
      valid = true;
      continue;
    }
    const fs::path p(argv[a]);
    std::vector<fs::path> found;
    if (fs::is_directory(p)) {
      for (const auto& e : fs::directory_iterator(p))
        if (e.is_regular_file()) found.push_back(e.path());
    } else if (fs::is_regular_file(p)) {
      found.push_back(p);
    }
    if (found.empty()) {
      std::fprintf(stderr, "replay: '%s': expected a file or a non-empty directory, found no input\n", argv[a]);
      return 2;
    }
    std::sort(found.begin(), found.end());
    for (auto& f : found) inputs.push_back({std::move(f), valid});
    valid = false;
  }
  if (inputs.empty()) {
    std::fprintf(stderr, "replay: no inputs (usage: replay [--valid] PATH...)\n");
    return 2;
  }
  std::size_t refused = 0;
  for (const auto& input : inputs) {
    std::ifstream in(input.path, std::ios::binary);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::size_t before = fedmoe::fuzz::refused_inputs();
    LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
    const bool was_refused = fedmoe::fuzz::refused_inputs() != before;
    refused += was_refused;
    if (was_refused && input.must_be_valid) {
      std::fprintf(stderr, "replay: '%s' must be accepted (a seed), but the parser refused it\n",
                   input.path.c_str());
      return 1;
    }
  }
  std::printf("replay: %zu inputs, no finding (%zu refused with a fedmoe::Error)\n", inputs.size(), refused);
  return 0;
}
