package natsbus_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/natstest"
	"github.com/tlsfarm/tlsfarm/internal/testenv"
)

// A natsServer is a private nats-server process for one test, for tests
// that kill and restart it or give it credentials.
type natsServer struct {
	tb   testing.TB
	port int
	name string // its server_name, by which it is told from another server on its port
	dir  string
	args []string
	proc *testenv.Proc
}

// startNATS starts the machine's nats-server binary with JetStream on a
// free loopback port, with extra command-line args, until the test ends.
// If something takes the port before the server listens on it, it starts
// the server on another.
func startNATS(tb testing.TB, args ...string) *natsServer {
	tb.Helper()
	bin := natstest.Bin(tb)
	var err error
	for range 8 {
		s := &natsServer{tb: tb, port: testenv.FreePort(tb), name: fmt.Sprintf("tlsfarm-test-%d", rand.Uint64()),
			dir: tb.TempDir(), args: append([]string{bin}, args...)}
		if err = s.launch(); err == nil {
			tb.Cleanup(s.Kill)
			return s
		}
		if !errors.Is(err, testenv.ErrPortTaken) {
			tb.Fatalf("nats-server on %s did not start: %v", s.Addr(), err)
		}
		tb.Logf("port %d was taken before nats-server could listen on it; trying another", s.port)
	}
	tb.Fatalf("nats-server did not start: 8 ports in a row were taken: %v", err)
	return nil
}

func (s *natsServer) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// URL returns the server's nats:// URL, with userinfo (like "user:pass@")
// if given.
func (s *natsServer) URL(userinfo string) string { return "nats://" + userinfo + s.Addr() }

// launch starts the server's process and waits until it answers.
func (s *natsServer) launch() error {
	args := append(s.args[1:len(s.args):len(s.args)], "-a", "127.0.0.1", "-p", fmt.Sprint(s.port), "-js", "-sd", s.dir,
		"--server_name", s.name)
	p, err := testenv.StartProc(s.args[0], args...)
	if err != nil {
		return err
	}
	if err := p.WaitReady(testenv.StartTimeout, func() error { return natstest.Answers(s.Addr(), s.name) }); err != nil {
		return err
	}
	s.proc = p
	return nil
}

// Restart starts the server again on the same port and data directory
// and waits until it answers; if something took the port meanwhile, it
// tries again until the port is free, for at most testenv.StartTimeout.
func (s *natsServer) Restart() {
	s.tb.Helper()
	deadline := time.Now().Add(testenv.StartTimeout)
	for {
		err := s.launch()
		if err == nil {
			return
		}
		if !errors.Is(err, testenv.ErrPortTaken) || time.Now().After(deadline) {
			s.tb.Fatalf("nats-server did not start again on %s: %v", s.Addr(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Kill kills the server at once, as in a crash, and waits for it to exit.
func (s *natsServer) Kill() {
	if s.proc == nil {
		return
	}
	s.proc.Kill()
	s.proc = nil
}

// CPU returns the CPU time (user and system) the server process has used
// since it started, from /proc/<pid>/stat. Benchmarks read it before and
// after to report the server's share of the work, as redistest.ServerCPU
// does for Redis. It returns 0 where /proc cannot be read.
func (s *natsServer) CPU() time.Duration {
	if s.proc == nil {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.proc.Cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// The command name, field 2, is in parentheses and may hold spaces;
	// utime and stime are fields 14 and 15, in clock ticks.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * time.Second / clockTicks
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on
// every Linux the tests run on.
const clockTicks = 100
