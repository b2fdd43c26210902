package testenv

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestWaitReadyExit checks that WaitReady tells at once a server that
// exited because its address is in use from one that exited otherwise,
// and puts the server's output in the error.
func TestWaitReadyExit(t *testing.T) {
	for _, tc := range []struct {
		script string
		taken  bool
	}{
		{"echo 'bind: Address already in use' >&2; exit 1", true},
		{"echo 'FATAL CONFIG FILE ERROR' >&2; exit 1", false},
	} {
		p, err := StartProc("/bin/sh", "-c", tc.script)
		if err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		err = p.WaitReady(StartTimeout, func() error { return errors.New("not yet") })
		if errors.Is(err, ErrPortTaken) != tc.taken {
			t.Errorf("%q: WaitReady = %v; port taken: %v, want %v", tc.script, err, !tc.taken, tc.taken)
		}
		if err == nil || !strings.Contains(err.Error(), strings.Split(tc.script, "'")[1]) {
			t.Errorf("%q: the error does not show the output: %v", tc.script, err)
		}
		if d := time.Since(began); d > 5*time.Second {
			t.Errorf("%q: WaitReady took %v to see the exit", tc.script, d)
		}
	}
}

// TestOnFreePort checks that OnFreePort moves off a port where start
// fails, and that again retries on the same port until start succeeds.
func TestOnFreePort(t *testing.T) {
	var tried []int
	fails := 0
	port, again := OnFreePort(t, func(port int) error {
		tried = append(tried, port)
		if len(tried) == 1 || fails > 0 {
			fails--
			return errors.New("address already in use")
		}
		return nil
	})
	if len(tried) != 2 || port != tried[1] {
		t.Fatalf("OnFreePort tried ports %v and returned %d", tried, port)
	}
	tried, fails = nil, 3
	again()
	if len(tried) != 4 {
		t.Fatalf("again tried %d times, want 4", len(tried))
	}
	for _, p := range tried {
		if p != port {
			t.Fatalf("again tried port %d, not the server's %d", p, port)
		}
	}
}
