package admin

import "github.com/prometheus/client_golang/prometheus"

// quic sends the HTTP/3 metrics.
func (e emitter) quic(q *QUICStats) {
	e.labelled(prometheus.CounterValue, "tlsfarm_quic_handshakes_total", "Completed QUIC (HTTP/3) handshakes, by kind (full or resumed).", "kind",
		map[string]uint64{"full": q.FullHandshakes, "resumed": q.ResumedHandshakes})
	e.counter("tlsfarm_quic_early_data_offered_total", "QUIC client hellos that offered 0-RTT early data.", q.EarlyDataOffered)
	e.counter("tlsfarm_quic_early_data_accepted_total", "QUIC connections that accepted 0-RTT early data.", q.EarlyDataAccepted)
	e.labelled(prometheus.CounterValue, "tlsfarm_quic_early_data_rejected_total",
		"0-RTT early data refused, by reason (replay, store_unavailable, store_lost, disabled, too_old, other); the handshake goes on in 1-RTT.", "reason",
		q.EarlyDataRejected)
	e.counter("tlsfarm_http_early_requests_total", "HTTP/3 requests served from 0-RTT early data (sent upstream with Early-Data: 1).", q.EarlyRequests)
	e.gauge("tlsfarm_quic_connections_open", "QUIC (HTTP/3) connections open now, handshakes under way included (TCP's: tlsfarm_connections_open).", float64(q.Open))
	e.counter("tlsfarm_http_too_early_total", "425 Too Early responses, the server's and the upstreams'.", q.TooEarly)
}
