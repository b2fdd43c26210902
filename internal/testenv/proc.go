package testenv

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// StartTimeout is how long a test waits for a server process it started
// to answer. A redis-server or nats-server answers within milliseconds on
// an idle machine, but a test binary may run beside others (go test -p)
// on a loaded machine, where starting a process and its first answer can
// take seconds: the wait is long because waiting costs nothing when the
// server is up early, and a test that fails here tests nothing.
const StartTimeout = 30 * time.Second

// ErrPortTaken is returned by WaitReady when the process could not listen
// on its port because something else took the port between FreePort and
// the process's bind (the process exited saying so, or another server
// answers there). The caller starts again on a new port.
var ErrPortTaken = errors.New("the port was taken before the server could listen on it")

// FreePort returns a TCP port on 127.0.0.1 that nothing listened on a
// moment ago. Anything may take it before the caller's server binds it
// (another test's listener, or an outgoing connection given it as its
// local port): a server started on it must be checked with WaitReady and
// started again on a new port on ErrPortTaken.
func FreePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// A Proc is a server process a test started, with its output (standard
// output and error) kept to show in a failure message.
type Proc struct {
	// Cmd is the running command; its Process is the server's.
	Cmd  *exec.Cmd
	out  tail
	done chan struct{}
}

// StartProc starts the program name with args, keeping its output.
func StartProc(name string, args ...string) (*Proc, error) {
	p := &Proc{Cmd: exec.Command(name, args...), done: make(chan struct{})}
	p.Cmd.Stdout, p.Cmd.Stderr = &p.out, &p.out
	if err := p.Cmd.Start(); err != nil {
		return nil, err
	}
	go func() { p.Cmd.Wait(); close(p.done) }()
	return p, nil
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Output returns the end of what the process wrote (at most the last
// 4 KiB, the lines that say why a server did not start).
func (p *Proc) Output() string { return p.out.String() }

// Kill kills the process at once (SIGKILL, as in a crash; a stopped
// process is continued first, since it cannot die stopped) and waits
// until it has exited.
func (p *Proc) Kill() {
	p.Cmd.Process.Signal(syscall.SIGCONT)
	p.Cmd.Process.Kill()
	<-p.done
}

// WaitReady waits until ready reports that the process answers (nil),
// for at most timeout. It returns ErrPortTaken (wrapped, with the
// process's output) if the process exited saying its address is in use,
// or if ready says so by returning ErrPortTaken itself (another server
// answers on the port), and another error with the process's output if
// the process exited otherwise or did not answer in time. The process is
// killed on any error.
func (p *Proc) WaitReady(timeout time.Duration, ready func() error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if p.Exited() {
			return p.exitError()
		}
		err := ready()
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrPortTaken) {
			// Another server answers on the port; ours will fail to bind
			// and exit, if it has not yet.
			p.Kill()
			return fmt.Errorf("%w (%v); its output:\n%s", ErrPortTaken, err, p.Output())
		}
		last = err
		if time.Now().After(deadline) {
			p.Kill()
			return fmt.Errorf("%s did not answer within %v (last: %v); its output:\n%s", p.Cmd.Path, timeout, last, p.Output())
		}
		select {
		case <-p.done:
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// exitError describes an exit at start.
func (p *Proc) exitError() error {
	out := p.Output()
	if strings.Contains(strings.ToLower(out), "address already in use") {
		return fmt.Errorf("%w; its output:\n%s", ErrPortTaken, out)
	}
	return fmt.Errorf("%s exited at start (%v); its output:\n%s", p.Cmd.Path, p.Cmd.ProcessState, out)
}

// tailMax is how much output a Proc keeps.
const tailMax = 4 << 10

// A tail keeps the last tailMax bytes written to it, for concurrent
// writers.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tail) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if len(t.buf) > 2*tailMax {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-tailMax:]...)
	}
	return len(b), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf[max(0, len(t.buf)-tailMax):])
}

// OnFreePort runs start, which starts a server (such as an in-process one)
// on the port it is given, on a free port, and on other free ports while
// start fails there (up to 4: the likely cause is a port taken between
// FreePort and the server's bind). It returns the port, and again, which
// runs start once more on the same port, retrying while it fails for at
// most StartTimeout (the port may be held a moment longer). Either fails
// tb with start's last error.
func OnFreePort(tb testing.TB, start func(port int) error) (port int, again func()) {
	tb.Helper()
	var err error
	for range 4 {
		port = FreePort(tb)
		if err = start(port); err == nil {
			break
		}
		tb.Logf("testenv: starting a server on port %d: %v; trying another port", port, err)
	}
	if err != nil {
		tb.Fatalf("starting a server: %v", err)
	}
	return port, func() {
		tb.Helper()
		deadline := time.Now().Add(StartTimeout)
		for {
			err := start(port)
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				tb.Fatalf("starting a server again on port %d: %v", port, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}
