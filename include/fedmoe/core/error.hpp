#pragma once
/// @file error.hpp
/// @brief One way to report errors: FEDMOE_FAIL / FEDMOE_CHECK.
///
/// With exceptions enabled (the default) a failed check throws a fedmoe::Error
/// (derived from std::runtime_error) whose message names the expected and the
/// actual value. Built with -fno-exceptions, the check calls the handler set with
/// fedmoe::set_error_handler (default: print to stderr and std::abort()); the
/// handler must not return. The compute headers use nothing else, so they build
/// with -fno-exceptions -fno-rtti.
#include <charconv>
#include <concepts>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#include <stdexcept>
#define FEDMOE_HAS_EXCEPTIONS 1
#else
#define FEDMOE_HAS_EXCEPTIONS 0
#endif

namespace fedmoe {

#if FEDMOE_HAS_EXCEPTIONS
/// The exception every fedmoe check throws.
class Error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};
#endif

/// Called with the message of a failed check when exceptions are off. Must not return.
using ErrorHandler = void (*)(const char* message);

namespace detail {
[[noreturn]] inline void default_error_handler(const char* message) {
  std::fprintf(stderr, "fedmoe: %s\n", message);
  std::abort();
}
inline ErrorHandler& error_handler_slot() {
  static ErrorHandler handler = &default_error_handler;
  return handler;
}

/// Appends one message argument as `std::ostream << v` in its default format would print it, without
/// iostreams for the types messages use (their locale machinery is ~290 KB of a static binary, most of a
/// small embedded program): text, characters, bool (1/0), integers in decimal, floating point as printf's
/// %g (the stream's default: 6 significant digits), enums as their value, and types with a
/// `to_string(const T&)` found by argument-dependent lookup (Shape, GateCall). Anything else is streamed.
template <class T>
void append_arg(std::string& out, const T& v) {
  using U = std::remove_cvref_t<T>;
  if constexpr (std::is_same_v<U, char> || std::is_same_v<U, signed char> || std::is_same_v<U, unsigned char>) {
    out += char(v);
  } else if constexpr (std::is_same_v<U, bool>) {
    out += v ? '1' : '0';
  } else if constexpr (std::is_integral_v<U>) {
    char buf[24];
    out.append(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);
  } else if constexpr (std::is_floating_point_v<U>) {
    char buf[40];
    const int n = std::snprintf(buf, sizeof buf, "%Lg", static_cast<long double>(v));
    out.append(buf, std::size_t(n > 0 ? n : 0));
  } else if constexpr (std::is_enum_v<U>) {
    append_arg(out, static_cast<std::underlying_type_t<U>>(v));
  } else if constexpr (std::is_convertible_v<const U&, std::string_view>) {
    out += std::string_view(v);
  } else if constexpr (requires { { to_string(v) } -> std::convertible_to<std::string_view>; }) {
    out += to_string(v);
  } else {
    std::ostringstream s;
    s << v;
    out += s.str();
  }
}

template <class... Args>
std::string concat(const Args&... args) {
  std::string out;
  (append_arg(out, args), ...);
  return out;
}

[[noreturn]] inline void fail(const std::string& message) {
#if FEDMOE_HAS_EXCEPTIONS
  throw Error(message);
#else
  error_handler_slot()(message.c_str());
  std::abort();  // a handler that returns still never continues
#endif
}
}  // namespace detail

/// Sets the handler used when exceptions are disabled; returns the previous one.
inline ErrorHandler set_error_handler(ErrorHandler handler) {
  return std::exchange(detail::error_handler_slot(), handler ? handler : &detail::default_error_handler);
}

}  // namespace fedmoe

/// Fails with a message built from the streamed arguments.
#define FEDMOE_FAIL(...) ::fedmoe::detail::fail(::fedmoe::detail::concat(__VA_ARGS__))
/// Fails with the message unless cond holds. The message is built only on failure.
#define FEDMOE_CHECK(cond, ...)          \
  do {                                   \
    if (!(cond)) [[unlikely]] {          \
      FEDMOE_FAIL(__VA_ARGS__);          \
    }                                    \
  } while (false)
