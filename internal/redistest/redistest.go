// Package redistest gives tests a real Redis: the machine's shared server,
// or a private redis-server on a free port for tests that must stop, kill
// or pause it. Either is skipped loudly where unavailable (a failure under
// TLSFARM_REQUIRE_SERVICES=1).
package redistest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
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
// Redis never see each other's keys or messages. For a benchmark, which
// may write millions of sessions that would outlive it by their lifetime,
// the farm's keys are deleted from the shared Redis when it ends: left
// there, they slowed every later test that reads the keyspace (4.5 million
// keys after one BenchmarkPublishThroughput at -benchtime 10s).
func Farm(tb testing.TB) string {
	var b [6]byte
	rand.Read(b[:])
	name := strings.NewReplacer("/", "-", " ", "_").Replace(tb.Name())
	if len(name) > 40 {
		name = name[:40]
	}
	name += "-" + hex.EncodeToString(b[:])
	if _, ok := tb.(*testing.B); ok {
		tb.Cleanup(func() { deleteFarmKeys(tb, name) })
	}
	return name
}

// deleteFarmKeys deletes the keys of farm name from the shared Redis, if
// it answers.
func deleteFarmKeys(tb testing.TB, name string) {
	u := os.Getenv("TLSFARM_REDIS_URL")
	if u == "" {
		u = "redis://127.0.0.1:6379/0"
	}
	opt, err := redis.ParseURL(u)
	if err != nil {
		return
	}
	c := redis.NewClient(opt)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	keys, err := Keys(ctx, c, "*"+name+"*")
	for len(keys) > 0 && err == nil {
		n := min(len(keys), 1000)
		err = c.Unlink(ctx, keys[:n]...).Err()
		keys = keys[n:]
	}
	if err != nil {
		tb.Logf("redistest: deleting the keys of farm %s: %v", name, err)
	}
}

// Keys returns the keys of c that match pattern, read with SCAN: unlike
// KEYS, it never holds a Redis that other tests share for the whole
// keyspace at once.
func Keys(ctx context.Context, c redis.Cmdable, pattern string) ([]string, error) {
	var keys []string
	var cursor uint64
	for {
		page, next, err := c.Scan(ctx, cursor, pattern, 1000).Result()
		if err != nil {
			return nil, err
		}
		keys = append(keys, page...)
		if cursor = next; cursor == 0 {
			return keys, nil
		}
	}
}

// A Server is a private redis-server for one test.
type Server struct {
	Port int
	tb   testing.TB
	dir  string
	argv func(*Server) []string // the redis-server arguments for Port and dir
	// announced is the address a cluster node announces to clients, if
	// not its own (see StartClusterVia).
	announced string
	proc      *testenv.Proc
}

// startAttempts is how many free ports Start tries: a port can be taken
// between the moment it was found free and the server's bind, which
// happens on a loaded machine running test binaries side by side (go
// test -p), where every dial uses an ephemeral port; to lose that race
// several times in a row would take something that takes ports on
// purpose.
const startAttempts = 8

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
	return start(tb, func(s *Server) []string { return serverArgs(s, args...) })
}

// serverArgs returns the arguments of a private redis-server on s.Port
// with its files in s.dir, and more arguments.
func serverArgs(s *Server, more ...string) []string {
	args := []string{"--port", fmt.Sprint(s.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir, "--logfile", ""}
	return append(args, more...)
}

// pickPort is testenv.FreePort; tests of this package replace it to hand
// start a port that something else holds.
var pickPort = testenv.FreePort

// start starts a redis-server with the arguments argv returns for a free
// port and a new directory, on another port and in another directory if
// something took the port before the server could listen on it, and fails
// the test with the server's output if it does not start otherwise.
// argv is called again, with the same port and directory, by Restart.
func start(tb testing.TB, argv func(*Server) []string) *Server {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		testenv.Skip(tb, "redis-server is not installed")
	}
	var err error
	for range startAttempts {
		s := &Server{Port: pickPort(tb), tb: tb, dir: tb.TempDir(), argv: argv}
		if err = s.launch(); err == nil {
			tb.Cleanup(s.Kill)
			return s
		}
		if !errors.Is(err, testenv.ErrPortTaken) {
			tb.Fatalf("redis-server on %s did not start: %v", s.Addr(), err)
		}
		tb.Logf("redistest: port %d was taken before redis-server could listen on it; trying another", s.Port)
	}
	tb.Fatalf("redis-server did not start: %d ports in a row were taken: %v", startAttempts, err)
	return nil
}

// launch starts the server's process on s.Port and waits until it answers
// as itself.
func (s *Server) launch() error {
	p, err := testenv.StartProc("redis-server", s.argv(s)...)
	if err != nil {
		return err
	}
	if err := p.WaitReady(testenv.StartTimeout, func() error { return answersAs(s.Addr(), p.Cmd.Process.Pid) }); err != nil {
		return err
	}
	s.proc = p
	return nil
}

// answersAs reports whether the Redis server (or sentinel) at addr answers
// INFO and is the process pid: nil if so, testenv.ErrPortTaken if another
// server answers there. It speaks RESP itself: a go-redis client would
// log every refused dial while the server starts.
func answersAs(addr string, pid int) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("INFO server\r\n")); err != nil {
		return err
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	switch {
	case strings.HasPrefix(line, "-"): // such as -LOADING
		return errors.New(strings.TrimSpace(line))
	case !strings.HasPrefix(line, "$"):
		return fmt.Errorf("%w: a server that is not Redis answers on %s: %q", testenv.ErrPortTaken, addr, line)
	}
	n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
	if err != nil || n < 0 {
		return fmt.Errorf("%w: a server that is not Redis answers on %s: %q", testenv.ErrPortTaken, addr, line)
	}
	info := make([]byte, n+2)
	if _, err := io.ReadFull(r, info); err != nil {
		return err
	}
	if !strings.Contains(string(info), fmt.Sprintf("process_id:%d\r\n", pid)) {
		return fmt.Errorf("%w: a server of another process answers on %s", testenv.ErrPortTaken, addr)
	}
	return nil
}

// Addr returns the server's host:port.
func (s *Server) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.Port) }

// URL returns the server's redis:// URL.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Restart starts the server (again) on the same port and waits until it
// answers. If something took the port while the server was down, it tries
// again until the port is free, for at most testenv.StartTimeout.
func (s *Server) Restart() {
	s.tb.Helper()
	deadline := time.Now().Add(testenv.StartTimeout)
	for {
		err := s.launch()
		if err == nil {
			return
		}
		if !errors.Is(err, testenv.ErrPortTaken) || time.Now().After(deadline) {
			s.tb.Fatalf("redis-server did not start again on %s: %v", s.Addr(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Kill kills the server at once (no shutdown, as in a crash) and waits for
// it to exit.
func (s *Server) Kill() {
	if s.proc == nil {
		return
	}
	s.proc.Kill()
	s.proc = nil
}

// Pause stops the server's process (SIGSTOP): connections stay open and
// nothing answers, as with a hung server or a partition.
func (s *Server) Pause() { s.proc.Cmd.Process.Signal(syscall.SIGSTOP) }

// Resume continues a paused server.
func (s *Server) Resume() { s.proc.Cmd.Process.Signal(syscall.SIGCONT) }

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
