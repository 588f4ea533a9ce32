// Tests of io/cifar.hpp: the readers of the CIFAR-10 and CIFAR-100 binary releases, on small files written
// in the official formats (cifar_files.hpp), and every bad input they refuse, by message.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

#include <fedmoe/io/cifar.hpp>

#include "cifar_files.hpp"
#include "temp_dir.hpp"

using namespace fedmoe;
using namespace cifar_test;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

/// Every value of sample j equals pixel(record, k) / 255, in C,H,W order (k = c * 1024 + h * 32 + w).
template <class S>
void check_pixels(const Dataset<S>& d, Index j, std::size_t record) {
  INFO("sample " << j << ", record " << record);
  std::size_t wrong = 0;
  for (std::size_t k = 0; k < cifar_pixels; ++k)
    if (d.inputs(Index(k), j) != S(pixel(record, k)) / S(255)) ++wrong;
  CHECK(wrong == 0);
}

}  // namespace

TEMPLATE_TEST_CASE("read_cifar_records reads CIFAR-10 and CIFAR-100 records, plain and gzip", "[io][cifar]", float,
                   double) {
  test::TempDir dir("cifar");
  const std::vector<unsigned> labels{3, 0, 9, 7};
  write_file(dir.file("c10.bin"), cifar10_records(labels));
  write_gzip(dir.file("c10.bin.gz"), cifar10_records(labels));
  REQUIRE(fs::file_size(dir.file("c10.bin.gz")) < fs::file_size(dir.file("c10.bin")));
  for (const char* name : {"c10.bin", "c10.bin.gz"}) {
    INFO(name);
    const Dataset<TestType> d = read_cifar_records<TestType>(dir.file(name), 1, 0, 10);
    REQUIRE(d.size() == 4);
    CHECK(d.shape == Shape{3, 32, 32});
    CHECK(d.inputs.rows() == 3072);
    CHECK(d.classes == 10);
    CHECK_NOTHROW(d.validate());
    for (Index j = 0; j < 4; ++j) {
      CHECK(d.labels[j] == int(labels[std::size_t(j)]));
      check_pixels(d, j, std::size_t(j));
    }
    // The record's pixel order is the tensor's: red plane, green, blue, each row-major.
    CHECK(d.inputs(1024 + 2 * 32 + 5, 1) == TestType(pixel(1, 1024 + 69)) / TestType(255));
    CHECK(d.inputs.minCoeff() >= TestType(0));
    CHECK(d.inputs.maxCoeff() <= TestType(1));
  }
  // CIFAR-100: <coarse><fine><pixels>; either byte is the label.
  write_file(dir.file("c100.bin"), records({{19, 99}, {0, 42}, {7, 0}}));
  const Dataset<TestType> fine = read_cifar_records<TestType>(dir.file("c100.bin"), 2, 1, 100);
  const Dataset<TestType> coarse = read_cifar_records<TestType>(dir.file("c100.bin"), 2, 0, 20);
  REQUIRE(fine.size() == 3);
  REQUIRE(coarse.size() == 3);
  CHECK(fine.classes == 100);
  CHECK(coarse.classes == 20);
  CHECK(fine.labels == (Labels(3) << 99, 42, 0).finished());
  CHECK(coarse.labels == (Labels(3) << 19, 0, 7).finished());
  for (Index j = 0; j < 3; ++j) check_pixels(fine, j, std::size_t(j));
  CHECK(coarse.inputs == fine.inputs);
}

TEST_CASE("load_cifar10 reads the five training batches in order and the test batch", "[io][cifar]") {
  test::TempDir dir("cifar");
  const fs::path batches = dir.path / "cifar-10-batches-bin";
  write_cifar10_dir(batches, 4, 3);
  for (const fs::path& given : {batches, dir.path}) {  // the batches' directory, or the one holding it
    INFO(given);
    const Dataset<float> train = load_cifar10<float>(given.string(), true);
    REQUIRE(train.size() == 20);
    CHECK(train.shape == Shape{3, 32, 32});
    CHECK(train.classes == 10);
    for (Index j = 0; j < 20; ++j) {
      CHECK(train.labels[j] == int(cifar10_label(std::size_t(j))));
      check_pixels(train, j, std::size_t(j));  // batch b's record i is sample 4 b + i
    }
    const Dataset<float> test = load_cifar10<float>(given.string(), false);
    REQUIRE(test.size() == 3);
    CHECK(test.labels == (Labels(3) << 0, 1, 2).finished());
    for (Index j = 0; j < 3; ++j) check_pixels(test, j, std::size_t(j));
  }
  // A gzip-compressed batch under <name>.gz reads as the plain one.
  const std::vector<unsigned char> second = cifar10_records({4, 5, 6, 7}, 4);
  fs::remove(batches / "data_batch_2.bin");
  write_gzip(batches / "data_batch_2.bin.gz", second);
  const Dataset<float> train = load_cifar10<float>(batches.string(), true);
  REQUIRE(train.size() == 20);
  for (Index j = 4; j < 8; ++j) {
    CHECK(train.labels[j] == int(j));
    check_pixels(train, j, std::size_t(j));
  }
}

TEST_CASE("load_cifar100 reads fine or coarse labels", "[io][cifar]") {
  test::TempDir dir("cifar");
  write_cifar100_dir(dir.path / "cifar-100-binary", 205, 7);
  const Dataset<float> fine = load_cifar100<float>(dir.path.string(), true);
  REQUIRE(fine.size() == 205);
  CHECK(fine.classes == 100);
  CHECK(fine.shape == Shape{3, 32, 32});
  const Dataset<float> coarse = load_cifar100<float>(dir.path.string(), true, Cifar100Labels::coarse);
  REQUIRE(coarse.size() == 205);
  CHECK(coarse.classes == 20);
  for (Index j = 0; j < 205; ++j) {
    CHECK(fine.labels[j] == int(cifar100_fine(std::size_t(j))));
    CHECK(coarse.labels[j] == int(cifar100_coarse(std::size_t(j))));
  }
  check_pixels(fine, 204, 204);
  CHECK(coarse.inputs == fine.inputs);
  const Dataset<float> test = load_cifar100<float>((dir.path / "cifar-100-binary").string(), false);
  REQUIRE(test.size() == 7);
  CHECK(test.labels[6] == 6);
  check_pixels(test, 6, 6);
}

TEST_CASE("the CIFAR readers refuse bad files naming the file, the expected and the actual value",
          "[io][cifar]") {
  test::TempDir dir("cifar");
  const std::string path = dir.file("data.bin");
  const std::vector<unsigned char> two = cifar10_records({1, 2});

  SECTION("a truncated record") {
    std::vector<unsigned char> cut(two.begin(), two.begin() + 3073 + 1000);
    write_file(path, cut);
    CHECK_THROWS_WITH(read_cifar_records<float>(path, 1, 0, 10),
                      Contains("read_cifar_records: '" + path + "' is not a whole number of 3073-byte records (1 label "
                               "byte + 3072 pixels): expected a multiple of 3073 bytes, got 4073 (1 whole records + "
                               "1000 bytes; truncated"));
  }
  SECTION("a trailing partial record") {
    std::vector<unsigned char> longer = two;
    longer.insert(longer.end(), {1, 2, 3, 4, 5});
    write_file(path, longer);
    CHECK_THROWS_WITH(read_cifar_records<float>(path, 1, 0, 10),
                      Contains("'" + path + "' is not a whole number of 3073-byte records") &&
                          Contains("expected a multiple of 3073 bytes, got 6151 (2 whole records + 5 bytes"));
  }
  SECTION("a truncated gzip stream") {
    write_gzip(path, cifar10_records({1, 2, 3, 4, 5, 6, 7, 8}));
    fs::resize_file(path, fs::file_size(path) / 2);
    CHECK_THROWS_WITH(read_cifar_records<float>(path, 1, 0, 10), Contains("'" + path + "'"));
  }
  SECTION("the wrong record size: a CIFAR-100 file read as CIFAR-10") {
    write_file(path, records({{1, 2}, {3, 4}}));  // 2 x 3074 bytes = 2 x 3073 + 2
    CHECK_THROWS_WITH(read_cifar_records<float>(path, 1, 0, 10),
                      Contains("'" + path + "' is not a whole number of 3073-byte records") &&
                          Contains("got 6148 (2 whole records + 2 bytes"));
    CHECK_NOTHROW(read_cifar_records<float>(path, 2, 1, 100));
  }
  SECTION("an empty file") {
    write_file(path, {});
    CHECK_THROWS_WITH(read_cifar_records<float>(path, 2, 1, 100),
                      Contains("read_cifar_records: '" + path + "' is empty: expected 3074-byte records (2 label "
                               "bytes + 3072 pixels), got 0 bytes"));
  }
  SECTION("label 10 in CIFAR-10") {
    write_file(path, cifar10_records({9, 10, 0}));
    CHECK_THROWS_WITH(read_cifar_records<float>(path, 1, 0, 10),
                      Contains("read_cifar_records: '" + path + "': expected labels in [0, 10), got 10 at record 1 "
                               "(byte 3073)"));
    write_cifar10_dir(dir.path, 2, 2);
    write_file(dir.path / "data_batch_5.bin", cifar10_records({3, 10}));
    CHECK_THROWS_WITH(load_cifar10<float>(dir.path.string(), true),
                      Contains("load_cifar10: '" + (dir.path / "data_batch_5.bin").string() +
                               "': expected labels in [0, 10), got 10 at record 1"));
  }
  SECTION("fine label 100 and coarse label 20 in CIFAR-100") {
    write_file(dir.path / "train.bin", records({{0, 0}, {19, 99}, {3, 100}}));
    write_file(dir.path / "test.bin", records({{0, 0}, {20, 7}}));
    const std::string train = (dir.path / "train.bin").string(), test = (dir.path / "test.bin").string();
    CHECK_THROWS_WITH(load_cifar100<float>(dir.path.string(), true),
                      Contains("load_cifar100 (fine labels): '" + train +
                               "': expected labels in [0, 100), got 100 at record 2 (byte 6149)"));
    CHECK_NOTHROW(load_cifar100<float>(dir.path.string(), true, Cifar100Labels::coarse));
    CHECK_THROWS_WITH(load_cifar100<float>(dir.path.string(), false, Cifar100Labels::coarse),
                      Contains("load_cifar100 (coarse labels): '" + test +
                               "': expected labels in [0, 20), got 20 at record 1 (byte 3074)"));
    CHECK_NOTHROW(load_cifar100<float>(dir.path.string(), false));
  }
  SECTION("a missing file, directory or batch") {
    CHECK_THROWS_WITH(read_cifar_records<float>(path, 1, 0, 10),
                      Contains("read_cifar_records: no such file '" + path + "'") &&
                          Contains("https://www.cs.toronto.edu/~kriz/cifar.html"));
    CHECK_THROWS_WITH(read_cifar_records<float>(dir.path.string(), 1, 0, 10),
                      Contains("'" + dir.path.string() + "' is a directory, expected a CIFAR binary file"));
    const std::string nowhere = (dir.path / "nowhere").string();
    CHECK_THROWS_WITH(load_cifar10<float>(nowhere, true),
                      Contains("load_cifar10: no such directory '" + nowhere +
                               "' (expected the extracted cifar-10-binary.tar.gz from "
                               "https://www.cs.toronto.edu/~kriz/cifar.html"));
    CHECK_THROWS_WITH(load_cifar100<float>(nowhere, false), Contains("load_cifar100: no such directory '" + nowhere));
    CHECK_THROWS_WITH(load_cifar100<float>(dir.path.string(), false),
                      Contains("load_cifar100: missing file '" + (dir.path / "test.bin").string() +
                               "' (expected the cifar-100-binary.tar.gz files in '" + dir.path.string() +
                               "' or in its subdirectory cifar-100-binary; get the data from https://"));
    write_cifar10_dir(dir.path, 2, 2);
    fs::remove(dir.path / "data_batch_3.bin");
    CHECK_NOTHROW(load_cifar10<float>(dir.path.string(), false));
    CHECK_THROWS_WITH(load_cifar10<float>(dir.path.string(), true),
                      Contains("load_cifar10: missing file '" + (dir.path / "data_batch_3.bin").string() +
                               "' (expected the cifar-10-binary.tar.gz files in '" + dir.path.string() + "'") &&
                          Contains("cs.toronto.edu"));
  }
  SECTION("training batches of different sizes (a batch truncated at a record boundary)") {
    write_cifar10_dir(dir.path, 3, 2);
    write_file(dir.path / "data_batch_4.bin", cifar10_records({1, 2}));
    CHECK_THROWS_WITH(load_cifar10<float>(dir.path.string(), true),
                      Contains("load_cifar10: '" + (dir.path / "data_batch_4.bin").string() + "' holds 2 records, '" +
                               (dir.path / "data_batch_1.bin").string() + "' 3: expected every training batch to hold "
                               "the same number"));
  }
  SECTION("impossible reader arguments") {
    write_file(path, two);
    CHECK_THROWS_WITH(read_cifar_records<float>(path, 3, 0, 10),
                      Contains("expected 1 (CIFAR-10) or 2 (CIFAR-100) label bytes per record, got 3"));
    CHECK_THROWS_WITH(read_cifar_records<float>(path, 1, 1, 10), Contains("expected a label byte in [0, 1), got 1"));
    CHECK_THROWS_WITH(read_cifar_records<float>(path, 1, 0, 0), Contains("expected 0 < classes <= 256"));
    CHECK_THROWS_WITH(read_cifar_records<float>(path, 1, 0, 257), Contains("got 257"));
    CHECK(read_cifar_records<float>(path, 1, 0, 3).size() == 2);  // labels 1, 2 < 3
  }
}
