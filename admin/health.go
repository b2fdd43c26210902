package admin

import (
	"errors"
	"net/http"
	"time"

	"github.com/tlsfarm/tlsfarm/metric"
)

// Health is the answer of GET /healthz.
type Health struct {
	// Status is "ok"; "degraded": serving, but the farm transport is
	// down, the node has yet to read the farm's revocations (it resumes
	// nothing from the farm meanwhile), or a key export fails;
	// "draining": the listeners have stopped accepting to finish the
	// connections they hold (a graceful shutdown, see ErrDraining); or
	// "unavailable": the listeners are not serving. Reasons says which.
	Status    string         `json:"status"`
	Reasons   []string       `json:"reasons,omitempty"`     // why Status is not "ok", one line each
	Node      string         `json:"node,omitempty"`        // Config.NodeName
	Listeners ListenerHealth `json:"listeners"`             // whether the listeners serve
	Sessions  int            `json:"sessions"`              // sessions in the cache now
	Farm      *FarmHealth    `json:"farm,omitempty"`        // nil for a node that serves alone
	Keys      *KeyHealth     `json:"ticket_keys,omitempty"` // nil without Config.Ring
	Exports   []ExportStatus `json:"exports,omitempty"`     // one per key export target
}

// Reasons of a Status other than "ok", as Health.Reasons and /readyz say
// them.
const (
	reasonFarmDown   = "farm transport down: serving from the local cache"
	reasonRevsUnread = "revocations not read yet: resuming nothing from the farm"
	reasonExports    = "a key export target fails"
)

// ErrDraining is what a Config.Ready returns, wrapped or not, while the
// listeners have stopped accepting new connections to finish those they
// hold (a graceful shutdown). /readyz then fails, so that load balancers
// send no more; /healthz answers 200 with status "draining", not 503: the
// process is alive and finishing its work, and a liveness check that
// failed it would have it killed in the middle of its drain.
var ErrDraining = errors.New("draining: not accepting new connections")

// exportErrorHidden stands for a key export's error in /healthz for a
// caller without the admin token.
const exportErrorHidden = "failed (the error is in the log; /healthz shows it with the admin token)"

// ListenerHealth says whether the listeners serve.
type ListenerHealth struct {
	Ready bool   `json:"ready"`           // Config.Ready returned nil (or is nil)
	Error string `json:"error,omitempty"` // what Config.Ready returned otherwise
}

// FarmHealth is the state of the node's farm membership, read from its
// tlsfarm_farm_* samples.
type FarmHealth struct {
	Connected bool `json:"connected"` // the transports are up (farm.Node.Connected)
	// RevocationsKnown is false until the node has read the farm's
	// revocations (farm.Node.RevocationsKnown): until then it resumes
	// nothing from the farm, and its clients make full handshakes.
	RevocationsKnown bool   `json:"revocations_known"`
	Strict           bool   `json:"strict"`         // a farm outage or unread revocations fail /readyz (Config.Strict)
	Connects         uint64 `json:"connects"`       // bus subscriptions made since Join
	Queued           int    `json:"queued"`         // sessions and revocations waiting to be published
	Dropped          uint64 `json:"dropped"`        // dropped from a full publish queue
	PublishErrors    uint64 `json:"publish_errors"` // publish batches that failed
	StoreErrors      uint64 `json:"store_errors"`   // failed store write batches and lookups
}

// KeyHealth describes the ticket keys in use.
type KeyHealth struct {
	Epoch       uint64  `json:"epoch"`        // the key set's epoch (ticket.Status.Epoch)
	Current     string  `json:"current"`      // a fingerprint, never the key
	AgeSeconds  float64 `json:"age_seconds"`  // since the current key started encrypting
	Keys        int     `json:"keys"`         // keys that decrypt: current, staged, previous
	FarmWide    bool    `json:"farm_wide"`    // the keys follow the farm's (Config.Rotation is set)
	LeaseHolder bool    `json:"lease_holder"` // this node holds the farm's rotation lease
}

func (h *Handler) health() Health {
	sessions, _ := metric.Value(h.cfg.Cache.Metrics(), "tlsfarm_cache_sessions")
	out := Health{Status: "ok", Node: h.cfg.NodeName, Sessions: int(sessions)}
	degrade := func(reason string) {
		out.Reasons = append(out.Reasons, reason)
		if out.Status == "ok" {
			out.Status = "degraded"
		}
	}
	out.Listeners.Ready = true
	if h.cfg.Ready != nil {
		if err := h.cfg.Ready(); err != nil {
			out.Listeners = ListenerHealth{Error: err.Error()}
			out.Status = "unavailable"
			if errors.Is(err, ErrDraining) {
				out.Status = "draining"
			}
			out.Reasons = append(out.Reasons, "listeners not serving: "+err.Error())
		}
	}
	if n := h.cfg.Node; n != nil {
		st := n.Metrics()
		connected := value(st, "tlsfarm_farm_connected") == 1
		out.Farm = &FarmHealth{
			Connected: connected, RevocationsKnown: revocationsKnown(st),
			Strict: h.cfg.Strict, Connects: value(st, "tlsfarm_farm_connects_total"),
			Queued: int(value(st, "tlsfarm_farm_queue_length")), Dropped: value(st, "tlsfarm_farm_dropped_total"),
			PublishErrors: value(st, "tlsfarm_farm_publish_errors_total"),
			StoreErrors:   value(st, "tlsfarm_farm_store_write_errors_total") + value(st, "tlsfarm_farm_store_lookups_total", "result", "error"),
		}
		if !connected {
			degrade(reasonFarmDown)
		}
		if !out.Farm.RevocationsKnown {
			degrade(reasonRevsUnread)
		}
	}
	if r := h.cfg.Ring; r != nil {
		st := r.Status()
		out.Keys = &KeyHealth{Epoch: st.Epoch, Current: st.Current, AgeSeconds: time.Since(st.Rotated).Seconds(), Keys: st.Keys}
		if h.cfg.Rotation != nil {
			out.Keys.FarmWide = true
			out.Keys.LeaseHolder = value(h.cfg.Rotation(), "tlsfarm_ticket_rotation_lease_holder") == 1
		}
	}
	if h.cfg.Exports != nil {
		out.Exports = h.cfg.Exports()
		if exportsDegraded(out.Exports) {
			degrade(reasonExports)
		}
	}
	return out
}

// revocationsKnown reads tlsfarm_farm_revocations_known from samples. A
// node that does not report it (one older than the gauge) is taken to know
// them, as nodes did before.
func revocationsKnown(samples []metric.Sample) bool {
	v, ok := metric.Value(samples, "tlsfarm_farm_revocations_known")
	return !ok || v == 1
}

// healthz is liveness with detail: it answers 200 while the listeners serve
// or drain (ErrDraining), with the detail as JSON, and 503 while they do
// not. A degraded node — farm
// transport down, revocations not read yet, a key export failing — still
// answers 200: it serves, and restarting it would fix nothing (a restarted
// node reads the revocations again, from the same farm). The status and
// reasons say what is wrong.
//
// /healthz needs no token, so it shows no error text of a key export: an
// -on-change command's output, which that text holds, may name paths or
// carry a secret. A failing export's Error says only exportErrorHidden;
// the error itself is in the log, and in /healthz for a request that
// carries the admin token (Config.Token).
func (h *Handler) healthz(w http.ResponseWriter, r *http.Request) {
	hl := h.health()
	if !h.hasToken(r) {
		for i := range hl.Exports {
			if hl.Exports[i].Error != "" {
				hl.Exports[i].Error = exportErrorHidden
			}
		}
	}
	status := http.StatusOK
	if !hl.Listeners.Ready && hl.Status != "draining" {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, hl)
}

// readyz answers 200 "ready" while the listeners serve, and 503 with the
// reason otherwise. By default it does not follow the farm: a farm outage,
// or a coordinator that cannot be read, degrades every node at once, and
// failing them all would take the whole farm out of its load balancer. A
// node that has yet to read the farm's revocations serves safely: it
// resumes nothing from the farm, so its clients pay full handshakes, and
// no revoked session resumes. In strict mode (Config.Strict), the node is
// ready only as a full member of the farm: 503 also while the farm
// transport is down or the farm's revocations are not read yet.
func (h *Handler) readyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	notReady := func(why string) {
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte("not ready: " + why + "\n"))
	}
	if h.cfg.Ready != nil {
		if err := h.cfg.Ready(); err != nil {
			notReady(err.Error())
			return
		}
	}
	if h.cfg.Strict && h.cfg.Node != nil {
		st := h.cfg.Node.Metrics()
		switch {
		case value(st, "tlsfarm_farm_connected") != 1:
			notReady("the farm transport is down (strict mode)")
			return
		case !revocationsKnown(st):
			notReady(reasonRevsUnread + " (strict mode)")
			return
		}
	}
	w.Write([]byte("ready\n"))
}

// value returns the sample of samples named name, with the given label
// pairs, as a count (0 if there is none).
func value(samples []metric.Sample, name string, labels ...string) uint64 {
	v, _ := metric.Value(samples, name, labels...)
	return uint64(v)
}
