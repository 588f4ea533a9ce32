#pragma once
/// @file idx.hpp
/// @brief Reader for the IDX files of the MNIST family (MNIST, Fashion-MNIST), gzip or plain.
///
/// IDX layout (big-endian): a 4-byte magic 0x00 0x00 <type> <ndims>, then ndims u32 sizes, then
/// the data. fedmoe reads unsigned-byte files (type 0x08): images 0x00000803 [n, rows, cols] and
/// labels 0x00000801 [n]. Files are read through zlib's gzread, which reads gzip-compressed and
/// uncompressed files alike.
///
/// Checks: magic numbers, dims, image count == label count, labels < classes, and an exact
/// payload length (a truncated file or trailing data is an error naming both byte counts).
/// Every size is computed in 64 bits and checked against this target's Index and size_t before it is
/// used (65536 x 65536 pixels per image is 2^32: readable on a 64-bit target, refused on a 32-bit one).
/// Pixels are scaled to [0, 1] by an IEEE division x / 255 in a scalar loop, so the data is bitwise the
/// same on every CPU (Eigen's vectorised division on ARMv7 NEON is a reciprocal estimate, not IEEE).
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <zlib.h>

#include "../core/checked_size.hpp"
#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../data/dataset.hpp"

namespace fedmoe {

namespace detail {

/// An open gzFile, closed on scope exit.
class GzFile {
public:
  GzFile(const std::string& path, const std::string& who) : m_path(path), m_who(who) {
    FEDMOE_CHECK(std::filesystem::exists(path), who, ": no such file '", path, "'");
    m_file = ::gzopen(path.c_str(), "rb");
    FEDMOE_CHECK(m_file != nullptr, who, ": cannot open '", path, "' for reading");
    ::gzbuffer(m_file, 1 << 17);
  }
  ~GzFile() {
    if (m_file) ::gzclose(m_file);
  }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;

  /// Reads up to n bytes; returns how many were read (fewer only at end of file).
  std::size_t read(unsigned char* out, std::size_t n) {
    std::size_t done = 0;
    while (done < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<std::size_t>(n - done, 1u << 30));
      const int got = ::gzread(m_file, out + done, chunk);
      if (got < 0) {
        int code = 0;
        const char* msg = ::gzerror(m_file, &code);
        if (code == Z_BUF_ERROR) break;  // the gzip stream ends early: report as truncated by the caller
        FEDMOE_FAIL(m_who, ": cannot read '", m_path, "': ", msg ? msg : "zlib error", " (zlib code ", code,
                    "; a corrupt gzip stream?)");
      }
      if (got == 0) break;
      done += static_cast<std::size_t>(got);
    }
    return done;
  }
  /// Big-endian u32 (header field `what`), failing if the file ends first.
  std::uint32_t u32(std::size_t offset, const char* what) {
    unsigned char b[4];
    const std::size_t got = read(b, 4);
    FEDMOE_CHECK(got == 4, m_who, ": '", m_path, "' is truncated: expected 4 bytes for the ", what, " at byte ",
                 offset, ", got ", got);
    return std::uint32_t(b[0]) << 24 | std::uint32_t(b[1]) << 16 | std::uint32_t(b[2]) << 8 | std::uint32_t(b[3]);
  }
  /// Exactly n bytes of payload, then end of file: otherwise an error naming both counts.
  /// The buffer grows only as data arrives, so a corrupt header cannot force a huge allocation.
  std::vector<unsigned char> payload(std::size_t n, std::size_t header_bytes) {
    std::vector<unsigned char> data;
    constexpr std::size_t step = std::size_t(1) << 24;
    std::size_t have = 0;
    while (have < n) {
      const std::size_t want = std::min(step, n - have);
      data.resize(have + want);
      const std::size_t got = read(data.data() + have, want);
      have += got;
      FEDMOE_CHECK(got == want, m_who, ": '", m_path, "' is truncated: the header declares ", n,
                   " payload bytes, the file holds ", have, " (", header_bytes + n, " bytes expected in total, got ",
                   header_bytes + have, ")");
    }
    unsigned char extra[4096];
    std::size_t trailing = 0;
    for (std::size_t got; (got = read(extra, sizeof(extra))) > 0;) trailing += got;
    FEDMOE_CHECK(trailing == 0, m_who, ": '", m_path, "' has trailing data: the header declares ", n,
                 " payload bytes, the file holds ", n + trailing, " (", trailing, " extra bytes)");
    return data;
  }

private:
  std::string m_path;
  std::string m_who;
  gzFile m_file = nullptr;
};

/// out[k] = bytes[k] / 255 in S: a plain loop of IEEE divisions (the compiler may vectorise it only with an
/// IEEE vector division, as on x86-64 and aarch64), never Eigen's packet division, which on ARMv7 NEON is
/// a reciprocal estimate plus one Newton step and differs from x / 255 in the last bits. So a data set
/// loads bitwise the same on every CPU.
template <class S>
void scale_bytes(const unsigned char* bytes, std::size_t n, S* out) {
  for (std::size_t k = 0; k < n; ++k) out[k] = S(bytes[k]) / S(255);
}

inline std::string idx_hex(std::uint32_t v) {
  const char* hex = "0123456789ABCDEF";
  std::string s = "0x";
  for (int shift = 28; shift >= 0; shift -= 4) s += hex[(v >> shift) & 15];
  return s;
}

inline void check_idx_magic(std::uint32_t got, std::uint32_t want, const std::string& path, const std::string& who,
                            const char* what) {
  FEDMOE_CHECK(got == want, who, ": '", path, "' is not an IDX ", what, " file: expected magic ", idx_hex(want),
               " (unsigned byte, ", want & 0xFF, " dims), got ", idx_hex(got));
}

}  // namespace detail

/// Images and labels from IDX files (gzip-compressed or plain): inputs (rows*cols) x n in
/// [0, 1], labels in [0, classes), sample shape {1, rows, cols}.
template <class S = float>
Dataset<S> load_idx(const std::string& images_path, const std::string& labels_path, Index classes = 10) {
  const std::string who = "load_idx";
  FEDMOE_CHECK(classes > 0 && classes <= 256, who, ": expected 0 < classes <= 256 (byte labels), got ", classes);
  detail::GzFile images(images_path, who);
  detail::GzFile labels(labels_path, who);

  detail::check_idx_magic(images.u32(0, "magic number"), 0x00000803u, images_path, who, "images");
  const std::uint32_t n = images.u32(4, "image count");
  const std::uint32_t rows = images.u32(8, "row count");
  const std::uint32_t cols = images.u32(12, "column count");
  detail::check_idx_magic(labels.u32(0, "magic number"), 0x00000801u, labels_path, who, "labels");
  const std::uint32_t nl = labels.u32(4, "label count");

  FEDMOE_CHECK(rows > 0 && cols > 0 && rows <= 65536 && cols <= 65536, who, ": '", images_path,
               "': expected image dims in [1, 65536], got ", rows, " x ", cols);
  FEDMOE_CHECK(n == nl, who, ": image count ", n, " in '", images_path, "' != label count ", nl, " in '", labels_path,
               "'");

  // In 64 bits: rows x cols reaches 2^32 and n x rows x cols almost 2^64, which wrap a 32-bit size_t.
  const std::uint64_t pixels = std::uint64_t(rows) * cols;
  const std::uint64_t values = std::uint64_t(n) * pixels;
  FEDMOE_CHECK(pixels <= detail::max_index, who, ": '", images_path, "': images of ", rows, " x ", cols, " = ", pixels,
               " pixels, expected at most ", detail::max_index_text());
  FEDMOE_CHECK(std::uint64_t(n) <= detail::max_index, who, ": '", images_path, "': ", n,
               " images, expected at most ", detail::max_index_text());
  FEDMOE_CHECK(values <= detail::max_index, who, ": '", images_path, "': ", n, " images of ", rows, " x ", cols,
               " = ", values, " pixels in all, expected at most ", detail::max_index_text());
  const std::vector<unsigned char> image_bytes = images.payload(std::size_t(values), 16);
  const std::vector<unsigned char> label_bytes = labels.payload(n, 8);

  Dataset<S> data{Matrix<S>(Index(pixels), Index(n)), Labels(Index(n)), Shape{1, Index(rows), Index(cols)}, classes};
  for (std::uint32_t i = 0; i < n; ++i) {
    FEDMOE_CHECK(label_bytes[i] < classes, who, ": '", labels_path, "': expected labels in [0, ", classes, "), got ",
                 int(label_bytes[i]), " at sample ", i);
    data.labels[Index(i)] = label_bytes[i];
  }
  // Each image is rows x cols row-major: exactly one column of the C,H,W-flattened batch.
  detail::scale_bytes(image_bytes.data(), image_bytes.size(), data.inputs.data());
  return data;
}

/// The Fashion-MNIST training (60,000) or test (10,000) split from `dir`, which holds the
/// standard file names (train-images-idx3-ubyte.gz, ...).
template <class S = float>
Dataset<S> load_fashion_mnist(const std::string& dir, bool train) {
  namespace fs = std::filesystem;
  const std::string prefix = train ? "train" : "t10k";
  const std::string images = (fs::path(dir) / (prefix + "-images-idx3-ubyte.gz")).string();
  const std::string labels = (fs::path(dir) / (prefix + "-labels-idx1-ubyte.gz")).string();
  for (const std::string& p : {images, labels})
    FEDMOE_CHECK(fs::exists(p), "load_fashion_mnist: missing file '", p,
                 "' (expected the Fashion-MNIST IDX files in '", dir,
                 "'; Debian's dataset-fashion-mnist package installs them under /usr/share/datasets/fashion-mnist)");
  return load_idx<S>(images, labels, 10);
}

}  // namespace fedmoe
