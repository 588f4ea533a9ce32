#pragma once
// The output files of fedmoe-paper (--json, --csv, --plot) and the gnuplot process behind --plot.
//
// OutputFile::check() runs before any work: the path is not a directory, its directory exists and
// accepts a new file (a temporary file is created there and removed again), and a file already there
// may be replaced; so an unwritable path fails in a second, not after an hour of training.
//
// OutputFile::write() runs at the end and never leaves a half-written file under the final name: the
// bytes go to a temporary file in the same directory (".NAME.fedmoe-XXXXXX"), every write is checked,
// the file is flushed to disk (fsync), closed (checked: NFS reports errors there) and renamed over the
// final name, atomically; on any failure the temporary is removed and fedmoe::Error names the flag, the
// path and the system's reason. A path that names an existing special file (/dev/stdout, /dev/null,
// /dev/full, a FIFO) cannot be replaced by a rename and is written in place, every write checked, so
// --json /dev/full fails with "No space left on device" instead of exiting 0.
//
// run_gnuplot() starts `gnuplot` from PATH with a fixed argument list (posix_spawnp: no shell), the
// script on its standard input and its standard output into a given file: nothing the user typed is
// ever part of a command line or of the script.
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <system_error>

#include <fedmoe/core/error.hpp>

extern char** environ;

namespace fedmoe_paper {

namespace output_detail {

inline std::string reason(int err) { return std::generic_category().message(err); }

/// Writes all of `bytes` to `fd` (retrying short writes and EINTR); false with errno set on failure.
inline bool write_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

/// A temporary file ".NAME.fedmoe-XXXXXX" next to `target`, removed on destruction unless released.
class TempFile {
public:
  explicit TempFile(const std::filesystem::path& target) {
    const std::filesystem::path dir = target.has_parent_path() ? target.parent_path() : ".";
    m_path = (dir / ("." + target.filename().string() + ".fedmoe-XXXXXX")).string();
    m_fd = ::mkostemp(m_path.data(), O_CLOEXEC);
    m_errno = errno;
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile() {
    if (m_fd >= 0) ::close(m_fd);
    if (m_fd >= 0 || m_closed) ::unlink(m_path.c_str());
  }

  bool ok() const { return m_fd >= 0; }
  int error() const { return m_errno; }
  int fd() const { return m_fd; }
  const std::string& path() const { return m_path; }
  /// Closes the descriptor; false (errno set) if close reports an error. The file stays until released.
  bool close() {
    const int rc = ::close(m_fd);
    m_fd = -1;
    m_closed = true;
    return rc == 0;
  }
  /// The file now lives under another name: do not remove it.
  void release() { m_closed = false; }

private:
  std::string m_path;
  int m_fd = -1;
  int m_errno = 0;
  bool m_closed = false;
};

/// The permission bits a new file gets here: 0666 minus the umask (mkostemp creates 0600).
inline mode_t new_file_mode() {
  const mode_t mask = ::umask(0);
  ::umask(mask);
  return static_cast<mode_t>(0666 & ~mask);
}

}  // namespace output_detail

/// An output file named by a flag: checked before any work, written atomically at the end.
class OutputFile {
public:
  OutputFile(std::string flag, std::string path) : m_flag(std::move(flag)), m_path(std::move(path)) {}

  const std::string& flag() const { return m_flag; }
  const std::string& path() const { return m_path; }

  /// The file that is written: the path, or the file a symbolic link names (the link is kept).
  std::filesystem::path target() const {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (fs::is_symlink(fs::symlink_status(m_path, ec))) {
      const fs::path resolved = fs::weakly_canonical(m_path, ec);
      if (!ec) return resolved;
    }
    return fs::path(m_path);
  }

  /// Throws unless the file can be written (see the file comment); creates nothing that stays.
  void check() const {
    namespace fs = std::filesystem;
    FEDMOE_CHECK(!m_path.empty(), m_flag, ": expected a file name, got an empty one");
    const fs::path file = target();
    std::error_code ec;
    const fs::file_status st = fs::status(file, ec);
    FEDMOE_CHECK(!fs::is_directory(st), m_flag, ": '", m_path, "' is a directory, expected a file name");
    if (fs::exists(st)) {
      FEDMOE_CHECK(::access(file.c_str(), W_OK) == 0, m_flag, ": '", m_path, "' exists and cannot be written: ",
                   output_detail::reason(errno));
      if (!fs::is_regular_file(st)) return;  // a device or a FIFO: written in place
    }
    const fs::path dir = file.has_parent_path() ? file.parent_path() : fs::path(".");
    FEDMOE_CHECK(fs::is_directory(dir, ec), m_flag, ": the directory '", dir.string(), "' of '", m_path,
                 "' does not exist");
    output_detail::TempFile probe(file);
    FEDMOE_CHECK(probe.ok(), m_flag, ": cannot create files in the directory '", dir.string(), "' of '", m_path,
                 "': ", output_detail::reason(probe.error()));
  }

  /// Writes `bytes` as the whole file (see the file comment).
  void write(std::string_view bytes) const {
    write_with([&](int fd) {
      FEDMOE_CHECK(output_detail::write_all(fd, bytes), m_flag, ": writing '", m_path,
                   "' failed: ", output_detail::reason(errno));
    });
  }

  /// Writes whatever `produce(fd)` writes into `fd` as the whole file, atomically as write(); `produce`
  /// throws on failure (the temporary is then removed and the final name left as it was).
  void write_with(const std::function<void(int)>& produce) const {
    namespace fs = std::filesystem;
    const fs::path file = target();
    std::error_code ec;
    const fs::file_status st = fs::status(file, ec);
    if (fs::exists(st) && !fs::is_regular_file(st)) {  // /dev/stdout, /dev/full, a FIFO: in place
      const int fd = ::open(file.c_str(), O_WRONLY | O_CLOEXEC);
      FEDMOE_CHECK(fd >= 0, m_flag, ": cannot open '", m_path, "' for writing: ", output_detail::reason(errno));
      try {
        produce(fd);
      } catch (...) {
        ::close(fd);
        throw;
      }
      FEDMOE_CHECK(::close(fd) == 0, m_flag, ": writing '", m_path, "' failed: ", output_detail::reason(errno));
      return;
    }
    output_detail::TempFile tmp(file);
    FEDMOE_CHECK(tmp.ok(), m_flag, ": cannot create a temporary file next to '", m_path,
                 "': ", output_detail::reason(tmp.error()));
    const mode_t mode = fs::exists(st) ? static_cast<mode_t>(st.permissions() & fs::perms::mask)
                                       : output_detail::new_file_mode();
    FEDMOE_CHECK(::fchmod(tmp.fd(), mode) == 0, m_flag, ": cannot set the permissions of '", tmp.path(),
                 "': ", output_detail::reason(errno));
    produce(tmp.fd());
    FEDMOE_CHECK(::fsync(tmp.fd()) == 0, m_flag, ": writing '", m_path, "' failed: ", output_detail::reason(errno));
    FEDMOE_CHECK(tmp.close(), m_flag, ": writing '", m_path, "' failed: ", output_detail::reason(errno));
    FEDMOE_CHECK(::rename(tmp.path().c_str(), file.c_str()) == 0, m_flag, ": cannot rename '", tmp.path(),
                 "' to '", m_path, "': ", output_detail::reason(errno));
    tmp.release();
    // Make the rename itself durable (best effort: some file systems cannot fsync a directory).
    const fs::path dir = file.has_parent_path() ? file.parent_path() : fs::path(".");
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      (void)::fsync(dfd);
      ::close(dfd);
    }
  }

private:
  std::string m_flag, m_path;
};

/// Runs `gnuplot` (from PATH, no arguments, no shell) with `script` on its standard input and its
/// standard output into `out_fd` (-1: /dev/null; with `quiet` its standard error too). Throws unless it
/// starts and exits with status 0; `what` says what it was for in the message.
inline void run_gnuplot(const std::string& script, int out_fd, const std::string& what, bool quiet = false) {
  std::FILE* in = std::tmpfile();  // the script, read by gnuplot from the start
  FEDMOE_CHECK(in != nullptr, what, ": cannot create a temporary file for the gnuplot script: ",
               output_detail::reason(errno));
  struct CloseFile {
    std::FILE* f;
    ~CloseFile() { std::fclose(f); }
  } close_in{in};
  FEDMOE_CHECK(std::fwrite(script.data(), 1, script.size(), in) == script.size() && std::fflush(in) == 0 &&
                   std::fseek(in, 0, SEEK_SET) == 0,
               what, ": cannot write the gnuplot script to a temporary file: ", output_detail::reason(errno));

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  struct Destroy {
    posix_spawn_file_actions_t* a;
    ~Destroy() { posix_spawn_file_actions_destroy(a); }
  } destroy{&actions};
  posix_spawn_file_actions_adddup2(&actions, fileno(in), STDIN_FILENO);
  if (out_fd >= 0) posix_spawn_file_actions_adddup2(&actions, out_fd, STDOUT_FILENO);
  else posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  if (quiet) posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  char name[] = "gnuplot";
  char* argv[] = {name, nullptr};
  pid_t pid = -1;
  const int rc = ::posix_spawnp(&pid, "gnuplot", &actions, nullptr, argv, environ);
  FEDMOE_CHECK(rc != ENOENT, what, ": gnuplot not found on PATH (Debian: apt-get install gnuplot-nox)");
  FEDMOE_CHECK(rc == 0, what, ": cannot start gnuplot: ", output_detail::reason(rc));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    FEDMOE_CHECK(errno == EINTR, what, ": waiting for gnuplot failed: ", output_detail::reason(errno));
  FEDMOE_CHECK(!(WIFEXITED(status) && WEXITSTATUS(status) == 127), what,
               ": gnuplot not found on PATH (Debian: apt-get install gnuplot-nox)");
  FEDMOE_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, what, ": gnuplot failed (",
               WIFEXITED(status) ? "exit status " : "killed by signal ",
               WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), ")");
}

}  // namespace fedmoe_paper
