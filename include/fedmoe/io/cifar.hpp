#pragma once
/// @file cifar.hpp
/// @brief Readers for the binary releases of CIFAR-10 and CIFAR-100 (Krizhevsky 2009), gzip or plain.
///
/// The data: https://www.cs.toronto.edu/~kriz/cifar.html, the "binary version" tarballs
/// (cifar-10-binary.tar.gz, cifar-100-binary.tar.gz). They extract to
///
///     cifar-10-batches-bin/   data_batch_1.bin .. data_batch_5.bin (training), test_batch.bin
///     cifar-100-binary/       train.bin, test.bin
///
/// Both are headerless sequences of fixed-size records: CIFAR-10 `<label><3,072 pixels>`, CIFAR-100
/// `<coarse label><fine label><3,072 pixels>`. The pixels are the 1,024 red values, then the green, then
/// the blue, each plane row-major 32 x 32: already fedmoe's C, H, W order (core/tensor.hpp), so a record's
/// pixels are one Dataset column as they stand. Samples have shape {3, 32, 32}, pixels are scaled to
/// [0, 1] (x / 255, as load_idx does).
///
/// Checks, each error naming the file, the expected and the actual value: a missing file or directory
/// (saying where to get the data), an empty file, a size that is not a whole number of records (a
/// truncated or over-long file), a label out of range (CIFAR-10 < 10, CIFAR-100 fine < 100, coarse < 20),
/// and, for CIFAR-10's training split, five batches of the same record count (a batch truncated exactly
/// at a record boundary has fewer; the official batches hold 10,000 each). Files are read through zlib
/// (detail::GzFile of io/idx.hpp), so a gzip-compressed file (under its own name or with .gz appended)
/// reads as the plain one does.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "../core/checked_size.hpp"
#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../data/dataset.hpp"
#include "idx.hpp"

namespace fedmoe {

/// Which of CIFAR-100's two labels a dataset carries: the 100 fine classes or the 20 coarse superclasses.
enum class Cifar100Labels { fine, coarse };

/// The pixels of one CIFAR image: 3 x 32 x 32.
inline constexpr std::size_t cifar_pixels = 3 * 32 * 32;

namespace detail {

inline constexpr const char* cifar_source =
    "https://www.cs.toronto.edu/~kriz/cifar.html, the \"binary version\" tarballs";

/// Labels and pixels of the records read so far, in file order (several files append to one).
struct CifarRecords {
  std::vector<unsigned char> labels;
  std::vector<unsigned char> pixels;  // cifar_pixels per record
};

/// `path`, or `path.gz` when only that exists; `path` when neither does (the caller reports it).
inline std::string cifar_file(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  if (fs::exists(path)) return path.string();
  fs::path gz = path;
  gz += ".gz";
  return fs::exists(gz) ? gz.string() : path.string();
}

/// Room for the records of `paths` (plain files; a hint only: a gzip file holds more than its size says).
inline void reserve_cifar_records(CifarRecords& out, const std::vector<std::string>& paths, std::size_t record) {
  std::uintmax_t records = 0;
  for (const std::string& p : paths) {
    std::error_code ec;
    const std::uintmax_t bytes = std::filesystem::file_size(p, ec);
    if (!ec) records += bytes / record;
  }
  if (records > (std::uintmax_t(1) << 20)) return;  // more than any CIFAR split: let the reads decide
  if (records * cifar_pixels > max_index) return;
  out.labels.reserve(std::size_t(records));
  out.pixels.reserve(std::size_t(records) * cifar_pixels);
}

/// Appends the records of one file to `out`: `label_bytes` label bytes then cifar_pixels pixel bytes each,
/// keeping label byte `which_label`, which must be < classes. Returns the number of records of the file.
inline std::size_t append_cifar_records(const std::string& path, std::size_t label_bytes, std::size_t which_label,
                                        Index classes, const std::string& who, CifarRecords& out) {
  FEDMOE_CHECK(label_bytes >= 1 && label_bytes <= 2, who, ": expected 1 (CIFAR-10) or 2 (CIFAR-100) label bytes ",
               "per record, got ", label_bytes);
  FEDMOE_CHECK(which_label < label_bytes, who, ": expected a label byte in [0, ", label_bytes, "), got ", which_label);
  FEDMOE_CHECK(classes > 0 && classes <= 256, who, ": expected 0 < classes <= 256 (byte labels), got ", classes);
  FEDMOE_CHECK(!std::filesystem::is_directory(path), who, ": '", path, "' is a directory, expected a CIFAR ",
               "binary file");
  FEDMOE_CHECK(std::filesystem::exists(path), who, ": no such file '", path, "' (the CIFAR binary files come from ",
               cifar_source, ")");
  GzFile file(path, who);
  const std::size_t record = label_bytes + cifar_pixels;
  // Whole chunks of records: a partial record can only be the last bytes of the file.
  constexpr std::size_t chunk_records = 1024;
  std::vector<unsigned char> chunk(chunk_records * record);
  std::size_t records = 0;
  for (;;) {
    const std::size_t got = file.read(chunk.data(), chunk.size());
    const std::size_t whole = got / record;
    // Counts in 64 bits (a size_t is 32 on armhf and i386), checked before the buffers grow.
    const std::uint64_t total = std::uint64_t(records) * record + got;  // bytes read so far
    const std::uint64_t values = (std::uint64_t(out.labels.size()) + whole) * cifar_pixels;
    FEDMOE_CHECK(values <= max_index, who, ": '", path, "': ", out.labels.size() + whole, " records of ",
                 cifar_pixels, " pixels, expected at most ", max_index_text(), " pixels in all");
    FEDMOE_CHECK(got % record == 0, who, ": '", path, "' is not a whole number of ", record, "-byte records (",
                 label_bytes, " label byte", label_bytes == 1 ? "" : "s", " + ", cifar_pixels,
                 " pixels): expected a multiple of ", record, " bytes, got ", total, " (", records + whole,
                 " whole records + ", got % record, " bytes; truncated, or not a CIFAR binary file?)");
    for (std::size_t r = 0; r < whole; ++r) {
      const unsigned char* rec = chunk.data() + r * record;
      const unsigned label = rec[which_label];
      FEDMOE_CHECK(Index(label) < classes, who, ": '", path, "': expected labels in [0, ", classes, "), got ", label,
                   " at record ", records + r, " (byte ", (records + r) * record + which_label, ")");
      out.labels.push_back(rec[which_label]);
      out.pixels.insert(out.pixels.end(), rec + label_bytes, rec + record);
    }
    records += whole;
    if (got < chunk.size()) break;  // end of file
  }
  FEDMOE_CHECK(records > 0, who, ": '", path, "' is empty: expected ", record, "-byte records (", label_bytes,
               " label byte", label_bytes == 1 ? "" : "s", " + ", cifar_pixels, " pixels), got 0 bytes");
  return records;
}

/// The Dataset of the records read: inputs cifar_pixels x n in [0, 1], sample shape {3, 32, 32}.
template <class S>
Dataset<S> cifar_dataset(const CifarRecords& in, Index classes, const std::string& who) {
  const std::size_t n = in.labels.size();
  // Sizes in 64-bit arithmetic before they become Index: n * 3,072 values must fit (append_cifar_records
  // checked it as the records arrived).
  FEDMOE_CHECK(std::uint64_t(n) * cifar_pixels <= max_index && in.pixels.size() == n * cifar_pixels, who,
               ": expected ", n, " x ", cifar_pixels, " pixels (at most ", max_index_text(), "), got ",
               in.pixels.size());
  Dataset<S> data{Matrix<S>(Index(cifar_pixels), Index(n)), Labels(Index(n)), Shape{3, 32, 32}, classes};
  for (std::size_t i = 0; i < n; ++i) data.labels[Index(i)] = in.labels[i];
  // Record i's pixels (R plane, G plane, B plane, row-major) are column i of the C,H,W-flattened batch.
  for (std::size_t k = 0; k < in.pixels.size(); ++k) data.inputs.data()[k] = S(in.pixels[k]) / S(255);
  return data;
}

/// `dir` itself when it holds `probe`, else its subdirectory `sub` when that does (the tarball's top
/// directory: --data may name the directory the tarball was extracted in). Fails naming both.
inline std::filesystem::path cifar_directory(const std::string& dir, const char* sub, const char* probe,
                                             const std::string& who, const char* tarball) {
  namespace fs = std::filesystem;
  FEDMOE_CHECK(fs::is_directory(dir), who, ": no such directory '", dir, "' (expected the extracted ", tarball,
               " from ", cifar_source, ")");
  if (fs::exists(cifar_file(fs::path(dir) / probe))) return fs::path(dir);
  if (fs::exists(cifar_file(fs::path(dir) / sub / probe))) return fs::path(dir) / sub;
  return fs::path(dir);  // the reader names the missing file
}

/// The missing-file error of the directory loaders: the file, and where the data comes from.
inline void check_cifar_file(const std::string& path, const std::string& dir, const std::string& who,
                             const char* tarball, const char* sub) {
  FEDMOE_CHECK(std::filesystem::exists(path), who, ": missing file '", path, "' (expected the ", tarball,
               " files in '", dir, "' or in its subdirectory ", sub, "; get the data from ", cifar_source, ")");
}

}  // namespace detail

/// The records of one CIFAR binary file (gzip or plain): `label_bytes` label bytes (1 for CIFAR-10, 2 for
/// CIFAR-100: coarse, fine), then 3,072 pixel bytes each. The dataset's label is byte `which_label` of
/// each record, checked < classes; inputs 3,072 x n in [0, 1], sample shape {3, 32, 32}.
template <class S = float>
Dataset<S> read_cifar_records(const std::string& path, std::size_t label_bytes, std::size_t which_label,
                              Index classes) {
  const std::string who = "read_cifar_records";
  detail::CifarRecords records;
  detail::reserve_cifar_records(records, {path}, label_bytes + cifar_pixels);
  (void)detail::append_cifar_records(path, label_bytes, which_label, classes, who, records);
  return detail::cifar_dataset<S>(records, classes, who);
}

/// CIFAR-10's training split (data_batch_1.bin .. data_batch_5.bin, 50,000 images in the official release)
/// or test split (test_batch.bin, 10,000) from `dir`: the extracted cifar-10-batches-bin directory, or the
/// directory holding it. 10 classes. The five training batches must hold the same number of records.
template <class S = float>
Dataset<S> load_cifar10(const std::string& dir, bool train) {
  const std::string who = "load_cifar10";
  const char* tarball = "cifar-10-binary.tar.gz";
  const char* sub = "cifar-10-batches-bin";
  const std::filesystem::path root =
      detail::cifar_directory(dir, sub, train ? "data_batch_1.bin" : "test_batch.bin", who, tarball);
  std::vector<std::string> files;
  if (train)
    for (int b = 1; b <= 5; ++b) files.push_back(detail::cifar_file(root / ("data_batch_" + std::to_string(b) + ".bin")));
  else
    files.push_back(detail::cifar_file(root / "test_batch.bin"));
  for (const std::string& f : files) detail::check_cifar_file(f, dir, who, tarball, sub);  // all, before reading
  detail::CifarRecords records;
  detail::reserve_cifar_records(records, files, 1 + cifar_pixels);
  std::size_t first = 0;
  for (std::size_t b = 0; b < files.size(); ++b) {
    const std::size_t n = detail::append_cifar_records(files[b], 1, 0, 10, who, records);
    if (b == 0) first = n;
    FEDMOE_CHECK(n == first, who, ": '", files[b], "' holds ", n, " records, '", files[0], "' ", first,
                 ": expected every training batch to hold the same number (10000 in the official release; a ",
                 "truncated download?)");
  }
  return detail::cifar_dataset<S>(records, 10, who);
}

/// CIFAR-100's training split (train.bin, 50,000 images) or test split (test.bin, 10,000) from `dir`: the
/// extracted cifar-100-binary directory, or the directory holding it. Fine labels: 100 classes; coarse
/// labels: 20 superclasses.
template <class S = float>
Dataset<S> load_cifar100(const std::string& dir, bool train, Cifar100Labels labels = Cifar100Labels::fine) {
  const std::string who = "load_cifar100";
  const char* tarball = "cifar-100-binary.tar.gz";
  const char* sub = "cifar-100-binary";
  const char* name = train ? "train.bin" : "test.bin";
  const std::filesystem::path root = detail::cifar_directory(dir, sub, name, who, tarball);
  const std::string file = detail::cifar_file(root / name);
  detail::check_cifar_file(file, dir, who, tarball, sub);
  const bool fine = labels == Cifar100Labels::fine;
  const Index classes = fine ? 100 : 20;
  detail::CifarRecords records;
  detail::reserve_cifar_records(records, {file}, 2 + cifar_pixels);
  (void)detail::append_cifar_records(file, 2, fine ? 1 : 0, classes, who + (fine ? " (fine labels)" : " (coarse labels)"),
                                     records);
  return detail::cifar_dataset<S>(records, classes, who);
}

}  // namespace fedmoe
