package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// A farm taken out of the file (farm.url, like the rest of the farm
// section, needs a restart) leaves the farm running until the restart,
// and the reload applies the settings that reload, naming farm.url as
// needing a restart. Before the fix the reload was rejected whole: the
// daemon derived its QUIC keys again from the new configuration, which
// has no farm secret without a farm.url, although a reload never changes
// those keys.
func TestReloadWithoutTheFarmAppliesTheRest(t *testing.T) {
	t.Parallel()
	secret, _, _, _ := farmFiles(t)
	conf := filepath.Join(t.TempDir(), "tlsfarm.yaml")
	listener := "listeners:\n  - address: 127.0.0.1:0\n"
	farmPart := fmt.Sprintf("farm:\n  url: %s\n  secret_file: %s\n  name: %s\n", redistest.URL(t), secret, redistest.Farm(t))
	writeFile(t, conf, listener+farmPart, 0o644)
	p := serveProc(t, []string{"-config", conf})

	writeFile(t, conf, listener+"log:\n  level: debug\n", 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	partial := p.waitLog("reload applied, except settings that need a restart: they keep their running values until tlsfarm restarts", 5*time.Second)
	if partial == nil {
		t.Fatalf("no partial reload:\n%s", p.log())
	}
	if !strings.Contains(fmt.Sprint(partial["restart_needed"]), "farm.url") {
		t.Errorf("restart_needed = %v", partial["restart_needed"])
	}
	if n := metric(t, p, `tlsfarm_reloads_total{result="rejected"}`); n != 0 {
		t.Errorf("rejected reloads = %v:\n%s", n, p.log())
	}
	if st, connected := farmState(t, p); !connected {
		t.Errorf("the farm stopped running before the restart: %s", st)
	}
	p.stop()
}
