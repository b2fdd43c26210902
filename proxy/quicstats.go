package proxy

import "sync/atomic"

// QUICStats are the counters of a server's HTTP/3 listeners.
type QUICStats struct {
	FullHandshakes    uint64 // completed QUIC handshakes without resumption
	ResumedHandshakes uint64 // completed QUIC handshakes that resumed a session

	// EarlyDataOffered counts client hellos that offered 0-RTT early data;
	// EarlyDataAccepted the handshakes that completed having accepted it.
	EarlyDataOffered  uint64
	EarlyDataAccepted uint64

	// EarlyDataRejected counts refused early data by reason: "replay"
	// (the session had already been used for early data somewhere in the
	// farm), "store_unavailable" (the decision could not be made in time),
	// "store_lost" (the farm's store lost its data, or its register is
	// new, since the session's ticket was issued),
	// "disabled" (the listener does not accept early data), "too_old"
	// (the session is older than the early data window), "other" (the
	// session was unknown or not resumable, or quic-go refused it).
	EarlyDataRejected map[string]uint64

	EarlyRequests uint64 // requests served from early data (marked Early-Data: 1)
	TooEarly      uint64 // 425 Too Early responses, the server's and the upstreams'

	// Open counts the QUIC connections open now, those still in their
	// handshake included: the connections Config.MaxConnections bounds.
	// Stats.Open counts the TCP ones.
	Open int
}

// quicCounters are the atomics behind QUICStats.
type quicCounters struct {
	full, resumed     atomic.Uint64
	offered, accepted atomic.Uint64
	rejected          [numRejectReasons]atomic.Uint64
	earlyRequests     atomic.Uint64
	tooEarly          atomic.Uint64
}

func (c *quicCounters) stats() QUICStats {
	st := QUICStats{
		FullHandshakes:    c.full.Load(),
		ResumedHandshakes: c.resumed.Load(),
		EarlyDataOffered:  c.offered.Load(),
		EarlyDataAccepted: c.accepted.Load(),
		EarlyDataRejected: map[string]uint64{},
		EarlyRequests:     c.earlyRequests.Load(),
		TooEarly:          c.tooEarly.Load(),
	}
	for r := rejectDisabled; r < numRejectReasons; r++ {
		st.EarlyDataRejected[r.String()] = c.rejected[r].Load()
	}
	return st
}

// QUICStats returns a snapshot of the HTTP/3 counters (all zero when no
// listener serves HTTP/3).
func (s *Server) QUICStats() QUICStats {
	st := s.quic.stats()
	for _, l := range s.listeners {
		if l.quic != nil {
			st.Open += int(l.quic.open.Load())
		}
	}
	return st
}
