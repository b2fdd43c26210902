package admin

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// brokenCollector fails at every collection.
type brokenCollector struct{ desc *prometheus.Desc }

func (c brokenCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c brokenCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.NewInvalidMetric(c.desc, errors.New("collector broke reading /secret/path"))
}

// syncBuffer is a bytes.Buffer that the handler's goroutines may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestMetricsSurviveABrokenCollector: a collector that fails loses its
// own metric, not the scrape. /metrics, which needs no token, answers 200
// with every other metric and shows nothing of the error, which goes to
// the log once, however many scrapes meet it.
func TestMetricsSurviveABrokenCollector(t *testing.T) {
	var logs syncBuffer
	srv, _ := newHandler(t, func(c *Config) {
		c.Collectors = []prometheus.Collector{brokenCollector{
			prometheus.NewDesc("test_broken", "A collector that fails.", nil, nil),
		}}
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	for range 3 {
		code, body := nettest.Do(t, "GET", srv.URL+"/metrics", "")
		if code != 200 {
			t.Fatalf("metrics: status %d\n%s", code, body)
		}
		for _, want := range []string{"tlsfarm_cache_sessions ", "go_goroutines "} {
			if !strings.Contains(body, want) {
				t.Errorf("metrics lack %q", want)
			}
		}
		for _, leak := range []string{"test_broken", "collector broke", "/secret/path", "goroutine "} {
			if strings.Contains(body, leak) {
				t.Errorf("metrics show %q:\n%s", leak, body)
			}
		}
	}
	out := logs.String()
	if n := strings.Count(out, "collector broke reading /secret/path"); n != 1 || !strings.Contains(out, "level=WARN") {
		t.Errorf("the error was logged %d times, want once as a warning:\n%s", n, out)
	}
}

// manySeries yields n series, so that an answer outgrows the socket
// buffers and a scraper that goes away makes the writes fail.
type manySeries struct {
	desc *prometheus.Desc
	n    int
}

func (c manySeries) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c manySeries) Collect(ch chan<- prometheus.Metric) {
	for i := range c.n {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(i), strconv.Itoa(i))
	}
}

// TestMetricsScraperGoneIsNoWarning: scrapers that go away in the middle
// of the answer (a scrape timeout, a client reset) fail the writes, which
// is neither a collector's failure nor news for an operator. Before the
// fix each one logged "answered without the metrics that failed (logged
// once)" as a warning, one per scrape (the error names the client's port),
// so that any client, with no token, wrote warnings at will; now the
// warnings stay empty, and the debug level says it once per scrape at
// most, not once per metric family.
func TestMetricsScraperGoneIsNoWarning(t *testing.T) {
	var logs syncBuffer
	srv, _ := newHandler(t, func(c *Config) {
		c.Collectors = []prometheus.Collector{manySeries{
			prometheus.NewDesc("test_many", "Many series.", []string{"i"}, nil), 20000,
		}}
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	addr := strings.TrimPrefix(srv.URL, "http://")
	const scrapes = 10
	for range scrapes {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n")
		if _, err := io.ReadFull(c, make([]byte, 64)); err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).SetLinger(0) // a reset, as a scraper that gives up
		c.Close()
	}
	// The answers' writes fail once the resets land; wait for a line
	// for each (or, before the fix, a warning).
	for deadline := time.Now().Add(5 * time.Second); strings.Count(logs.String(), "\n") < scrapes && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	out := logs.String()
	if n := strings.Count(out, "level=WARN"); n != 0 {
		t.Errorf("%d scrapers that went away logged %d warnings, want none:\n%.2000s", scrapes, n, out)
	}
	if n := strings.Count(out, "connection failed while answering"); n > scrapes {
		t.Errorf("%d scrapers that went away logged %d debug lines, want one each at most", scrapes, n)
	}
	// A collector's own network error is still a collector's: warned.
	var logs2 syncBuffer
	srv2, _ := newHandler(t, func(c *Config) {
		c.Collectors = []prometheus.Collector{netBroken{prometheus.NewDesc("test_net", "A collector whose backend is gone.", nil, nil)}}
		c.Logger = slog.New(slog.NewTextHandler(&logs2, nil))
	})
	nettest.Do(t, "GET", srv2.URL+"/metrics", "")
	if !strings.Contains(logs2.String(), "level=WARN") || !strings.Contains(logs2.String(), "backend.invalid") {
		t.Errorf("a collector's network error was not warned:\n%s", logs2.String())
	}
	// A scrape that completes still answers whole.
	if code, body := nettest.Do(t, "GET", srv.URL+"/metrics", ""); code != 200 || !strings.Contains(body, `test_many{i="19999"} 19999`) {
		t.Errorf("metrics after the cut scrapes: %d, %d bytes", code, len(body))
	}
}

// netBroken fails with a network error of its own.
type netBroken struct{ desc *prometheus.Desc }

func (c netBroken) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c netBroken) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.NewInvalidMetric(c.desc, &net.OpError{Op: "dial", Net: "tcp", Addr: fakeAddr("backend.invalid:1"), Err: errors.New("connection refused")})
}

type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }
