package admin

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tlsfarm/tlsfarm/farm"
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
		e.farm(c.cfg.Node.Stats())
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
		e.ch <- prometheus.MustNewConstMetric(d, t, float64(v), lv)
	}
}

// samples sends a package's metric samples (session.Cache's, farm.Node's)
// as they are: their names, help and labels are the exposition's.
func (e emitter) samples(samples []metric.Sample) {
	for _, s := range samples {
		names := make([]string, len(s.Labels))
		values := make([]string, len(s.Labels))
		for i, l := range s.Labels {
			names[i], values[i] = l.Name, l.Value
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
	e.gauge("tlsfarm_connections_open", "Connections open now.", float64(p.Open))
	e.counter("tlsfarm_upstream_requests_total", "Requests sent to HTTP upstreams.", p.UpstreamRequests)
	e.counter("tlsfarm_upstream_errors_total", "Requests and streams an upstream could not take (dial or proxy errors).", p.UpstreamErrors)
	e.labelled(prometheus.CounterValue, "tlsfarm_reloads_total", "Configuration reloads, by result.", "result",
		map[string]uint64{"applied": p.Reloads, "rejected": p.ReloadFailures})
	if p.QUIC != nil {
		e.quic(p.QUIC)
	}
}

func (e emitter) cache() { e.samples(e.c.cfg.Cache.Metrics()) }

func (e emitter) farm(s farm.Stats) {
	e.gauge("tlsfarm_farm_connected", "1 while the node is subscribed to the farm's bus and its transport answers the health probe.", b2f(s.Connected))
	e.labelled(prometheus.GaugeValue, "tlsfarm_farm_healthy", "1 while the last health probe of the bus or the store was answered.", "path",
		map[string]uint64{"bus": b2u(s.BusHealthy), "store": b2u(s.StoreHealthy)})
	e.counter("tlsfarm_farm_probe_failures_total", "Health probes of the farm transport that failed or timed out.", s.ProbeFailures)
	e.counter("tlsfarm_farm_unencodable_total", "Sessions left out of a message or the store: too large, or a server name over 253 bytes.", s.Unencodable)
	e.counter("tlsfarm_farm_tombstones_truncated_total", "Reads of the store's revocations cut at the member bound.", s.TombstonesTruncated)
	e.counter("tlsfarm_farm_connects_total", "Times the bus subscription came up.", s.Connects)
	e.gauge("tlsfarm_farm_queue_length", "Sessions and revocations waiting to be published.", float64(s.Queued))
	e.counter("tlsfarm_farm_dropped_total", "Items dropped from a full publish queue.", s.Dropped)
	e.labelled(prometheus.CounterValue, "tlsfarm_farm_published_total", "Items published to the bus, by kind.", "kind",
		map[string]uint64{"session": s.Published, "revocation": s.PublishedRevocations})
	e.counter("tlsfarm_farm_publish_errors_total", "Publish batches that failed.", s.PublishErrors)
	e.counter("tlsfarm_farm_unpublished_total", "Items in publish batches that failed.", s.Unpublished)
	e.counter("tlsfarm_farm_store_writes_total", "Sessions written to the store.", s.StoreWrites)
	e.counter("tlsfarm_farm_store_write_errors_total", "Store write batches that failed.", s.StoreWriteErrors)
	e.labelled(prometheus.CounterValue, "tlsfarm_farm_write_through_total", "Handshakes that waited for the store, by result.", "result",
		map[string]uint64{
			"stored":  s.WriteThrough - min(s.WriteThrough, s.WriteThroughTimeouts+s.WriteThroughFailed),
			"timeout": s.WriteThroughTimeouts, "failed": s.WriteThroughFailed,
		})
	e.gauge("tlsfarm_farm_breaker_open", "1 while write-through is suspended after failures.", b2f(s.BreakerOpen))
	e.counter("tlsfarm_farm_breaker_trips_total", "Times write-through was suspended.", s.BreakerTrips)
	e.labelled(prometheus.CounterValue, "tlsfarm_farm_received_total", "Messages from the bus, by kind.", "kind",
		map[string]uint64{"own": s.Self, "session": s.ReceivedSessions, "revocation": s.ReceivedRevocations})
	e.gauge("tlsfarm_farm_pending_revocations", "Revocations applied here and not yet in the store and on the bus (retried).", float64(s.PendingRevocations))
	e.counter("tlsfarm_farm_backlog_dropped_total", "Sessions made during an outage dropped from the full catch-up backlog.", s.BacklogDropped)
	e.gauge("tlsfarm_farm_backlog_length", "Sessions made during an outage waiting to be written and published.", float64(s.Backlog))
	e.labelled(prometheus.CounterValue, "tlsfarm_farm_consumes_total", "Atomic consumes in the store (single use, Consume), by result.", "result",
		map[string]uint64{"consumed": s.Lifecycle.Consumed, "refused": s.Lifecycle.ConsumeRefused, "error": s.Lifecycle.ConsumeErrors, "restored": s.Lifecycle.Restored})
	e.labelled(prometheus.CounterValue, "tlsfarm_farm_lifecycle_total", "Grace cuts and retirements sent to and received from peers.", "event",
		map[string]uint64{"retire_sent": s.Lifecycle.RetiresSent, "retire_received": s.Lifecycle.RetiresReceived, "cut_sent": s.Lifecycle.CutsSent, "cut_received": s.Lifecycle.CutsReceived})
	e.counter("tlsfarm_farm_inserted_total", "Peers' sessions inserted into the cache.", s.Inserted)
	e.counter("tlsfarm_farm_insert_refused_total", "Peers' sessions the cache refused (expired, revoked, foreign ID key).", s.InsertRefused)
	rejected := map[string]uint64{}
	for i, n := range s.Rejected {
		rejected[farm.Rejection(i).String()] = n
	}
	e.labelled(prometheus.CounterValue, "tlsfarm_farm_rejected_total", "Messages dropped, by reason (forged, too old, another farm's...).", "reason", rejected)
	e.labelled(prometheus.CounterValue, "tlsfarm_farm_store_lookups_total", "Store lookups on a cache miss, by result.", "result",
		map[string]uint64{
			"hit": s.StoreHits, "miss": s.StoreMisses, "timeout": s.StoreTimeouts, "error": s.StoreErrors,
			"rejected": s.StoreRejected, "skipped": s.LookupsSkipped, "negative": s.NegativeHits,
		})
	buckets := map[float64]uint64{}
	var cum uint64
	for i, le := range farm.LagBuckets {
		if i < len(s.Lag.Counts) {
			cum += s.Lag.Counts[i]
		}
		buckets[le.Seconds()] = cum
	}
	e.ch <- prometheus.MustNewConstHistogram(
		e.desc("tlsfarm_farm_lag_seconds", "Time from a peer sealing a message to this node receiving it, by the two clocks."),
		s.Lag.Count, s.Lag.Sum.Seconds(), buckets)
}

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
	rs := e.c.cfg.Rotation()
	e.gauge("tlsfarm_ticket_rotation_lease_holder", "1 while this node holds the farm's key rotation lease.", b2f(rs.LeaseHolder))
	e.counter("tlsfarm_ticket_rotations_total", "Farm key rotations this node performed.", rs.Rotations)
	e.counter("tlsfarm_ticket_key_sets_applied_total", "Newer farm key sets applied here.", rs.Applied)
	e.counter("tlsfarm_ticket_rotation_store_errors_total", "Failed store operations of key rotation.", rs.StoreErrors)
	e.counter("tlsfarm_ticket_key_sets_invalid_total", "Key sets that opened but did not decode.", rs.Invalid)
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}
