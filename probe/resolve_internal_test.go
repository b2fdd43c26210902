package probe

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// TestHTTP3LookupEndsWithTheRun gives an HTTP/3 run a target by host name
// whose DNS server never answers, and ends the run (as SIGINT does) while
// the name is being looked up: Run must return at once, not when the
// lookup times out.
func TestHTTP3LookupEndsWithTheRun(t *testing.T) {
	silent, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	asked := make(chan struct{})
	go func() {
		buf := make([]byte, 1500)
		if _, _, err := silent.ReadFrom(buf); err == nil {
			close(asked)
		}
	}()
	saved := resolver
	t.Cleanup(func() { resolver = saved })
	resolver = &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "udp", silent.LocalAddr().String())
		},
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := Run(ctx, Config{
			Targets: []string{"slow-dns.example:4433"}, ServerName: "localhost",
			Connections: 1, HTTP3: true, Timeout: time.Minute,
		}, nil)
		done <- err
	}()
	select {
	case <-asked:
	case err := <-done:
		t.Fatalf("the run ended (%v) before asking the DNS server", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the DNS server was not asked")
	}
	cancel()
	stopped := time.Now()
	select {
	case err := <-done:
		if took := time.Since(stopped); took > time.Second {
			t.Errorf("Run returned %v after the cancel", took)
		}
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run still waits for the lookup 30s after the cancel")
	}
}
