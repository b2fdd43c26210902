package tlstest

import (
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
