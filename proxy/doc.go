// Package proxy is tlsfarm's TLS terminator: it accepts connections on one or
// more listeners, completes each TLS handshake with the session cache of
// package session (and the ticket keys of package ticket), and hands the
// decrypted traffic to an upstream.
//
// Start with Config and New; Server.Start serves, Server.Reload and
// Server.Shutdown follow the daemon's signals; Server.Stats and
// Server.QUICStats are its counters, which cmd/tlsfarm hands to package admin.
//
// # Upstreams
//
// Each listener has one upstream:
//
//   - "builtin": an HTTP handler that answers every request with the
//     connection's facts as JSON (see Facts), for trying the daemon out
//     and for tests;
//   - "http://host:port" or "https://host:port": a reverse proxy
//     (net/http/httputil) that sets X-Forwarded-For, X-Forwarded-Host and
//     X-Forwarded-Proto, keeps the client's Host header, and sets
//     X-TLS-Resumed to 1 or 0 (see ResumedHeader);
//   - "tcp://host:port": the decrypted byte stream, passed through both
//     ways, with half-close.
//
// HTTP upstreams are served by net/http with HTTP/2 where the client
// negotiates h2 with ALPN.
//
// # WebSockets and CONNECT
//
// The reverse proxy opens no tunnels: an ordinary CONNECT gets 405 Method
// Not Allowed over HTTP/1.1, HTTP/2 and HTTP/3, and never reaches the
// upstream. A WebSocket reaches an http:// or https:// upstream as an
// HTTP/1.1 Upgrade whichever way the client opened it: with an HTTP/1.1
// Upgrade, or with extended CONNECT (:protocol websocket) over HTTP/2 (RFC
// 8441, only with GODEBUG=http2xconnect=1, see HTTP2WebSockets) or HTTP/3
// (RFC 9220). Any other extended CONNECT, and a WebSocket to the built-in
// upstream, gets 501 Not Implemented. A WebSocket on which nothing moves
// either way for the idle timeout is closed on both sides: over HTTP/2 and
// HTTP/3 its stream, not the connection.
//
// # Handshakes
//
// The server does each handshake itself, before the connection reaches an
// upstream, bounded by the handshake timeout (which also bounds reading a
// PROXY protocol header), and then reports it to the cache
// (session.Cache.HandshakeComplete) and counts it by version and by full or
// resumed (see Stats).
//
// # Reload and shutdown
//
// Reload swaps certificates, TLS versions, ALPN, upstreams, the handshake
// timeout and the debug settings without closing a listener: the cache, the
// ticket keys and open connections are untouched, and each new handshake
// uses the new settings. Shutdown stops accepting and lets open connections
// finish until its context ends, then closes them.
package proxy
