#pragma once
// The accepted values of a command-line flag, in one definition that serves both the command line
// (a CLI11 validator that refuses a bad value while parsing, before any work) and a check of the
// parsed (or programmatically set) value, with one message a person can read:
//
//     --clients: expected an integer in [1, 1048576], got 4611686018427387904
//     --opt-out: expected a number in [0, 1], got nan (not a number)
//
// Why not CLI11's own validators: CLI::Range and CLI::PositiveNumber let NaN through (every comparison
// with NaN is false), print their bounds as 309-digit numbers, and CLI11 reads integers with strtoll /
// strtoull base 0, so "010" is 8, "0x10" is 16 and "-1" wraps to 2^64 - 1 in an unsigned flag. Here an
// integer is decimal digits (and a '-' for a signed flag), a number is what strtod reads, finite; the
// validator rewrites the text into a form CLI11 converts back exactly (decimal, or a hexadecimal float).
#include <CLI/CLI.hpp>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <fedmoe/core/error.hpp>

namespace fedmoe_paper::flags {

/// An integer flag: decimal, in [lo, hi].
template <class T>
struct Integer {
  static_assert(std::is_integral_v<T>, "flags::Integer: expected an integer type");
  T lo, hi;
};

/// A real flag: finite, between lo and hi (either end open; hi = infinity: no upper bound), or exactly
/// `off` when the flag has a value meaning "off" (e.g. -1).
struct Real {
  double lo, hi;
  bool lo_open = false, hi_open = false;
  std::optional<double> off{};
};

/// One of a list of names.
struct Choice {
  std::vector<std::string> names;
};

/// Any text (a path); nothing to check here.
struct Text {};

inline constexpr double unbounded = std::numeric_limits<double>::infinity();
/// > 0, finite.
inline const Real positive{0, unbounded, true, false};
/// >= 0, finite.
inline const Real non_negative{0, unbounded, false, false};

namespace detail {
inline std::string number_text(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}
}  // namespace detail

/// The accepted range as --help shows it after the type: "[1, 1048576]", "> 0", "[0, 1] or -1 (off)".
template <class T>
std::string range_text(const Integer<T>& b) {
  std::ostringstream s;
  s << "[" << +b.lo << ", " << +b.hi << "]";
  return s.str();
}
inline std::string range_text(const Real& b) {
  std::string s = std::isinf(b.hi) ? std::string(b.lo_open ? "> " : ">= ") + detail::number_text(b.lo)
                                   : std::string(b.lo_open ? "(" : "[") + detail::number_text(b.lo) + ", " +
                                         detail::number_text(b.hi) + (b.hi_open ? ")" : "]");
  if (b.off) s += " or " + detail::number_text(*b.off) + " (off)";
  return s;
}

/// "an integer in [1, 1048576]".
template <class T>
std::string describe(const Integer<T>& b) {
  return "an integer in " + range_text(b);
}
/// "a number in [0, 1]", "a number > 0", "a number in (0, 1)", "... or -1 (off)".
inline std::string describe(const Real& b) {
  return std::string("a number ") + (std::isinf(b.hi) ? "" : "in ") + range_text(b);
}
inline std::string describe(const Choice& c) {
  std::string s = "one of";
  for (const auto& n : c.names) s += " " + n;
  return s;
}

template <class T>
bool contains(const Integer<T>& b, T v) {
  return v >= b.lo && v <= b.hi;
}
/// False for NaN and infinities.
inline bool contains(const Real& b, double v) {
  if (b.off && v == *b.off) return true;
  if (!std::isfinite(v)) return false;
  const bool above = b.lo_open ? v > b.lo : v >= b.lo;
  const bool below = b.hi_open ? v < b.hi : v <= b.hi;
  return above && below;
}

/// The whole of `text` as a decimal integer of type T (a leading '-' only for a signed T); nullopt if
/// it is not one or does not fit T.
template <class T>
std::optional<T> parse_integer(std::string_view text) {
  T v{};
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, v, 10);
  if (ec != std::errc() || ptr != end || text.empty()) return std::nullopt;
  return v;
}

/// The whole of `text` as strtod reads it (NaN and infinities included, to be refused by name); nullopt
/// if it is not a number or overflows.
inline std::optional<double> parse_real(const std::string& text) {
  if (text.empty() || std::isspace(static_cast<unsigned char>(text.front()))) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size()) return std::nullopt;
  if (errno == ERANGE && std::isinf(v)) return std::nullopt;  // 1e400; an underflow to 0 or a subnormal is kept
  return v;
}

/// The message for a value outside `b`: "expected <describe(b)>, got <value>".
template <class B, class V>
std::string refusal(const B& b, const V& value) {
  std::ostringstream s;
  s << "expected " << describe(b) << ", got ";
  if constexpr (std::is_floating_point_v<V>) {
    s << value;
    if (std::isnan(value)) s << " (not a number)";
  } else if constexpr (std::is_integral_v<V>) {
    s << +value;
  } else {
    s << value;
  }
  return s.str();
}

/// The text check of the command line: "" if `text` is accepted (then rewritten so that CLI11's own
/// conversion gives exactly the value checked here), else the message.
template <class T>
std::string accept_text(const Integer<T>& b, std::string& text) {
  const std::optional<T> v = parse_integer<T>(text);
  if (!v || !contains(b, *v)) {  // 4611686018427387904 fits Index but not the range; 1e3 is not decimal digits
    const bool digits = !text.empty() && text.find_first_not_of("-0123456789") == std::string::npos;
    return "expected " + describe(b) + ", got " + (digits ? text : "'" + text + "'");
  }
  text = std::to_string(+*v);  // "010" -> "10": CLI11 would read 010 as octal
  return {};
}
inline std::string accept_text(const Real& b, std::string& text) {
  const std::optional<double> v = parse_real(text);
  if (!v) return "expected " + describe(b) + ", got '" + text + "'";
  if (!contains(b, *v)) return "expected " + describe(b) + ", got " + text + (std::isnan(*v) ? " (not a number)" : "");
  char exact[64];
  std::snprintf(exact, sizeof exact, "%a", *v);  // CLI11 reads it back with strtold: the same double
  text = exact;
  return {};
}

/// A CLI11 transform that applies accept_text (to every element of a list flag).
template <class B>
CLI::Validator validator(const B& b) {
  return CLI::Validator([b](std::string& text) { return accept_text(b, text); }, range_text(b));
}

/// Throws fedmoe::Error "<who>: <flag>: expected ..., got ..." unless `value` is accepted.
template <class T, class V>
void check(const char* who, const char* flag, const Integer<T>& b, const V& value) {
  static_assert(std::is_same_v<T, V>, "flags::check: the bounds' type must be the flag's type");
  FEDMOE_CHECK(contains(b, value), who, ": ", flag, ": ", refusal(b, value));
}
inline void check(const char* who, const char* flag, const Real& b, double value) {
  FEDMOE_CHECK(contains(b, value), who, ": ", flag, ": ", refusal(b, value));
}
inline void check(const char* who, const char* flag, const Choice& c, const std::string& value) {
  bool found = false;
  for (const auto& n : c.names) found = found || n == value;
  FEDMOE_CHECK(found, who, ": ", flag, ": expected ", describe(c), ", got '", value, "'");
}
inline void check(const char*, const char*, const Text&, const std::string&) {}
/// A list flag: at least one value, each accepted.
template <class B, class V>
void check(const char* who, const char* flag, const B& b, const std::vector<V>& values) {
  FEDMOE_CHECK(!values.empty(), who, ": ", flag, ": expected at least one value, got none");
  for (const V& v : values) check(who, flag, b, v);
}

}  // namespace fedmoe_paper::flags
