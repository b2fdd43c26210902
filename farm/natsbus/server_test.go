package natsbus_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/testenv"
)

// A natsServer is a private nats-server process for one test, for tests
// that kill and restart it or give it credentials.
type natsServer struct {
	tb   testing.TB
	port int
	dir  string
	args []string
	cmd  *exec.Cmd
}

// startNATS starts the machine's nats-server binary with JetStream on a
// free loopback port, with extra command-line args, until the test ends.
func startNATS(tb testing.TB, args ...string) *natsServer {
	tb.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		bin = "/usr/sbin/nats-server"
		if _, err := exec.LookPath(bin); err != nil {
			testenv.Skip(tb, "nats-server is not installed")
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &natsServer{tb: tb, port: port, dir: tb.TempDir(), args: append([]string{bin}, args...)}
	s.Restart()
	tb.Cleanup(s.Kill)
	return s
}

func (s *natsServer) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// URL returns the server's nats:// URL, with userinfo (like "user:pass@")
// if given.
func (s *natsServer) URL(userinfo string) string { return "nats://" + userinfo + s.Addr() }

// Restart starts the server (again) on the same port and data directory
// and waits until it answers.
func (s *natsServer) Restart() {
	s.tb.Helper()
	args := append(s.args[1:len(s.args):len(s.args)], "-a", "127.0.0.1", "-p", fmt.Sprint(s.port), "-js", "-sd", s.dir)
	s.cmd = exec.Command(s.args[0], args...)
	if err := s.cmd.Start(); err != nil {
		s.tb.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !testenv.Reachable(s.Addr()) {
		if time.Now().After(deadline) {
			s.tb.Fatalf("nats-server on %s did not start", s.Addr())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill kills the server at once, as in a crash, and waits for it to exit.
func (s *natsServer) Kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Kill()
	s.cmd.Wait()
	s.cmd = nil
}

// CPU returns the CPU time (user and system) the server process has used
// since it started, from /proc/<pid>/stat. Benchmarks read it before and
// after to report the server's share of the work, as redistest.ServerCPU
// does for Redis. It returns 0 where /proc cannot be read.
func (s *natsServer) CPU() time.Duration {
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
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
