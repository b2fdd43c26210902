package natsembed_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/natsbus/natsembed"
	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// TestRestartKeepsData: a server restarted on the same port and directory
// keeps the farm's keys, and a transport reconnects to it on its own.
func TestRestartKeepsData(t *testing.T) {
	dir := t.TempDir()
	srv, err := natsembed.Start(&natsembed.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	url := srv.URL()
	tr, err := natsbus.Open(url, "f", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx := context.Background()
	if ok, err := tr.CompareAndSwap(ctx, "keys", nil, []byte("v1"), 0); !ok || err != nil {
		t.Fatalf("CompareAndSwap = %t, %v", ok, err)
	}
	srv.Shutdown()
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("Shutdown removed a directory it did not make: %v", err)
	}
	dctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if _, err := tr.Get(dctx, "keys"); err == nil {
		t.Fatal("Get succeeded with the server down")
	}

	var port int
	if _, err := fmtSscanPort(url, &port); err != nil {
		t.Fatal(err)
	}
	srv, err = natsembed.Start(&natsembed.Config{Port: port, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	if srv.URL() != url {
		t.Fatalf("restarted at %s, want %s", srv.URL(), url)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		// Each try with a deadline, as the farm's calls have: the server
		// may accept connections before JetStream answers.
		gctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		v, err := tr.Get(gctx, "keys")
		cancel()
		if err == nil {
			if string(v) != "v1" {
				t.Fatalf("after restart keys = %q", v)
			}
			break
		}
		if errors.Is(err, transport.ErrNotFound) || time.Now().After(deadline) {
			t.Fatalf("after restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestTempDirRemoved(t *testing.T) {
	srv, err := natsembed.Start(nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := srv.Dir()
	if _, err := os.Stat(dir); err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("temporary directory left behind: %v", err)
	}
}

func TestPortInUse(t *testing.T) {
	srv, err := natsembed.Start(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	var port int
	fmtSscanPort(srv.URL(), &port)
	if s, err := natsembed.Start(&natsembed.Config{Port: port, StartTimeout: time.Second}); err == nil {
		s.Shutdown()
		t.Fatal("a second server started on a port in use")
	}
}

func fmtSscanPort(url string, port *int) (int, error) {
	return fmt.Sscanf(url, "nats://127.0.0.1:%d", port)
}
