#pragma once
/// @file checked_size.hpp
/// @brief Sizes read from files and messages, checked in 64 bits before they become an Index or a size_t.
///
/// A file format stores its sizes in 32 or 64 bits whatever the reader's platform; Eigen's Index and
/// std::size_t are 64-bit on x86-64 and aarch64 but 32-bit on armhf and i386. A reader therefore computes
/// every count and product in std::uint64_t, checks it against `max_index` (the limit of *this* target),
/// and only then narrows it: a header announcing 2^40 rows, or 65536 x 65536 pixels, is refused with a
/// message naming the limit, instead of wrapping to 0 and misreading the rest of the file.
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

#include "error.hpp"
#include "tensor.hpp"

namespace fedmoe::detail {

/// The largest element count both an Index (Eigen sizes) and a std::size_t (allocations, byte counts) hold
/// on this target: 2^63 - 1 on 64-bit targets, 2^31 - 1 on 32-bit ones.
inline constexpr std::uint64_t max_index =
    std::uint64_t(std::numeric_limits<Index>::max()) < std::uint64_t(std::numeric_limits<std::size_t>::max())
        ? std::uint64_t(std::numeric_limits<Index>::max())
        : std::uint64_t(std::numeric_limits<std::size_t>::max());

/// The largest byte count (std::size_t) on this target.
inline constexpr std::uint64_t max_bytes = std::uint64_t(std::numeric_limits<std::size_t>::max());

/// "2147483647 (the largest Index on this 32-bit target)", for error messages. (Streamed, not built with
/// std::string's operator+, which trips GCC 12's false -Warray-bounds.)
inline std::string max_index_text() {
  return concat(max_index, " (the largest Index on this ", std::numeric_limits<Index>::digits + 1, "-bit target)");
}
/// "4294967295 (the largest size_t on this 32-bit target)".
inline std::string max_bytes_text() {
  return concat(max_bytes, " (the largest size_t on this ", std::numeric_limits<std::size_t>::digits, "-bit target)");
}

/// a x b in 64 bits; false (and `out` unchanged) when the product exceeds `limit`.
constexpr bool mul_within(std::uint64_t a, std::uint64_t b, std::uint64_t limit, std::uint64_t& out) {
  if (a != 0 && b > limit / a) return false;
  out = a * b;
  return true;
}

}  // namespace fedmoe::detail
