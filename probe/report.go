package probe

import (
	"encoding/json"
	"io"
	"math"
	"time"
)

// A Report is what a [Run] found, per target and overall. It marshals to
// JSON with snake_case keys and durations in milliseconds, and unmarshals
// from the same.
type Report struct {
	// Targets holds one entry per Config.Targets, in the same order.
	Targets []Stats `json:"targets"`

	// Total sums the counts of Targets; its latency summaries are over
	// every connection of the run.
	Total Stats `json:"total"`

	// The settings of the run, with defaults applied. Version is "any",
	// "TLS 1.2" or "TLS 1.3".
	ServerName  string `json:"server_name"`
	Pick        string `json:"pick"`
	Concurrency int    `json:"concurrency"`
	Version     string `json:"version"`
	HTTP3       bool   `json:"http3,omitempty"`

	// Elapsed is how long the run took.
	Elapsed time.Duration `json:"-"`
}

// Stats counts the connections to one target, or to all of them.
//
// Every counted connection is Full, Resumed or Failed. A connection whose
// handshake completed but whose request failed is Failed, and its
// handshake is not in the latency summaries.
type Stats struct {
	// Target is the target's address, or "total".
	Target string `json:"target"`

	Connections int `json:"connections"` // Full + Resumed + Failed
	Full        int `json:"full"`        // full handshakes
	Resumed     int `json:"resumed"`     // handshakes that resumed a session
	Failed      int `json:"failed"`      // connections that failed (see Errors)

	// Errors counts failures by kind (FailRefused, FailTimeout, ...). It is
	// nil if nothing failed.
	Errors map[string]int `json:"errors,omitempty"`

	// Offered counts the handshakes in which the client offered a
	// session: the completed ones, and those that failed (OfferFailed).
	// The first connection of each client has none to offer. A
	// connection that failed after its handshake completed (its request)
	// is not counted.
	Offered int `json:"offered"`

	// OfferFailed counts the handshakes in Offered that failed: a node
	// that aborts a handshake offered a session, rather than falling back
	// to a full one, shows here (and in Failed) as well as in a lower
	// ResumptionRate.
	OfferFailed int `json:"offer_failed"`

	// ResumptionRate is Resumed / Offered, or 0 if nothing was offered:
	// how often the farm accepted a session it was offered. An offer whose
	// handshake failed counts as one not resumed.
	ResumptionRate float64 `json:"resumption_rate"`

	// CrossNode counts resumptions of a session that another target had
	// issued: the ones only a farm that shares sessions or ticket keys
	// can make. Per target, it counts the resumptions on that target.
	CrossNode int `json:"cross_node"`

	// EarlyData counts, in an HTTP/3 run, the connections whose 0-RTT
	// early data the server accepted. A farm that refuses replays accepts
	// early data at most once per session.
	EarlyData int `json:"early_data"`

	// FullLatency and ResumedLatency summarize the handshakes of Full and
	// Resumed connections.
	FullLatency    Latency `json:"full_latency"`
	ResumedLatency Latency `json:"resumed_latency"`
}

// Latency summarizes how long a set of connections took to become ready.
type Latency struct {
	// Connect runs from the start of the dial to the end of the
	// handshake: what a client waits for before it can send a request.
	Connect Summary `json:"connect"`
	// Handshake is the TLS handshake alone, after the TCP connection.
	Handshake Summary `json:"handshake"`
}

// A Summary describes a set of durations by its percentiles (nearest rank)
// and maximum. It is all zero for an empty set. In JSON the durations are
// milliseconds: {"count":3,"p50_ms":0.41,...}.
//
// [Run] counts durations in a histogram rather than keeping each one, so
// that a long run takes no more memory than a short one: Count and Max are
// exact, and each percentile is within [HistogramError] (0.2%) of the
// exact one, never below the least duration nor above Max.
type Summary struct {
	Count              int
	P50, P90, P99, Max time.Duration
}

type summaryJSON struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	Max   float64 `json:"max_ms"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fromMS(f float64) time.Duration { return time.Duration(math.Round(f * float64(time.Millisecond))) }

// MarshalJSON implements json.Marshaler.
func (s Summary) MarshalJSON() ([]byte, error) {
	return json.Marshal(summaryJSON{s.Count, ms(s.P50), ms(s.P90), ms(s.P99), ms(s.Max)})
}

// UnmarshalJSON implements json.Unmarshaler.
func (s *Summary) UnmarshalJSON(b []byte) error {
	var j summaryJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*s = Summary{j.Count, fromMS(j.P50), fromMS(j.P90), fromMS(j.P99), fromMS(j.Max)}
	return nil
}

// reportJSON is a Report without its methods, plus Elapsed in milliseconds.
type reportJSON struct {
	*plainReport
	ElapsedMS float64 `json:"elapsed_ms"`
}

type plainReport Report

// MarshalJSON implements json.Marshaler.
func (r Report) MarshalJSON() ([]byte, error) {
	return json.Marshal(reportJSON{(*plainReport)(&r), ms(r.Elapsed)})
}

// UnmarshalJSON implements json.Unmarshaler.
func (r *Report) UnmarshalJSON(b []byte) error {
	j := reportJSON{plainReport: (*plainReport)(r)}
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	r.Elapsed = fromMS(j.ElapsedMS)
	return nil
}

// writeJSON writes r to w as indented JSON and a newline.
func (r *Report) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// tally is one client's count of its connections to one target. Their
// latencies go to the run's histograms (runner.lat), whose size does not
// grow with the number of connections or of clients.
type tally struct {
	full, resumed, failed, offered, crossNode int
	early, offerFailed                        int
	errors                                    map[string]int
}

func (t *tally) add(r result) {
	switch {
	case r.failure != "":
		t.failed++
		if t.errors == nil {
			t.errors = make(map[string]int)
		}
		t.errors[r.failure]++
		if r.offered {
			t.offered++
			t.offerFailed++
		}
		return
	case r.resumed:
		t.resumed++
	default:
		t.full++
	}
	if r.offered {
		t.offered++
	}
	if r.crossNode {
		t.crossNode++
	}
	if r.early {
		t.early++
	}
}

// merge adds u's counts to t.
func (t *tally) merge(u *tally) {
	t.full += u.full
	t.resumed += u.resumed
	t.failed += u.failed
	t.offered += u.offered
	t.crossNode += u.crossNode
	t.early += u.early
	t.offerFailed += u.offerFailed
	for k, n := range u.errors {
		if t.errors == nil {
			t.errors = make(map[string]int)
		}
		t.errors[k] += n
	}
}

// stats turns t, and lat its latencies, into the Stats of target.
func (t *tally) stats(target string, lat *latencies) Stats {
	s := Stats{
		Target:         target,
		Connections:    t.full + t.resumed + t.failed,
		Full:           t.full,
		Resumed:        t.resumed,
		Failed:         t.failed,
		Errors:         t.errors,
		Offered:        t.offered,
		OfferFailed:    t.offerFailed,
		CrossNode:      t.crossNode,
		EarlyData:      t.early,
		FullLatency:    lat.full(),
		ResumedLatency: lat.resumed(),
	}
	if s.Offered > 0 {
		s.ResumptionRate = float64(s.Resumed) / float64(s.Offered)
	}
	return s
}

// newReport merges the workers' tallies, and lat, the latencies of each
// target.
func newReport(p *plan, workers []*worker, lat []latencies) *Report {
	r := &Report{
		ServerName:  p.cfg.ServerName,
		Pick:        p.cfg.Pick,
		Concurrency: p.cfg.Concurrency,
		Version:     versionName(p.cfg.Version),
		HTTP3:       p.cfg.HTTP3,
	}
	var total tally
	var totalLat latencies
	for i, addr := range p.addrs {
		var t tally
		for _, w := range workers {
			t.merge(&w.tally[i])
		}
		total.merge(&t)
		totalLat.merge(&lat[i])
		r.Targets = append(r.Targets, t.stats(addr, &lat[i]))
	}
	r.Total = total.stats("total", &totalLat)
	return r
}
