#pragma once
/// @file fuzz_target.hpp
/// @brief What the fuzz targets in tests/fuzz share (issue 16: fuzzing in the tree).
///
/// Each fuzz_<parser>.cpp defines one libFuzzer entry point with FEDMOE_FUZZ_TARGET. It is built twice:
/// - with clang's -fsanitize=fuzzer,address,undefined (`.ci/fuzz`, option FEDMOE_FUZZ): libFuzzer
///   mutates inputs from the seed corpus that make_seeds.cpp writes with the library's own writers;
/// - with any compiler and replay_main.cpp: a plain program that feeds files to the same entry point.
///   CTest runs it over the seeds and over every input a fuzzer ever crashed on (regressions/<parser>/),
///   in the release build and under the ASan+UBSan preset, so a fixed crash stays fixed.
/// The contract under test is the library's: bad input ends in a fedmoe::Error (a clear message), never
/// in a crash, undefined behaviour, another exception type, or an allocation beyond libFuzzer's
/// -malloc_limit_mb (a size read from a file must be checked before it is allocated).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>

#include <unistd.h>
#include <zlib.h>

#include <fedmoe/core/error.hpp>

/// The entry point of one fuzz target: `data`, `size` are one input.
#define FEDMOE_FUZZ_TARGET extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)

namespace fedmoe::fuzz {

/// How many inputs of this process ended in a fedmoe::Error (replay_main reports it; a seed must not).
inline std::size_t& refused_inputs() {
  static std::size_t count = 0;
  return count;
}

/// Runs `parse`; a fedmoe::Error is the expected answer to bad input, anything else escapes and is a finding.
template <class Parse>
int expect_clean_error(Parse&& parse) {
  try {
    parse();
  } catch (const fedmoe::Error&) {
    ++refused_inputs();
  }
  return 0;
}

/// An input holding two files: a 4-byte little-endian length L, then L bytes of the first, then the second.
struct TwoParts {
  std::span<const std::uint8_t> first, second;
  bool ok = false;
};
inline TwoParts two_parts(const std::uint8_t* data, std::size_t size) {
  if (size < 4) return {};
  std::uint32_t n = 0;
  for (int i = 3; i >= 0; --i) n = (n << 8) | data[i];
  if (n > size - 4) return {};
  return {{data + 4, n}, {data + 4 + n, size - 4 - n}, true};
}
/// The inverse of two_parts (make_seeds writes inputs so).
inline std::string join_parts(const std::string& first, const std::string& second) {
  std::string out(4, '\0');
  const auto n = std::uint32_t(first.size());
  for (int i = 0; i < 4; ++i) out[std::size_t(i)] = char((n >> (8 * i)) & 0xff);
  return out + first + second;
}

/// A file of this process (in the temporary directory), rewritten for each input: the parsers under test
/// read paths. Removed at exit.
class ScratchFile {
public:
  explicit ScratchFile(const std::string& name)
      : m_path((std::filesystem::temp_directory_path() /
                ("fedmoe-fuzz-" + std::to_string(::getpid()) + "-" + name)).string()) {}
  ~ScratchFile() {
    std::error_code ignored;
    std::filesystem::remove(m_path, ignored);
  }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;

  const std::string& write(std::span<const std::uint8_t> bytes) {
    std::ofstream out(m_path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    return m_path;
  }
  const std::string& path() const { return m_path; }

private:
  std::string m_path;
};

/// An input holding two files (see two_parts) written to `first` and `second`, then parsed by
/// parse(first_path, second_path) under expect_clean_error; an input that is not two files is skipped.
template <class Parse>
int two_files(const std::uint8_t* data, std::size_t size, ScratchFile& first, ScratchFile& second, Parse&& parse) {
  const TwoParts parts = two_parts(data, size);
  if (!parts.ok) return 0;
  first.write(parts.first);
  second.write(parts.second);
  return expect_clean_error([&] { parse(first.path(), second.path()); });
}

/// zlib's CRC-32 of `n` bytes (the checksum of the serialization format and of MPI frames).
inline std::uint32_t crc32_of(const void* p, std::size_t n) {
  return std::uint32_t(::crc32_z(::crc32_z(0L, Z_NULL, 0), static_cast<const Bytef*>(p), n));
}

/// An input of a checksummed format: one mode byte, then the file. With mode bit 0 set the file's last 4
/// bytes are replaced by the CRC-32 of the bytes before them (little-endian, as the format stores it), so
/// mutations get past the checksum to the checks behind it.
struct ModeAndFile {
  unsigned mode = 0;
  std::string file;
};
inline ModeAndFile mode_and_file(const std::uint8_t* data, std::size_t size) {
  ModeAndFile in{data[0], std::string(reinterpret_cast<const char*>(data + 1), size - 1)};
  if ((in.mode & 1u) && in.file.size() >= 4) {
    const std::uint32_t crc = crc32_of(in.file.data(), in.file.size() - 4);
    for (int i = 0; i < 4; ++i) in.file[in.file.size() - 4 + std::size_t(i)] = char((crc >> (8 * i)) & 0xff);
  }
  return in;
}

}  // namespace fedmoe::fuzz
