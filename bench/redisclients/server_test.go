package redisclients

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// reverse runs the clients of each benchmark in the opposite order, so
// that a run script can alternate which client goes first round by round.
var reverse = flag.Bool("reverse", false, "run the clients of each benchmark in reverse order")

// publisherEnv, when set in the environment, makes the test binary a
// publisher (see runPublisher) instead of running tests.
const publisherEnv = "REDISCLIENTS_PUBLISHER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(publisherEnv); spec != "" {
		if err := runPublisher(spec); err != nil {
			fmt.Fprintln(os.Stderr, "publisher:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	flag.Parse()
	code := m.Run()
	stopServer()
	os.Exit(code)
}

// The private redis-server every test and benchmark of one run shares: Redis
// CPU is read from INFO, and benchmarks run one at a time.
var (
	srvOnce sync.Once
	srvAddr string
	srvErr  error
	srvProc *exec.Cmd
	srvDir  string
)

// server returns the address of the run's private redis-server, starting it
// on a free loopback port at the first call. It skips tb if redis-server is
// not installed.
func server(tb testing.TB) string {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		tb.Skip("redis-server is not installed")
	}
	srvOnce.Do(func() { srvAddr, srvErr = startServer() })
	if srvErr != nil {
		tb.Fatal(srvErr)
	}
	return srvAddr
}

// startServer starts redis-server on a free port (another one if the port
// was taken before the server bound it) and waits until it answers PING.
func startServer() (string, error) {
	dir, err := os.MkdirTemp("", "redisclients")
	if err != nil {
		return "", err
	}
	srvDir = dir
	var last error
	for range 5 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		last = nil
		var out bytes.Buffer
		cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir, "--logfile", "")
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			return "", err
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case <-exited:
				last = fmt.Errorf("redis-server on %s exited: %s", addr, out.String())
				deadline = time.Time{}
				continue
			default:
			}
			if _, err := command(addr, "PING"); err == nil {
				srvProc = cmd
				return addr, nil
			}
			time.Sleep(20 * time.Millisecond)
		}
		if last == nil {
			cmd.Process.Kill()
			<-exited
			return "", fmt.Errorf("redis-server on %s did not answer: %s", addr, out.String())
		}
	}
	return "", last
}

// stopServer kills the private redis-server, if it was started.
func stopServer() {
	if srvProc != nil {
		srvProc.Process.Kill()
	}
	if srvDir != "" {
		os.RemoveAll(srvDir)
	}
}

// command sends one command to addr on a new connection and returns its
// reply, read as RESP2 (no client library, to stay neutral).
func command(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(encode(args...)); err != nil {
		return "", err
	}
	return readReply(bufio.NewReader(c))
}

// encode returns args as a RESP command.
func encode(args ...string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	return b.Bytes()
}

// readReply reads one simple, integer or bulk reply, or an array of them
// (whose elements it joins with newlines).
func readReply(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return "", errors.New("empty reply line")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", errors.New(line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return "", err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", err
		}
		parts := make([]string, 0, n)
		for range n {
			p, err := readReply(r)
			if err != nil {
				return "", err
			}
			parts = append(parts, p)
		}
		return strings.Join(parts, "\n"), nil
	}
	return "", fmt.Errorf("unexpected reply %q", line)
}

// redisCPU returns the server's CPU time so far (INFO cpu: used_cpu_user +
// used_cpu_sys).
func redisCPU(tb testing.TB, addr string) time.Duration {
	tb.Helper()
	info, err := command(addr, "INFO", "cpu")
	if err != nil {
		tb.Fatal(err)
	}
	var total float64
	for line := range strings.SplitSeq(info, "\n") {
		line = strings.TrimSpace(line)
		for _, f := range []string{"used_cpu_user:", "used_cpu_sys:"} {
			if v, ok := strings.CutPrefix(line, f); ok {
				x, err := strconv.ParseFloat(v, 64)
				if err != nil {
					tb.Fatal(err)
				}
				total += x
			}
		}
	}
	return time.Duration(total * float64(time.Second))
}

// selfCPU returns this process's CPU time so far (user + system).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// A meter measures the client's and the server's CPU over a benchmark's
// timed part.
type meter struct {
	addr        string
	self, redis time.Duration
}

// startMeter resets b's timer and starts measuring.
func startMeter(b *testing.B, addr string) *meter {
	m := &meter{addr: addr, redis: redisCPU(b, addr)}
	b.ResetTimer()
	m.self = selfCPU()
	return m
}

// stop stops b's timer, reports the client's and the server's CPU per
// unit, n units in all, as client-us/<unit> and redis-us/<unit>, and
// deletes every key of the server.
func (m *meter) stop(b *testing.B, n int, unit string) {
	self := selfCPU() - m.self
	b.StopTimer()
	redis := redisCPU(b, m.addr) - m.redis
	// Written records would expire during a later benchmark, whose Redis
	// CPU would then count their expiry: drop them now, unmeasured (the
	// private server only).
	if _, err := command(m.addr, "FLUSHALL", "SYNC"); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(self.Microseconds())/float64(n), "client-us/"+unit)
	b.ReportMetric(float64(redis.Microseconds())/float64(n), "redis-us/"+unit)
}

// A publisherSpec says what a publisher process publishes: n messages of
// size bytes on channel at addr, one every interval.
type publisherSpec struct {
	addr, channel string
	n, size       int
	interval      time.Duration
}

func (s publisherSpec) String() string {
	return fmt.Sprintf("%s,%s,%d,%d,%d", s.addr, s.channel, s.n, s.size, s.interval)
}

// startPublisher starts this test binary again as a publisher of s (its
// CPU is not this process's), connected and ready; it begins publishing
// when go is called, and wait waits for it to end.
func startPublisher(tb testing.TB, s publisherSpec) (begin func(), wait func() error) {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run", "^$")
	cmd.Env = append(os.Environ(), publisherEnv+"="+s.String())
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	ready, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || ready != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		tb.Fatalf("publisher did not start: %q %v", ready, err)
	}
	begin = func() { io.WriteString(in, "go\n") }
	wait = func() error {
		in.Close()
		return cmd.Wait()
	}
	return begin, wait
}

// runPublisher is the publisher process: it connects, says "ready" on
// stdout, waits for a line on stdin, then sends its PUBLISHes paced on an
// absolute schedule, reading each reply before the next.
func runPublisher(spec string) error {
	f := strings.Split(spec, ",")
	if len(f) != 5 {
		return fmt.Errorf("bad spec %q", spec)
	}
	n, _ := strconv.Atoi(f[2])
	size, _ := strconv.Atoi(f[3])
	iv, _ := strconv.ParseInt(f[4], 10, 64)
	c, err := net.Dial("tcp", f[0])
	if err != nil {
		return err
	}
	defer c.Close()
	r := bufio.NewReader(c)
	msg := encode("PUBLISH", f[1], strings.Repeat("m", size))
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return err
	}
	next := time.Now()
	for range n {
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		next = next.Add(time.Duration(iv))
		if _, err := c.Write(msg); err != nil {
			return err
		}
		if _, err := readReply(r); err != nil {
			return err
		}
	}
	return nil
}
