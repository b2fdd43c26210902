package config

import "slices"

// A Setting describes one configuration setting: where it can be given and
// whether it can change without a restart. docs/config.md documents each
// one; a test keeps the two in step.
type Setting struct {
	// Key is the setting's YAML key, dotted. "[]" stands for each element
	// of a list: "listeners[].address" is the address of every listener.
	// A flag or environment variable sets the first element.
	Key string

	Flag string // the flag's name without the dash; "" if it has none
	Env  string // the environment variable; "" if it has none

	// Default is the default, as documented.
	Default string

	// Reloadable reports whether a reload (SIGHUP) applies a new value;
	// otherwise the setting keeps its value until the daemon restarts.
	Reloadable bool

	// Usage is the flag's one-line help.
	Usage string
}

// Settings returns every setting in the order docs/config.md gives them.
// The slice is the caller's: changing it changes nothing in the package.
func Settings() []Setting { return slices.Clone(settings) }

// settings is the table behind Settings, Load and RestartOnly.
var settings = []Setting{
	{Key: "node", Flag: "node", Env: "TLSFARM_NODE", Default: "the host name", Usage: "name of this node in logs, facts and the farm"},
	{Key: "log.format", Flag: "log-format", Env: "TLSFARM_LOG_FORMAT", Default: "text", Usage: "log format: text or json"},
	{Key: "log.level", Flag: "log-level", Env: "TLSFARM_LOG_LEVEL", Default: "info", Reloadable: true, Usage: "log level: debug, info, warn or error"},

	{Key: "listeners[].address", Flag: "listen", Env: "TLSFARM_LISTEN", Default: defaultAddress, Usage: "`address` (host:port) to terminate TLS on"},
	{Key: "listeners[].certificates[].cert", Flag: "cert", Env: "TLSFARM_CERT", Default: "self-signed for localhost", Reloadable: true, Usage: "certificate chain PEM `file`"},
	{Key: "listeners[].certificates[].key", Flag: "key", Env: "TLSFARM_KEY", Default: "", Reloadable: true, Usage: "private key PEM `file`"},
	{Key: "listeners[].certificates[].names", Default: "the certificate's DNS names", Reloadable: true},
	{Key: "listeners[].min_version", Flag: "tls-min", Env: "TLSFARM_TLS_MIN", Default: defaultMinVersion, Reloadable: true, Usage: "lowest TLS `version`: 1.0, 1.1, 1.2 or 1.3"},
	{Key: "listeners[].max_version", Flag: "tls-max", Env: "TLSFARM_TLS_MAX", Default: defaultMaxVersion, Reloadable: true, Usage: "highest TLS `version`"},
	{Key: "listeners[].alpn", Flag: "alpn", Env: "TLSFARM_ALPN", Default: "h2,http/1.1 (none for tcp://)", Reloadable: true, Usage: "ALPN `protocols` offered, comma-separated"},
	{Key: "listeners[].upstream", Flag: "upstream", Env: "TLSFARM_UPSTREAM", Default: defaultUpstream, Reloadable: true, Usage: "builtin, http://host:port, https://host:port or tcp://host:port"},
	{Key: "listeners[].proxy_protocol.enabled", Flag: "proxy-protocol", Env: "TLSFARM_PROXY_PROTOCOL", Default: "false", Usage: "expect a PROXY protocol header on each connection"},
	{Key: "listeners[].http3", Flag: "http3", Env: "TLSFARM_HTTP3", Default: "false", Usage: "serve HTTP/3 (QUIC) on the UDP port of the listener's address too"},
	{Key: "listeners[].early_data", Flag: "early-data", Env: "TLSFARM_EARLY_DATA", Default: "false", Usage: "accept 0-RTT early data on HTTP/3, once per session in the farm"},
	{Key: "listeners[].proxy_protocol.trusted", Flag: "proxy-protocol-trusted", Env: "TLSFARM_PROXY_PROTOCOL_TRUSTED", Default: "none (required)", Usage: "addresses or CIDR `ranges` allowed to send PROXY headers, comma-separated (required with -proxy-protocol)"},
	{Key: "listeners[].early_data_trusted", Flag: "early-data-trusted", Env: "TLSFARM_EARLY_DATA_TRUSTED", Default: "none", Reloadable: true, Usage: "addresses or CIDR `ranges` of intermediaries (a CDN) whose Early-Data request header is kept for the upstream, comma-separated; with -proxy-protocol, the PROXY header's client address is judged"},

	{Key: "cache.mode", Flag: "cache-mode", Env: "TLSFARM_CACHE_MODE", Default: "stateful", Usage: "session resumption mode: stateful, stateless or mixed"},
	{Key: "cache.size", Flag: "cache-size", Env: "TLSFARM_CACHE_SIZE", Default: "102400", Usage: "most sessions cached"},
	{Key: "cache.buckets", Flag: "cache-buckets", Env: "TLSFARM_CACHE_BUCKETS", Default: "256", Usage: "independently locked buckets (rounded up to a power of two)"},
	{Key: "cache.lifetime", Flag: "session-lifetime", Env: "TLSFARM_SESSION_LIFETIME", Default: "2h", Usage: "how long a session can be resumed"},
	{Key: "cache.max_chain_lifetime", Flag: "max-chain-lifetime", Env: "TLSFARM_MAX_CHAIN_LIFETIME", Default: "24h", Usage: "how long a chain of resumptions can go on after its full handshake"},
	{Key: "cache.sni_binding", Flag: "sni-binding", Env: "TLSFARM_SNI_BINDING", Default: "true", Usage: "resume a session only under the server name it was issued for"},
	{Key: "cache.single_use", Flag: "single-use", Env: "TLSFARM_SINGLE_USE", Default: "false", Usage: "retire a session once it has been resumed"},

	{Key: "farm.url", Flag: "farm", Env: "TLSFARM_FARM_URL", Default: "none (serve alone)", Usage: "farm transport `URL`: redis://, rediss://, nats://, amqp://..."},
	{Key: "farm.name", Flag: "farm-name", Env: "TLSFARM_FARM_NAME", Default: "tlsfarm", Usage: "farm name; nodes share only within one name"},
	{Key: "farm.secret_file", Flag: "farm-secret", Env: "TLSFARM_FARM_SECRET_FILE", Default: "", Usage: "farm secret `file` (made by tlsfarm keygen)"},
	{Key: "farm.mode", Flag: "farm-mode", Env: "TLSFARM_FARM_MODE", Default: "broadcast", Usage: "broadcast or store-only"},
	{Key: "farm.write_through", Flag: "write-through", Env: "TLSFARM_WRITE_THROUGH", Default: "false", Usage: "a client reconnecting at once to another node resumes: a node waits (bounded) for a young session it lacks"},
	{Key: "farm.lookup_deadline", Flag: "lookup-deadline", Env: "TLSFARM_LOOKUP_DEADLINE", Default: "250ms", Usage: "longest a handshake waits for the store on a cache miss"},
	{Key: "farm.flush_window", Flag: "flush-window", Env: "TLSFARM_FLUSH_WINDOW", Default: "0s", Usage: "longest a new session waits to be shared in one batch with more (0: shared at once; at most 100ms)"},
	{Key: "farm.carry_sessions", Flag: "carry-sessions", Env: "TLSFARM_CARRY_SESSIONS", Default: "false", Usage: "tickets carry their session sealed under the farm's ticket keys, so another node resumes a young session at once (needs farm.write_through, broadcast mode, not cache.single_use)"},
	{Key: "farm.max_delivery_lag", Flag: "max-delivery-lag", Env: "TLSFARM_MAX_DELIVERY_LAG", Default: "500ms", Usage: "how far the node's bus delivery may lag for it to resume held sessions without asking the store (and take carried sessions); a revocation waits as long before it reports applied"},
	{Key: "farm.strict", Flag: "strict", Env: "TLSFARM_FARM_STRICT", Default: "false", Usage: "refuse to start while the farm transport is down; fail /readyz while it is down or the farm's revocations are unread"},
	{Key: "farm.connect_timeout", Flag: "farm-connect-timeout", Env: "TLSFARM_FARM_CONNECT_TIMEOUT", Default: "10s", Usage: "in strict mode, how long to wait for the transport at start"},
	{Key: "farm.revocation_file", Flag: "revocation-file", Env: "TLSFARM_REVOCATION_FILE", Default: "", Usage: "`file` keeping revocations not yet applied farm-wide across restarts"},
	{Key: "farm.fallback_ticket_lifetime", Flag: "fallback-ticket-lifetime", Env: "TLSFARM_FALLBACK_TICKET_LIFETIME", Default: "5m", Usage: "lifetime of the farm tickets issued instead of sessions while the farm is unreachable (0: never)"},

	{Key: "tickets.rotation_interval", Flag: "ticket-rotation", Env: "TLSFARM_TICKET_ROTATION", Default: "12h", Usage: "how often the session ticket key rotates"},
	{Key: "tickets.keep", Flag: "ticket-keep", Env: "TLSFARM_TICKET_KEEP", Default: "2", Usage: "previous ticket keys kept for decryption"},

	{Key: "admin.address", Flag: "admin", Env: "TLSFARM_ADMIN_ADDRESS", Default: defaultAdminAddress, Usage: "admin listener `address`, or off"},
	{Key: "admin.token", Env: "TLSFARM_ADMIN_TOKEN", Default: "none (state changes refused)", Reloadable: true},
	{Key: "admin.token_file", Flag: "admin-token-file", Env: "TLSFARM_ADMIN_TOKEN_FILE", Default: "", Reloadable: true, Usage: "`file` holding the admin bearer token"},

	{Key: "limits.handshake_timeout", Flag: "handshake-timeout", Env: "TLSFARM_HANDSHAKE_TIMEOUT", Default: "10s", Reloadable: true, Usage: "longest a client may take to complete its handshake (PROXY header included)"},
	{Key: "limits.idle_timeout", Flag: "idle-timeout", Env: "TLSFARM_IDLE_TIMEOUT", Default: "2m", Usage: "close a connection idle for this long"},
	{Key: "limits.max_connections", Flag: "max-connections", Env: "TLSFARM_MAX_CONNECTIONS", Default: "10000", Usage: "most open connections per listener (0: no limit)"},
	{Key: "limits.max_websockets_per_connection", Flag: "max-websockets-per-connection", Env: "TLSFARM_MAX_WEBSOCKETS_PER_CONNECTION", Default: "16", Reloadable: true, Usage: "most WebSockets open at once on one HTTP/2 or HTTP/3 connection (0: no limit)"},
	{Key: "limits.drain_timeout", Flag: "drain-timeout", Env: "TLSFARM_DRAIN_TIMEOUT", Default: "30s", Reloadable: true, Usage: "on shutdown, how long open connections may take to finish"},

	{Key: "debug.expose_session_id", Flag: "debug-expose-session-id", Env: "TLSFARM_DEBUG_EXPOSE_SESSION_ID", Default: "false", Reloadable: true, Usage: "add the session ID to the built-in upstream's facts (tests only)"},
}

// settingByKey returns the setting with the given key.
func settingByKey(key string) (Setting, bool) {
	for _, s := range settings {
		if s.Key == key {
			return s, true
		}
	}
	return Setting{}, false
}
