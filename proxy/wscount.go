package proxy

import (
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/tlsfarm/tlsfarm/metric"
)

// defaultMaxWebSocketsPerConnection is Config.MaxWebSocketsPerConnection's
// default.
const defaultMaxWebSocketsPerConnection = 16

// A wsProto is the HTTP version a client opened a WebSocket over: the
// index of the WebSocket counters and the value of their proto label.
type wsProto uint8

const (
	wsH1 wsProto = iota // HTTP/1.1 Upgrade: any 101 Switching Protocols
	wsH2                // extended CONNECT over HTTP/2 (RFC 8441)
	wsH3                // extended CONNECT over HTTP/3 (RFC 9220)
	numWSProtos
)

var wsProtoNames = [numWSProtos]string{"h1", "h2", "h3"}

// wsProtoOf returns the protocol of a WebSocket request by its HTTP
// version.
func wsProtoOf(r *http.Request) wsProto {
	switch r.ProtoMajor {
	case 2:
		return wsH2
	case 3:
		return wsH3
	}
	return wsH1
}

// A wsRefusal is why a WebSocket was not opened.
type wsRefusal uint8

const (
	// refusedUpstream: the upstream answered without switching (401,
	// 403, a redirect...), and the client got that answer.
	refusedUpstream wsRefusal = iota
	// refusedUpstreamError: the upstream could not be reached, or
	// answered 2xx without switching, or switched to something else
	// (502, also counted in Stats.UpstreamErrors).
	refusedUpstreamError
	// refusedConnectionLimit: the client's connection had
	// Config.MaxWebSocketsPerConnection WebSockets open (429).
	refusedConnectionLimit
	// refusedListenerLimit: the listener had Config.MaxConnections
	// WebSockets open over HTTP/2 and HTTP/3 (503).
	refusedListenerLimit
	numWSRefusals
)

var wsRefusalNames = [numWSRefusals]string{"upstream", "upstream_error", "connection_limit", "listener_limit"}

// wsCounters count the WebSockets (the connections an upstream switched to
// another protocol) by protocol.
type wsCounters struct {
	open    [numWSProtos]atomic.Int64
	opened  [numWSProtos]atomic.Uint64
	refused [numWSProtos][numWSRefusals]atomic.Uint64
}

// start counts a WebSocket that opened over p; end counts its end.
func (c *wsCounters) start(p wsProto) {
	c.opened[p].Add(1)
	c.open[p].Add(1)
}

func (c *wsCounters) end(p wsProto) { c.open[p].Add(-1) }

func (c *wsCounters) refuse(p wsProto, why wsRefusal) { c.refused[p][why].Add(1) }

// Metrics returns the server's samples that Stats and QUICStats do not
// hold, named as the admin API exports them: the WebSockets open
// (tlsfarm_websockets_open), opened (tlsfarm_websockets_total) and refused
// (tlsfarm_websockets_refused_total, by reason), each by the protocol the
// client opened them over (proto "h1", "h2" or "h3"). Over HTTP/1.1, every
// connection an upstream switched to another protocol (101 Switching
// Protocols) counts as a WebSocket. And the requests that arrived with an
// Early-Data header field (tlsfarm_early_data_fields_total), by whether the
// field was kept for the upstream (result "kept", Listener.EarlyDataTrusted)
// or removed ("removed").
func (s *Server) Metrics() []metric.Sample {
	c := &s.ws
	out := make([]metric.Sample, 0, int(numWSProtos)*(2+int(numWSRefusals))+2)
	for p := range numWSProtos {
		out = append(out, metric.Sample{
			Name: "tlsfarm_websockets_open", Kind: metric.Gauge,
			Help:   "WebSockets open now, by the protocol the client opened them over (h1: any connection an upstream switched with 101).",
			Labels: []metric.Label{{Name: "proto", Value: wsProtoNames[p]}},
			Value:  float64(c.open[p].Load()),
		})
	}
	for p := range numWSProtos {
		out = append(out, metric.Sample{
			Name: "tlsfarm_websockets_total", Kind: metric.Counter,
			Help:   "WebSockets opened, by the protocol the client opened them over (h1: any connection an upstream switched with 101).",
			Labels: []metric.Label{{Name: "proto", Value: wsProtoNames[p]}},
			Value:  float64(c.opened[p].Load()),
		})
	}
	for p := range numWSProtos {
		for why := range numWSRefusals {
			if p == wsH1 && (why == refusedConnectionLimit || why == refusedListenerLimit) {
				continue // an HTTP/1.1 connection carries one at most
			}
			out = append(out, metric.Sample{
				Name: "tlsfarm_websockets_refused_total", Kind: metric.Counter,
				Help: "WebSockets not opened, by protocol and reason: upstream (it answered without switching), upstream_error (502), " +
					"connection_limit (429: limits.max_websockets_per_connection), listener_limit (503: limits.max_connections over HTTP/2 and HTTP/3).",
				Labels: []metric.Label{{Name: "proto", Value: wsProtoNames[p]}, {Name: "reason", Value: wsRefusalNames[why]}},
				Value:  float64(c.refused[p][why].Load()),
			})
		}
	}
	for _, e := range []struct {
		result string
		n      *atomic.Uint64
	}{{"kept", &s.stats.earlyKept}, {"removed", &s.stats.earlyRemoved}} {
		out = append(out, metric.Sample{
			Name: "tlsfarm_early_data_fields_total", Kind: metric.Counter,
			Help: "Requests that arrived with an Early-Data header field (RFC 8470), by what the node did with it: kept " +
				"(the sender is in listeners[].early_data_trusted; sent upstream as Early-Data: 1) or removed (anyone else).",
			Labels: []metric.Label{{Name: "result", Value: e.result}},
			Value:  float64(e.n.Load()),
		})
	}
	return out
}

// admitWebSocket takes, for a WebSocket that r opens by extended CONNECT
// on l, a slot of its client's connection (Config.MaxWebSocketsPerConnection)
// and one of the listener (Config.MaxConnections, for HTTP/2 and HTTP/3
// together), and returns the function that gives them back. Without a
// slot it answers the client 429 Too Many Requests (its connection has
// as many as it may) or 503 Service Unavailable (the listener has), counts
// the refusal, and returns nil: the upstream is never asked.
//
// Each such WebSocket costs an upstream connection while its client's
// connection is one of many streams: without these bounds, one connection
// admitted by MaxConnections could open as many upstream connections as
// it may open streams.
func (s *Server) admitWebSocket(w http.ResponseWriter, r *http.Request, l *listener) func() {
	p := wsProtoOf(r)
	perConn := wsSlotsOf(r)
	if max := s.maxWS.Load(); perConn != nil && max > 0 {
		if n := perConn.Add(1); int64(n) > max {
			perConn.Add(-1)
			s.ws.refuse(p, refusedConnectionLimit)
			s.log.Debug("WebSocket refused: the connection has as many as it may", "client", r.RemoteAddr, "http", r.Proto,
				"max_websockets_per_connection", max)
			// No Retry-After: waiting frees no slot, closing one does.
			http.Error(w, "429 too many requests: this connection has "+strconv.FormatInt(max, 10)+" WebSockets open, as many as it may", http.StatusTooManyRequests)
			return nil
		}
	} else {
		perConn = nil
	}
	if s.max > 0 {
		if n := l.websockets.Add(1); n > int64(s.max) {
			l.websockets.Add(-1)
			if perConn != nil {
				perConn.Add(-1)
			}
			s.ws.refuse(p, refusedListenerLimit)
			s.warn.note("websockets", "WebSockets refused (503): the listener has limits.max_connections open over HTTP/2 and HTTP/3", r.RemoteAddr,
				"listener", l.address, "max_connections", s.max)
			w.Header().Set("Retry-After", "1")
			http.Error(w, "503 service unavailable: this listener has as many WebSockets open as it may", http.StatusServiceUnavailable)
			return nil
		}
	}
	return func() {
		if perConn != nil {
			perConn.Add(-1)
		}
		if s.max > 0 {
			l.websockets.Add(-1)
		}
	}
}

// wsSlotsOf returns the count of WebSockets open on r's connection, or nil
// if the connection is not known.
func wsSlotsOf(r *http.Request) *atomic.Int32 {
	if qc, ok := r.Context().Value(quicConnKey{}).(*quicConn); ok {
		return &qc.websockets
	}
	if c := connOf(r); c != nil {
		return &c.websockets
	}
	return nil
}
