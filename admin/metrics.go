package admin

import (
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tlsfarm/tlsfarm/metric"
)

// A collector reads the node's counters at each scrape, so that the metrics
// are the counters themselves and nothing is counted twice.
type collector struct {
	cfg   *Config
	descs sync.Map // name -> *prometheus.Desc
}

func newCollector(cfg *Config) *collector { return &collector{cfg: cfg} }

// Describe sends nothing: the collector is unchecked, as its metrics depend
// on what the node runs (a farm or not, rotation or not).
func (c *collector) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	e := emitter{c: c, ch: ch}
	if c.cfg.Proxy != nil {
		e.proxy(c.cfg.Proxy())
	}
	ready := 1.0
	if c.cfg.Ready != nil && c.cfg.Ready() != nil {
		ready = 0
	}
	e.gauge("tlsfarm_listeners_ready", "1 while every listener accepts connections.", ready)
	e.cache()
	if c.cfg.Node != nil {
		e.samples(c.cfg.Node.Metrics())
	}
	e.keys()
	if c.cfg.Exports != nil {
		e.exports(c.cfg.Exports())
	}
}

// An emitter sends metrics for one scrape.
type emitter struct {
	c  *collector
	ch chan<- prometheus.Metric
}

func (e emitter) desc(name, help string, labels ...string) *prometheus.Desc {
	if d, ok := e.c.descs.Load(name); ok {
		return d.(*prometheus.Desc)
	}
	d, _ := e.c.descs.LoadOrStore(name, prometheus.NewDesc(name, help, labels, nil))
	return d.(*prometheus.Desc)
}

// labelled sends one metric per label value, with one label.
func (e emitter) labelled(t prometheus.ValueType, name, help, label string, values map[string]uint64) {
	d := e.desc(name, help, label)
	for lv, v := range values {
		e.ch <- prometheus.MustNewConstMetric(d, t, float64(v), labelValue(lv))
	}
}

// samples sends a package's metric samples (session.Cache's, farm.Node's)
// as they are: their names, help and labels are the exposition's.
func (e emitter) samples(samples []metric.Sample) {
	for _, s := range samples {
		names := make([]string, len(s.Labels))
		values := make([]string, len(s.Labels))
		for i, l := range s.Labels {
			names[i], values[i] = l.Name, labelValue(l.Value)
		}
		d := e.desc(s.Name, s.Help, names...)
		switch s.Kind {
		case metric.Histogram:
			buckets := make(map[float64]uint64, len(s.Buckets))
			for _, b := range s.Buckets {
				buckets[b.UpperBound] = b.Count
			}
			e.ch <- prometheus.MustNewConstHistogram(d, s.Count, s.Value, buckets, values...)
		case metric.Gauge:
			e.ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, s.Value, values...)
		default:
			e.ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, s.Value, values...)
		}
	}
}

// labelValue returns v as a valid label value: Prometheus refuses one that
// is not UTF-8 (a path may be any bytes), and a refused value made the
// whole scrape fail. Bytes that are not UTF-8 become U+FFFD.
func labelValue(v string) string { return strings.ToValidUTF8(v, "\uFFFD") }

func (e emitter) counter(name, help string, v uint64) {
	e.ch <- prometheus.MustNewConstMetric(e.desc(name, help), prometheus.CounterValue, float64(v))
}

func (e emitter) gauge(name, help string, v float64) {
	e.ch <- prometheus.MustNewConstMetric(e.desc(name, help), prometheus.GaugeValue, v)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (e emitter) proxy(p ProxyStats) {
	d := e.desc("tlsfarm_handshakes_total", "Completed TLS handshakes, by version and kind (full or resumed).", "version", "kind")
	for _, h := range p.Handshakes {
		kind := "full"
		if h.Resumed {
			kind = "resumed"
		}
		e.ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(h.Count), h.Version, kind)
	}
	e.labelled(prometheus.CounterValue, "tlsfarm_handshake_failures_total", "Failed handshakes, by reason.", "reason", p.HandshakeFailures)
	e.counter("tlsfarm_connections_accepted_total", "Connections accepted.", p.Accepted)
	e.gauge("tlsfarm_connections_open", "TCP connections open now (HTTP/3 connections are counted apart, when a listener serves HTTP/3).", float64(p.Open))
	e.counter("tlsfarm_upstream_requests_total", "Requests sent to HTTP upstreams.", p.UpstreamRequests)
	e.counter("tlsfarm_upstream_errors_total", "Requests and streams an upstream could not take (dial or proxy errors).", p.UpstreamErrors)
	e.labelled(prometheus.CounterValue, "tlsfarm_reloads_total", "Configuration reloads, by result.", "result",
		map[string]uint64{"applied": p.Reloads, "rejected": p.ReloadFailures})
	if p.QUIC != nil {
		e.quic(p.QUIC)
	}
	e.samples(p.Samples)
}

func (e emitter) cache() { e.samples(e.c.cfg.Cache.Metrics()) }

func (e emitter) keys() {
	r := e.c.cfg.Ring
	if r == nil {
		return
	}
	st := r.Status()
	e.gauge("tlsfarm_ticket_key_epoch", "Epoch of the ticket key set in use.", float64(st.Epoch))
	e.gauge("tlsfarm_ticket_key_age_seconds", "Time since the current ticket key started encrypting.", time.Since(st.Rotated).Seconds())
	e.gauge("tlsfarm_ticket_keys", "Ticket keys that decrypt: current, staged and previous.", float64(st.Keys))
	if e.c.cfg.Rotation == nil {
		return
	}
	e.samples(e.c.cfg.Rotation())
}
