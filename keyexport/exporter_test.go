package keyexport

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// flakyTarget fails its first fails exports, then writes a real file.
type flakyTarget struct {
	FileTarget
	fails atomic.Int32
}

func (f *flakyTarget) Export(ctx context.Context, s *Set) error {
	if f.fails.Add(-1) >= 0 {
		return errors.New("disk full")
	}
	return f.FileTarget.Export(ctx, s)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestExporterRetriesAndReports follows a ring through two key sets: an
// export that fails is retried until it succeeds, each new set is exported,
// OnChange runs after each change, and Status and Ready say so.
func TestExporterRetriesAndReports(t *testing.T) {
	dir := t.TempDir()
	ring, err := ticket.NewRing(ticket.RingConfig{})
	if err != nil {
		t.Fatal(err)
	}
	good := &FileTarget{Path: filepath.Join(dir, "good.json")}
	flaky := &flakyTarget{FileTarget: FileTarget{Path: filepath.Join(dir, "flaky.json")}}
	flaky.fails.Store(2)
	var changes atomic.Int32
	var lastEpoch atomic.Uint64
	e, err := NewExporter(ExporterConfig{
		Ring: ring, Interval: time.Hour, Keep: 2, Targets: []Target{good, flaky},
		OnChange: func(_ context.Context, s *Set) error {
			changes.Add(1)
			lastEpoch.Store(s.Epoch)
			return nil
		},
		Poll: 5 * time.Millisecond, RetryMin: 20 * time.Millisecond, RetryMax: 40 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()

	time.Sleep(50 * time.Millisecond)
	if e.Ready() == nil || changes.Load() != 0 {
		t.Fatal("exported the ring's own epoch-0 keys")
	}
	st := ring.State()
	st.Epoch = 1
	if err := ring.Set(st); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both targets at epoch 1", func() bool { return e.Ready() == nil })
	s := e.Status()
	if len(s) != 3 || s[2].Target != OnChangeTarget {
		t.Fatalf("status: %+v", s)
	}
	if s[1].Failures != 2 || !s[1].OK || s[1].Epoch != 1 || s[0].Failures != 0 {
		t.Errorf("status after retries: %+v", s)
	}
	waitFor(t, "on-change after the retry", func() bool { return changes.Load() == 2 })

	next, _ := st.Rotate(time.Now(), 2)
	if err := ring.Set(next); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "epoch 2 everywhere", func() bool {
		s := e.Status()
		return s[0].Epoch == 2 && s[1].Epoch == 2 && s[2].Epoch == 2
	})
	if lastEpoch.Load() != 2 {
		t.Errorf("OnChange saw epoch %d", lastEpoch.Load())
	}
	b, _ := os.ReadFile(good.Path)
	if !strings.Contains(string(b), `"epoch": 2`) {
		t.Errorf("the file is not at epoch 2:\n%s", b)
	}
}

func TestCommand(t *testing.T) {
	set := mustSet(t, testState(42, 0), 2)
	out := filepath.Join(t.TempDir(), "out")
	if err := Command("echo $TLSFARM_EPOCH > "+out, 0)(context.Background(), set); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(out); strings.TrimSpace(string(b)) != "42" {
		t.Errorf("the command saw TLSFARM_EPOCH=%q", b)
	}
	err := Command("echo nginx: bad config >&2; exit 3", 0)(context.Background(), set)
	if err == nil || !strings.Contains(err.Error(), "bad config") {
		t.Errorf("err = %v", err)
	}
	// A URL's credentials in the output do not reach the error (the log).
	err = Command("echo curl: https://deploy:hunter2@cdn.example/reload failed; exit 22", 0)(context.Background(), set)
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "cdn.example/reload failed") {
		t.Errorf("err = %v, want the output with the password masked", err)
	}
	start := time.Now()
	if err := Command("sleep 5", 100*time.Millisecond)(context.Background(), set); err == nil || time.Since(start) > 3*time.Second {
		t.Errorf("a command past its timeout: err %v after %v", err, time.Since(start))
	}
}

// TestCommandEnvironment runs env as the on-change command: it sees the
// agent's environment without tlsfarm's own variables, which may hold
// secrets (a farm URL with a password), and with TLSFARM_EPOCH.
func TestCommandEnvironment(t *testing.T) {
	t.Setenv("TLSFARM_FARM_URL", "redis://:hunter2@10.0.0.5:6379/0")
	t.Setenv("TLSFARM_ADMIN_TOKEN", "token-hunter2")
	t.Setenv("TLSFARM_EPOCH", "7") // not the agent's to pass on
	t.Setenv("KEYEXPORT_TEST_KEPT", "kept")
	out := filepath.Join(t.TempDir(), "env")
	if err := Command("env > "+out, 0)(context.Background(), mustSet(t, testState(42, 0), 2)); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var tlsfarm []string
	for _, kv := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(kv, "TLSFARM_") {
			tlsfarm = append(tlsfarm, kv)
		}
	}
	if len(tlsfarm) != 1 || tlsfarm[0] != "TLSFARM_EPOCH=42" {
		t.Errorf("the command's TLSFARM_ variables: %q, want only TLSFARM_EPOCH=42", tlsfarm)
	}
	if strings.Contains(string(b), "hunter2") {
		t.Error("a secret reached the command's environment")
	}
	if !strings.Contains("\n"+string(b), "\nKEYEXPORT_TEST_KEPT=kept\n") || !strings.Contains(string(b), "PATH=") {
		t.Error("the command lost the rest of the agent's environment")
	}
}
