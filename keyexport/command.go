package keyexport

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/redact"
)

// DefaultCommandTimeout bounds an on-change command.
const DefaultCommandTimeout = 30 * time.Second

// Command returns an ExporterConfig.OnChange that runs cmd with "/bin/sh -c",
// within timeout (DefaultCommandTimeout if not positive), with the
// environment variable TLSFARM_EPOCH set to the exported epoch. No key
// material is passed to it, nor any other TLSFARM_ variable of the agent's
// environment: $TLSFARM_FARM_URL may hold the transport's password, and
// other settings may hold secrets too. The command runs in a process group
// of its own, killed whole when the timeout passes or ctx ends. A non-zero
// exit is an error that carries the start of the command's output (of
// which the first 4 KiB are kept), with the credentials of any URL in it
// masked (the error goes to the log).
func Command(cmd string, timeout time.Duration) func(context.Context, *Set) error {
	if timeout <= 0 {
		timeout = DefaultCommandTimeout
	}
	return func(ctx context.Context, s *Set) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		c := exec.CommandContext(ctx, "/bin/sh", "-c", cmd)
		c.Env = append(commandEnv(os.Environ()), "TLSFARM_EPOCH="+strconv.FormatUint(s.Epoch, 10))
		out := &headWriter{max: commandOutputKept}
		c.Stdout, c.Stderr = out, out
		// The command runs in a process group of its own, which its end
		// (timeout, or the agent stopping) kills whole: killing only the
		// shell left its children running, orphaned, beside the next
		// on-change command.
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		c.Cancel = func() error { return syscall.Kill(-c.Process.Pid, syscall.SIGKILL) }
		c.WaitDelay = time.Second
		if err := c.Run(); err != nil {
			// Masked before it is cut: a URL cut before its "@" would
			// no longer look like one with credentials.
			msg := redact.URL(strings.TrimSpace(out.b.String()))
			if len(msg) > 300 {
				msg = msg[:300] + "..."
			}
			if msg != "" {
				return fmt.Errorf("on-change command: %v: %s", err, msg)
			}
			return fmt.Errorf("on-change command: %v", err)
		}
		return nil
	}
}

// commandOutputKept is how much of an on-change command's output is kept,
// for the error: the error shows 300 bytes of it, once URLs' credentials
// are masked (which needs a URL whole).
const commandOutputKept = 4096

// A headWriter keeps the first max bytes written to it and discards the
// rest, reporting every write as done (an error would leave the command
// blocked on a full pipe). An on-change command's output was kept whole,
// in memory, however much it wrote before its timeout.
type headWriter struct {
	b   bytes.Buffer
	max int
}

// Write keeps what fits of p.
func (w *headWriter) Write(p []byte) (int, error) {
	if room := w.max - w.b.Len(); room > 0 {
		w.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// commandEnv returns env without the variables whose names start with
// TLSFARM_ (tlsfarm's settings, some of which hold secrets).
func commandEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, "TLSFARM_") {
			out = append(out, kv)
		}
	}
	return out
}
