package redistest

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/internal/testenv"
)

// checkOwn fails the test unless s answers PING and is its own process.
func checkOwn(t *testing.T, s *Server) {
	t.Helper()
	cl := redis.NewClient(&redis.Options{Addr: s.Addr(), DialTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second, MaxRetries: -1})
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.Ping(ctx).Err(); err != nil {
		t.Fatalf("the server on %s does not answer PING: %v", s.Addr(), err)
	}
	info, err := cl.Info(ctx, "server").Result()
	if err != nil {
		t.Fatal(err)
	}
	if s.proc == nil || !strings.Contains(info, fmt.Sprintf("process_id:%d\r\n", s.proc.Cmd.Process.Pid)) {
		t.Fatalf("the server on %s is not the process Start started", s.Addr())
	}
}

// handOut makes pickPort return port once, then free ports, until the
// test ends.
func handOut(t *testing.T, port int) {
	var once atomic.Bool
	pickPort = func(tb testing.TB) int {
		if once.CompareAndSwap(false, true) {
			return port
		}
		return testenv.FreePort(tb)
	}
	t.Cleanup(func() { pickPort = testenv.FreePort })
}

// TestStartTakenPort hands Start a port that something took after it was
// found free, as happens when test binaries run side by side: a listener
// that never answers, another redis-server, and an outgoing connection
// given the port as its local one. Start must start the server on another
// port and return a server that is its own.
func TestStartTakenPort(t *testing.T) {
	t.Run("listener", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		port := l.Addr().(*net.TCPAddr).Port
		handOut(t, port)
		s := Start(t)
		if s.Port == port {
			t.Fatalf("Start returned a server on port %d, which a listener holds", port)
		}
		checkOwn(t, s)
	})
	t.Run("redis-server", func(t *testing.T) {
		other := Start(t)
		handOut(t, other.Port)
		s := Start(t)
		if s.Port == other.Port {
			t.Fatalf("Start returned a server on port %d, which another redis-server holds", other.Port)
		}
		checkOwn(t, s)
	})
	t.Run("outgoing connection", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close()
			}
		}()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}
		c, err := d.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		port := c.LocalAddr().(*net.TCPAddr).Port
		handOut(t, port)
		s := Start(t)
		if s.Port == port {
			t.Fatalf("Start returned a server on port %d, the local port of a connection", port)
		}
		checkOwn(t, s)
	})
}

// TestRestartWaitsForPort kills a server, lets a listener hold its port
// for a second, and restarts it: Restart must come back on the same port
// once the port is free, and not take the listener for the server.
func TestRestartWaitsForPort(t *testing.T) {
	s := Start(t)
	port := s.Port
	s.Kill()
	l, err := net.Listen("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(time.Second, func() { l.Close() })
	s.Restart()
	if s.Port != port {
		t.Fatalf("Restart moved the server from port %d to %d", port, s.Port)
	}
	checkOwn(t, s)
}

// fatalTB is a testing.TB whose Fatal and Fatalf record the message and
// end the goroutine, as the real ones do, without failing the test.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (f *fatalTB) Fatal(args ...any) {
	f.msg = fmt.Sprint(args...)
	runtime.Goexit()
}

// TestStartFailureShowsOutput starts a redis-server that cannot start:
// the test's failure message must say what redis-server said, and come
// without waiting for a deadline.
func TestStartFailureShowsOutput(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	f := &fatalTB{TB: t}
	began := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		StartWith(f, "--no-such-directive", "1")
	}()
	<-done
	if !strings.Contains(f.msg, "no-such-directive") {
		t.Fatalf("the failure message does not show redis-server's output: %q", f.msg)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Fatalf("Start took %v to fail on a server that exited at once", d)
	}
}

// sink keeps the CPU hogs' work from being optimized away.
var sink atomic.Uint64

// TestStartMany starts 16 servers at once while the test's CPUs are kept
// busy, as when test binaries run side by side on a loaded machine: every
// one must come up, as its own process.
func TestStartMany(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	stop := make(chan struct{})
	var hogs sync.WaitGroup
	for range runtime.NumCPU() {
		hogs.Add(1)
		go func() {
			defer hogs.Done()
			x := uint64(1)
			for {
				select {
				case <-stop:
					sink.Add(x)
					return
				default:
				}
				for range 1 << 16 {
					x = x*6364136223846793005 + 1442695040888963407
				}
			}
		}()
	}
	began := time.Now()
	t.Run("servers", func(t *testing.T) {
		for i := range 16 {
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				t.Parallel()
				checkOwn(t, Start(t))
			})
		}
	})
	close(stop)
	hogs.Wait()
	t.Logf("16 servers up in %v", time.Since(began).Round(time.Millisecond))
}
