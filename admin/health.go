package admin

import (
	"net/http"
	"time"

	"github.com/tlsfarm/tlsfarm/metric"
)

// Health is the answer of GET /healthz.
type Health struct {
	// Status is "ok", "degraded" (serving, but the farm transport is
	// down), or "unavailable" (the listeners are not serving).
	Status    string         `json:"status"`
	Node      string         `json:"node,omitempty"`        // Config.NodeName
	Listeners ListenerHealth `json:"listeners"`             // whether the listeners serve
	Sessions  int            `json:"sessions"`              // sessions in the cache now
	Farm      *FarmHealth    `json:"farm,omitempty"`        // nil for a node that serves alone
	Keys      *KeyHealth     `json:"ticket_keys,omitempty"` // nil without Config.Ring
	Exports   []ExportStatus `json:"exports,omitempty"`     // one per key export target
}

// ListenerHealth says whether the listeners serve.
type ListenerHealth struct {
	Ready bool   `json:"ready"`           // Config.Ready returned nil (or is nil)
	Error string `json:"error,omitempty"` // what Config.Ready returned otherwise
}

// FarmHealth is the state of the node's farm membership, read from its
// tlsfarm_farm_* samples.
type FarmHealth struct {
	Connected     bool   `json:"connected"`      // the transports are up (farm.Node.Connected)
	Strict        bool   `json:"strict"`         // a farm outage fails /readyz (Config.Strict)
	Connects      uint64 `json:"connects"`       // bus subscriptions made since Join
	Queued        int    `json:"queued"`         // sessions and revocations waiting to be published
	Dropped       uint64 `json:"dropped"`        // dropped from a full publish queue
	PublishErrors uint64 `json:"publish_errors"` // publish batches that failed
	StoreErrors   uint64 `json:"store_errors"`   // failed store write batches and lookups
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
	out.Listeners.Ready = true
	if h.cfg.Ready != nil {
		if err := h.cfg.Ready(); err != nil {
			out.Listeners = ListenerHealth{Error: err.Error()}
			out.Status = "unavailable"
		}
	}
	if n := h.cfg.Node; n != nil {
		st := n.Metrics()
		connected := value(st, "tlsfarm_farm_connected") == 1
		out.Farm = &FarmHealth{
			Connected: connected, Strict: h.cfg.Strict, Connects: value(st, "tlsfarm_farm_connects_total"),
			Queued: int(value(st, "tlsfarm_farm_queue_length")), Dropped: value(st, "tlsfarm_farm_dropped_total"),
			PublishErrors: value(st, "tlsfarm_farm_publish_errors_total"),
			StoreErrors:   value(st, "tlsfarm_farm_store_write_errors_total") + value(st, "tlsfarm_farm_store_lookups_total", "result", "error"),
		}
		if !connected && out.Status == "ok" {
			out.Status = "degraded"
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
		if exportsDegraded(out.Exports) && out.Status == "ok" {
			out.Status = "degraded"
		}
	}
	return out
}

// healthz answers 200 while the listeners serve, with the detail as JSON; a
// farm outage shows as status "degraded" but is not a failure.
func (h *Handler) healthz(w http.ResponseWriter, r *http.Request) {
	hl := h.health()
	status := http.StatusOK
	if !hl.Listeners.Ready {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, hl)
}

// readyz answers 200 "ready" while the listeners serve and, in strict mode,
// the farm transport is up; 503 with the reason otherwise.
func (h *Handler) readyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if h.cfg.Ready != nil {
		if err := h.cfg.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("not ready: " + err.Error() + "\n"))
			return
		}
	}
	if h.cfg.Strict && h.cfg.Node != nil && value(h.cfg.Node.Metrics(), "tlsfarm_farm_connected") != 1 {
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte("not ready: the farm transport is down (strict mode)\n"))
		return
	}
	w.Write([]byte("ready\n"))
}

// value returns the sample of samples named name, with the given label
// pairs, as a count (0 if there is none).
func value(samples []metric.Sample, name string, labels ...string) uint64 {
	v, _ := metric.Value(samples, name, labels...)
	return uint64(v)
}
