// fedmoe-embedded-inference: batch-1 inference of the paper's Fashion CNN on a small device.
//   fedmoe-embedded-inference [--no-prepare] WEIGHTS IMAGES [LABELS]
// WEIGHTS: the model in the library's checksummed format (save_model; fedmoe-train-for-device writes one).
// IMAGES:  an uncompressed IDX file of 28 x 28 byte images (magic 0x803); LABELS: its IDX labels (0x801).
// Prints each image's class (and the accuracy with LABELS), and how many heap allocations the inference
// made after model.prepare(1): none is the contract, and a non-zero count is a failure (exit 1).
// --no-prepare skips prepare(1), to see the count at work: the first forward pass then allocates.
//
// What makes it small (the README's "Embedded inference"): built with -Os -fno-exceptions -fno-rtti
// -ffunction-sections -fdata-sections -Wl,--gc-sections and statically linked; files are read with
// fread, never iostreams; fedmoe's error messages are built without iostreams (core/error.hpp); and this
// program, which cannot throw, replaces libstdc++'s verbose terminate handler (whose name demangler is
// ~27 KB) with abort. Allocations are counted by wrapping malloc, calloc and realloc at link time
// (-Wl,--wrap=..., GNU ld; FEDMOE_COUNT_ALLOCATIONS).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <fedmoe/io/serialization.hpp>
#include <fedmoe/models/paper.hpp>

#if defined(FEDMOE_COUNT_ALLOCATIONS)
static long g_allocations = 0;
extern "C" {
void* __real_malloc(std::size_t);
void* __real_calloc(std::size_t, std::size_t);
void* __real_realloc(void*, std::size_t);
void* __wrap_malloc(std::size_t n) { return ++g_allocations, __real_malloc(n); }
void* __wrap_calloc(std::size_t n, std::size_t size) { return ++g_allocations, __real_calloc(n, size); }
void* __wrap_realloc(void* p, std::size_t n) { return ++g_allocations, __real_realloc(p, n); }
}
#endif

#if !defined(__cpp_exceptions) && !defined(__EXCEPTIONS) && defined(__GLIBCXX__)
namespace __gnu_cxx {
void __verbose_terminate_handler() { std::abort(); }
}  // namespace __gnu_cxx
#endif

namespace {

[[noreturn]] void on_error(const char* message) {
  std::fprintf(stderr, "fedmoe-embedded-inference: %s\n", message);
  std::exit(2);
}

/// The whole file, or an error naming it.
std::vector<unsigned char> read_file(const char* path) {
  std::FILE* f = std::fopen(path, "rb");
  if (!f) {
    std::fprintf(stderr, "fedmoe-embedded-inference: cannot open '%s' for reading\n", path);
    std::exit(2);
  }
  std::vector<unsigned char> bytes;
  unsigned char buf[4096];
  for (std::size_t got; (got = std::fread(buf, 1, sizeof buf, f)) > 0;) bytes.insert(bytes.end(), buf, buf + got);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) {
    std::fprintf(stderr, "fedmoe-embedded-inference: error while reading '%s'\n", path);
    std::exit(2);
  }
  return bytes;
}

std::uint32_t be32(const unsigned char* p) {
  return std::uint32_t(p[0]) << 24 | std::uint32_t(p[1]) << 16 | std::uint32_t(p[2]) << 8 | std::uint32_t(p[3]);
}

/// The item count of an uncompressed IDX file with `magic` whose items are `item_bytes` each (images:
/// also 28 x 28), checked against the file size; exits with a message naming what differs.
std::uint32_t idx_count(const std::vector<unsigned char>& f, const char* path, std::uint32_t magic,
                        std::uint32_t header, std::uint64_t item_bytes) {
  const auto fail = [&](const char* what, std::uint64_t expected, std::uint64_t got) {
    std::fprintf(stderr, "fedmoe-embedded-inference: '%s': expected %s %llu, got %llu\n", path, what,
                 static_cast<unsigned long long>(expected), static_cast<unsigned long long>(got));
    std::exit(2);
  };
  if (f.size() < header) fail("an IDX header of bytes", header, f.size());
  if (be32(f.data()) != magic) fail("the IDX magic number", magic, be32(f.data()));
  if (header == 16 && (be32(f.data() + 8) != 28 || be32(f.data() + 12) != 28))
    fail("28 x 28 images, rows x cols =", 28 * 28, std::uint64_t(be32(f.data() + 8)) * be32(f.data() + 12));
  const std::uint32_t n = be32(f.data() + 4);
  if (f.size() - header != n * item_bytes) fail("a file size of bytes", header + n * item_bytes, f.size());
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace fedmoe;
  set_error_handler(&on_error);
  const bool prepare = !(argc > 1 && std::strcmp(argv[1], "--no-prepare") == 0);
  if (!prepare) --argc, ++argv;
  if (argc < 3 || argc > 4) {
    std::fprintf(stderr, "usage: fedmoe-embedded-inference [--no-prepare] WEIGHTS IMAGES [LABELS]\n");
    return 2;
  }
  auto model = fashion_cnn<float>(10);
  load_model(std::span<const unsigned char>(read_file(argv[1])), model);  // checksum, names and shapes checked
  const std::vector<unsigned char> images = read_file(argv[2]);
  const std::uint32_t n = idx_count(images, argv[2], 0x00000803u, 16, 784);
  std::vector<unsigned char> labels;
  if (argc == 4) {
    labels = read_file(argv[3]);
    const std::uint32_t nl = idx_count(labels, argv[3], 0x00000801u, 8, 1);
    if (nl != n) {
      std::fprintf(stderr, "fedmoe-embedded-inference: expected %u labels (one per image), got %u\n", n, nl);
      return 2;
    }
  }

  // Printed before the count starts: stdio allocates its buffer on the first output.
  std::printf("%u images of 28 x 28, the Fashion CNN's %ld weights from '%s'\n", n, long(model.num_params()), argv[1]);
  Matrix<float> x(784, 1);
  if (prepare) model.prepare(1);
#if defined(FEDMOE_COUNT_ALLOCATIONS)
  const long allocations_before = g_allocations;
#endif
  std::uint32_t correct = 0;
  for (std::uint32_t i = 0; i < n; ++i) {
    const unsigned char* pixels = images.data() + 16 + std::size_t(i) * 784;
    for (Index k = 0; k < 784; ++k) x(k, 0) = float(pixels[k]) / 255.0f;
    const Matrix<float>& logits = model.forward(x);
    Index cls = 0;
    logits.col(0).maxCoeff(&cls);
    if (!labels.empty()) correct += labels[8 + i] == cls;
    if (i < 10) std::printf("image %u: class %d\n", i, int(cls));
  }
#if defined(FEDMOE_COUNT_ALLOCATIONS)
  const long allocations = g_allocations - allocations_before;
  std::printf("%u images classified; heap allocations after %s: %ld\n", n, prepare ? "prepare(1)" : "loading",
              allocations);
#else
  const long allocations = 0;
  std::printf("%u images classified (allocations not counted in this build)\n", n);
#endif
  if (!labels.empty()) std::printf("accuracy: %.1f%% (%u of %u)\n", 100.0 * correct / (n ? n : 1), correct, n);
  return allocations == 0 ? 0 : 1;
}
