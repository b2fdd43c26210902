package tlstest

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ProcessCPU returns the CPU time (user and system) this process has used,
// on every thread: for benchmarks whose work is spread over goroutines, such
// as a handshake and the farm's publisher.
func ProcessCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// ReportCPU reports, as "cpu-µs/op", the process CPU time used since start
// divided by b.N. Unlike ns/op it counts work done on other goroutines in
// parallel, and not time the process spent waiting.
func ReportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64((ProcessCPU()-start).Microseconds())/float64(b.N), "cpu-µs/op")
}

// Counters is a snapshot of what this process has used so far: CPU time,
// read and write system calls (as /proc/self/io counts them, sockets
// included) and voluntary context switches (a thread that blocked, as on a
// wait for a network reply). Unlike CPU time, the counts barely depend on
// what else the machine runs: benchmarks of the farm report them to show
// round trips and wake-ups per operation.
type Counters struct {
	CPU      time.Duration
	Syscalls uint64 // 0 where /proc/self/io is not readable
	Switches uint64
}

// Snapshot returns the process's counters now.
func Snapshot() Counters {
	var c Counters
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		c.CPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		c.Switches = uint64(ru.Nvcsw)
	}
	if b, err := os.ReadFile("/proc/self/io"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ": ")
			if ok && (k == "syscr" || k == "syscw") {
				n, _ := strconv.ParseUint(v, 10, 64)
				c.Syscalls += n
			}
		}
	}
	return c
}

// Report reports, per b.N, the CPU time ("cpu-µs/op", as ReportCPU), the
// system calls ("syscalls/op", if counted) and the voluntary context
// switches ("ctxsw/op") used since start.
func (start Counters) Report(b *testing.B) {
	now := Snapshot()
	n := float64(b.N)
	b.ReportMetric(float64((now.CPU-start.CPU).Microseconds())/n, "cpu-µs/op")
	if now.Syscalls > 0 {
		b.ReportMetric(float64(now.Syscalls-start.Syscalls)/n, "syscalls/op")
	}
	b.ReportMetric(float64(now.Switches-start.Switches)/n, "ctxsw/op")
}
