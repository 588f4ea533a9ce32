#pragma once
/// @file npy.hpp
/// @brief NumPy .npy interchange: a model's named tensors in PyTorch's layout, and datasets.
///
/// fedmoe keeps each parameter tensor in PyTorch's row-major layout inside the model's one
/// parameter vector (dense weight [out, in], conv weight [out, in, kh, kw]; see
/// layers/dense.hpp and layers/conv2d.hpp). So `export_npy` writes every tensor of
/// `model.tensors()` as "<name>.npy" (e.g. "0.weight.npy") straight from that memory, via
/// `xt::adapt` + `xt::dump_npy`; in Python,
///
///     sd = {k: torch.from_numpy(np.load(f"{d}/{k}.npy")) for k in net.state_dict()}
///     net.load_state_dict(sd)
///
/// loads them into the matching nn.Sequential unchanged (and `torch` -> fedmoe is the reverse:
/// `np.save(f"{d}/{k}.npy", v.numpy())`, then `import_npy`).
///
/// Reading uses fedmoe's own header parser rather than `xt::load_npy`, which (xtensor 0.24)
/// does not check that the file holds as many bytes as the header declares (it would return
/// uninitialised memory for a truncated file), sign-extends v1.0 header lengths whose low byte
/// is >= 0x80, and requires the dtype to match exactly. The parser here validates magic,
/// version, dtype, shape and the exact byte count before reading, converts float32/float64
/// (and, for datasets, uint8 and integer labels), and accepts C or Fortran order.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <vector>

#include <xtensor/xadapt.hpp>
#include <xtensor/xnpy.hpp>

#include "../core/checked_size.hpp"
#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../data/dataset.hpp"
#include "../layers/layer.hpp"
#include "../models/model.hpp"
#include "idx.hpp"
#include "serialization.hpp"

namespace fedmoe {

namespace detail {

/// Element types fedmoe reads from .npy files.
enum class NpyType { f4, f8, u1, i1, i4, i8 };

inline const char* npy_type_name(NpyType t) {
  switch (t) {
    case NpyType::f4: return "float32";
    case NpyType::f8: return "float64";
    case NpyType::u1: return "uint8";
    case NpyType::i1: return "int8";
    case NpyType::i4: return "int32";
    case NpyType::i8: return "int64";
  }
  return "unknown";
}
inline std::size_t npy_type_size(NpyType t) {
  switch (t) {
    case NpyType::u1:
    case NpyType::i1: return 1;
    case NpyType::f4:
    case NpyType::i4: return 4;
    default: return 8;
  }
}

/// A validated .npy header: the data starts at `data_offset` and runs exactly to the end.
struct NpyHeader {
  std::string descr;  ///< as in the file, e.g. "<f4"
  NpyType type = NpyType::f4;
  bool fortran_order = false;
  std::vector<Index> shape;
  std::size_t data_offset = 0;
  Index count = 1;  ///< prod(shape)
};

/// "(3, 5)", NumPy style.
template <class Dim>
std::string npy_shape_string(const std::vector<Dim>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

/// Position just after `'key':` (or `"key":`) in a header dict, or npos.
inline std::size_t npy_find_key(const std::string& h, const std::string& key) {
  for (const char q : {'\'', '"'}) {
    const std::size_t at = h.find(std::string(1, q) + key + q);
    if (at == std::string::npos) continue;
    std::size_t p = h.find(':', at + key.size() + 2);
    return p == std::string::npos ? p : p + 1;
  }
  return std::string::npos;
}
inline std::size_t npy_skip_space(const std::string& h, std::size_t p) {
  while (p < h.size() && (h[p] == ' ' || h[p] == '\t')) ++p;
  return p;
}

/// Opens `path` and reads and validates its header, including the total byte count.
inline NpyHeader read_npy_header(std::ifstream& in, const std::string& path, const std::string& who) {
  FEDMOE_CHECK(in.is_open(), who, ": cannot open '", path, "' for reading (",
               std::filesystem::exists(path) ? "permission denied?" : "no such file", ")");
  in.seekg(0, std::ios::end);
  const auto end = in.tellg();
  in.seekg(0, std::ios::beg);
  FEDMOE_CHECK(end >= 0 && in.good(), who, ": cannot determine the size of '", path, "'");
  // std::streamoff is 64-bit everywhere, size_t only 32-bit on 32-bit targets.
  FEDMOE_CHECK(std::uint64_t(end) <= detail::max_bytes, who, ": '", path, "' holds ", std::uint64_t(end),
               " bytes, expected at most ", detail::max_bytes_text());
  const auto file_size = static_cast<std::size_t>(end);

  unsigned char pre[12] = {};
  FEDMOE_CHECK(file_size >= 10, who, ": '", path, "' is truncated: expected at least 10 bytes (the .npy preamble), ",
               "got ", file_size);
  in.read(reinterpret_cast<char*>(pre), 10);
  FEDMOE_CHECK(std::memcmp(pre, "\x93NUMPY", 6) == 0, who, ": '", path,
               "' is not a .npy file (expected the magic \"\\x93NUMPY\")");
  const unsigned major = pre[6], minor = pre[7];
  FEDMOE_CHECK(major >= 1 && major <= 3, who, ": '", path, "': unsupported .npy format version ", major, ".", minor,
               " (expected 1.0, 2.0 or 3.0)");
  std::size_t header_len = 0, pre_len = 10;
  if (major == 1) {
    header_len = std::size_t(pre[8]) | std::size_t(pre[9]) << 8;
  } else {
    pre_len = 12;
    FEDMOE_CHECK(file_size >= 12, who, ": '", path, "' is truncated: expected at least 12 bytes, got ", file_size);
    in.read(reinterpret_cast<char*>(pre + 10), 2);
    header_len = std::size_t(pre[8]) | std::size_t(pre[9]) << 8 | std::size_t(pre[10]) << 16 |
                 std::size_t(pre[11]) << 24;
  }
  FEDMOE_CHECK(header_len <= file_size - pre_len, who, ": '", path, "' is truncated: the header declares ",
               header_len, " bytes, only ", file_size - pre_len, " follow the preamble");
  std::string h(header_len, '\0');
  in.read(h.data(), static_cast<std::streamsize>(header_len));
  FEDMOE_CHECK(in.good(), who, ": I/O error while reading the header of '", path, "'");

  NpyHeader out;
  out.data_offset = pre_len + header_len;
  // descr
  std::size_t p = npy_find_key(h, "descr");
  FEDMOE_CHECK(p != std::string::npos, who, ": '", path, "': the header has no 'descr' key: ", h);
  p = npy_skip_space(h, p);
  FEDMOE_CHECK(p < h.size() && (h[p] == '\'' || h[p] == '"'), who, ": '", path,
               "': expected a quoted 'descr' (a simple dtype such as '<f4'), got: ", h);
  const std::size_t close = h.find(h[p], p + 1);
  FEDMOE_CHECK(close != std::string::npos, who, ": '", path, "': unterminated 'descr' in: ", h);
  out.descr = h.substr(p + 1, close - p - 1);
  {
    const std::string& d = out.descr;
    const std::string kind = d.size() >= 2 ? d.substr(1) : d;
    const char order = d.empty() ? '?' : d[0];
    bool known = d.size() == 3 && (order == '<' || order == '|' || order == '>' || order == '=');
    if (known) {
      if (kind == "f4") out.type = NpyType::f4;
      else if (kind == "f8") out.type = NpyType::f8;
      else if (kind == "u1") out.type = NpyType::u1;
      else if (kind == "i1") out.type = NpyType::i1;
      else if (kind == "i4") out.type = NpyType::i4;
      else if (kind == "i8") out.type = NpyType::i8;
      else known = false;
    }
    FEDMOE_CHECK(known, who, ": '", path, "': unsupported dtype '", d,
                 "' (expected one of '<f4', '<f8', '|u1', '|i1', '<i4', '<i8')");
    FEDMOE_CHECK(order != '>' || npy_type_size(out.type) == 1, who, ": '", path, "': big-endian dtype '", d,
                 "' is not supported (expected little-endian '<", kind, "'; in NumPy: a.astype('<", kind, "'))");
  }
  // fortran_order
  p = npy_find_key(h, "fortran_order");
  FEDMOE_CHECK(p != std::string::npos, who, ": '", path, "': the header has no 'fortran_order' key: ", h);
  p = npy_skip_space(h, p);
  if (h.compare(p, 4, "True") == 0) {
    out.fortran_order = true;
  } else {
    FEDMOE_CHECK(h.compare(p, 5, "False") == 0, who, ": '", path, "': expected fortran_order True or False in: ", h);
  }
  // shape
  p = npy_find_key(h, "shape");
  FEDMOE_CHECK(p != std::string::npos, who, ": '", path, "': the header has no 'shape' key: ", h);
  p = npy_skip_space(h, p);
  FEDMOE_CHECK(p < h.size() && h[p] == '(', who, ": '", path, "': expected a shape tuple in: ", h);
  ++p;
  // The dims as written (64-bit), narrowed to Index only once the whole shape is valid on this target.
  std::vector<std::uint64_t> shape;
  for (;;) {
    p = npy_skip_space(h, p);
    FEDMOE_CHECK(p < h.size(), who, ": '", path, "': unterminated shape tuple in: ", h);
    if (h[p] == ')') break;
    FEDMOE_CHECK(h[p] >= '0' && h[p] <= '9', who, ": '", path, "': expected a dimension in the shape tuple of: ", h);
    std::uint64_t dim = 0;
    while (p < h.size() && h[p] >= '0' && h[p] <= '9') {
      FEDMOE_CHECK(dim < (std::uint64_t(1) << 56), who, ": '", path, "': absurd dimension in: ", h);
      dim = dim * 10 + std::uint64_t(h[p++] - '0');
    }
    shape.push_back(dim);
    p = npy_skip_space(h, p);
    if (p < h.size() && h[p] == ',') ++p;
  }
  FEDMOE_CHECK(shape.size() <= 32, who, ": '", path, "': expected at most 32 dimensions, got ", shape.size());
  // Exact byte count, in 64 bits and overflow-safe (a 32-bit size_t would wrap (2^32 + 1,) to 1 element).
  const std::uint64_t elem = npy_type_size(out.type);
  const std::uint64_t available = file_size - out.data_offset;
  std::uint64_t n = 1;
  bool overflow = false;
  for (std::uint64_t d : shape) overflow = overflow || !mul_within(n, d, (std::uint64_t(1) << 62) / elem, n);
  if (std::find(shape.begin(), shape.end(), std::uint64_t(0)) != shape.end()) {  // empty: no data at all
    overflow = false;
    n = 0;
  }
  FEDMOE_CHECK(!overflow, who, ": '", path, "' has the wrong data length: shape ", npy_shape_string(shape), " of ",
               npy_type_name(out.type), " needs more than 2^62 bytes, the file holds ", available, " (truncated)");
  const std::uint64_t expected = n * elem;
  FEDMOE_CHECK(available == expected, who, ": '", path, "' has the wrong data length: shape ", npy_shape_string(shape),
               " of ", npy_type_name(out.type), " needs ", expected, " bytes, the file holds ", available,
               available < expected ? " (truncated)" : " (trailing data)");
  // The data is in the file, so n x elem fits a size_t; each dim (an empty array's may be anything) and n
  // must fit an Index too: on a 32-bit target 2^40 would wrap to 0.
  for (std::size_t d = 0; d < shape.size(); ++d)
    FEDMOE_CHECK(shape[d] <= max_index, who, ": '", path, "': shape ", npy_shape_string(shape), ": dimension ", d,
                 " is ", shape[d], ", expected at most ", max_index_text());
  FEDMOE_CHECK(n <= max_index, who, ": '", path, "': shape ", npy_shape_string(shape), " has ", n,
               " elements, expected at most ", max_index_text());
  out.shape.assign(shape.begin(), shape.end());
  out.count = Index(n);
  return out;
}

/// One element of type t at p, converted to Out.
template <class Out>
Out npy_element(NpyType t, const unsigned char* p) {
  switch (t) {
    case NpyType::f4: return static_cast<Out>(load_le<float>(p));
    case NpyType::f8: return static_cast<Out>(load_le<double>(p));
    case NpyType::u1: return static_cast<Out>(p[0]);
    case NpyType::i1: return static_cast<Out>(static_cast<std::int8_t>(p[0]));
    case NpyType::i4: return static_cast<Out>(load_le<std::int32_t>(p));
    case NpyType::i8: return static_cast<Out>(load_le<std::int64_t>(p));
  }
  return Out{};
}

/// Reads the data after read_npy_header into out[0 .. count), converted to Out, in C (row-major) order.
template <class Out>
void read_npy_data(std::ifstream& in, const NpyHeader& h, Out* out, const std::string& path, const std::string& who) {
  const std::size_t elem = npy_type_size(h.type);
  in.seekg(static_cast<std::streamoff>(h.data_offset), std::ios::beg);
  std::vector<unsigned char> buf(std::size_t(1) << 16);
  const Index per = Index(buf.size() / elem);
  // (An empty array has nothing to transpose, and its dims' products could exceed an Index.)
  const bool transpose = h.fortran_order && h.shape.size() > 1 && h.count > 0;
  std::vector<Out> fortran;
  Out* dst = out;
  if (transpose) {
    fortran.resize(std::size_t(h.count));
    dst = fortran.data();
  }
  for (Index i = 0; i < h.count; i += per) {
    const Index m = std::min(per, h.count - i);
    in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(std::size_t(m) * elem));
    FEDMOE_CHECK(in.good(), who, ": I/O error while reading the data of '", path, "' (element ", i, " of ",
                 h.count, ")");
    for (Index j = 0; j < m; ++j) dst[i + j] = npy_element<Out>(h.type, buf.data() + std::size_t(j) * elem);
  }
  if (transpose) {
    // Row-major index i <-> multi-index (last dim fastest) <-> column-major offset.
    const std::size_t rank = h.shape.size();
    std::vector<Index> idx(rank, 0), fstride(rank, 1);
    for (std::size_t k = 1; k < rank; ++k) fstride[k] = fstride[k - 1] * h.shape[k - 1];
    for (Index i = 0; i < h.count; ++i) {
      Index off = 0;
      for (std::size_t k = 0; k < rank; ++k) off += idx[k] * fstride[k];
      out[i] = fortran[std::size_t(off)];
      for (std::size_t k = rank; k-- > 0;) {
        if (++idx[k] < h.shape[k]) break;
        idx[k] = 0;
      }
    }
  }
}

/// Refuses tensor names that would escape the directory.
inline void check_npy_name(const std::string& name, const std::string& who) {
  FEDMOE_CHECK(!name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
                   name.find('\\') == std::string::npos,
               who, ": tensor name '", name, "' cannot be used as a file name (expected no '/' or '\\')");
}

}  // namespace detail

/// Writes each tensor of model.tensors() as "<directory>/<name>.npy" (created if needed), in
/// PyTorch's shape and layout, with the model's scalar type ('<f4' or '<f8').
template <Model M>
  requires detail::TensorModel<M>
void export_npy(const M& model, const std::string& directory) {
  using S = typename M::scalar_type;
  const std::string who = "export_npy('" + directory + "')";
  std::error_code ec;
  std::filesystem::create_directories(directory, ec);
  FEDMOE_CHECK(std::filesystem::is_directory(directory), who, ": cannot create the directory '", directory, "'",
               ec ? ": " + ec.message() : std::string());
  const Vector<S>& params = model.parameters();
  for (const TensorInfo& t : model.tensors()) {
    detail::check_npy_name(t.name, who);
    FEDMOE_CHECK(t.offset >= 0 && t.offset + t.size() <= params.size(), who, ": tensor '", t.name,
                 "' lies outside the parameter vector (offset ", t.offset, ", size ", t.size(), ", ", params.size(),
                 " parameters)");
    std::vector<std::size_t> shape(t.dims.begin(), t.dims.end());
    const auto view = xt::adapt(params.data() + t.offset, std::size_t(t.size()), xt::no_ownership(), shape);
    const std::string bytes = xt::dump_npy(view);
    const std::string path = (std::filesystem::path(directory) / (t.name + ".npy")).string();
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    FEDMOE_CHECK(out.is_open(), who, ": cannot open '", path, "' for writing");
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    FEDMOE_CHECK(!out.fail(), who, ": I/O error while writing '", path, "'");
  }
}

/// Reads "<directory>/<name>.npy" for each tensor of model.tensors(): the shape must equal the
/// tensor's dims; float32 and float64 files are accepted (converted to the model's scalar).
/// The model is untouched unless every file is valid and finite.
template <Model M>
  requires detail::TensorModel<M>
void import_npy(M& model, const std::string& directory) {
  using S = typename M::scalar_type;
  const std::string who = "import_npy('" + directory + "')";
  Vector<S> staged = model.parameters();
  const std::vector<TensorInfo> tensors = model.tensors();
  for (const TensorInfo& t : tensors) {
    detail::check_npy_name(t.name, who);
    const std::string path = (std::filesystem::path(directory) / (t.name + ".npy")).string();
    FEDMOE_CHECK(std::filesystem::exists(path), who, ": missing file '", path, "' for tensor '", t.name, "' of shape ",
                 detail::npy_shape_string(t.dims));
    std::ifstream in(path, std::ios::binary);
    const detail::NpyHeader h = detail::read_npy_header(in, path, who);
    FEDMOE_CHECK(h.type == detail::NpyType::f4 || h.type == detail::NpyType::f8, who, ": '", path, "' has dtype '",
                 h.descr, "' (", detail::npy_type_name(h.type), "), expected float32 or float64");
    FEDMOE_CHECK(h.shape == t.dims, who, ": '", path, "' has shape ", detail::npy_shape_string(h.shape),
                 ", expected ", detail::npy_shape_string(t.dims), " for tensor '", t.name, "'");
    FEDMOE_CHECK(t.offset >= 0 && t.offset + t.size() <= staged.size(), who, ": tensor '", t.name,
                 "' lies outside the parameter vector");
    detail::read_npy_data<S>(in, h, staged.data() + t.offset, path, who);
  }
  detail::check_finite(staged, tensors, who, "parameters");
  model.parameters() = std::move(staged);
}

/// A Dataset from two .npy files: inputs [n, ...] (float32/float64, or uint8 scaled to [0, 1]),
/// row-major, each sample's trailing dims matching `sample_shape` (e.g. [n, 1, 28, 28],
/// [n, 28, 28] or [n, 784] for {1, 28, 28}); labels [n] (or [n, 1]) of int64, int32, uint8 or
/// int8 in [0, classes).
template <class S = float>
Dataset<S> load_npy_dataset(const std::string& inputs_npy, const std::string& labels_npy, Shape sample_shape,
                            Index classes) {
  const std::string who = "load_npy_dataset";
  FEDMOE_CHECK(sample_shape.size() > 0, who, ": expected a non-empty sample shape, got ", sample_shape);
  FEDMOE_CHECK(classes > 0, who, ": expected classes > 0, got ", classes);
  std::ifstream xin(inputs_npy, std::ios::binary);
  const detail::NpyHeader xh = detail::read_npy_header(xin, inputs_npy, who);
  std::ifstream yin(labels_npy, std::ios::binary);
  const detail::NpyHeader yh = detail::read_npy_header(yin, labels_npy, who);

  using detail::NpyType;
  FEDMOE_CHECK(xh.type == NpyType::f4 || xh.type == NpyType::f8 || xh.type == NpyType::u1, who, ": '", inputs_npy,
               "' has dtype '", xh.descr, "' (", detail::npy_type_name(xh.type),
               "), expected float32, float64 or uint8 inputs");
  FEDMOE_CHECK(xh.shape.size() >= 2, who, ": '", inputs_npy, "' has shape ", detail::npy_shape_string(xh.shape),
               ", expected [n, ...] with sample shape ", sample_shape);
  const Index n = xh.shape[0];
  std::vector<Index> trailing(xh.shape.begin() + 1, xh.shape.end());
  // In 64 bits: with n = 0 the trailing dims' product is not bounded by the file's size.
  std::uint64_t features64 = 1;
  for (Index d : trailing)
    FEDMOE_CHECK(detail::mul_within(features64, std::uint64_t(d), detail::max_index, features64), who, ": '",
                 inputs_npy, "' has shape ", detail::npy_shape_string(xh.shape), ": more than ",
                 detail::max_index_text(), " values per sample");
  const Index features = Index(features64);
  // Trailing dims must be the sample's, up to size-1 axes; a flat [n, C*H*W] is accepted too.
  std::vector<Index> got_dims, want_dims;
  for (Index d : trailing)
    if (d != 1) got_dims.push_back(d);
  for (Index d : {sample_shape.channels, sample_shape.height, sample_shape.width})
    if (d != 1) want_dims.push_back(d);
  FEDMOE_CHECK(features == sample_shape.size() && (trailing.size() == 1 || got_dims == want_dims), who, ": '",
               inputs_npy, "' has shape ", detail::npy_shape_string(xh.shape), ", expected [n, ...] with samples of ",
               "shape ", sample_shape, " (", sample_shape.size(), " values each)");

  FEDMOE_CHECK(yh.type == NpyType::i8 || yh.type == NpyType::i4 || yh.type == NpyType::u1 || yh.type == NpyType::i1,
               who, ": '", labels_npy, "' has dtype '", yh.descr, "' (", detail::npy_type_name(yh.type),
               "), expected int64, int32, uint8 or int8 labels");
  FEDMOE_CHECK(yh.shape.size() == 1 || (yh.shape.size() == 2 && yh.shape[1] == 1), who, ": '", labels_npy,
               "' has shape ", detail::npy_shape_string(yh.shape), ", expected (", n, ",)");
  FEDMOE_CHECK(yh.shape[0] == n, who, ": '", labels_npy, "' has ", yh.shape[0], " labels, expected ", n,
               " (one per sample of '", inputs_npy, "')");

  Dataset<S> data{Matrix<S>(features, n), Labels(n), sample_shape, classes};
  // Row-major [n, features] is exactly column-major features x n: one column per sample.
  if (xh.type == NpyType::u1) {
    // Read as bytes and scaled by a scalar IEEE division (detail::scale_bytes, as load_idx does): Eigen's
    // `inputs /= 255` is a reciprocal estimate on ARMv7 NEON, off in the last bits.
    std::vector<unsigned char> bytes(std::size_t(xh.count));
    detail::read_npy_data<unsigned char>(xin, xh, bytes.data(), inputs_npy, who);
    detail::scale_bytes(bytes.data(), bytes.size(), data.inputs.data());
  } else {
    detail::read_npy_data<S>(xin, xh, data.inputs.data(), inputs_npy, who);
  }
  std::vector<std::int64_t> labels(static_cast<std::size_t>(n));
  detail::read_npy_data<std::int64_t>(yin, yh, labels.data(), labels_npy, who);
  for (Index i = 0; i < n; ++i) {
    FEDMOE_CHECK(labels[std::size_t(i)] >= 0 && labels[std::size_t(i)] < classes, who, ": '", labels_npy,
                 "': expected labels in [0, ", classes, "), got ", labels[std::size_t(i)], " at sample ", i);
    data.labels[i] = static_cast<std::int32_t>(labels[std::size_t(i)]);
  }
  for (Index i = 0; i < data.inputs.size(); ++i)
    FEDMOE_CHECK(std::isfinite(data.inputs.data()[i]), who, ": '", inputs_npy, "': expected finite inputs, got ",
                 data.inputs.data()[i], " at sample ", i / features, ", feature ", i % features);
  data.validate("load_npy_dataset");
  return data;
}

}  // namespace fedmoe
