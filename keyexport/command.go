package keyexport

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
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
// other settings may hold secrets too. A non-zero exit is an error that
// carries the start of the command's output, with the credentials of any
// URL in it masked (the error goes to the log).
func Command(cmd string, timeout time.Duration) func(context.Context, *Set) error {
	if timeout <= 0 {
		timeout = DefaultCommandTimeout
	}
	return func(ctx context.Context, s *Set) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		c := exec.CommandContext(ctx, "/bin/sh", "-c", cmd)
		c.Env = append(commandEnv(os.Environ()), "TLSFARM_EPOCH="+strconv.FormatUint(s.Epoch, 10))
		var out bytes.Buffer
		c.Stdout, c.Stderr = &out, &out
		c.WaitDelay = time.Second
		if err := c.Run(); err != nil {
			// Masked before it is cut: a URL cut before its "@" would
			// no longer look like one with credentials.
			msg := redact.URL(strings.TrimSpace(out.String()))
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
