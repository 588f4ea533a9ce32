#pragma once
/// @file archive.hpp
/// @brief State archives: the complete state of a long computation (a federation, a sweep of them)
/// as named records in the library's checksummed format, written durably.
///
/// A type takes part by one member function that serves both directions:
///
///     template <class Ar> void serialize(Ar& ar) { ar("round", m_round); ar("global", m_global); }
///
/// `StateWriter` records each field; `StateReader` reads the same fields back in the same order,
/// checking each record's name, type and shape, so a file from other code is refused with the
/// record that differs ("record 7: expected 'server.global' (float32 [n]), got ..."). Supported
/// fields: bool, integers, enums, float, double, std::string, Vector<float|double>,
/// std::vector / std::optional / std::pair of supported fields, Optimizers (their state()), and any
/// type with `serialize`. Nested names are joined with '.' ("states.3.personal").
///
/// `ar.parameters(name, v)`: a vector that must hold `ar.parameter_count()` values (or none, when not
/// yet used); the reader refuses any other size, so a restored object is always usable.
///
/// **File layout**: serialization.hpp's, content code 3 ("state"); records may mix float32, float64,
/// int64 and uint8 (strings and nested archives). `save_state_file` writes a temporary file next to
/// the target, fsyncs it, renames it over the target and fsyncs the directory: after a crash at any
/// moment the target is either the previous complete file or the new one.
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#if __has_include(<fcntl.h>) && __has_include(<unistd.h>)
#include <fcntl.h>
#include <unistd.h>
#define FEDMOE_HAS_POSIX_FILES 1
#else
#include <fstream>
#define FEDMOE_HAS_POSIX_FILES 0
#endif

#include "serialization.hpp"

namespace fedmoe {

namespace detail {
template <class T>
inline constexpr bool is_std_vector = false;
template <class T, class A>
inline constexpr bool is_std_vector<std::vector<T, A>> = true;
template <class T>
inline constexpr bool is_std_optional = false;
template <class T>
inline constexpr bool is_std_optional<std::optional<T>> = true;
template <class T>
inline constexpr bool is_std_pair = false;
template <class A, class B>
inline constexpr bool is_std_pair<std::pair<A, B>> = true;
template <class T>
inline constexpr bool is_vector_of_scalars =
    std::same_as<T, Vector<float>> || std::same_as<T, Vector<double>>;
template <class T>
concept IntegerField = (std::integral<T> || std::is_enum_v<T>) && sizeof(T) <= 8;
/// The record names of an archive: fields nest under their parent's name, joined by '.'.
class ArchiveNames {
protected:
  /// While alive, the fields recorded are named under `name`.
  class Scope {
  public:
    Scope(ArchiveNames& a, std::string_view name) : m_a(a), m_saved(a.m_prefix) { a.m_prefix = a.full(name); }
    ~Scope() { m_a.m_prefix = std::move(m_saved); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

  private:
    ArchiveNames& m_a;
    std::string m_saved;
  };
  static std::string join(std::string_view a, std::string_view b) { return std::string(a) + "." + std::string(b); }
  std::string full(std::string_view name) const {
    return m_prefix.empty() ? std::string(name) : m_prefix + "." + std::string(name);
  }

private:
  std::string m_prefix;
};

template <class T>
constexpr std::uint32_t state_dtype() {
  if constexpr (std::same_as<T, float>) return ser_float32;
  else if constexpr (std::same_as<T, double>) return ser_float64;
  else if constexpr (std::same_as<T, unsigned char>) return ser_uint8;
  else return ser_int64;
}
}  // namespace detail

/// Records the fields handed to it; `bytes()` is the complete file.
class StateWriter : detail::ArchiveNames {
public:
  static constexpr bool loading = false;

  explicit StateWriter(Index parameter_count = 0) : m_parameters(parameter_count), m_writer(m_body) {}

  Index parameter_count() const { return m_parameters; }
  void set_parameter_count(Index n) { m_parameters = n; }
  const char* who() const { return "StateWriter"; }

  template <class T>
  StateWriter& operator()(std::string_view name, const T& value) {
    using U = std::remove_cv_t<T>;
    if constexpr (detail::IntegerField<U>) {
      std::int64_t v;
      if constexpr (std::is_enum_v<U>) v = std::int64_t(std::underlying_type_t<U>(value));
      else if constexpr (std::is_unsigned_v<U>) v = std::bit_cast<std::int64_t>(std::uint64_t(value));
      else v = std::int64_t(value);
      record(name, {}, &v);
    } else if constexpr (std::same_as<U, float> || std::same_as<U, double>) {
      record(name, {}, &value);
    } else if constexpr (std::same_as<U, std::string>) {
      record(name, {Index(value.size())}, reinterpret_cast<const unsigned char*>(value.data()));
    } else if constexpr (detail::is_vector_of_scalars<U>) {
      record(name, {value.size()}, value.data());
    } else if constexpr (detail::is_std_vector<U>) {
      using E = typename U::value_type;
      if constexpr (!std::same_as<E, bool> && (std::same_as<E, float> || std::same_as<E, double> ||
                                               std::same_as<E, std::int64_t> || std::same_as<E, unsigned char>)) {
        record(name, {Index(value.size())}, value.data());
      } else {
        (*this)(join(name, "size"), std::uint64_t(value.size()));
        for (std::size_t i = 0; i < value.size(); ++i) {
          if constexpr (std::same_as<E, bool>) (*this)(join(name, std::to_string(i)), bool(value[i]));
          else (*this)(join(name, std::to_string(i)), value[i]);
        }
      }
    } else if constexpr (detail::is_std_optional<U>) {
      (*this)(join(name, "present"), value.has_value());
      if (value) (*this)(join(name, "value"), *value);
    } else if constexpr (detail::is_std_pair<U>) {
      (*this)(join(name, "first"), value.first);
      (*this)(join(name, "second"), value.second);
    } else if constexpr (Optimizer<U>) {
      const auto& s = value.state();
      Scope scope(*this, name);
      parameters("first", s.first);
      parameters("second", s.second);
      (*this)("steps", s.steps);
    } else {
      static_assert(requires(U& u) { u.serialize(*this); },
                    "StateWriter: this type has no `template <class Ar> void serialize(Ar&)` member");
      Scope scope(*this, name);
      const_cast<U&>(value).serialize(*this);  // serialize only reads the fields when saving
    }
    return *this;
  }

  /// A vector of parameter_count() values, or empty.
  template <class S>
  StateWriter& parameters(std::string_view name, const Vector<S>& v) {
    FEDMOE_CHECK(v.size() == 0 || v.size() == m_parameters, "StateWriter: '", full(name), "': expected ",
                 m_parameters, " values (the parameter count) or none, got ", v.size());
    return (*this)(name, v);
  }

  /// The whole file: header, records, CRC-32.
  std::string bytes() const {
    std::ostringstream out;
    detail::SerWriter w(out);
    detail::write_ser_header<double>(w, detail::ser_content_state, m_records);
    const std::string body = m_body.str();
    w.bytes(body.data(), body.size());
    w.finish();
    return std::move(out).str();
  }

private:
  template <class T>
  void record(std::string_view name, const std::vector<Index>& dims, const T* data) {
    m_writer.record(full(name), dims, data);
    ++m_records;
  }

  Index m_parameters;
  std::ostringstream m_body;
  detail::SerWriter m_writer;  // its CRC is unused: bytes() checksums header and body together
  std::uint64_t m_records = 0;
};

/// Reads fields back in the order a StateWriter recorded them, checking each record.
class StateReader : detail::ArchiveNames {
public:
  static constexpr bool loading = true;

  /// Parses and checksums a whole file (`who` names it in every error).
  StateReader(std::string bytes, std::string who, Index parameter_count = 0)
      : m_who(std::move(who)), m_file(detail::parse_ser_file<double>(std::move(bytes), detail::ser_content_state, m_who)),
        m_parameters(parameter_count) {}

  Index parameter_count() const { return m_parameters; }
  void set_parameter_count(Index n) { m_parameters = n; }
  const std::string& who() const { return m_who; }

  template <class T>
  StateReader& operator()(std::string_view name, T& value) {
    using U = std::remove_cv_t<T>;
    if constexpr (std::same_as<U, bool>) {
      const std::int64_t v = scalar<std::int64_t>(name);
      FEDMOE_CHECK(v == 0 || v == 1, m_who, ": record '", full(name), "': expected a boolean (0 or 1), got ", v);
      value = v == 1;
    } else if constexpr (detail::IntegerField<U>) {
      const std::int64_t v = scalar<std::int64_t>(name);
      using I = typename std::conditional_t<std::is_enum_v<U>, std::underlying_type<U>, std::type_identity<U>>::type;
      bool fits;
      if constexpr (std::is_unsigned_v<I> && sizeof(I) == 8) fits = true;  // stored as its bit pattern
      else fits = std::in_range<I>(v);
      FEDMOE_CHECK(fits, m_who, ": record '", full(name), "': ", v, " is out of range for this field");
      if constexpr (std::is_unsigned_v<I> && sizeof(I) == 8) value = U(std::bit_cast<std::uint64_t>(v));
      else value = U(I(v));
    } else if constexpr (std::same_as<U, float> || std::same_as<U, double>) {
      value = scalar<U>(name);
    } else if constexpr (std::same_as<U, std::string>) {
      const detail::SerRecord& r = next(name, detail::ser_uint8, 1);
      value.resize(std::size_t(r.count));
      m_file.read(r, reinterpret_cast<unsigned char*>(value.data()));
    } else if constexpr (detail::is_vector_of_scalars<U>) {
      const detail::SerRecord& r = next(name, detail::state_dtype<typename U::Scalar>(), 1);
      value.resize(r.count);
      m_file.read(r, value.data());
    } else if constexpr (detail::is_std_vector<U>) {
      using E = typename U::value_type;
      if constexpr (!std::same_as<E, bool> && (std::same_as<E, float> || std::same_as<E, double> ||
                                               std::same_as<E, std::int64_t> || std::same_as<E, unsigned char>)) {
        const detail::SerRecord& r = next(name, detail::state_dtype<E>(), 1);
        value.resize(std::size_t(r.count));
        m_file.read(r, value.data());
      } else {
        std::uint64_t n = 0;
        (*this)(join(name, "size"), n);
        // Each element is at least one record: a count beyond the records left is corrupt.
        FEDMOE_CHECK(n <= m_file.records.size() - m_next, m_who, ": record '", full(name), ".size': ", n,
                     " elements announced, but only ", m_file.records.size() - m_next, " records remain");
        value.clear();
        value.resize(std::size_t(n));
        for (std::size_t i = 0; i < std::size_t(n); ++i) {
          if constexpr (std::same_as<E, bool>) {
            bool b = false;
            (*this)(join(name, std::to_string(i)), b);
            value[i] = b;
          } else {
            (*this)(join(name, std::to_string(i)), value[i]);
          }
        }
      }
    } else if constexpr (detail::is_std_optional<U>) {
      bool present = false;
      (*this)(join(name, "present"), present);
      if (present) {
        typename U::value_type v{};
        (*this)(join(name, "value"), v);
        value = std::move(v);
      } else {
        value.reset();
      }
    } else if constexpr (detail::is_std_pair<U>) {
      (*this)(join(name, "first"), value.first);
      (*this)(join(name, "second"), value.second);
    } else if constexpr (Optimizer<U>) {
      typename U::state_type s;
      {
        Scope scope(*this, name);
        parameters("first", s.first);
        parameters("second", s.second);
        (*this)("steps", s.steps);
      }
      value.set_state(s);  // refuses inconsistent moments
    } else {
      static_assert(requires(U& u) { u.serialize(*this); },
                    "StateReader: this type has no `template <class Ar> void serialize(Ar&)` member");
      Scope scope(*this, name);
      value.serialize(*this);
    }
    return *this;
  }

  /// A vector that must hold parameter_count() values or none.
  template <class S>
  StateReader& parameters(std::string_view name, Vector<S>& v) {
    (*this)(name, v);
    FEDMOE_CHECK(v.size() == 0 || v.size() == m_parameters, m_who, ": record '", full(name), "': expected ",
                 m_parameters, " values (the model's parameter count) or none, got ", v.size());
    return *this;
  }

  /// Fails unless every record was read (a file with more state than the reader knows is not its own).
  void finish() const {
    FEDMOE_CHECK(m_next == m_file.records.size(), m_who, ": expected ", m_next, " records, the file has ",
                 m_file.records.size(), " (the next one is '",
                 m_next < m_file.records.size() ? m_file.records[m_next].name : std::string(), "')");
  }

private:
  const detail::SerRecord& next(std::string_view name, std::uint32_t dtype, std::size_t rank) {
    const std::string want = full(name);
    FEDMOE_CHECK(m_next < m_file.records.size(), m_who, ": expected record ", m_next, " '", want,
                 "', but the file has only ", m_file.records.size(), " records");
    const detail::SerRecord& r = m_file.records[m_next];
    FEDMOE_CHECK(r.name == want && r.dtype == dtype && r.dims.size() == rank, m_who, ": record ", m_next,
                 ": expected '", want, "' (", detail::ser_dtype_name(dtype), ", ", rank, " dims), got '", r.name,
                 "' (", detail::ser_dtype_name(r.dtype), ", ", r.dims.size(), " dims)");
    ++m_next;
    return r;
  }
  template <class T>
  T scalar(std::string_view name) {
    const detail::SerRecord& r = next(name, detail::state_dtype<T>(), 0);
    T v{};
    m_file.read(r, &v);
    return v;
  }

  std::string m_who;
  detail::SerFile m_file;
  Index m_parameters;
  std::size_t m_next = 0;
};

/// The stages of save_state_file, for fault-injection tests (a crash after each must lose nothing).
enum class SavePhase { half_written, synced, renamed };

/// Writes `bytes` to `path` durably: a temporary file in the same directory, fsync, rename over
/// `path`, fsync of the directory. `on_phase` (tests only) is called after each stage.
inline void save_state_file(const std::string& path, const std::string& bytes,
                            const std::function<void(SavePhase)>& on_phase = {}) {
  namespace fs = std::filesystem;
  const std::string who = "save_state_file('" + path + "')";
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const std::string tmp = path + ".tmp";
#if FEDMOE_HAS_POSIX_FILES
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  FEDMOE_CHECK(fd >= 0, who, ": cannot create '", tmp, "': ", std::strerror(errno));
  const auto fail = [&](const char* what) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    FEDMOE_FAIL(who, ": ", what, " '", tmp, "' failed: ", std::strerror(err));
  };
  std::size_t done = 0;
  const std::size_t half = bytes.size() / 2;
  bool reported_half = false;
  while (done < bytes.size()) {
    const std::size_t chunk = std::min<std::size_t>(bytes.size() - done, reported_half ? (1u << 20) : half - done);
    const ::ssize_t n = chunk == 0 ? 0 : ::write(fd, bytes.data() + done, chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("writing");
    done += std::size_t(n);
    if (!reported_half && done >= half) {
      reported_half = true;
      if (on_phase) on_phase(SavePhase::half_written);
    }
  }
  if (!reported_half && on_phase) on_phase(SavePhase::half_written);
  if (::fsync(fd) != 0) fail("fsync of");
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    FEDMOE_FAIL(who, ": closing '", tmp, "' failed: ", std::strerror(err));
  }
  if (on_phase) on_phase(SavePhase::synced);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    FEDMOE_FAIL(who, ": renaming '", tmp, "' to '", path, "' failed: ", std::strerror(err));
  }
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {  // the rename itself must reach the disk; a directory that cannot be opened is not fatal
    (void)::fsync(dfd);
    ::close(dfd);
  }
  if (on_phase) on_phase(SavePhase::renamed);
#else
  detail::save_atomically(path, who, [&](std::ostream& out) {
    out.write(bytes.data(), std::streamsize(bytes.size()));
  });
  if (on_phase) on_phase(SavePhase::renamed);
#endif
}

/// The bytes of a state file (refused with the path if it cannot be read).
inline std::string read_state_file(const std::string& path) {
  const std::string who = "read_state_file('" + path + "')";
  auto in = detail::open_for_load(path, who);
  return detail::read_all(in, who);
}

}  // namespace fedmoe
