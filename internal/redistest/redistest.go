// Package redistest gives tests a real Redis: the machine's shared server,
// or a private redis-server on a free port for tests that must stop, kill
// or pause it. Either is skipped loudly where unavailable (a failure under
// TLSFARM_REQUIRE_SERVICES=1).
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/internal/testenv"
)

// URL returns the URL of the machine's shared Redis
// (TLSFARM_REDIS_URL, default redis://127.0.0.1:6379/0), skipping the test
// if it does not answer.
func URL(tb testing.TB) string {
	tb.Helper()
	u := os.Getenv("TLSFARM_REDIS_URL")
	if u == "" {
		u = "redis://127.0.0.1:6379/0"
	}
	addr := strings.TrimPrefix(u, "redis://")
	if i := strings.IndexAny(addr, "/?"); i >= 0 {
		addr = addr[:i]
	}
	if j := strings.LastIndexByte(addr, '@'); j >= 0 {
		addr = addr[j+1:]
	}
	testenv.NeedTCP(tb, "Redis", addr)
	return u
}

// Farm returns a farm name no other test uses, so that tests sharing one
// Redis never see each other's keys or messages.
func Farm(tb testing.TB) string {
	var b [6]byte
	rand.Read(b[:])
	name := strings.NewReplacer("/", "-", " ", "_").Replace(tb.Name())
	if len(name) > 40 {
		name = name[:40]
	}
	return name + "-" + hex.EncodeToString(b[:])
}

// A Server is a private redis-server for one test.
type Server struct {
	Port int
	tb   testing.TB
	dir  string
	args []string // more redis-server arguments
	cmd  *exec.Cmd
}

// Start starts a private redis-server on a free port, stopped when the test
// ends.
func Start(tb testing.TB) *Server {
	tb.Helper()
	return StartWith(tb)
}

// StartWith is Start with more redis-server arguments (such as
// "--cluster-enabled", "yes").
func StartWith(tb testing.TB, args ...string) *Server {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		testenv.Skip(tb, "redis-server is not installed")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &Server{Port: port, tb: tb, dir: tb.TempDir(), args: args}
	s.Restart()
	tb.Cleanup(s.Kill)
	return s
}

// Addr returns the server's host:port.
func (s *Server) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.Port) }

// URL returns the server's redis:// URL.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Restart starts the server (again) on the same port and waits until it
// answers.
func (s *Server) Restart() {
	s.tb.Helper()
	s.cmd = exec.Command("redis-server", "--port", fmt.Sprint(s.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir, "--logfile", "")
	s.cmd.Args = append(s.cmd.Args, s.args...)
	s.cmd.Stdout, s.cmd.Stderr = nil, nil
	if err := s.cmd.Start(); err != nil {
		s.tb.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !testenv.Reachable(s.Addr()) {
		if time.Now().After(deadline) {
			s.tb.Fatalf("redis-server on %s did not start", s.Addr())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill kills the server at once (no shutdown, as in a crash) and waits for
// it to exit.
func (s *Server) Kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGCONT) // a paused server cannot die
	s.cmd.Process.Kill()
	s.cmd.Wait()
	s.cmd = nil
}

// Pause stops the server's process (SIGSTOP): connections stay open and
// nothing answers, as with a hung server or a partition.
func (s *Server) Pause() { s.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume continues a paused server.
func (s *Server) Resume() { s.cmd.Process.Signal(syscall.SIGCONT) }

// ServerCPU returns the CPU time the Redis server behind c has used since
// it started (INFO cpu: used_cpu_sys + used_cpu_user). Benchmarks read it
// before and after to report Redis's share of the work; it counts
// whatever else used that server meanwhile.
func ServerCPU(ctx context.Context, c redis.UniversalClient) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	s, err := c.Info(ctx, "cpu").Result()
	if err != nil {
		return 0, err
	}
	var total float64
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, fmt.Errorf("INFO cpu: %s: %v", k, err)
			}
			total += f
		}
	}
	if total == 0 {
		return 0, errors.New("INFO cpu: no used_cpu_sys or used_cpu_user")
	}
	return time.Duration(total * float64(time.Second)), nil
}

// CleanFarm deletes, when the test ends, the keys the Redis transport made
// for farmName in the Redis at url (a redis:// URL; others are left alone):
// its coordination keys ("tlsfarm:{farm}:…") and its session records
// ("tlsfarm:farm:{…}"), which would otherwise stay for their TTL (hours)
// and make a shared Redis larger for every later test and benchmark.
func CleanFarm(tb testing.TB, url, farmName string) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return
	}
	tb.Cleanup(func() {
		cl := redis.NewClient(opt)
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		esc := globEscaper.Replace(farmName)
		for _, pattern := range []string{"tlsfarm:{" + esc + "}:*", "tlsfarm:" + esc + ":*"} {
			var keys []string
			iter := cl.Scan(ctx, 0, pattern, 1000).Iterator()
			for iter.Next(ctx) {
				if keys = append(keys, iter.Val()); len(keys) == 500 {
					cl.Unlink(ctx, keys...)
					keys = keys[:0]
				}
			}
			if len(keys) > 0 {
				cl.Unlink(ctx, keys...)
			}
			if err := iter.Err(); err != nil {
				tb.Logf("redistest: cleaning farm %s: %v", farmName, err)
			}
		}
	})
}

// globEscaper escapes the characters a Redis SCAN MATCH pattern gives a
// meaning to.
var globEscaper = strings.NewReplacer(`\`, `\\`, "*", `\*`, "?", `\?`, "[", `\[`, "]", `\]`)
