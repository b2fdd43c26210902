package probe

import (
	"encoding/json"
	"io"
	"math"
	"slices"
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
type Summary struct {
	Count              int
	P50, P90, P99, Max time.Duration
}

// summarize returns the Summary of d, which it sorts.
func summarize(d []time.Duration) Summary {
	if len(d) == 0 {
		return Summary{}
	}
	slices.Sort(d)
	// The nearest rank of percentile pct is ceil(pct/100 * n), from 1.
	rank := func(pct int) time.Duration {
		i := (pct*len(d)+99)/100 - 1
		return d[max(i, 0)]
	}
	return Summary{Count: len(d), P50: rank(50), P90: rank(90), P99: rank(99), Max: d[len(d)-1]}
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

// tally is one client's record of its connections to one target.
type tally struct {
	full, resumed, failed, offered, crossNode int
	early, offerFailed                        int
	errors                                    map[string]int
	fullConnect, fullHandshake                []time.Duration
	resumedConnect, resumedHandshake          []time.Duration
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
		t.resumedConnect = append(t.resumedConnect, r.connect)
		t.resumedHandshake = append(t.resumedHandshake, r.handshake)
	default:
		t.full++
		t.fullConnect = append(t.fullConnect, r.connect)
		t.fullHandshake = append(t.fullHandshake, r.handshake)
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

// merge adds u's counts and samples to t.
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
	t.fullConnect = append(t.fullConnect, u.fullConnect...)
	t.fullHandshake = append(t.fullHandshake, u.fullHandshake...)
	t.resumedConnect = append(t.resumedConnect, u.resumedConnect...)
	t.resumedHandshake = append(t.resumedHandshake, u.resumedHandshake...)
}

// stats turns t into the Stats of target. It sorts t's samples.
func (t *tally) stats(target string) Stats {
	s := Stats{
		Target:      target,
		Connections: t.full + t.resumed + t.failed,
		Full:        t.full,
		Resumed:     t.resumed,
		Failed:      t.failed,
		Errors:      t.errors,
		Offered:     t.offered,
		OfferFailed: t.offerFailed,
		CrossNode:   t.crossNode,
		EarlyData:   t.early,
		FullLatency: Latency{
			Connect:   summarize(t.fullConnect),
			Handshake: summarize(t.fullHandshake),
		},
		ResumedLatency: Latency{
			Connect:   summarize(t.resumedConnect),
			Handshake: summarize(t.resumedHandshake),
		},
	}
	if s.Offered > 0 {
		s.ResumptionRate = float64(s.Resumed) / float64(s.Offered)
	}
	return s
}

// newReport merges the workers' tallies.
func newReport(p *plan, workers []*worker) *Report {
	r := &Report{
		ServerName:  p.cfg.ServerName,
		Pick:        p.cfg.Pick,
		Concurrency: p.cfg.Concurrency,
		Version:     versionName(p.cfg.Version),
		HTTP3:       p.cfg.HTTP3,
	}
	var total tally
	for i, addr := range p.addrs {
		var t tally
		for _, w := range workers {
			t.merge(&w.tally[i])
		}
		total.merge(&t)
		r.Targets = append(r.Targets, t.stats(addr))
	}
	r.Total = total.stats("total")
	return r
}
