// Issue 16, section 1, item 4 in fedmoe-paper (examples/paper_experiment.hpp): outputs are checked before
// any work, every write is checked (a full disk is an error), and no half-written file is ever left under
// the final name. The other items: test_reliability_flags.cpp.
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
  CHECK_THROWS_WITH(run_experiment(InProcessRuntime{}, o), Contains("does not exist"));
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
    CHECK_THROWS_WITH(write_outputs(InProcessRuntime{}, o, rows, {}, 1.0, 1024),
                      Contains("--json: writing '/dev/full' failed: No space left on device"));
    CHECK(read(dir.path / "r.csv").rfind("p,opt_out,group,method", 0) == 0);
  }
}

