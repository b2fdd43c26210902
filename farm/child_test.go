package farm_test

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/session"
)

// A child is one test of this test binary run in a process of its own,
// for a node that must die as in a crash (SIGKILL: no Close, no deferred
// code), talking to the test that started it by lines: what it says on
// its standard output, what it is told on its standard input.
type child struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	said   []string // what it said that no await wanted, for a failure
	killed bool
}

// startChild runs the test named run of this test binary in a process of
// its own, its environment this one's and env, its standard error this
// one's. It is killed when the test ends, if not before.
func startChild(t *testing.T, run string, env ...string) *child {
	t.Helper()
	c := &child{t: t, cmd: exec.Command(os.Args[0], "-test.run=^"+run+"$"), lines: make(chan string, 16)}
	c.cmd.Env = append(os.Environ(), env...)
	var err error
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	// A pipe of its own, not StdoutPipe: Wait (in kill) closes that one,
	// and what the child said just before it was killed, still in the
	// pipe, was lost (TestConcurrentRevocationsSurviveKill counted 119
	// of the child's 192 lines). This one is read to its end.
	stdout, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	c.cmd.Stdout, c.cmd.Stderr = w, os.Stderr
	err = c.cmd.Start()
	w.Close()
	if err != nil {
		stdout.Close()
		t.Fatal(err)
	}
	t.Cleanup(c.kill)
	go func() {
		defer stdout.Close()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	return c
}

// await waits up to 30 s for the child to say want (a line of its own),
// and fails the test if it ends or does not.
func (c *child) await(want string) {
	c.t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				c.t.Fatalf("the child process ended before it said %q; it said:\n%s", want, strings.Join(c.said, "\n"))
			}
			if l == want {
				return
			}
			c.said = append(c.said, l)
		case <-timeout:
			c.t.Fatalf("the child process did not say %q within 30s; it said:\n%s", want, strings.Join(c.said, "\n"))
		}
	}
}

// tell writes line to the child's standard input.
func (c *child) tell(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.stdin, line+"\n"); err != nil {
		c.t.Fatal(err)
	}
}

// kill kills the child with SIGKILL, as a crash would, and waits for it.
func (c *child) kill() {
	if c.killed {
		return
	}
	c.killed = true
	c.cmd.Process.Signal(syscall.SIGKILL)
	c.cmd.Wait()
}

// crashChildJoin joins, as n1, the farm the environment names (crashEnv*:
// its name, secret and Redis, and n1's RevocationFile), for a child.
func crashChildJoin(t *testing.T) *farmtest.Member {
	t.Helper()
	b, err := hex.DecodeString(os.Getenv(crashEnvSecret))
	if err != nil {
		t.Fatal(err)
	}
	secret := farm.Secret{ID: 1, Bytes: b}
	m := farmtest.Join(t, "n1", os.Getenv(crashEnvFarm),
		crashOptions(redisTransport(os.Getenv(crashEnvURL)), secret, os.Getenv(crashEnvFile)))
	farmtest.WaitConnected(t, m)
	return m
}

// crashEnv returns the environment of a child that joins with
// crashChildJoin, writing the IDs it is asked for to idsFile.
func crashEnv(farmName, url, file string, secret farm.Secret, idsFile string) []string {
	return []string{crashEnvFarm + "=" + farmName, crashEnvURL + "=" + url, crashEnvFile + "=" + file,
		crashEnvSecret + "=" + hex.EncodeToString(secret.Bytes), crashEnvIDs + "=" + idsFile}
}

// writeIDs writes ids to path, one in hex a line, for the test that
// started this child.
func writeIDs(t *testing.T, path string, ids []session.ID) {
	t.Helper()
	var out strings.Builder
	for _, id := range ids {
		fmt.Fprintln(&out, hex.EncodeToString(id[:]))
	}
	if err := os.WriteFile(path, []byte(out.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// readIDs reads the want IDs a child wrote to path (writeIDs).
func readIDs(t *testing.T, path string, want int) []session.ID {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var ids []session.ID
	for _, h := range strings.Fields(string(raw)) {
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != session.IDLen {
			t.Fatalf("the child process wrote a bad ID (%d bytes): %v", len(b), err)
		}
		ids = append(ids, session.ID(b))
	}
	if len(ids) != want {
		t.Fatalf("the child process wrote %d IDs, want %d", len(ids), want)
	}
	return ids
}
