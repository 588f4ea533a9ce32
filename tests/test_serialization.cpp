// Tests of io/serialization.hpp (binary parameter/optimizer files) and io/npy.hpp (NumPy interchange).
#include <catch2/catch.hpp>
#include <zlib.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include <fedmoe/io/npy.hpp>
#include <fedmoe/io/serialization.hpp>
#include <fedmoe/losses/cross_entropy.hpp>
#include <fedmoe/models/paper.hpp>
#include <fedmoe/optimizers/adam.hpp>
#include <fedmoe/optimizers/sgd.hpp>

#include "gradient_check.hpp"
#include "synthetic_data.hpp"
#include "temp_dir.hpp"

using namespace fedmoe;
using Catch::Matchers::Contains;

namespace {

template <class S>
bool bitwise_equal(const Vector<S>& a, const Vector<S>& b) {
  return a.size() == b.size() && (a.size() == 0 || std::memcmp(a.data(), b.data(), sizeof(S) * a.size()) == 0);
}

template <Model M>
M initialized(M model, std::uint64_t seed) {
  Rng rng(seed);
  model.init(rng);
  return model;
}

template <class S>
std::string model_bytes(const FashionCnn<S>& model) {
  std::ostringstream out;
  save_model(out, model);
  return out.str();
}

/// Rewrites the trailing CRC-32 so that only the semantic checks can fail.
void fix_crc(std::string& bytes) {
  const std::size_t n = bytes.size() - 4;
  const auto crc = std::uint32_t(crc32_z(crc32_z(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(bytes.data()), n));
  for (std::size_t i = 0; i < 4; ++i) bytes[n + i] = char((crc >> (8 * i)) & 0xFF);
}
void put_u32(std::string& bytes, std::size_t at, std::uint32_t v) {
  for (std::size_t i = 0; i < 4; ++i) bytes[at + i] = char((v >> (8 * i)) & 0xFF);
}
void put_u64(std::string& bytes, std::size_t at, std::uint64_t v) {
  for (std::size_t i = 0; i < 8; ++i) bytes[at + i] = char((v >> (8 * i)) & 0xFF);
}

template <class S>
void load_from(const std::string& bytes, FashionCnn<S>& model) {
  std::istringstream in(bytes);
  load_model(in, model);
}

/// One Adam step of a model on a fixed batch, with dropout drawn from rng.
template <class M, class O>
void train_step(M& model, O& opt, const Matrix<typename M::scalar_type>& x, const Labels& y, Rng& rng) {
  using S = typename M::scalar_type;
  CrossEntropy<S> loss;
  Matrix<S> grad;
  const Matrix<S>& out = model.forward(x, Mode::train, rng);
  loss.gradient(out, y, grad);
  model.backward(x, grad);
  opt.step(model.parameters(), model.gradients());
}

using test::random_labels;

}  // namespace

// ------------------------------------------------------------------------------------------------
// Binary format: round trips

TEMPLATE_TEST_CASE("save_model/load_model round-trips a FashionCnn bitwise", "[io][serialization]", float, double) {
  const auto model = initialized(fashion_cnn<TestType>(), 11);
  auto copy = fashion_cnn<TestType>();
  REQUIRE_FALSE(bitwise_equal(model.parameters(), copy.parameters()));

  // stream
  load_from(model_bytes(model), copy);
  CHECK(bitwise_equal(model.parameters(), copy.parameters()));

  // file
  test::TempDir dir("ser");
  const std::string path = dir.file("model.fedmoe");
  save_model(path, model);
  auto from_file = fashion_cnn<TestType>();
  load_model(path, from_file);
  CHECK(bitwise_equal(model.parameters(), from_file.parameters()));
  // no temporary files left behind
  CHECK(std::distance(std::filesystem::directory_iterator(dir.path), std::filesystem::directory_iterator()) == 1);

  // the same bytes read back as a plain vector
  const Vector<TestType> plain = load_parameters<TestType>(path, model.num_params());
  CHECK(bitwise_equal(model.parameters(), plain));
}

TEMPLATE_TEST_CASE("save_parameters/load_parameters round-trip special values bitwise", "[io][serialization]", float,
                   double) {
  using S = TestType;
  Vector<S> v(7);
  v << S(0), -S(0), std::numeric_limits<S>::min(), std::numeric_limits<S>::denorm_min(), std::numeric_limits<S>::max(),
      -std::numeric_limits<S>::lowest(), S(1) / S(3);
  std::stringstream io;
  save_parameters(io, v);
  const Vector<S> back = load_parameters<S>(io, v.size());
  CHECK(bitwise_equal(v, back));

  // an empty vector is a valid file too
  std::stringstream empty;
  save_parameters(empty, Vector<S>());
  CHECK(load_parameters<S>(empty, 0).size() == 0);
}

TEMPLATE_TEST_CASE("Adam state saved mid-training resumes bitwise identically", "[io][serialization]", float, double) {
  using S = TestType;
  const Matrix<S> x = test::random_batch<S>(784, 6, 3);
  const Labels y = random_labels(6, 10, 4);

  auto model = initialized(fashion_cnn<S>(), 21);
  Adam<S> opt(1e-3);
  Rng rng(5);
  for (int i = 0; i < 3; ++i) train_step(model, opt, x, y, rng);

  test::TempDir dir("adam");
  save_model(dir.file("model.bin"), model);
  save_optimizer(dir.file("adam.bin"), opt);
  const Rng rng_at_save = rng;

  // Reference: never saved, keeps training.
  for (int i = 0; i < 4; ++i) train_step(model, opt, x, y, rng);

  // Resumed: a fresh model and optimizer, loaded from the files.
  auto resumed = fashion_cnn<S>();
  Adam<S> opt2(1e-3);
  load_model(dir.file("model.bin"), resumed);
  load_optimizer(dir.file("adam.bin"), opt2, resumed.num_params());
  CHECK(opt2.state().steps == 3);
  Rng rng2 = rng_at_save;
  for (int i = 0; i < 4; ++i) train_step(resumed, opt2, x, y, rng2);

  CHECK(bitwise_equal(model.parameters(), resumed.parameters()));
  CHECK(bitwise_equal(opt.state().first, opt2.state().first));
  CHECK(bitwise_equal(opt.state().second, opt2.state().second));
  CHECK(opt.state().steps == opt2.state().steps);
}

TEST_CASE("optimizer files: unused moments, fresh state, size and content checks", "[io][serialization]") {
  // SGD without momentum keeps no moment vectors; a fresh Adam has none yet.
  Vector<float> p = Vector<float>::Ones(5), g = Vector<float>::Constant(5, 0.5f);
  Sgd<float> sgd(0.1);
  sgd.step(p, g);
  std::stringstream s1;
  save_optimizer(s1, sgd);
  Sgd<float> sgd2(0.1);
  load_optimizer(s1, sgd2, 5);
  CHECK(sgd2.state().steps == sgd.state().steps);
  CHECK(sgd2.state().first.size() == sgd.state().first.size());

  Adam<float> adam;
  adam.step(p, g);
  adam.step(p, g);
  std::stringstream s2;
  save_optimizer(s2, adam);
  const std::string bytes = s2.str();
  Adam<float> other;
  std::istringstream wrong_size(bytes);
  CHECK_THROWS_WITH(load_optimizer(wrong_size, other, 6),
                    Contains("wrong size") && Contains("expected the 'first' moment to have 6") &&
                        Contains("the file has 5"));
  CHECK(other.state().steps == 0);  // untouched after a failed load

  // an optimizer file is not a parameter file, and vice versa
  std::istringstream as_params(bytes);
  CHECK_THROWS_WITH(load_parameters<float>(as_params, 5),
                    Contains("wrong content: expected parameters (content code 1), the file holds optimizer state"));
  std::stringstream params;
  save_parameters(params, p);
  CHECK_THROWS_WITH(load_optimizer(params, other, 5),
                    Contains("expected optimizer state (content code 2), the file holds parameters"));
  // float state is not double state
  std::istringstream as_double(bytes);
  Adam<double> adam_d;
  CHECK_THROWS_WITH(load_optimizer(as_double, adam_d, 5),
                    Contains("wrong scalar type: the file has float32, expected float64"));
}

// ------------------------------------------------------------------------------------------------
// Binary format: corruption and misuse

TEST_CASE("a truncated model file is rejected with the byte counts", "[io][serialization]") {
  const auto model = initialized(fashion_cnn<float>(), 1);
  const std::string bytes = model_bytes(model);
  for (std::size_t keep : {std::size_t(0), std::size_t(5), std::size_t(8), std::size_t(14), std::size_t(31),
                           std::size_t(40), std::size_t(60), bytes.size() / 2, bytes.size() - 5, bytes.size() - 4,
                           bytes.size() - 1}) {
    INFO("keeping " << keep << " of " << bytes.size() << " bytes");
    auto copy = fashion_cnn<float>();
    CHECK_THROWS_WITH(load_from(bytes.substr(0, keep), copy),
                      Contains("truncated file") && Contains("bytes are available"));
    CHECK(copy.parameters().isZero());  // never partially loaded
  }
  // the message names what was expected and what is available
  auto copy = fashion_cnn<float>();
  CHECK_THROWS_WITH(load_from(bytes.substr(0, bytes.size() - 2), copy),
                    Contains("expected 4 bytes for the CRC-32") && Contains("only 2 bytes are available"));
}

TEST_CASE("a flipped payload byte fails the checksum", "[io][serialization]") {
  const auto model = initialized(fashion_cnn<float>(), 2);
  const std::string good = model_bytes(model);
  for (std::size_t at : {good.size() / 3, good.size() / 2, good.size() - 5}) {
    std::string bad = good;
    bad[at] = char(bad[at] ^ 0x10);
    auto copy = fashion_cnn<float>();
    CHECK_THROWS_WITH(load_from(bad, copy), Contains("checksum mismatch") && Contains("expected CRC-32 0x") &&
                                                Contains("computed 0x"));
  }
  // the stored CRC itself corrupted
  std::string bad = good;
  bad.back() = char(bad.back() ^ 1);
  auto copy = fashion_cnn<float>();
  CHECK_THROWS_WITH(load_from(bad, copy), Contains("checksum mismatch"));
}

TEST_CASE("bad magic, version, scalar type, trailing data and absurd lengths are rejected", "[io][serialization]") {
  const auto model = initialized(fashion_cnn<float>(), 3);
  const std::string good = model_bytes(model);
  auto copy = fashion_cnn<float>();

  std::string bad = good;
  bad[1] = 'X';
  CHECK_THROWS_WITH(load_from(bad, copy), Contains("bad magic") && Contains("got 89 58 45 44"));

  bad = good;
  put_u32(bad, 8, 2);
  CHECK_THROWS_WITH(load_from(bad, copy), Contains("unsupported format version: expected 1, got 2"));

  bad = good;
  put_u32(bad, 16, 2);
  CHECK_THROWS_WITH(load_from(bad, copy), Contains("wrong scalar type: the file has float64, expected float32"));
  put_u32(bad, 16, 9);
  CHECK_THROWS_WITH(load_from(bad, copy), Contains("unknown scalar type code 9"));

  // a double model file loaded into a float model
  const std::string dbl = [] {
    std::ostringstream out;
    save_model(out, initialized(fashion_cnn<double>(), 3));
    return out.str();
  }();
  CHECK_THROWS_WITH(load_from(dbl, copy), Contains("wrong scalar type: the file has float64, expected float32"));

  bad = good + "x";
  CHECK_THROWS_WITH(load_from(bad, copy), Contains("trailing data") && Contains("got 1 extra bytes"));

  // absurd lengths fail before any allocation
  bad = good;
  put_u64(bad, 24, std::uint64_t(1) << 60);  // record count
  CHECK_THROWS_WITH(load_from(bad, copy), Contains("truncated file") && Contains("records"));
  bad = good;
  put_u32(bad, 32, 0xFFFFFFF0u);  // name length of record 0
  CHECK_THROWS_WITH(load_from(bad, copy), Contains("truncated file") && Contains("the name of record 0"));
  bad = good;
  // record 0: u32 name length (8: "0.weight"), name, u32 dtype, u32 ndims, then dims
  put_u64(bad, 32 + 4 + 8 + 4 + 4, std::uint64_t(1) << 40);
  CHECK_THROWS_WITH(load_from(bad, copy), Contains("truncated file") && Contains("record 0 '0.weight'"));

  CHECK(copy.parameters().isZero());
}

TEST_CASE("a model file for another architecture names the first mismatching tensor", "[io][serialization]") {
  const auto model = initialized(fashion_cnn<float>(), 4);
  const std::string bytes = model_bytes(model);

  auto five_classes = fashion_cnn<float>(5);
  std::istringstream in1(bytes);
  CHECK_THROWS_WITH(load_model(in1, five_classes),
                    Contains("another architecture") && Contains("expected '12.weight' [5, 42]") &&
                        Contains("the file has '12.weight' [10, 42]"));

  auto cifar = cifar_cnn<float>();
  std::istringstream in2(bytes);
  CHECK_THROWS_WITH(load_model(in2, cifar), Contains("tensor 0 expected '0.weight' [6, 3, 5, 5]") &&
                                                Contains("the file has '0.weight' [6, 1, 5, 5]"));

  auto gate = fashion_cnn_gate<float>();  // one layer more (Sigmoid), so the head differs in shape
  std::istringstream in3(bytes);
  CHECK_THROWS_WITH(load_model(in3, gate), Contains("expected '12.weight' [1, 42]"));

  auto small = mlp<float>(Shape{784, 1, 1}, 10, 100);
  std::istringstream in4(bytes);
  CHECK_THROWS_WITH(load_model(in4, small), Contains("expected '0.weight' [100, 784]"));
  CHECK(small.parameters().isZero());

  // a plain vector of the wrong size
  std::istringstream in5(bytes);
  CHECK_THROWS_WITH(load_parameters<float>(in5, model.num_params() + 1),
                    Contains("wrong size: expected " + std::to_string(model.num_params() + 1) +
                             " parameters, the file has " + std::to_string(model.num_params())));
}

TEST_CASE("non-finite parameters are refused on save and on load", "[io][serialization]") {
  auto model = initialized(fashion_cnn<float>(), 5);
  std::string bytes = model_bytes(model);
  // overwrite element 7 of record 0 ("0.weight", 4 dims) with NaN, then fix the CRC
  const std::size_t data0 = 32 + 4 + 8 + 4 + 4 + 4 * 8;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(&bytes[data0 + 7 * sizeof(float)], &nan, sizeof(float));
  fix_crc(bytes);
  auto copy = fashion_cnn<float>();
  CHECK_THROWS_WITH(load_from(bytes, copy), Contains("expected finite parameters, got nan at index 7") &&
                                                Contains("tensor '0.weight', element 7"));
  CHECK(copy.parameters().isZero());

  model.parameters()[200] = std::numeric_limits<float>::infinity();
  std::ostringstream out;
  CHECK_THROWS_WITH(save_model(out, model), Contains("expected finite parameters, got inf at index 200"));
}

TEST_CASE("a failed save leaves the previous file intact and missing files are named", "[io][serialization]") {
  test::TempDir dir("atomic");
  const std::string path = dir.file("model.bin");
  auto model = initialized(fashion_cnn<float>(), 6);
  save_model(path, model);
  const Vector<float> good = model.parameters();

  model.parameters()[0] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(save_model(path, model), Contains("expected finite parameters"));
  auto back = fashion_cnn<float>();
  load_model(path, back);
  CHECK(bitwise_equal(good, back.parameters()));
  CHECK(std::distance(std::filesystem::directory_iterator(dir.path), std::filesystem::directory_iterator()) == 1);

  const std::string missing = dir.file("none.bin");
  CHECK_THROWS_WITH(load_model(missing, back), Contains(missing) && Contains("no such file"));
  const std::string bad_dir = dir.file("no/such/dir/model.bin");
  CHECK_THROWS_WITH(save_model(bad_dir, back), Contains("cannot open the temporary file"));

  // tensors that do not tile the vector
  std::ostringstream out;
  std::vector<TensorInfo> tensors = back.tensors();
  tensors.pop_back();
  CHECK_THROWS_WITH(save_parameters(out, back.parameters(), tensors),
                    Contains("the tensors cover") && Contains("expected " + std::to_string(back.num_params())));
}

// ------------------------------------------------------------------------------------------------
// NumPy interchange

TEST_CASE("export_npy/import_npy round-trip bitwise (FashionCnn<double>, Mlp<float>)", "[io][npy]") {
  test::TempDir dir("npy");
  const auto cnn = initialized(fashion_cnn<double>(), 7);
  export_npy(cnn, dir.file("cnn"));
  for (const TensorInfo& t : cnn.tensors()) CHECK(std::filesystem::exists(dir.file("cnn/" + t.name + ".npy")));
  auto cnn2 = fashion_cnn<double>();
  import_npy(cnn2, dir.file("cnn"));
  CHECK(bitwise_equal(cnn.parameters(), cnn2.parameters()));

  const auto net = initialized(mlp<float>(), 8);
  export_npy(net, dir.file("mlp"));
  auto net2 = mlp<float>();
  import_npy(net2, dir.file("mlp"));
  CHECK(bitwise_equal(net.parameters(), net2.parameters()));

  // xtensor reads the exported files with the PyTorch shapes
  const auto w = xt::load_npy<double>(dir.file("cnn/0.weight.npy"));
  REQUIRE(w.dimension() == 4);
  CHECK(w.shape()[0] == 6);
  CHECK(w.shape()[1] == 1);
  CHECK(w.shape()[2] == 5);
  CHECK(w.shape()[3] == 5);
  CHECK(w(2, 0, 3, 4) == cnn.parameters()[2 * 25 + 3 * 5 + 4]);

  // float32 files import into a double model (converted exactly)
  auto net_d = mlp<double>();
  import_npy(net_d, dir.file("mlp"));
  CHECK(net_d.parameters() == net.parameters().cast<double>());
}

TEMPLATE_TEST_CASE("an exported dense weight is W[out, in] as the forward pass computes it", "[io][npy]", float,
                   double) {
  using S = TestType;
  using Net = Sequential<S, Dense<S>>;
  Net net(Shape{5, 1, 1}, Dense<S>(3));
  Rng rng(9);
  net.init(rng);
  test::TempDir dir("dense");
  export_npy(net, dir.path.string());
  const auto w = xt::load_npy<S>(dir.file("0.weight.npy"));
  const auto b = xt::load_npy<S>(dir.file("0.bias.npy"));
  REQUIRE(w.dimension() == 2);
  REQUIRE(w.shape()[0] == 3);
  REQUIRE(w.shape()[1] == 5);
  REQUIRE(b.dimension() == 1);
  REQUIRE(b.shape()[0] == 3);
  // W(:, j) = f(e_j) - f(0) with f(x) = W x + b
  const Matrix<S> zero = Matrix<S>::Zero(5, 1);
  const Vector<S> bias = net.forward(zero).col(0);
  for (Index j = 0; j < 5; ++j) {
    Matrix<S> e = Matrix<S>::Zero(5, 1);
    e(j, 0) = S(1);
    const Vector<S> col = net.forward(e).col(0) - bias;
    for (Index i = 0; i < 3; ++i) {
      CHECK(double(w(std::size_t(i), std::size_t(j))) == Approx(double(col[i])).margin(1e-6));
      CHECK(b(std::size_t(i)) == bias[i]);
    }
  }
}

TEST_CASE("import_npy rejects shape mismatches, missing files and truncated data", "[io][npy]") {
  test::TempDir dir("npybad");
  const auto net = initialized(mlp<float>(Shape{20, 1, 1}, 4, 8), 10);
  export_npy(net, dir.path.string());
  // the files of another (smaller) architecture
  auto other = mlp<float>(Shape{20, 1, 1}, 4, 6);
  CHECK_THROWS_WITH(import_npy(other, dir.path.string()),
                    Contains("0.weight.npy' has shape (8, 20), expected (6, 20) for tensor '0.weight'"));
  CHECK(other.parameters().isZero());

  auto same = mlp<float>(Shape{20, 1, 1}, 4, 8);
  std::filesystem::remove(dir.file("3.bias.npy"));
  CHECK_THROWS_WITH(import_npy(same, dir.path.string()),
                    Contains("missing file '" + dir.file("3.bias.npy") + "' for tensor '3.bias' of shape (4,)"));
  CHECK(same.parameters().isZero());  // untouched: the other tensors were staged only

  // a truncated file (xt::load_npy would silently read garbage here)
  export_npy(net, dir.path.string());
  const std::string w = dir.file("0.weight.npy");
  std::filesystem::resize_file(w, std::filesystem::file_size(w) - 3);
  CHECK_THROWS_WITH(import_npy(same, dir.path.string()),
                    Contains("wrong data length") && Contains("needs 640 bytes, the file holds 637 (truncated)"));
}

TEST_CASE("load_npy_dataset reads uint8/float inputs and int labels of several dtypes", "[io][npy]") {
  test::TempDir dir("npyds");
  // 4 samples of shape 1 x 2 x 3, values k = 0..23
  xt::xarray<std::uint8_t> x8 = xt::zeros<std::uint8_t>({4, 2, 3});
  xt::xarray<float> xf = xt::zeros<float>({4, 6});
  for (std::size_t k = 0; k < 24; ++k) {
    x8.data()[k] = std::uint8_t(10 * k);
    xf.data()[k] = float(k) / 8.0f;
  }
  xt::dump_npy(dir.file("x8.npy"), x8);
  xt::dump_npy(dir.file("xf.npy"), xf);
  xt::xarray<std::int64_t> y64 = {2, 0, 1, 2};
  xt::xarray<std::int32_t> y32 = {2, 0, 1, 2};
  xt::xarray<std::uint8_t> y8 = {2, 0, 1, 2};
  xt::dump_npy(dir.file("y64.npy"), y64);
  xt::dump_npy(dir.file("y32.npy"), y32);
  xt::dump_npy(dir.file("y8.npy"), y8);

  const Shape shape{1, 2, 3};
  for (const char* labels : {"y64.npy", "y32.npy", "y8.npy"}) {
    INFO(labels);
    const Dataset<float> d = load_npy_dataset<float>(dir.file("x8.npy"), dir.file(labels), shape, 3);
    REQUIRE(d.size() == 4);
    CHECK(d.shape == shape);
    CHECK(d.labels[0] == 2);
    CHECK(d.labels[1] == 0);
    CHECK(d.labels[3] == 2);
    for (Index s = 0; s < 4; ++s)
      for (Index f = 0; f < 6; ++f) CHECK(d.inputs(f, s) == float(10 * (6 * s + f)) / 255.0f);
  }
  const Dataset<double> df = load_npy_dataset<double>(dir.file("xf.npy"), dir.file("y64.npy"), shape, 3);
  CHECK(df.inputs(4, 2) == double(16) / 8.0);

  // Fortran-ordered arrays are reordered to C order
  xt::xarray<float, xt::layout_type::column_major> xc = xf;
  xt::dump_npy(dir.file("xc.npy"), xc);
  const Dataset<float> dc = load_npy_dataset<float>(dir.file("xc.npy"), dir.file("y8.npy"), shape, 3);
  CHECK(dc.inputs == df.inputs.cast<float>());

  CHECK_THROWS_WITH(load_npy_dataset<float>(dir.file("x8.npy"), dir.file("y8.npy"), Shape{1, 3, 2}, 3),
                    Contains("has shape (4, 2, 3), expected [n, ...] with samples of shape [1x3x2]"));
  CHECK_THROWS_WITH(load_npy_dataset<float>(dir.file("x8.npy"), dir.file("y8.npy"), shape, 2),
                    Contains("expected labels in [0, 2), got 2 at sample 0"));
  xt::xarray<std::int64_t> y3 = {1, 1, 1};
  xt::dump_npy(dir.file("y3.npy"), y3);
  CHECK_THROWS_WITH(load_npy_dataset<float>(dir.file("x8.npy"), dir.file("y3.npy"), shape, 3),
                    Contains("has 3 labels, expected 4"));
  CHECK_THROWS_WITH(load_npy_dataset<float>(dir.file("y64.npy"), dir.file("y8.npy"), shape, 3),
                    Contains("has dtype '<i8' (int64), expected float32, float64 or uint8 inputs"));
  CHECK_THROWS_WITH(load_npy_dataset<float>(dir.file("nothing.npy"), dir.file("y8.npy"), shape, 3),
                    Contains("nothing.npy' for reading (no such file)"));
}
