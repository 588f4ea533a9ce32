// Issue 16, section 1, item 4 in fedmoe-paper (examples/paper_experiment.hpp): outputs are checked before
// any work, every write is checked (a full disk is an error), and no half-written file is ever left under
// the final name. The other items: test_reliability_flags.cpp.
#include "cifar_files.hpp"
#include "reliability_flags.hpp"

using namespace reliability_test;

// ---- item 4: outputs ----

TEST_CASE("an output that cannot be created is refused before any work, and the check leaves nothing",
          "[reliability][paper]") {
  TempDir dir;
  CHECK_THROWS_WITH(OutputFile("--json", (dir.path / "missing" / "r.json").string()).check(),
                    Contains("--json: the directory '" + (dir.path / "missing").string() + "' of '") &&
                        Contains("' does not exist"));
  CHECK_THROWS_WITH(OutputFile("--csv", dir.path.string()).check(), Contains("is a directory, expected a file name"));
  CHECK_NOTHROW(OutputFile("--json", (dir.path / "r.json").string()).check());
  CHECK(dir.entries().empty());  // the probe's temporary file is gone
  if (::geteuid() != 0) {  // root may write anywhere
    fs::create_directory(dir.path / "ro");
    fs::permissions(dir.path / "ro", fs::perms::owner_read | fs::perms::owner_exec);
    CHECK_THROWS_WITH(OutputFile("--json", (dir.path / "ro" / "r.json").string()).check(),
                      Contains("cannot create files in the directory"));
    fs::permissions(dir.path / "ro", fs::perms::owner_all);
  }
  // run_experiment checks the outputs before it even looks for the data.
  Options o;
  o.data = (dir.path / "no-data").string();
  o.json = (dir.path / "missing" / "r.json").string();
  CHECK_THROWS_WITH(run_experiment(Runtime{}, o), Contains("does not exist"));
  o.json.clear();
  o.csv = (dir.path / "r.csv").string();
  o.plot = (dir.path / "r.txt").string();
  CHECK_THROWS_WITH(check_outputs(o), Contains("--plot: expected a file name ending in .png or .svg"));
  o.plot.clear();
  o.json = o.csv;
  CHECK_THROWS_WITH(check_outputs(o), Contains("--json and --csv both name the file"));
}

TEST_CASE("outputs are written atomically and a failed write is an error", "[reliability][paper]") {
  TempDir dir;
  const fs::path file = dir.path / "r.json";
  OutputFile("--json", file.string()).write("first\n");
  CHECK(read(file) == "first\n");
  CHECK(dir.entries() == std::set<std::string>{"r.json"});
  const mode_t mask = ::umask(0);
  ::umask(mask);
  CHECK((fs::status(file).permissions() & fs::perms::all) == fs::perms(0666 & ~mask));
  // A write that fails half-way leaves the old file as it was and no temporary behind.
  CHECK_THROWS_WITH(OutputFile("--json", file.string()).write_with([](int fd) {
    REQUIRE(::write(fd, "half", 4) == 4);
    FEDMOE_FAIL("simulated failure");
  }),
                    Contains("simulated failure"));
  CHECK(read(file) == "first\n");
  CHECK(dir.entries() == std::set<std::string>{"r.json"});
  // A full disk.
  if (fs::exists("/dev/full")) {
    CHECK_THROWS_WITH(OutputFile("--json", "/dev/full").write(std::string(1 << 16, 'x')),
                      Contains("--json: writing '/dev/full' failed: No space left on device"));
    CHECK(fs::is_character_file("/dev/full"));  // written in place, never renamed over
    // Every output is tried; the error names each failure.
    Options o;
    o.json = "/dev/full";
    o.csv = (dir.path / "r.csv").string();
    o.methods = {"global"};
    const std::vector<Row> rows = some_rows(o);
    CHECK_THROWS_WITH(write_outputs(Runtime{}, o, rows, {}, 1.0, 1024),
                      Contains("--json: writing '/dev/full' failed: No space left on device"));
    CHECK(read(dir.path / "r.csv").rfind("p,opt_out,group,method", 0) == 0);
  }
}


// ---- issue 17: fedmoe-paper on CIFAR-10 and CIFAR-100 (files in the official format, cifar_files.hpp) ----
// Runs of run_experiment (compiled once, in examples/paper_experiment.cpp). The flag checks are in
// test_reliability_flags.cpp.

namespace {

/// A short federation of 6 clients (3 per round, 2 rounds) on `data`: small enough for the sanitizers.
Options short_cifar_run(const std::string& dataset, const fs::path& data, const fs::path& json) {
  Options o;
  o.dataset = dataset;
  o.data = data.string();
  o.clients = 6;
  o.clients_per_round = 3;
  o.n_train = 10;
  o.n_val = 4;
  o.n_test = 10;
  o.p = {0.5};
  o.opt_out = {0};
  o.rounds = 2;
  o.check_every = 1;
  o.max_epochs = 2;
  o.epoch_check = 1;
  o.global_test = 20;
  o.threads = 1;
  o.methods = {"global"};
  o.json = json.string();
  return o;
}

}  // namespace

TEST_CASE("fedmoe-paper runs a short federation on CIFAR-10 and CIFAR-100 files and writes its JSON",
          "[reliability][paper][cifar]") {
  TempDir dir;
  SECTION("CIFAR-10, the CIFAR CNN and its gate") {
    cifar_test::write_cifar10_dir(dir.path / "cifar-10-batches-bin", 40, 100);  // 20 training images per class
    Options o = short_cifar_run("cifar10", dir.path, dir.path / "r.json");  // the tarball's parent directory
    o.methods = {"global", "mixture"};
    REQUIRE(run_experiment(Runtime{}, o) == 0);
    const nlohmann::json j = nlohmann::json::parse(read(dir.path / "r.json"));
    CHECK(j["config"]["dataset"] == "cifar10");
    CHECK(j["config"]["model"] == "cnn");
    CHECK(j["config"]["data"] == dir.path.string());
    // The CIFAR CNN and gate of the paper (PAPER.md's parameter counts), for the data's shape.
    CHECK(j["data"] == nlohmann::json{{"train_samples", 200}, {"test_samples", 100}, {"sample_shape", {3, 32, 32}},
                                      {"classes", 10}});
    CHECK(j["model"]["name"] == "cifar_cnn");
    CHECK(j["model"]["input_shape"] == nlohmann::json::array({3, 32, 32}));
    CHECK(j["model"]["parameters"] == 62006);
    CHECK(j["model"]["gate_parameters"] == 61241);
    REQUIRE(j["results"].size() == 2);  // global and mixture at p 0.5
    CHECK(j["results"][1]["method"] == "mixture");
    CHECK(j["results"][1]["clients"] == 6);
    REQUIRE(j["federation"].size() == 1);
    CHECK(j["federation"][0]["rounds"] == 2);
    CHECK(j["federation"][0]["per_round"]["used"] == nlohmann::json::array({3, 3}));
  }
  SECTION("CIFAR-100: the model has the dataset's classes (100 fine, or 20 coarse)") {
    cifar_test::write_cifar100_dir(dir.path, 1000, 500);  // 10 training, 5 test images per fine class
    for (const char* labels : {"fine", "coarse"}) {
      INFO(labels);
      Options o = short_cifar_run("cifar100", dir.path, dir.path / "r.json");
      o.cifar100_labels = labels;
      o.p = {1.0};  // majority classes only: labels of 100 (or 20) classes all reach the model
      REQUIRE(run_experiment(Runtime{}, o) == 0);
      const nlohmann::json j = nlohmann::json::parse(read(dir.path / "r.json"));
      CHECK(j["config"]["dataset"] == "cifar100");
      CHECK(j["config"]["cifar100_labels"] == labels);
      // The classifier has the dataset's classes: 84 x C + C parameters in its last layer.
      const int classes = std::string(labels) == "fine" ? 100 : 20;
      CHECK(j["data"]["classes"] == classes);
      CHECK(j["model"]["classes"] == classes);
      CHECK(j["model"]["parameters"] == 62006 - 85 * 10 + 85 * classes);
      REQUIRE(j["results"].size() == 1);
      CHECK(j["results"][0]["clients"] == 6);
    }
    // 100 fine classes: a client's pair at p = 1 needs 5 training images of each; 6 clients x 2 classes
    // of 10 images each fit, 60 training images per client do not.
    Options o = short_cifar_run("cifar100", dir.path, dir.path / "r.json");
    o.n_train = 60;
    o.p = {1.0};
    CHECK_THROWS_WITH(run_experiment(Runtime{}, o), Contains("p = 1"));
  }
}

TEST_CASE("fedmoe-paper refuses CIFAR runs without their data before any work, naming what is missing",
          "[reliability][paper][cifar]") {
  TempDir dir;
  Options o = short_cifar_run("cifar10", dir.path / "none", dir.path / "r.json");
  CHECK(run_experiment(Runtime{}, o) == 2);  // no such directory: says where to get the data
  o.data = fashion_mnist_dir;
  CHECK_THROWS_WITH(run_experiment(Runtime{}, o), Contains("--dataset cifar10 needs --data DIR"));
  cifar_test::write_cifar10_dir(dir.path, 40, 100);
  fs::remove(dir.path / "data_batch_5.bin");
  o.data = dir.path.string();
  CHECK_THROWS_WITH(run_experiment(Runtime{}, o),
                    Contains("load_cifar10: missing file '" + (dir.path / "data_batch_5.bin").string() + "'"));
  CHECK(!fs::exists(dir.path / "r.json"));
}

TEST_CASE("fedmoe-paper --model cnn refuses images of another shape than 1x28x28 or 3x32x32",
          "[reliability][paper][cifar]") {
  // MNIST-format IDX files (--dataset idx) of 14 x 56 images: as many pixels as 28 x 28, another shape.
  TempDir dir;
  const auto be32 = [](std::vector<unsigned char>& out, std::uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<unsigned char>(v >> shift));
  };
  for (const char* split : {"train", "t10k"}) {
    std::vector<unsigned char> images, labels;
    be32(images, 0x00000803);
    be32(labels, 0x00000801);
    for (std::uint32_t v : {20u, 14u, 56u}) be32(images, v);
    be32(labels, 20);
    images.resize(images.size() + 20 * 14 * 56, 7);
    for (unsigned char i = 0; i < 20; ++i) labels.push_back(i % 10);
    // Plain IDX bytes under the .gz names: zlib reads uncompressed files as they are.
    cifar_test::write_file(dir.path / (std::string(split) + "-images-idx3-ubyte.gz"), images);
    cifar_test::write_file(dir.path / (std::string(split) + "-labels-idx1-ubyte.gz"), labels);
  }
  Options o = short_cifar_run("idx", dir.path, dir.path / "r.json");
  for (const char* model : {"cnn", "mlp"}) {
    INFO(model);
    o.model = model;
    CHECK_THROWS_WITH(run_experiment(Runtime{}, o),
                      Contains(std::string("--model ") + model + " takes samples of shape [1x28x28]") &&
                          Contains("or [3x32x32]") && Contains("has training samples of shape [1x14x56]"));
  }
  CHECK(!fs::exists(dir.path / "r.json"));
}
