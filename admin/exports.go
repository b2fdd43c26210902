package admin

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// An ExportStatus is the state of one key export target of "tlsfarm keys"
// (an nginx directory, an HAProxy file, a JSON file, or the on-change
// command), as /healthz and the metrics report it.
type ExportStatus struct {
	Target      string    `json:"target"`                // as given to -export, such as "nginx:/run/tlsfarm/nginx", or "on-change"
	Epoch       uint64    `json:"epoch"`                 // the key set epoch last exported; 0 for none
	OK          bool      `json:"ok"`                    // the last attempt succeeded
	Error       string    `json:"error,omitempty"`       // the last attempt's error, if it failed (in /healthz, only with the admin token)
	LastAttempt time.Time `json:"last_attempt,omitzero"` // the last attempt; zero before the first
	LastSuccess time.Time `json:"last_success,omitzero"` // the last success; zero before the first
	Exports     uint64    `json:"exports"`               // successful exports
	Failures    uint64    `json:"failures"`              // failed attempts
}

// exportsDegraded reports whether a target's last attempt failed.
func exportsDegraded(ex []ExportStatus) bool {
	for _, x := range ex {
		if !x.OK && !x.LastAttempt.IsZero() {
			return true
		}
	}
	return false
}

func (e emitter) exports(ex []ExportStatus) {
	ok := e.desc("tlsfarm_key_export_ok", "1 if the last export of ticket keys to the target succeeded.", "target")
	epoch := e.desc("tlsfarm_key_export_epoch", "Epoch of the key set last exported to the target.", "target")
	last := e.desc("tlsfarm_key_export_last_success_timestamp_seconds", "When the target last received a key set (Unix time).", "target")
	n := e.desc("tlsfarm_key_exports_total", "Key sets exported to the target.", "target")
	fails := e.desc("tlsfarm_key_export_failures_total", "Failed attempts to export a key set to the target.", "target")
	for _, x := range ex {
		target := labelValue(x.Target)
		var ts float64
		if !x.LastSuccess.IsZero() {
			ts = float64(x.LastSuccess.UnixNano()) / 1e9
		}
		e.ch <- prometheus.MustNewConstMetric(ok, prometheus.GaugeValue, b2f(x.OK), target)
		e.ch <- prometheus.MustNewConstMetric(epoch, prometheus.GaugeValue, float64(x.Epoch), target)
		e.ch <- prometheus.MustNewConstMetric(last, prometheus.GaugeValue, ts, target)
		e.ch <- prometheus.MustNewConstMetric(n, prometheus.CounterValue, float64(x.Exports), target)
		e.ch <- prometheus.MustNewConstMetric(fails, prometheus.CounterValue, float64(x.Failures), target)
	}
}
