package proxy

import (
	"crypto/tls"
	"encoding/json"
	"net"
	"net/http"
)

// Facts are what the built-in upstream answers each request with, as JSON:
// what the client's connection looks like from the server.
type Facts struct {
	Node          string `json:"node"`           // Config.Node
	Listener      string `json:"listener"`       // the local address the client reached
	TLSVersion    string `json:"tls_version"`    // "TLS 1.3"
	CipherSuite   string `json:"cipher_suite"`   // "TLS_AES_128_GCM_SHA256"
	Resumed       bool   `json:"resumed"`        // the handshake resumed a session
	ServerName    string `json:"server_name"`    // the client's SNI, "" if none
	ALPN          string `json:"alpn"`           // the negotiated ALPN protocol, "" if none
	ClientAddress string `json:"client_address"` // after any PROXY header
	HTTPProtocol  string `json:"http_protocol"`  // "HTTP/1.1", "HTTP/2.0", "HTTP/3.0"
	Protocol      string `json:"protocol"`       // the transport: "tcp" or "quic"
	EarlyData     bool   `json:"early_data"`     // the request came in 0-RTT early data

	// SessionID is the session ID issued on this connection (for a TLS 1.2
	// resumption, the session it kept), as the admin API's DELETE
	// /sessions/{id} takes it. It is set only when Config.ExposeSessionID is
	// on, for tests: the ID resumes the session when presented as a ticket,
	// and does not belong in answers a production server gives.
	SessionID string `json:"session_id,omitempty"`
}

// facts is the built-in upstream.
type facts struct {
	s *Server
}

func (f *facts) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	out := Facts{
		Node:          f.s.node,
		ClientAddress: r.RemoteAddr,
		HTTPProtocol:  r.Proto,
		Protocol:      "tcp",
		EarlyData:     r.Header.Get(EarlyDataHeader) == "1",
	}
	if r.ProtoMajor == 3 {
		out.Protocol = "quic"
	}
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		out.Listener = a.String()
	}
	resumed := "0"
	if cs := r.TLS; cs != nil {
		out.TLSVersion = tls.VersionName(cs.Version)
		out.CipherSuite = tls.CipherSuiteName(cs.CipherSuite)
		out.Resumed = cs.DidResume
		out.ServerName = cs.ServerName
		out.ALPN = cs.NegotiatedProtocol
		if cs.DidResume {
			resumed = "1"
		}
	}
	if f.s.expose.Load() {
		if c := connOf(r); c != nil {
			// The ticket is the ID, or (a TLS 1.2 resumption) a reissued
			// ticket standing for it.
			if t := c.ticket.Load(); t != nil {
				if id, ok := f.s.cache.CheckID(*t); ok {
					out.SessionID = id.String()
				}
			}
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(ResumedHeader, resumed)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(out)
}
