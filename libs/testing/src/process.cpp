#include "engram/testing/process.h"

#include <fcntl.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <thread>

#include "engram/testing/util.h"
#include "internal.h"

extern char** environ;

namespace engram::testing {

namespace {

std::runtime_error sys_error(const std::string& what) { return std::runtime_error(what + ": " + std::strerror(errno)); }

// Closes every descriptor >= 3 in a freshly forked child (async-signal-safe).
void close_from_3() {
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, 0U) == 0) return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536) max = 65536;
    for (int fd = 3; fd < max; ++fd) close(fd);
}

}  // namespace

void ignore_sigpipe_once() {
    static const bool done = [] {
        signal(SIGPIPE, SIG_IGN);
        return true;
    }();
    (void)done;
}

std::string shell_quote(const std::string& s) {
    std::string out = "'";
    for (char c : s) {
        if (c == '\'')
            out += "'\\''";
        else
            out += c;
    }
    return out + "'";
}

std::string which(const std::string& name, const std::vector<std::string>& extra_dirs) {
    if (name.find('/') != std::string::npos) return access(name.c_str(), X_OK) == 0 ? name : "";
    std::vector<std::string> dirs;
    if (const char* path = std::getenv("PATH")) {
        std::string p = path;
        std::size_t start = 0;
        while (start <= p.size()) {
            auto end = p.find(':', start);
            if (end == std::string::npos) end = p.size();
            if (end > start) dirs.push_back(p.substr(start, end - start));
            start = end + 1;
        }
    }
    dirs.insert(dirs.end(), extra_dirs.begin(), extra_dirs.end());
    for (const auto& d : dirs) {
        std::string full = d + "/" + name;
        if (access(full.c_str(), X_OK) == 0) return full;
    }
    return "";
}

int exit_code_from_status(int status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
}

int spawn(const SpawnSpec& spec) {
    if (spec.argv.empty()) throw std::runtime_error("spawn: empty argv");
    ignore_sigpipe_once();
    // Everything the child needs is prepared before fork: after fork in a multi-threaded process
    // only async-signal-safe calls are allowed.
    std::vector<char*> argv;
    for (const auto& a : spec.argv) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    std::vector<char*> envp;
    if (spec.env) {
        for (const auto& e : *spec.env) envp.push_back(const_cast<char*>(e.c_str()));
        envp.push_back(nullptr);
    }
    std::string file = spec.argv[0];
    if (file.find('/') == std::string::npos) {
        std::string found = which(file);
        if (!found.empty()) file = found;
    }
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0) throw sys_error("open /dev/null");
    std::string exec_fail = "exec " + file + " failed\n";

    // Signals stay blocked from fork until the child has reset every handler to the default, so a
    // signal sent right after spawn never runs a handler of the test process (e.g. Catch's) in
    // the child.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = fork();
    if (pid != 0) pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (pid < 0) {
        close(devnull);
        throw sys_error("fork");
    }
    if (pid == 0) {
        for (int s = 1; s < NSIG; ++s) signal(s, SIG_DFL);
        if (spec.new_session) setsid();
        int in = spec.stdin_fd >= 0 ? spec.stdin_fd : devnull;
        int out = spec.out_fd >= 0 ? spec.out_fd : devnull;
        dup2(in, 0);
        dup2(out, 1);
        dup2(out, 2);
        close_from_3();
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);
        if (!spec.cwd.empty() && chdir(spec.cwd.c_str()) != 0) _exit(126);
        if (spec.env)
            execve(file.c_str(), argv.data(), envp.data());
        else
            execv(file.c_str(), argv.data());
        ssize_t ignored = write(2, exec_fail.data(), exec_fail.size());
        (void)ignored;
        _exit(127);
    }
    close(devnull);
    return pid;
}

int wait_exit(int pid) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return -1;
    }
    return exit_code_from_status(status);
}

int run_command(const std::vector<std::string>& argv, const std::string& cwd, const std::string& out_path) {
    int fd = open(out_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) throw sys_error("open " + out_path);
    SpawnSpec spec;
    spec.argv = argv;
    spec.cwd = cwd;
    spec.out_fd = fd;
    int pid = -1;
    try {
        pid = spawn(spec);
    } catch (...) {
        close(fd);
        throw;
    }
    close(fd);
    return wait_exit(pid);
}

bool is_root() { return geteuid() == 0; }

std::vector<std::string> as_postgres(std::vector<std::string> argv) {
    if (!is_root()) return argv;
    std::string runuser = which("runuser", {"/usr/sbin", "/sbin", "/usr/bin", "/bin"});
    if (runuser.empty()) throw std::runtime_error("running as root but runuser(1) is not installed");
    std::vector<std::string> out{runuser, "-u", "postgres", "--"};
    out.insert(out.end(), argv.begin(), argv.end());
    return out;
}

void chown_to_postgres(const std::string& path) {
    if (!is_root()) return;
    struct passwd* pw = getpwnam("postgres");
    if (!pw) throw std::runtime_error("running as root but there is no `postgres` user to run PostgreSQL as");
    std::error_code ec;
    auto change = [&](const std::filesystem::path& p) {
        if (lchown(p.c_str(), pw->pw_uid, pw->pw_gid) != 0) throw sys_error("chown " + p.string());
    };
    change(path);
    if (std::filesystem::is_directory(path, ec)) {
        for (const auto& e : std::filesystem::recursive_directory_iterator(path)) change(e.path());
    }
}

// ---------------------------------------------------------------------------------------------

Watchdog::Watchdog(const std::string& cleanup) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) throw sys_error("pipe2");
    SpawnSpec spec;
    spec.argv = {"/bin/sh", "-c", "trap '' INT HUP TERM; if read x && [ \"$x\" = done ]; then exit 0; fi; " + cleanup};
    spec.stdin_fd = fds[0];
    spec.new_session = true;
    try {
        pid_ = spawn(spec);
    } catch (...) {
        close(fds[0]);
        close(fds[1]);
        throw;
    }
    close(fds[0]);
    fd_ = fds[1];
}

Watchdog::~Watchdog() { disarm(); }

void Watchdog::disarm() {
    if (fd_ >= 0) {
        ssize_t ignored = write(fd_, "done\n", 5);
        (void)ignored;
        close(fd_);
        fd_ = -1;
    }
    if (pid_ > 0) {
        wait_exit(pid_);
        pid_ = -1;
    }
}

// ---------------------------------------------------------------------------------------------

Process::Process(std::vector<std::string> argv, std::map<std::string, std::string> env, std::string log_path)
    : argv_(std::move(argv)), log_path_(std::move(log_path)) {
    if (argv_.empty()) throw std::runtime_error("Process: empty argv");
    std::map<std::string, std::string> merged;
    for (char** e = environ; e && *e; ++e) {
        std::string kv = *e;
        auto eq = kv.find('=');
        if (eq == std::string::npos) continue;
        merged[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    for (auto& [k, v] : env) merged[k] = v;
    std::vector<std::string> envv;
    for (auto& [k, v] : merged) envv.push_back(k + "=" + v);

    int fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) throw sys_error("open " + log_path_);
    SpawnSpec spec;
    spec.argv = argv_;
    spec.env = std::move(envv);
    spec.out_fd = fd;
    try {
        pid_ = spawn(spec);
    } catch (...) {
        close(fd);
        throw;
    }
    close(fd);
    try {
        watchdog_ = std::make_unique<Watchdog>("kill -9 " + std::to_string(pid_) + " 2>/dev/null");
    } catch (...) {
        ::kill(pid_, SIGKILL);
        wait_exit(pid_);
        throw;
    }
}

Process::~Process() {
    try {
        terminate_and_wait();
    } catch (...) {}
    watchdog_.reset();
}

bool Process::reap(bool block) {
    // Caller holds mu_.
    if (exit_code_) return true;
    int status = 0;
    for (;;) {
        pid_t r = waitpid(pid_, &status, block ? 0 : WNOHANG);
        if (r == pid_) {
            exit_code_ = exit_code_from_status(status);
            return true;
        }
        if (r == 0) return false;
        if (errno == EINTR) continue;
        exit_code_ = -1;  // not our child any more (should not happen)
        return true;
    }
}

bool Process::alive() {
    std::lock_guard lock(mu_);
    return !reap(false);
}

std::optional<int> Process::exit_code() {
    std::lock_guard lock(mu_);
    reap(false);
    return exit_code_;
}

int Process::kill9() {
    std::lock_guard lock(mu_);
    if (!reap(false)) ::kill(pid_, SIGKILL);
    reap(true);
    return *exit_code_;
}

int Process::terminate_and_wait(std::chrono::milliseconds grace) {
    std::lock_guard lock(mu_);
    if (reap(false)) return *exit_code_;
    ::kill(pid_, SIGTERM);
    auto deadline = std::chrono::steady_clock::now() + grace;
    while (std::chrono::steady_clock::now() < deadline) {
        if (reap(false)) return *exit_code_;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ::kill(pid_, SIGKILL);
    reap(true);
    return *exit_code_;
}

int Process::wait() {
    std::lock_guard lock(mu_);
    reap(true);
    return *exit_code_;
}

std::string Process::log() const { return read_file(log_path_); }

Ran run(std::vector<std::string> argv, std::map<std::string, std::string> env, std::chrono::milliseconds timeout) {
    const auto dir = make_temp_dir("run");
    Ran out;
    {
        Process p(std::move(argv), std::move(env), dir + "/output");
        bool ended = eventually([&] { return !p.alive(); }, timeout);
        out.exit_code = ended ? p.wait() : p.terminate_and_wait(std::chrono::seconds(1));
        out.output = p.log();
    }
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
    return out;
}

}  // namespace engram::testing
