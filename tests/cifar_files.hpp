#pragma once
// Small files in the official CIFAR binary formats (io/cifar.hpp), for test_cifar.cpp and fedmoe-paper's
// CIFAR tests (test_reliability_flags_outputs.cpp). CIFAR is not packaged for Debian: the tests write
// their own. Record i of a file has label bytes, then pixel k = cifar_test::pixel(first + i, k).
#include <zlib.h>

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <fedmoe/io/cifar.hpp>

namespace cifar_test {

/// Pixel k (in [0, 3072), C,H,W order) of record `record`: varies with both, so a swapped plane, row or
/// record shows.
inline unsigned char pixel(std::size_t record, std::size_t k) {
  return static_cast<unsigned char>((31 * record + 7 * k + k / 1024) % 256);
}

/// Records with the given label bytes (each entry: the record's 1 or 2 label bytes), pixels from `first`.
inline std::vector<unsigned char> records(const std::vector<std::vector<unsigned>>& labels, std::size_t first = 0) {
  std::vector<unsigned char> out;
  for (std::size_t i = 0; i < labels.size(); ++i) {
    for (unsigned l : labels[i]) out.push_back(static_cast<unsigned char>(l));
    for (std::size_t k = 0; k < fedmoe::cifar_pixels; ++k) out.push_back(pixel(first + i, k));
  }
  return out;
}

/// CIFAR-10 records with labels `labels`.
inline std::vector<unsigned char> cifar10_records(const std::vector<unsigned>& labels, std::size_t first = 0) {
  std::vector<std::vector<unsigned>> l;
  for (unsigned v : labels) l.push_back({v});
  return records(l, first);
}

inline void write_file(const std::filesystem::path& path, const std::vector<unsigned char>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  out.close();
  if (!out) throw std::runtime_error("cifar_test: cannot write " + path.string());
}

inline void write_gzip(const std::filesystem::path& path, const std::vector<unsigned char>& bytes) {
  gzFile f = gzopen(path.string().c_str(), "wb");
  if (f == nullptr) throw std::runtime_error("cifar_test: cannot create " + path.string());
  const int wrote = gzwrite(f, bytes.data(), unsigned(bytes.size()));
  if (gzclose(f) != Z_OK || wrote != int(bytes.size()))
    throw std::runtime_error("cifar_test: cannot write " + path.string());
}

/// The CIFAR-10 label of training record i (over all batches) and of test record i: i % 10, so every
/// class has the same number of samples.
inline unsigned cifar10_label(std::size_t i) { return unsigned(i % 10); }

/// A cifar-10-batches-bin directory: data_batch_1..5.bin of `per_batch` records each (training record i
/// overall: label cifar10_label(i), pixels from record i), test_batch.bin of `test` records.
inline void write_cifar10_dir(const std::filesystem::path& dir, std::size_t per_batch, std::size_t test) {
  std::filesystem::create_directories(dir);
  for (std::size_t b = 0; b < 5; ++b) {
    std::vector<unsigned> labels;
    for (std::size_t i = 0; i < per_batch; ++i) labels.push_back(cifar10_label(b * per_batch + i));
    write_file(dir / ("data_batch_" + std::to_string(b + 1) + ".bin"), cifar10_records(labels, b * per_batch));
  }
  std::vector<unsigned> labels;
  for (std::size_t i = 0; i < test; ++i) labels.push_back(cifar10_label(i));
  write_file(dir / "test_batch.bin", cifar10_records(labels));
}

/// CIFAR-100 labels of record i: fine i % 100, coarse fine / 5 (any mapping onto 20 superclasses will do).
inline unsigned cifar100_fine(std::size_t i) { return unsigned(i % 100); }
inline unsigned cifar100_coarse(std::size_t i) { return cifar100_fine(i) / 5; }

/// A cifar-100-binary directory: train.bin of `train` records, test.bin of `test`.
inline void write_cifar100_dir(const std::filesystem::path& dir, std::size_t train, std::size_t test) {
  std::filesystem::create_directories(dir);
  for (const auto& [name, n] : {std::pair{"train.bin", train}, std::pair{"test.bin", test}}) {
    std::vector<std::vector<unsigned>> labels;
    for (std::size_t i = 0; i < n; ++i) labels.push_back({cifar100_coarse(i), cifar100_fine(i)});
    write_file(dir / name, records(labels));
  }
}

}  // namespace cifar_test
