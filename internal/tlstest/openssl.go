package tlstest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/testenv"
)

// OpenSSL runs "openssl s_client" against addr with the given extra
// arguments and returns what it printed. It skips the test, loudly, where
// openssl is not installed (a failure under TLSFARM_REQUIRE_SERVICES=1).
func OpenSSL(tb testing.TB, addr string, args ...string) string {
	tb.Helper()
	path, err := exec.LookPath("openssl")
	if err != nil {
		testenv.Skip(tb, "openssl is not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, append([]string{"s_client", "-connect", addr, "-ign_eof"}, args...)...)
	cmd.Stdin = nil
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("openssl s_client %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// SessionFile returns the path of a fresh file for -sess_out / -sess_in.
func SessionFile(tb testing.TB) string {
	p := filepath.Join(tb.TempDir(), "session.pem")
	os.Remove(p)
	return p
}
