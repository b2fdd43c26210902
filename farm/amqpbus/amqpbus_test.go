package amqpbus_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// brokerURL returns the URL of the machine's RabbitMQ
// (TLSFARM_AMQP_URL, default amqp://guest:guest@127.0.0.1:5672/), skipping
// the test if it does not answer.
func brokerURL(tb testing.TB) string {
	tb.Helper()
	return farmtest.ServerURL(tb, "RabbitMQ", "TLSFARM_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
}

func brokerAddr(u string) string {
	addr := u[strings.Index(u, "://")+3:]
	if j := strings.LastIndexByte(addr, '@'); j >= 0 {
		addr = addr[j+1:]
	}
	if i := strings.IndexByte(addr, '/'); i >= 0 {
		addr = addr[:i]
	}
	return addr
}

func open(tb testing.TB, url, farmName string, opts *amqpbus.Options) *amqpbus.Bus {
	tb.Helper()
	b, err := amqpbus.Open(url, farmName, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { b.Close() })
	deleteExchangeAtEnd(tb, url, b.Exchange())
	return b
}

// deleteExchangeAtEnd deletes exchange when the test ends: the transport
// declares it non-durable and never deletes it, and tests should leave
// nothing on a shared broker.
func deleteExchangeAtEnd(tb testing.TB, url, exchange string) {
	tb.Cleanup(func() {
		conn, err := amqp.Dial(url)
		if err != nil {
			return
		}
		defer conn.Close()
		if ch, err := conn.Channel(); err == nil {
			ch.ExchangeDelete(exchange, false, false)
		}
	})
}

func TestBusConformance(t *testing.T) {
	url := brokerURL(t)
	for _, tc := range []struct {
		name string
		opts *amqpbus.Options
	}{{"confirms", nil}, {"no-confirms", &amqpbus.Options{NoConfirm: true}}} {
		t.Run(tc.name, func(t *testing.T) {
			farmtest.TestBus(t, func(t *testing.T, name string) transport.Bus { return open(t, url, name, tc.opts) })
		})
	}
}

func TestOpenURLs(t *testing.T) {
	farmtest.TestOpenURLs(t, func(url string) (io.Closer, error) { return amqpbus.Open(url, "f", nil) }, map[string]string{
		"amqp://guest:guest@127.0.0.1:5672/":     "",
		"amqp://127.0.0.1":                       "",
		"amqps://user:pass@broker.example/vhost": "",
		"http://127.0.0.1":                       "scheme",
		"amqp://user:s3cret@[::1":                "amqpbus",
		"amqp://user:s3cret@host:notaport/":      "amqpbus",
		"amqp://user:s3cret@host with space/":    "amqpbus",
	})
}

func TestExchangeNames(t *testing.T) {
	for _, tc := range []struct{ farm, want string }{
		{"prod", "tlsfarm.prod"},
		{"eu-1.a:b", "tlsfarm.eu-1.a:b"},
		{"a_b c", "tlsfarm.a_5fb_20c"},
	} {
		b, err := amqpbus.Open("amqp://127.0.0.1", tc.farm, nil)
		if err != nil {
			t.Fatal(err)
		}
		if b.Exchange() != tc.want {
			t.Errorf("farm %q: exchange %q, want %q", tc.farm, b.Exchange(), tc.want)
		}
	}
	for _, bad := range []string{"", strings.Repeat("x", 65)} {
		if _, err := amqpbus.Open("amqp://127.0.0.1", bad, nil); err == nil {
			t.Errorf("farm name %q accepted", bad)
		}
	}
}

// TestPasswordNeverShown: refused logins and unreachable brokers show up in
// Publish's errors and Subscribe's state without the URL's password, in
// either spelling. (RabbitMQ answers a bad password after about 3s.)
func TestPasswordNeverShown(t *testing.T) {
	addr := brokerAddr(brokerURL(t))
	for _, tc := range []struct {
		url, want string
	}{
		{"amqp://guest:s3cret-pw@" + addr + "/", "403"},
		{"amqp://guest:s3cret%2Fpw@" + addr + "/", "403"},
		{"amqp://guest:s3cret-pw@127.0.0.1:1/", "refused"},
		{"amqps://guest:s3cret-pw@" + addr + "/", "tls"},
	} {
		t.Run("", func(t *testing.T) {
			t.Parallel()
			// Not open: its clean-up would log in with the bad password.
			b, err := amqpbus.Open(tc.url, farmtest.FarmName(t), &amqpbus.Options{DialTimeout: 4 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			var errs []error
			b.Subscribe(ctx, func([]byte) {}, func(up bool, err error) {
				if up {
					t.Errorf("%s: subscribed", tc.url)
				}
				errs = append(errs, err)
			})
			cancel()
			errs = append(errs, b.Publish(context.Background(), []byte("x")))
			saw := false
			for _, err := range errs {
				if err == nil {
					continue
				}
				msg := err.Error()
				if strings.Contains(msg, "s3cret") {
					t.Fatalf("%s: error shows the password: %v", tc.url, err)
				}
				saw = saw || strings.Contains(strings.ToLower(msg), tc.want)
			}
			if !saw {
				t.Errorf("%s: no error mentions %q: %v", tc.url, tc.want, errs)
			}
		})
	}
}

// TestHungBrokerDoesNotHoldCallers: Subscribe returns promptly when its
// context ends, and Publish by its deadline, while the broker accepts
// connections and never answers.
func TestHungBrokerDoesNotHoldCallers(t *testing.T) {
	b, err := amqpbus.Open("amqp://guest:guest@"+nettest.Silent(t)+"/", farmtest.FarmName(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Subscribe(ctx, func([]byte) {}, func(bool, error) {}) }()
	time.Sleep(300 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Subscribe returned %v, want context.Canceled", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Subscribe did not return within 3s of its context ending")
	}

	pctx, pcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer pcancel()
	start := time.Now()
	if err := b.Publish(pctx, []byte("x")); err == nil {
		t.Fatal("Publish to a hung broker succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Publish with a 300ms deadline took %v", d)
	}
}

// TestHungConnectionReleasesCallers: once a connection is open, a broker
// that hangs (the proxy frozen) holds Publish and Ping only until their
// deadline, and the connection they then drop only briefly: not the
// second a broker that answers would take at most to confirm the close.
func TestHungConnectionReleasesCallers(t *testing.T) {
	url := brokerURL(t)
	addr := brokerAddr(url)
	p := nettest.NewProxy(t, addr)
	b, err := amqpbus.Open(strings.Replace(url, addr, p.Addr, 1), farmtest.FarmName(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	deleteExchangeAtEnd(t, url, b.Exchange())
	defer b.Close()
	defer p.Cut() // before Close, which would wait on the hung broker
	ctx := context.Background()
	if err := b.Publish(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := b.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	const after = 200 * time.Millisecond
	for _, c := range []struct {
		name string
		call func(context.Context) error
		end  func(context.Context) (context.Context, context.CancelFunc)
	}{
		{"Publish, deadline", func(ctx context.Context) error { return b.Publish(ctx, []byte("y")) }, deadline},
		{"Publish, canceled", func(ctx context.Context) error { return b.Publish(ctx, []byte("y")) }, canceled},
		{"Ping, deadline", b.Ping, deadline},
		{"Ping, canceled", b.Ping, canceled},
	} {
		// A connection open, then the broker hangs.
		p.Thaw()
		farmtest.Eventually(t, 5*time.Second, "a connection to the broker", func() bool {
			return b.Publish(ctx, []byte("x")) == nil && b.Ping(ctx) == nil
		})
		p.Freeze()
		cctx, cancel := c.end(ctx)
		start := time.Now()
		err := c.call(cctx)
		took := time.Since(start)
		cancel()
		t.Logf("%s on the hung connection failed after %v: %v", c.name, took.Round(time.Millisecond), err)
		if err == nil {
			t.Fatalf("%s on a hung broker succeeded", c.name)
		}
		if took > after+400*time.Millisecond {
			t.Errorf("%s: the call ended %v after it began on a hung broker, its context %v", c.name, took, after)
		}
	}
}

// deadline and canceled end ctx's child after 200 ms, by its deadline or
// by a cancel.
func deadline(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, 200*time.Millisecond)
}

func canceled(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(200*time.Millisecond, cancel)
	return ctx, cancel
}

// TestOpenRejectsUnknownURLOptions: a query option amqp091-go does not read
// (a misspelt heartbeat, an option of another transport) or one the bus
// overrides (connection_timeout: the bus dials with Options.DialTimeout)
// is an error, not silently ignored; the ones amqp091-go reads still work.
func TestOpenRejectsUnknownURLOptions(t *testing.T) {
	farmtest.TestOpenURLs(t, func(url string) (io.Closer, error) { return amqpbus.Open(url, "f", nil) }, map[string]string{
		"amqp://127.0.0.1/?heartbeat=5":                         "",
		"amqp://127.0.0.1/?channel_max=10":                      "",
		"amqps://127.0.0.1/?server_name_indication=b.example":   "",
		"amqp://127.0.0.1/?auth_mechanism=PLAIN":                "",
		"amqp://user:s3cret@127.0.0.1/?hearbeat=5":              "hearbeat",
		"amqp://127.0.0.1/?prefetch=10":                         "prefetch",
		"amqp://127.0.0.1/?replicas=3":                          "replicas",
		"amqp://user:s3cret@127.0.0.1/?connection_timeout=1000": "connection_timeout",
	})
}
