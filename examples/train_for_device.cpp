// fedmoe-train-for-device: the host half of examples/embedded_inference.cpp. Trains the paper's Fashion CNN
// on part of Fashion-MNIST (Debian's dataset-fashion-mnist) and writes what a device needs:
//   OUT/fashion_cnn.fmoe   the weights, in the library's checksummed format (save_model)
//   OUT/images.idx         the first N test images, an uncompressed IDX file (magic 0x803, 28 x 28 bytes)
//   OUT/labels.idx         their labels (magic 0x801)
// usage: fedmoe-train-for-device OUT_DIR [N = 200] [DATA_DIR = /usr/share/datasets/fashion-mnist]
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include <fedmoe/fedmoe.hpp>
#include <fedmoe/training/trainer.hpp>

namespace {

void put_be32(std::ofstream& out, std::uint32_t v) {
  const char b[4] = {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
  out.write(b, 4);
}

}  // namespace

int main(int argc, char** argv) try {
  using namespace fedmoe;
  if (argc < 2 || argc > 4) {
    std::fprintf(stderr, "usage: %s OUT_DIR [N = 200] [DATA_DIR = /usr/share/datasets/fashion-mnist]\n", argv[0]);
    return 2;
  }
  const std::filesystem::path out_dir(argv[1]);
  const long n = argc > 2 ? std::stol(argv[2]) : 200;
  const std::string data_dir = argc > 3 ? argv[3] : "/usr/share/datasets/fashion-mnist";
  FEDMOE_CHECK(n > 0 && n <= 10000, "N: expected a number of test images in [1, 10000], got ", n);
  FEDMOE_CHECK(std::filesystem::is_directory(out_dir), "OUT_DIR: expected an existing directory, got '",
               out_dir.string(), "'");

  const Dataset<float> train = load_fashion_mnist<float>(data_dir, true);
  const Dataset<float> test = load_fashion_mnist<float>(data_dir, false);
  std::vector<Index> fit_idx(6000), val_idx(1000);
  std::iota(fit_idx.begin(), fit_idx.end(), Index(0));
  std::iota(val_idx.begin(), val_idx.end(), Index(6000));
  auto model = fashion_cnn<float>(10);
  Rng rng(7);
  model.init(rng);
  Adam<float> adam(1e-3);
  const FitResult fit_result = fit(model, adam, train, fit_idx, val_idx, FitConfig{3, 1, 2, 32}, rng);
  std::vector<Index> test_idx(static_cast<std::size_t>(n));
  std::iota(test_idx.begin(), test_idx.end(), Index(0));
  const EvalResult r = evaluate(model, test, test_idx);
  save_model((out_dir / "fashion_cnn.fmoe").string(), model);

  std::ofstream images(out_dir / "images.idx", std::ios::binary), labels(out_dir / "labels.idx", std::ios::binary);
  put_be32(images, 0x00000803u);
  put_be32(images, std::uint32_t(n));
  put_be32(images, 28);
  put_be32(images, 28);
  put_be32(labels, 0x00000801u);
  put_be32(labels, std::uint32_t(n));
  for (Index j = 0; j < Index(n); ++j) {
    for (Index k = 0; k < 784; ++k) images.put(char(std::lround(test.inputs(k, j) * 255.0f)));  // x = byte / 255
    labels.put(char(test.labels[j]));
  }
  FEDMOE_CHECK(images.good() && labels.good(), "writing the images and labels to '", out_dir.string(), "' failed");
  std::printf("trained %d epochs on 6,000 images; accuracy on the first %ld test images %.1f%%; wrote %s\n",
              fit_result.epochs, n, 100 * r.accuracy, out_dir.string().c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "fedmoe-train-for-device: %s\n", e.what());
  return 1;
}
