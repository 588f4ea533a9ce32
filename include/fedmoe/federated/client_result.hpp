#pragma once
/// @file client_result.hpp
/// @brief What a client reports after personalisation: a list of named methods, each with its
/// accuracies and named metrics (gate diagnostics, early-stopping summaries) and named series
/// (histograms). Nothing here has a fixed size: a new method or metric touches neither the
/// transport nor the writers.
///
/// `encode_result` / `decode_result` turn a ClientResult into bytes and back (the MPI transport
/// sends them in a checksummed frame). The format is self-describing, in the native byte order (an MPI
/// cluster is assumed homogeneous, as in distributed/mpi.hpp):
///
///     i64 client, u8 opted_out, u32 methods, then per method:
///       str name, f64 local_acc, f64 global_acc,
///       u32 metrics,  per metric: str name, f64 value
///       u32 series,   per series: str name, u32 n, n x f64
///     str = u32 length + bytes
///
/// decode_result checks every length against the bytes that remain, so a truncated or corrupted
/// record is an error naming what was expected, never an over-read.
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/error.hpp"

namespace fedmoe {

/// One method's results for one client.
struct MethodResult {
  std::string method;
  double local_acc = 0;   ///< accuracy (fraction) on the client's local test set
  double global_acc = 0;  ///< on the global test set
  std::vector<std::pair<std::string, double>> metrics;
  std::vector<std::pair<std::string, std::vector<double>>> series;

  /// Sets metric `name` (replacing an earlier value).
  void set(std::string_view name, double value) {
    for (auto& [n, v] : metrics)
      if (n == name) {
        v = value;
        return;
      }
    metrics.emplace_back(std::string(name), value);
  }
  std::optional<double> metric(std::string_view name) const {
    for (const auto& [n, v] : metrics)
      if (n == name) return v;
    return std::nullopt;
  }
  void set_series(std::string_view name, std::vector<double> values) {
    series.emplace_back(std::string(name), std::move(values));
  }
  const std::vector<double>* find_series(std::string_view name) const {
    for (const auto& [n, v] : series)
      if (n == name) return &v;
    return nullptr;
  }
  friend bool operator==(const MethodResult&, const MethodResult&) = default;
  template <class Ar>
  void serialize(Ar& ar) {  // io/archive.hpp
    ar("method", method)("local_acc", local_acc)("global_acc", global_acc)("metrics", metrics)("series", series);
  }
};

/// Every method's results for one client, in the order they were run.
struct ClientResult {
  std::int64_t client = -1;
  bool opted_out = false;
  std::vector<MethodResult> methods;

  MethodResult& add(std::string_view method, double local_acc, double global_acc) {
    methods.push_back(MethodResult{std::string(method), local_acc, global_acc, {}, {}});
    return methods.back();
  }
  const MethodResult* find(std::string_view method) const {
    for (const auto& m : methods)
      if (m.method == method) return &m;
    return nullptr;
  }
  friend bool operator==(const ClientResult&, const ClientResult&) = default;
  template <class Ar>
  void serialize(Ar& ar) { ar("client", client)("opted_out", opted_out)("methods", methods); }  // io/archive.hpp
};

namespace detail {
class ResultWriter {
public:
  template <class T>
  void put(T v) {
    static_assert(std::is_trivially_copyable_v<T>);
    const auto* p = reinterpret_cast<const std::uint8_t*>(&v);
    m_bytes.insert(m_bytes.end(), p, p + sizeof(T));
  }
  void put_count(std::size_t n) {
    FEDMOE_CHECK(n <= std::numeric_limits<std::uint32_t>::max(), "encode_result: a list of ", n,
                 " entries, expected at most 2^32 - 1");
    put(std::uint32_t(n));
  }
  void put_string(const std::string& s) {
    put_count(s.size());
    m_bytes.insert(m_bytes.end(), s.begin(), s.end());
  }
  std::vector<std::uint8_t> take() { return std::move(m_bytes); }

private:
  std::vector<std::uint8_t> m_bytes;
};

class ResultReader {
public:
  explicit ResultReader(std::span<const std::uint8_t> bytes) : m_bytes(bytes) {}
  template <class T>
  T get(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, m_bytes.data() + m_pos, sizeof(T));
    m_pos += sizeof(T);
    return v;
  }
  /// A count of entries of at least `entry_bytes` each: checked against the bytes that remain.
  std::size_t get_count(const char* what, std::size_t entry_bytes) {
    const std::size_t n = get<std::uint32_t>(what);
    FEDMOE_CHECK(entry_bytes == 0 || n <= remaining() / entry_bytes, "decode_result: ", what, ": ", n,
                 " entries of at least ", entry_bytes, " bytes announced, only ", remaining(), " bytes remain");
    return n;
  }
  std::string get_string(const char* what) {
    const std::size_t n = get_count(what, 1);
    std::string s(reinterpret_cast<const char*>(m_bytes.data() + m_pos), n);
    m_pos += n;
    return s;
  }
  std::size_t remaining() const { return m_bytes.size() - m_pos; }

private:
  void need(std::size_t n, const char* what) const {
    FEDMOE_CHECK(n <= remaining(), "decode_result: expected ", n, " more bytes for ", what, ", got ", remaining(),
                 " (a truncated record)");
  }
  std::span<const std::uint8_t> m_bytes;
  std::size_t m_pos = 0;
};
}  // namespace detail

inline std::vector<std::uint8_t> encode_result(const ClientResult& r) {
  detail::ResultWriter w;
  w.put(std::int64_t(r.client));
  w.put(std::uint8_t(r.opted_out ? 1 : 0));
  w.put_count(r.methods.size());
  for (const MethodResult& m : r.methods) {
    w.put_string(m.method);
    w.put(m.local_acc);
    w.put(m.global_acc);
    w.put_count(m.metrics.size());
    for (const auto& [name, v] : m.metrics) {
      w.put_string(name);
      w.put(v);
    }
    w.put_count(m.series.size());
    for (const auto& [name, values] : m.series) {
      w.put_string(name);
      w.put_count(values.size());
      for (double v : values) w.put(v);
    }
  }
  return w.take();
}

inline ClientResult decode_result(std::span<const std::uint8_t> bytes) {
  detail::ResultReader in(bytes);
  ClientResult r;
  r.client = in.get<std::int64_t>("the client id");
  const auto flag = in.get<std::uint8_t>("opted_out");
  FEDMOE_CHECK(flag <= 1, "decode_result: expected opted_out 0 or 1, got ", int(flag));
  r.opted_out = flag == 1;
  const std::size_t methods = in.get_count("the methods", 4 + 16 + 8);
  for (std::size_t i = 0; i < methods; ++i) {
    MethodResult m;
    m.method = in.get_string("a method's name");
    m.local_acc = in.get<double>("local_acc");
    m.global_acc = in.get<double>("global_acc");
    const std::size_t metrics = in.get_count("the metrics", 4 + 8);
    for (std::size_t k = 0; k < metrics; ++k) {
      std::string name = in.get_string("a metric's name");
      m.metrics.emplace_back(std::move(name), in.get<double>("a metric's value"));
    }
    const std::size_t series = in.get_count("the series", 4 + 4);
    for (std::size_t k = 0; k < series; ++k) {
      std::string name = in.get_string("a series' name");
      std::vector<double> values(in.get_count("a series' values", 8));
      for (double& v : values) v = in.get<double>("a series value");
      m.series.emplace_back(std::move(name), std::move(values));
    }
    r.methods.push_back(std::move(m));
  }
  FEDMOE_CHECK(in.remaining() == 0, "decode_result: ", in.remaining(), " bytes after the record, expected none");
  return r;
}

}  // namespace fedmoe
