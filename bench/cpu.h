#pragma once
// CPU time of the processes a benchmark measures, from /proc (what a figure cost, which drifts
// less between machines than a rate).
#include "engram/testing/testing.h"

#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

namespace engram::bench {

// CPU seconds a process has used (utime + stime of /proc/<pid>/stat; with children: also the
// CPU of the children it has reaped, cutime + cstime).
inline double cpu_seconds(int pid, bool with_reaped_children = false) {
    std::ifstream st("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    std::getline(st, line);
    auto close = line.rfind(')');
    if (close == std::string::npos) return 0;
    std::istringstream rest(line.substr(close + 2));
    std::string field;
    unsigned long long utime = 0, stime = 0;
    unsigned long long cutime = 0, cstime = 0;
    for (int i = 3; i <= 17 && rest >> field; ++i) {  // fields 14 to 17
        if (i == 14) utime = std::stoull(field);
        if (i == 15) stime = std::stoull(field);
        if (i == 16) cutime = std::stoull(field);
        if (i == 17) cstime = std::stoull(field);
    }
    auto ticks = utime + stime + (with_reaped_children ? cutime + cstime : 0);
    return static_cast<double>(ticks) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// CPU seconds of the PostgreSQL server: the postmaster, the backends it has reaped and the ones
// still running (a backend that exits between two readings moves from the second to the first).
inline double pg_cpu_seconds(int postmaster) {
    double total = cpu_seconds(postmaster, true);
    for (int child : testing::child_pids(postmaster)) total += cpu_seconds(child);
    return total;
}

// The postmaster's pid of a testing::Postgres.
inline int postmaster_pid(const testing::Postgres& pg) {
    int pid = 0;
    std::ifstream(pg.dir() + "/data/postmaster.pid") >> pid;
    return pid;
}

}  // namespace engram::bench
