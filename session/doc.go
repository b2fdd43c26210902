// Package session is a server-side TLS session cache with a plugin hook API,
// modelled on Apache Traffic Server's TLS Session Plugin API, and the glue
// that plugs it into crypto/tls.
//
// Start with New and Cache.Install: a server that does only that keeps its
// sessions in the cache and hands clients session IDs as tickets. AddHook is
// where a plugin starts; Cache.Join is where a farm plugs in.
//
// # The cache
//
// A Cache maps session IDs to Records: the serialized tls.SessionState, the
// server name it was issued under, its expiry, and the resumption chain it
// belongs to. It is split into a power-of-two number of buckets, each with
// its own lock, map and least-recently-used list, chosen by a seeded hash of
// the whole ID. It holds at most Config.Capacity sessions, never returns an
// expired one, and sweeps expired ones in the background.
//
// Session IDs are 26 bytes (IDLen): a format version, a key ID, a 128-bit
// body that looks random (the issue time and 64 random bits, encrypted; see
// Cache.IssuedAt), and a 64-bit tag computed with AES-256 under an IDKey. An identity
// that does not carry a valid tag is refused with one block operation,
// before any lookup, local or remote. The servers of a farm share their ID
// keys (SetIDKeys), so each accepts the IDs the others mint.
//
// # Hooks
//
// AddHook registers a function for EventNew (a session was inserted),
// EventGet (a session was asked for, found or not) and EventRemove (a session
// left the cache: removed, expired, evicted or retired). Hooks run
// synchronously, in registration order, on the goroutine that caused the
// event, after the cache's locks are released. Each Event carries the ID,
// the Origin (a handshake on this server, an API call, a peer, a session
// the farm loaded on a miss, the sweep), and the record. A plugin that shares sessions across a
// farm publishes EventNew from OriginHandshake and inserts what peers send
// with OriginPeer, so nothing echoes.
//
// The utility calls mirror ATS's: Get (a fresh tls.SessionState), GetBuffer
// (the serialized session into the caller's buffer, with its full length),
// Insert and Remove. Metrics returns the cache's counters as metric samples.
// Ticket keys live in package ticket.
//
// # crypto/tls
//
// Install installs the cache in a server's tls.Config. The ticket a client
// receives is then only a session ID (Stateful mode), for TLS 1.2 session
// tickets and TLS 1.3 PSK identities alike; the session never leaves the
// server, and Remove revokes it. Install links the two crypto/tls callbacks
// of a handshake through a per-handshake config returned by
// GetConfigForClient: a ticket issued by a resumed handshake continues its
// chain (bounded by Config.MaxChainLifetime), and the session just resumed
// is cut to a short grace period (Config.ResumeGrace), so the cache holds
// about one session per active client rather than one per connection. A
// TLS 1.2 resumption keeps its master secret, and so its session: it is
// given a reissued ticket, a fresh AES-GCM sealing of the same ID that any
// cache holding the ID keys opens, and nothing new is stored.
//
// The installed config never fails a handshake: a missing, forged, expired,
// revoked or mis-addressed session means a full handshake, and is counted in
// Metrics. A session presented under a server name other than the one it
// was issued for is refused unless Config.AllowServerNameMismatch is set;
// crypto/tls does not check this itself. With Config.SingleUse, a session
// resumes once: see HandshakeComplete.
//
// Go's server does not implement TLS 1.2 session-ID resumption (a client
// that disables tickets always gets a full handshake); only tickets and PSK
// identities resume. Modes Stateless and Mixed issue or accept tickets
// encrypted with the config's ticket keys, carrying the same server-name and
// chain binding, so a farm can move between the two without a resumption
// cliff.
//
// # Farms
//
// A cache that is one of a farm's servers joins the farm (Join), so that a
// session it does not hold is asked of the farm (Farm.Load) and single-use
// claims hold farm-wide (Farm.Claim). The farm applies what its peers did
// with Insert (OriginPeer), Retire, Cut and RemoveChain, revokes chains
// until ChainEnd, may issue short-lived tickets while it is unreachable
// (SetTicketFallback), checks its sessions against a store (Expiries), and
// writes sessions back to a store that lost them (Snapshot). Package farm
// is such a plugin.
//
// # Files
//
// cache.go holds the cache itself (buckets, Get, Insert, the sweep);
// config.go its Config; record.go the Record and its binary form; id.go
// session IDs and their keys; hooks.go events and hooks; revoke.go chain
// revocation and its tombstones; tls.go the crypto/tls glue; stateless.go
// modes, the binding of stateless tickets, and fallback tickets;
// singleuse.go single-use claims; lifecycle.go bounded children and the
// calls a farm applies for its peers; join.go the Farm interface; metrics.go
// the counters.
package session
