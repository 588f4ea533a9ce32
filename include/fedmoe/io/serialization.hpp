#pragma once
/// @file serialization.hpp
/// @brief A versioned, checksummed binary format for parameter vectors and optimizer state.
///
/// **File layout** (all integers and scalars little-endian, whatever the host):
///
/// | offset | size | field                                                            |
/// |--------|------|------------------------------------------------------------------|
/// | 0      | 8    | magic `\x89 F E D M O E \n` (the PNG trick: 8-bit, line-ending safe) |
/// | 8      | u32  | format version (= 1)                                             |
/// | 12     | u32  | content: 1 = parameters, 2 = optimizer state, 3 = state (archive.hpp) |
/// | 16     | u32  | scalar type code: 1 = float32, 2 = float64                       |
/// | 20     | u32  | sizeof(scalar): 4 or 8                                           |
/// | 24     | u64  | record count R                                                   |
/// | 32     |      | R records: u32 name length, name bytes, u32 dtype code (1 float32, |
/// |        |      | 2 float64, 3 int64; 4 uint8 in state files), u32 ndims, ndims x i64 dims, then the |
/// |        |      | prod(dims) elements, row-major (PyTorch's layout)                |
/// | end-4  | u32  | CRC-32 (zlib `crc32`) of every byte before it                    |
///
/// A parameter file holds one record per named tensor (`model.tensors()`: "0.weight" [6,1,5,5],
/// ...) in offset order, or a single record "parameters" [n] when no tensors are given. An
/// optimizer file holds "first" [n or 0], "second" [n or 0] and "steps" (int64, dims []).
///
/// Loading reads the whole stream, then checks in order: magic, version, content, scalar type,
/// the record structure (every length is checked, in 64 bits, against the bytes that remain *before*
/// anything is allocated, so a corrupt length is a "truncated" error, never a huge allocation; and
/// every dimension against this target's Index before it is narrowed, so a 32-bit reader refuses
/// a dimension of 2^40 instead of reading it as 0),
/// trailing bytes, the CRC, and finally names, shapes, sizes and finiteness. Each failure throws
/// fedmoe::Error naming the expected and the actual value. Nothing is modified unless the whole
/// file is valid.
///
/// Path overloads write to a temporary file in the same directory and rename it over the
/// target, so a failed save never destroys a previous good file.
#include <algorithm>
#include <atomic>
#include <bit>
#include <charconv>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <istream>
#include <limits>
#include <sstream>
#include <ostream>
#include <span>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <zlib.h>

#include "../core/checked_size.hpp"
#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../layers/layer.hpp"
#include "../models/model.hpp"
#include "../optimizers/optimizer.hpp"

namespace fedmoe {

/// The format version this header writes and the only one it reads.
inline constexpr std::uint32_t serialization_version = 1;

namespace detail {

static_assert(std::numeric_limits<float>::is_iec559 && sizeof(float) == 4, "fedmoe io needs IEEE-754 float32");
static_assert(std::numeric_limits<double>::is_iec559 && sizeof(double) == 8, "fedmoe io needs IEEE-754 float64");
static_assert(std::endian::native == std::endian::little || std::endian::native == std::endian::big,
              "fedmoe io supports little- and big-endian hosts only (not mixed-endian)");

/// A model that names its parameter tensors (Sequential does), so files can store and check them.
template <class M>
concept TensorModel = Model<M> && requires(const M cm) {
  { cm.tensors() } -> std::same_as<std::vector<TensorInfo>>;
};

inline constexpr unsigned char ser_magic[8] = {0x89, 'F', 'E', 'D', 'M', 'O', 'E', '\n'};
inline constexpr std::uint32_t ser_content_parameters = 1;
inline constexpr std::uint32_t ser_content_optimizer = 2;
inline constexpr std::uint32_t ser_content_state = 3;  ///< io/archive.hpp: any mix of record dtypes
inline constexpr std::uint32_t ser_float32 = 1;
inline constexpr std::uint32_t ser_float64 = 2;
inline constexpr std::uint32_t ser_int64 = 3;
inline constexpr std::uint32_t ser_uint8 = 4;  ///< state files only (strings, nested files)
inline constexpr std::uint32_t ser_max_dims = 32;

inline const char* ser_dtype_name(std::uint32_t code) {
  switch (code) {
    case ser_float32: return "float32";
    case ser_float64: return "float64";
    case ser_int64: return "int64";
    case ser_uint8: return "uint8";
    default: return "unknown";
  }
}
inline std::size_t ser_dtype_size(std::uint32_t code) { return code == ser_float32 ? 4 : code == ser_uint8 ? 1 : 8; }
inline const char* ser_content_name(std::uint32_t code) {
  return code == ser_content_parameters  ? "parameters"
         : code == ser_content_optimizer ? "optimizer state"
         : code == ser_content_state     ? "state"
                                         : "unknown";
}

template <class S>
constexpr std::uint32_t ser_scalar_code() {
  static_assert(std::same_as<S, float> || std::same_as<S, double>, "fedmoe io stores float or double scalars only");
  return std::same_as<S, float> ? ser_float32 : ser_float64;
}

/// "[6, 1, 5, 5]"
template <class Dims>
std::string dims_string(const Dims& dims) {
  std::string s = "[";
  bool first = true;
  for (auto d : dims) {
    if (!first) s += ", ";
    s += std::to_string(d);
    first = false;
  }
  return s + "]";
}

template <class T>
void store_le(unsigned char* out, T value) {
  using U = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  static_assert(sizeof(T) == 4 || sizeof(T) == 8);
  const U bits = std::bit_cast<U>(value);
  for (std::size_t i = 0; i < sizeof(T); ++i) out[i] = static_cast<unsigned char>(bits >> (8 * i));
}
template <class T>
T load_le(const unsigned char* in) {
  using U = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  static_assert(sizeof(T) == 4 || sizeof(T) == 8);
  U bits = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) bits |= U(in[i]) << (8 * i);
  return std::bit_cast<T>(bits);
}

/// Writes little-endian fields to a stream while updating a running CRC-32.
class SerWriter {
public:
  explicit SerWriter(std::ostream& out) : m_out(out), m_crc(::crc32_z(0L, Z_NULL, 0)) {}

  void bytes(const void* data, std::size_t n) {
    if (n == 0) return;
    m_out.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
    m_crc = ::crc32_z(m_crc, static_cast<const Bytef*>(data), n);
  }
  template <class T>
  void value(T v) {
    unsigned char buf[sizeof(T)];
    store_le(buf, v);
    bytes(buf, sizeof(T));
  }
  template <class T>
  void array(const T* data, Index n) {
    if constexpr (std::endian::native == std::endian::little || sizeof(T) == 1) {
      bytes(data, static_cast<std::size_t>(n) * sizeof(T));
    } else {
      unsigned char buf[4096];
      constexpr Index per = Index(sizeof(buf) / sizeof(T));
      for (Index i = 0; i < n; i += per) {
        const Index m = std::min(per, n - i);
        for (Index j = 0; j < m; ++j) store_le(buf + j * Index(sizeof(T)), data[i + j]);
        bytes(buf, static_cast<std::size_t>(m) * sizeof(T));
      }
    }
  }
  /// One record: name, dtype, dims, data.
  template <class T>
  void record(const std::string& name, const std::vector<Index>& dims, const T* data) {
    value(std::uint32_t(name.size()));
    bytes(name.data(), name.size());
    if constexpr (std::same_as<T, std::int64_t>)
      value(ser_int64);
    else if constexpr (std::same_as<T, unsigned char>)
      value(ser_uint8);
    else
      value(ser_scalar_code<T>());
    value(std::uint32_t(dims.size()));
    Index n = 1;
    for (Index d : dims) {
      value(std::int64_t(d));
      n *= d;
    }
    array(data, n);
  }
  /// Writes the CRC of everything written so far (not itself checksummed).
  void finish() {
    unsigned char buf[4];
    store_le(buf, std::uint32_t(m_crc));
    m_out.write(reinterpret_cast<const char*>(buf), 4);
  }

private:
  std::ostream& m_out;
  uLong m_crc;
};

template <class S>
void write_ser_header(SerWriter& w, std::uint32_t content, std::uint64_t records) {
  w.bytes(ser_magic, sizeof(ser_magic));
  w.value(serialization_version);
  w.value(content);
  w.value(ser_scalar_code<S>());
  w.value(std::uint32_t(sizeof(S)));
  w.value(records);
}

/// One parsed record: where its elements are in the file buffer.
struct SerRecord {
  std::string name;
  std::uint32_t dtype = 0;
  std::vector<Index> dims;
  Index count = 0;          ///< prod(dims)
  std::size_t offset = 0;   ///< byte offset of the first element
};

/// A whole file read into memory, structurally validated and checksummed.
struct SerFile {
  std::string bytes;
  std::uint32_t content = 0;
  std::vector<SerRecord> records;

  /// The elements of record r, converted from the file's little-endian bytes.
  template <class T>
  void read(const SerRecord& r, T* out) const {
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data()) + r.offset;
    if constexpr (std::endian::native == std::endian::little || sizeof(T) == 1) {
      if (r.count > 0) std::memcpy(out, p, static_cast<std::size_t>(r.count) * sizeof(T));
    } else {
      for (Index i = 0; i < r.count; ++i) out[i] = load_le<T>(p + i * Index(sizeof(T)));
    }
  }
};

/// Bounds-checked little-endian reads from the file buffer.
class SerReader {
public:
  SerReader(const std::string& bytes, const std::string& who)
      : m_data(reinterpret_cast<const unsigned char*>(bytes.data())), m_size(bytes.size()), m_who(who) {}

  std::size_t position() const { return m_pos; }
  std::size_t remaining() const { return m_size - m_pos; }

  /// Fails with "truncated" unless n more bytes are available for `what` (n in 64 bits: a 32-bit size_t
  /// would wrap a corrupt length to a small one).
  template <class... What>
  void need(std::uint64_t n, const What&... what) const {
    FEDMOE_CHECK(n <= remaining(), m_who, ": truncated file: expected ", n, " bytes for ", what...,
                 " at byte offset ", m_pos, ", but only ", remaining(), " bytes are available (file size ", m_size,
                 ")");
  }
  template <class T, class... What>
  T value(const What&... what) {
    need(sizeof(T), what...);
    const T v = load_le<T>(m_data + m_pos);
    m_pos += sizeof(T);
    return v;
  }
  const unsigned char* take(std::size_t n) {
    const unsigned char* p = m_data + m_pos;
    m_pos += n;
    return p;
  }

private:
  const unsigned char* m_data;
  std::size_t m_size;
  std::size_t m_pos = 0;
  const std::string& m_who;
};

/// Reads a whole stream into memory.
inline std::string read_all(std::istream& in, const std::string& who) {
  std::string bytes;
  char buf[1 << 16];
  while (in) {
    in.read(buf, sizeof(buf));
    bytes.append(buf, static_cast<std::size_t>(in.gcount()));
  }
  FEDMOE_CHECK(!in.bad(), who, ": I/O error while reading the stream (after ", bytes.size(), " bytes)");
  return bytes;
}

/// Reads and validates everything that does not depend on the caller's model: magic,
/// version, content kind, scalar type, record structure, trailing bytes, CRC.
template <class S>
SerFile parse_ser_file(std::string bytes, std::uint32_t expected_content, const std::string& who) {
  SerFile file;
  file.bytes = std::move(bytes);
  SerReader r(file.bytes, who);

  r.need(sizeof(ser_magic), "the 8-byte magic");
  const unsigned char* magic = r.take(sizeof(ser_magic));
  if (std::memcmp(magic, ser_magic, sizeof(ser_magic)) != 0) {
    std::string got;
    const char* hex = "0123456789abcdef";
    for (std::size_t i = 0; i < sizeof(ser_magic); ++i) {
      got += i ? " " : "";
      got += hex[magic[i] >> 4];
      got += hex[magic[i] & 15];
    }
    FEDMOE_FAIL(who, ": bad magic: not a fedmoe file (expected bytes 89 46 45 44 4d 4f 45 0a = \"\\x89FEDMOE\\n\", got ",
                got, ")");
  }
  const auto version = r.value<std::uint32_t>("the format version");
  FEDMOE_CHECK(version == serialization_version, who, ": unsupported format version: expected ",
               serialization_version, ", got ", version);
  file.content = r.value<std::uint32_t>("the content kind");
  FEDMOE_CHECK(file.content == expected_content, who, ": wrong content: expected ",
               ser_content_name(expected_content), " (content code ", expected_content, "), the file holds ",
               ser_content_name(file.content), " (content code ", file.content, ")");
  const auto scalar = r.value<std::uint32_t>("the scalar type code");
  FEDMOE_CHECK(scalar == ser_float32 || scalar == ser_float64, who, ": unknown scalar type code ", scalar,
               " (expected 1 = float32 or 2 = float64)");
  FEDMOE_CHECK(scalar == ser_scalar_code<S>(), who, ": wrong scalar type: the file has ", ser_dtype_name(scalar),
               ", expected ", ser_dtype_name(ser_scalar_code<S>()));
  const auto scalar_size = r.value<std::uint32_t>("sizeof(scalar)");
  FEDMOE_CHECK(scalar_size == sizeof(S), who, ": wrong scalar size: expected ", sizeof(S), " bytes for ",
               ser_dtype_name(scalar), ", got ", scalar_size);
  const auto count = r.value<std::uint64_t>("the record count");
  // Each record needs at least 12 bytes (name length, dtype, ndims): bound the count before reserving.
  FEDMOE_CHECK(count <= r.remaining() / 12, who, ": truncated file: expected at least 12 bytes for each of the ",
               count, " records the header declares, but only ", r.remaining(), " bytes are available (file size ",
               file.bytes.size(), ")");
  file.records.reserve(static_cast<std::size_t>(count));

  for (std::uint64_t i = 0; i < count; ++i) {
    SerRecord rec;
    const auto name_len = r.value<std::uint32_t>("the name length of record ", i);
    r.need(name_len, "the name of record ", i, " (", name_len, " bytes)");
    const unsigned char* name = r.take(name_len);
    rec.name.assign(reinterpret_cast<const char*>(name), name_len);
    rec.dtype = r.value<std::uint32_t>("the dtype of record ", i, " '", rec.name, "'");
    // State files (io/archive.hpp) mix dtypes and hold bytes; the others hold one scalar type and int64.
    const bool state = file.content == ser_content_state;
    FEDMOE_CHECK(rec.dtype == ser_float32 || rec.dtype == ser_float64 || rec.dtype == ser_int64 ||
                     (state && rec.dtype == ser_uint8),
                 who, ": record ", i, " '", rec.name, "': unknown dtype code ", rec.dtype,
                 state ? " (expected 1 = float32, 2 = float64, 3 = int64 or 4 = uint8)"
                       : " (expected 1 = float32, 2 = float64 or 3 = int64)");
    FEDMOE_CHECK(state || rec.dtype == ser_int64 || rec.dtype == scalar, who, ": record ", i, " '", rec.name,
                 "': wrong scalar type: the record has ", ser_dtype_name(rec.dtype), ", the file header says ",
                 ser_dtype_name(scalar));
    const auto ndims = r.value<std::uint32_t>("the dimension count of record ", i, " '", rec.name, "'");
    FEDMOE_CHECK(ndims <= ser_max_dims, who, ": record ", i, " '", rec.name, "': expected at most ", ser_max_dims,
                 " dimensions, got ", ndims);
    const std::size_t elem = ser_dtype_size(rec.dtype);
    // Dims as stored (int64), checked as such: narrowed to Index only once the whole record is valid.
    std::vector<std::int64_t> dims;
    for (std::uint32_t d = 0; d < ndims; ++d) {
      const auto dim = r.value<std::int64_t>("dimension ", d, " of record ", i, " '", rec.name, "'");
      FEDMOE_CHECK(dim >= 0, who, ": record ", i, " '", rec.name, "': expected dimension ", d, " >= 0, got ", dim);
      dims.push_back(dim);
    }
    // Element count in 64 bits, overflow-safe: any product beyond the bytes that remain is a truncation.
    std::uint64_t n = 1;
    bool overflow = false;
    for (std::int64_t dim : dims) overflow = overflow || !mul_within(n, std::uint64_t(dim), (std::uint64_t(1) << 62) / elem, n);
    if (std::find(dims.begin(), dims.end(), std::int64_t(0)) != dims.end()) {  // empty: no data at all
      overflow = false;
      n = 0;
    }
    FEDMOE_CHECK(!overflow, who, ": truncated file: expected more than 2^62 bytes for the data of record ", i, " '",
                 rec.name, "' ", dims_string(dims), " (", ser_dtype_name(rec.dtype), ") at byte offset ",
                 r.position(), ", but only ", r.remaining(), " bytes are available (file size ", file.bytes.size(),
                 ")");
    r.need(n * elem, "the data of record ", i, " '", rec.name, "' ", dims_string(dims), " (", n, " x ",
           ser_dtype_name(rec.dtype), ")");
    // The data is in memory, so n x elem fits a size_t; each dim (an empty record's may be anything) and
    // n must fit an Index before they are narrowed.
    for (std::size_t d = 0; d < dims.size(); ++d)
      FEDMOE_CHECK(std::uint64_t(dims[d]) <= max_index, who, ": record ", i, " '", rec.name, "' ", dims_string(dims),
                   ": dimension ", d, " is ", dims[d], ", expected at most ", max_index_text());
    FEDMOE_CHECK(n <= max_index, who, ": record ", i, " '", rec.name, "' ", dims_string(dims), " has ", n,
                 " elements, expected at most ", max_index_text());
    rec.dims.assign(dims.begin(), dims.end());
    rec.count = Index(n);
    rec.offset = r.position();
    r.take(static_cast<std::size_t>(n * elem));
    file.records.push_back(std::move(rec));
  }

  const std::size_t payload = r.position();
  const auto stored_crc = r.value<std::uint32_t>("the CRC-32 after the last record");
  FEDMOE_CHECK(r.remaining() == 0, who, ": trailing data: expected the file to end after the CRC-32 at byte ",
               r.position(), ", got ", r.remaining(), " extra bytes (file size ", file.bytes.size(), ")");
  const auto computed = std::uint32_t(
      ::crc32_z(::crc32_z(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(file.bytes.data()), payload));
  if (stored_crc != computed) {
    const auto hex = [](std::uint32_t v) {
      char buf[12];
      return std::string(buf, std::to_chars(buf, buf + sizeof buf, v, 16).ptr);
    };
    FEDMOE_FAIL(who, ": checksum mismatch (corrupt file): expected CRC-32 0x", hex(stored_crc), " (stored), computed 0x",
                hex(computed));
  }
  return file;
}
/// The same from a stream, read to its end.
template <class S>
SerFile parse_ser_file(std::istream& in, std::uint32_t expected_content, const std::string& who) {
  return parse_ser_file<S>(read_all(in, who), expected_content, who);
}

/// Fails unless every element of v is finite; names the tensor and the index.
template <class S>
void check_finite(const Vector<S>& v, const std::vector<TensorInfo>& tensors, const std::string& who,
                  const char* what) {
  for (Index i = 0; i < v.size(); ++i) {
    if (std::isfinite(v[i])) [[likely]]
      continue;
    std::string where;
    for (const TensorInfo& t : tensors)
      if (i >= t.offset && i < t.offset + t.size())
        where = detail::concat(" (tensor '", t.name, "', element ", i - t.offset, ")");
    FEDMOE_FAIL(who, ": expected finite ", what, ", got ", v[i], " at index ", i, where);
  }
}

/// Fails unless the tensors tile [0, n) in order, without gaps or overlaps.
inline void check_tiling(const std::vector<TensorInfo>& tensors, Index n, const std::string& who) {
  Index next = 0;
  for (const TensorInfo& t : tensors) {
    FEDMOE_CHECK(t.offset == next, who, ": tensor '", t.name, "' ", dims_string(t.dims), " starts at offset ",
                 t.offset, ", expected ", next, " (tensors must tile the parameter vector in order)");
    for (Index d : t.dims) FEDMOE_CHECK(d >= 0, who, ": tensor '", t.name, "' has a negative dimension ", d);
    next += t.size();
  }
  FEDMOE_CHECK(next == n, who, ": the tensors cover ", next, " parameters, expected ", n,
               " (the size of the parameter vector)");
}

template <class S>
void write_parameters(std::ostream& out, const Vector<S>& params, const std::vector<TensorInfo>& tensors,
                      const std::string& who) {
  if (!tensors.empty()) check_tiling(tensors, params.size(), who);
  check_finite(params, tensors, who, "parameters");
  SerWriter w(out);
  if (tensors.empty()) {
    write_ser_header<S>(w, ser_content_parameters, 1);
    w.record("parameters", {params.size()}, params.data());
  } else {
    write_ser_header<S>(w, ser_content_parameters, tensors.size());
    for (const TensorInfo& t : tensors) w.record(t.name, t.dims, params.data() + t.offset);
  }
  w.finish();
  FEDMOE_CHECK(out.good(), who, ": I/O error while writing ", params.size(), " parameters");
}

/// Parameters from a file; with `expected` tensors, names and dims must match them one by one.
/// `in`: a std::istream, or the file's bytes as a std::string.
template <class S, class Source>
Vector<S> read_parameters(Source&& in, Index expected_size, const std::vector<TensorInfo>* expected,
                          const std::string& who) {
  const SerFile file = parse_ser_file<S>(std::forward<Source>(in), ser_content_parameters, who);
  for (std::size_t i = 0; i < file.records.size(); ++i)
    FEDMOE_CHECK(file.records[i].dtype == ser_scalar_code<S>(), who, ": record ", i, " '", file.records[i].name,
                 "': expected ", ser_dtype_name(ser_scalar_code<S>()), " data, got ",
                 ser_dtype_name(file.records[i].dtype));
  if (expected && !expected->empty()) {
    const auto& want = *expected;
    const std::size_t common = std::min(want.size(), file.records.size());
    for (std::size_t i = 0; i < common; ++i) {
      const SerRecord& got = file.records[i];
      FEDMOE_CHECK(got.name == want[i].name && got.dims == want[i].dims, who,
                   ": the file is for another architecture: tensor ", i, " expected '", want[i].name, "' ",
                   dims_string(want[i].dims), ", the file has '", got.name, "' ", dims_string(got.dims));
    }
    if (want.size() > file.records.size())
      FEDMOE_FAIL(who, ": the file is for another architecture: expected ", want.size(), " tensors, the file has ",
                  file.records.size(), "; first missing tensor ", common, " '", want[common].name, "' ",
                  dims_string(want[common].dims));
    if (want.size() < file.records.size())
      FEDMOE_FAIL(who, ": the file is for another architecture: expected ", want.size(), " tensors, the file has ",
                  file.records.size(), "; first extra tensor ", common, " '", file.records[common].name, "' ",
                  dims_string(file.records[common].dims));
  }
  std::uint64_t total = 0;  // in 64 bits: many records of an Index each could overflow an Index
  for (const SerRecord& r : file.records) total += std::uint64_t(r.count);
  FEDMOE_CHECK(expected_size >= 0 && total == std::uint64_t(expected_size), who, ": wrong size: expected ",
               expected_size, " parameters, the file has ", total);
  Vector<S> params(expected_size);
  Index at = 0;
  for (const SerRecord& r : file.records) {
    file.read(r, params.data() + at);
    at += r.count;
  }
  std::vector<TensorInfo> names;
  if (expected && !expected->empty()) {
    names = *expected;
  } else {
    at = 0;
    for (const SerRecord& r : file.records) {
      names.push_back(TensorInfo{r.name, at, r.dims});
      at += r.count;
    }
  }
  check_finite(params, names, who, "parameters");
  return params;
}

template <class S>
void write_optimizer(std::ostream& out, const OptimizerState<S>& s, const std::string& who) {
  FEDMOE_CHECK(s.steps >= 0, who, ": expected steps >= 0, got ", s.steps);
  check_finite(s.first, {}, who, "optimizer state (first moment)");
  check_finite(s.second, {}, who, "optimizer state (second moment)");
  SerWriter w(out);
  write_ser_header<S>(w, ser_content_optimizer, 3);
  w.record("first", {s.first.size()}, s.first.data());
  w.record("second", {s.second.size()}, s.second.data());
  w.record("steps", {}, &s.steps);
  w.finish();
  FEDMOE_CHECK(out.good(), who, ": I/O error while writing the optimizer state");
}

template <class S>
OptimizerState<S> read_optimizer(std::istream& in, Index expected_size, const std::string& who) {
  const SerFile file = parse_ser_file<S>(in, ser_content_optimizer, who);
  const char* names[3] = {"first", "second", "steps"};
  FEDMOE_CHECK(file.records.size() == 3, who, ": expected 3 records (first, second, steps), got ",
               file.records.size());
  for (std::size_t i = 0; i < 3; ++i) {
    const SerRecord& r = file.records[i];
    const std::uint32_t dtype = i < 2 ? ser_scalar_code<S>() : ser_int64;
    const std::size_t rank = i < 2 ? 1 : 0;
    FEDMOE_CHECK(r.name == names[i] && r.dtype == dtype && r.dims.size() == rank, who, ": record ", i,
                 ": expected '", names[i], "' (", ser_dtype_name(dtype), ", ", rank, " dims), got '", r.name, "' (",
                 ser_dtype_name(r.dtype), ", ", r.dims.size(), " dims)");
  }
  OptimizerState<S> s;
  file.read(file.records[2], &s.steps);
  FEDMOE_CHECK(s.steps >= 0, who, ": expected steps >= 0, got ", s.steps);
  for (std::size_t i = 0; i < 2; ++i) {
    const SerRecord& r = file.records[i];
    FEDMOE_CHECK(r.count == 0 || r.count == expected_size, who, ": wrong size: expected the '", names[i],
                 "' moment to have ", expected_size, " elements (or 0 when unused), the file has ", r.count);
    Vector<S>& v = i == 0 ? s.first : s.second;
    v.resize(r.count);
    file.read(r, v.data());
    check_finite(v, {}, who, i == 0 ? "optimizer state (first moment)" : "optimizer state (second moment)");
  }
  return s;
}

/// Saves through a temporary file next to `path`, renamed over it only after a complete write.
template <class Write>
void save_atomically(const std::string& path, const std::string& who, Write&& write) {
  namespace fs = std::filesystem;
  static std::atomic<unsigned long> counter{0};
  const auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
  const std::string tmp = path + ".tmp-" + std::to_string(stamp) + "-" + std::to_string(counter++);
  auto attempt = [&] {
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      FEDMOE_CHECK(out.is_open(), who, ": cannot open the temporary file '", tmp, "' for writing (does the directory '",
                   fs::path(path).parent_path().string(), "' exist and is it writable?)");
      write(out);
      out.flush();
      FEDMOE_CHECK(out.good(), who, ": I/O error while writing '", tmp, "' (disk full?)");
      out.close();
      FEDMOE_CHECK(!out.fail(), who, ": I/O error while closing '", tmp, "'");
    }
    std::error_code ec;
    fs::rename(tmp, path, ec);
    FEDMOE_CHECK(!ec, who, ": cannot rename '", tmp, "' to '", path, "': ", ec.message());
  };
#if FEDMOE_HAS_EXCEPTIONS
  try {
    attempt();
  } catch (...) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw;
  }
#else
  attempt();  // a failed check does not return; the target file is still untouched
#endif
}

inline std::ifstream open_for_load(const std::string& path, const std::string& who) {
  std::ifstream in(path, std::ios::binary);
  FEDMOE_CHECK(in.is_open(), who, ": cannot open '", path, "' for reading (",
               std::filesystem::exists(path) ? "permission denied?" : "no such file", ")");
  return in;
}

template <class M>
std::vector<TensorInfo> model_tensors(const M& model) {
  if constexpr (TensorModel<M>)
    return model.tensors();
  else
    return {};
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Parameters

/// Writes a parameter vector; with `tensors` (e.g. model.tensors(), which must tile `params` in
/// order) each tensor becomes a named record with its PyTorch dims. Non-finite values are refused.
template <class S>
void save_parameters(std::ostream& out, const Vector<S>& params, const std::vector<TensorInfo>& tensors = {}) {
  detail::write_parameters(out, params, tensors, "save_parameters");
}
/// As above, to a file (written to a temporary file, then renamed over `path`).
template <class S>
void save_parameters(const std::string& path, const Vector<S>& params, const std::vector<TensorInfo>& tensors = {}) {
  const std::string who = "save_parameters('" + path + "')";
  detail::save_atomically(path, who, [&](std::ostream& out) { detail::write_parameters(out, params, tensors, who); });
}

/// Reads a parameter vector of exactly `expected_size` finite values (records concatenated in order).
template <class S>
Vector<S> load_parameters(std::istream& in, Index expected_size) {
  return detail::read_parameters<S>(in, expected_size, nullptr, "load_parameters");
}
template <class S>
Vector<S> load_parameters(const std::string& path, Index expected_size) {
  const std::string who = "load_parameters('" + path + "')";
  auto in = detail::open_for_load(path, who);
  return detail::read_parameters<S>(in, expected_size, nullptr, who);
}

// ---------------------------------------------------------------------------------------------
// Models

/// Writes model.parameters(), one record per model.tensors() entry (names and dims stored).
template <Model M>
void save_model(std::ostream& out, const M& model) {
  detail::write_parameters(out, model.parameters(), detail::model_tensors(model), "save_model");
}
template <Model M>
void save_model(const std::string& path, const M& model) {
  const std::string who = "save_model('" + path + "')";
  const auto tensors = detail::model_tensors(model);
  detail::save_atomically(path, who,
                          [&](std::ostream& out) { detail::write_parameters(out, model.parameters(), tensors, who); });
}

/// Loads into model.parameters(). The file's tensor names and dims must match model.tensors()
/// one by one (a file written for another architecture names the first mismatching tensor).
/// The model is untouched unless the whole file is valid.
template <Model M>
void load_model(std::istream& in, M& model) {
  using S = typename M::scalar_type;
  const auto tensors = detail::model_tensors(model);
  model.parameters() = detail::read_parameters<S>(in, model.num_params(), &tensors, "load_model");
}
/// The same from the file's bytes in memory (no iostreams: what an embedded program reads with fread;
/// examples/embedded_inference.cpp).
template <Model M>
void load_model(std::span<const unsigned char> bytes, M& model) {
  using S = typename M::scalar_type;
  const auto tensors = detail::model_tensors(model);
  model.parameters() = detail::read_parameters<S>(std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()),
                                                  model.num_params(), &tensors, "load_model");
}
template <Model M>
void load_model(const std::string& path, M& model) {
  using S = typename M::scalar_type;
  const std::string who = "load_model('" + path + "')";
  auto in = detail::open_for_load(path, who);
  const auto tensors = detail::model_tensors(model);
  model.parameters() = detail::read_parameters<S>(in, model.num_params(), &tensors, who);
}

// ---------------------------------------------------------------------------------------------
// Optimizers

/// Writes the optimizer's complete state (first and second moments, step count), so training
/// resumes bitwise exactly after load_optimizer.
template <Optimizer O>
void save_optimizer(std::ostream& out, const O& opt) {
  detail::write_optimizer<typename O::scalar_type>(out, opt.state(), "save_optimizer");
}
template <Optimizer O>
void save_optimizer(const std::string& path, const O& opt) {
  const std::string who = "save_optimizer('" + path + "')";
  detail::save_atomically(path, who, [&](std::ostream& out) {
    detail::write_optimizer<typename O::scalar_type>(out, opt.state(), who);
  });
}

/// Restores the optimizer's state; each moment must have `expected_size` elements (the
/// parameter count) or 0 (unused / no step taken yet).
template <Optimizer O>
void load_optimizer(std::istream& in, O& opt, Index expected_size) {
  opt.set_state(detail::read_optimizer<typename O::scalar_type>(in, expected_size, "load_optimizer"));
}
template <Optimizer O>
void load_optimizer(const std::string& path, O& opt, Index expected_size) {
  const std::string who = "load_optimizer('" + path + "')";
  auto in = detail::open_for_load(path, who);
  opt.set_state(detail::read_optimizer<typename O::scalar_type>(in, expected_size, who));
}

}  // namespace fedmoe
