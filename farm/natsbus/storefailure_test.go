package natsbus_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus/natsembed"
)

// TestBucketOpensAfterPassingStoreFailure: when the last stream of an
// account is deleted, nats-server removes the account's emptied
// directories in the background, and a stream created at that moment
// fails with a 500 ("error creating store for stream": its parent
// directory went away under it). That failed a landing CI run's first
// SetNX, just after the test before it deleted its bucket. A farm's first
// write, which opens the bucket, must ask again rather than fail.
//
// The race itself is rare (some 1 in 300 creates right after a delete);
// here the same answer is made certain: the account's streams directory
// is a file while the first create runs, and becomes a directory again
// once the server has logged that create's failure.
func TestBucketOpensAfterPassingStoreFailure(t *testing.T) {
	dir := t.TempDir()
	failed := make(chan struct{})
	var once sync.Once
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		if bytes.Contains(p, []byte("Stream create failed")) {
			once.Do(func() { close(failed) })
		}
		return len(p), nil
	}), &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := natsembed.Start(&natsembed.Config{Dir: dir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)

	account := filepath.Join(dir, "jetstream", "$G")
	if err := os.MkdirAll(account, 0o700); err != nil {
		t.Fatal(err)
	}
	streams := filepath.Join(account, "streams")
	if err := os.RemoveAll(streams); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(streams, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	restored := make(chan error, 1)
	go func() {
		select {
		case <-failed:
		case <-time.After(10 * time.Second):
		}
		// The server's clean-up after the failure may have removed it.
		if err := os.Remove(streams); err != nil && !errors.Is(err, fs.ErrNotExist) {
			restored <- err
		}
		close(restored)
	}()

	tr := open(t, s.URL(), farmtest.FarmName(t))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	ok, err := tr.SetNX(ctx, "k", []byte("v"), time.Minute)
	select {
	case <-failed:
	default:
		t.Fatal("the server logged no failed stream create: the test did not make one")
	}
	if err := <-restored; err != nil {
		t.Fatal(err)
	}
	if !ok || err != nil {
		t.Fatalf("the first write, whose bucket's first create failed = %t, %v; want true", ok, err)
	}
	if ok, err := tr.SetNX(ctx, "k", []byte("w"), time.Minute); ok || err != nil {
		t.Errorf("a second SetNX of the key = %t, %v; want false: the bucket holds the first", ok, err)
	}
}

// writerFunc is an io.Writer made of a function.
type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
