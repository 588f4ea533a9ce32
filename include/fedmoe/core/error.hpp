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
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
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

template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
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
