package main

import (
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// An admin token file that no client could present — base64 wrapped over
// two lines, as head -c 64 /dev/urandom | base64 writes it — or that holds
// nothing (truncated, or a reload racing its write) is refused, at start
// and on SIGHUP: the reload is rejected and the token in force keeps
// working. Before the fix both loaded: the wrapped one locked every state
// change out with 401 (no header can carry a line break), the empty one
// with 403 ("no admin token is configured"), each after "reload applied".
// A valid token replaces the one in force at the next request.
func TestAdminTokenFileNoClientCanSendIsRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const good = "admin-token-0123456789abcdef"
	wrapped := strings.Repeat("A", 76) + "\n" + strings.Repeat("B", 12) + "==\n"
	tokFile := filepath.Join(dir, "admin.token")

	writeFile(t, tokFile, good+"\n", 0o600)
	p := serveProc(t, []string{"-admin-token-file", tokFile})
	// A valid token reaches the handler, which refuses the ID (400); a
	// refused token is 401, no token configured 403.
	const notAnID = "/sessions/zz"
	authorized := func(when string) {
		t.Helper()
		if code, body := adminDo(t, p, "DELETE", notAnID, good); code != http.StatusBadRequest {
			t.Errorf("%s: DELETE with the token in force: %d %s; want 400 (authorized, bad ID)", when, code, body)
		}
	}
	authorized("at start")

	for _, c := range []struct{ name, content, want string }{
		{"wrapped", wrapped, "no Authorization header can carry it"},
		{"empty", "", "holds no token"},
		{"blank", " \n", "holds no token"},
	} {
		writeFile(t, tokFile, c.content, 0o600)
		rejected, applied := p.countLog("reload rejected; the running configuration is unchanged"), p.countLog("reload applied")
		p.cmd.Process.Signal(syscall.SIGHUP)
		waitUntil(t, 5*time.Second, func() bool {
			return p.countLog("reload rejected; the running configuration is unchanged") > rejected || p.countLog("reload applied") > applied
		}, "no reload outcome logged for the %s token file", c.name)
		if p.countLog("reload applied") > applied {
			t.Errorf("%s token file: reload applied; want it rejected", c.name)
		} else if !strings.Contains(p.log(), c.want) {
			t.Errorf("%s token file: the rejection does not say %q", c.name, c.want)
		}
		authorized("after a reload with the " + c.name + " token file")
		writeFile(t, tokFile, good+"\n", 0o600)
	}

	// A valid new token replaces the old one at once: the old is refused.
	const next = "admin-token-next-0123456789"
	writeFile(t, tokFile, next+"\n", 0o600)
	applied := p.countLog("reload applied")
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitUntil(t, 5*time.Second, func() bool { return p.countLog("reload applied") > applied }, "the reload with a new token was not applied")
	if code, _ := adminDo(t, p, "DELETE", notAnID, good); code != http.StatusUnauthorized {
		t.Errorf("DELETE with the replaced token: %d, want 401", code)
	}
	if code, _ := adminDo(t, p, "DELETE", notAnID, next); code != http.StatusBadRequest {
		t.Errorf("DELETE with the new token: %d, want 400 (authorized, bad ID)", code)
	}
	p.stop()

	// At start, the wrapped token stops the start with one line.
	writeFile(t, tokFile, wrapped, 0o600)
	q := launch(t, []string{"-admin-token-file", tokFile})
	select {
	case <-q.done:
		if code := q.cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(q.log(), "no Authorization header can carry it") {
			t.Errorf("serve with a wrapped token: exit %d, %q; want 1 and the token refused", code, q.log())
		}
	case <-time.After(10 * time.Second):
		t.Error("serve with a wrapped token still runs after 10s; want it refused at start")
	}
}
