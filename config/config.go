package config

import (
	"crypto/tls"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
)

// A Config is the whole configuration of one daemon. Its zero value is not
// useful: Load returns one with every setting filled in, from its defaults
// (the settings' doc comments and Settings state them) and from the file,
// the environment and the flags.
type Config struct {
	// Node names this daemon in logs, in the facts the built-in upstream
	// answers with, and in the farm (default: the host name).
	Node string `yaml:"node"`

	Log       Log        `yaml:"log"`
	Listeners []Listener `yaml:"listeners"`
	Cache     Cache      `yaml:"cache"`
	Farm      Farm       `yaml:"farm"`
	Tickets   Tickets    `yaml:"tickets"`
	Admin     Admin      `yaml:"admin"`
	Limits    Limits     `yaml:"limits"`
	Debug     Debug      `yaml:"debug"`

	// File is the configuration file the settings were read from, if any.
	File string `yaml:"-"`

	// sources records where each setting that is not a default came from,
	// by key, for error messages.
	sources map[string]string
}

// Log configures the daemon's log lines (on standard error).
type Log struct {
	Format string `yaml:"format"` // "text" or "json"
	Level  string `yaml:"level"`  // "debug", "info", "warn" or "error"
}

// A Listener is one address on which the daemon terminates TLS.
type Listener struct {
	// Address is the host:port to listen on (default 127.0.0.1:8443).
	Address string `yaml:"address"`

	// Certificates are served by server name (SNI). The first one is also
	// served to clients that send no name, or a name no certificate has.
	// With none, the daemon makes a self-signed certificate for localhost.
	Certificates []Certificate `yaml:"certificates"`

	MinVersion string   `yaml:"min_version"` // "1.0" to "1.3" (default "1.2")
	MaxVersion string   `yaml:"max_version"` // (default "1.3")
	ALPN       []string `yaml:"alpn"`        // protocols offered, in order of preference

	// Upstream is where decrypted traffic goes: "builtin" (the default: an
	// HTTP handler that answers with the connection's facts),
	// "http://host:port", "https://host:port" (a reverse proxy), or
	// "tcp://host:port" (the decrypted byte stream, passed through).
	Upstream string `yaml:"upstream"`

	ProxyProtocol ProxyProtocol `yaml:"proxy_protocol"`

	// HTTP3 serves HTTP/3 (QUIC) on the UDP port of Address too, with the
	// same certificates, sessions and upstream (an HTTP one).
	HTTP3 bool `yaml:"http3"`
	// EarlyData accepts 0-RTT early data on the HTTP/3 listener, once per
	// session in the whole farm (see docs/quic.md).
	EarlyData bool `yaml:"early_data"`

	// EarlyDataTrusted lists the addresses or CIDR ranges of the
	// intermediaries (a CDN that accepts 0-RTT itself) whose Early-Data
	// request header is kept and sent upstream as "Early-Data: 1" (RFC 8470
	// §5.1); everyone else's is removed. With ProxyProtocol the address
	// judged is the client address of the PROXY header, not the
	// balancer's; otherwise the connection's peer (proxy.Listener).
	EarlyDataTrusted []string `yaml:"early_data_trusted"`
}

// A Certificate is a certificate chain and its private key, in PEM files,
// and the server names it is served for.
type Certificate struct {
	// Names are the server names (SNI) the certificate is served for, such
	// as "example.com" or "*.example.com". Empty means the DNS names in the
	// certificate itself.
	Names []string `yaml:"names"`
	Cert  string   `yaml:"cert"` // PEM file: the chain, leaf first
	Key   string   `yaml:"key"`  // PEM file: the private key

	// Loaded is the parsed pair, set by Load.
	Loaded *tls.Certificate `yaml:"-"`
}

// ProxyProtocol configures PROXY protocol (v1 or v2) on a listener: a layer-4
// balancer in front sends the client's address at the start of each
// connection.
type ProxyProtocol struct {
	Enabled bool `yaml:"enabled"`
	// Trusted lists the addresses or CIDR ranges allowed to send a PROXY
	// header: connections from them must send one, and connections from
	// anywhere else are refused. It is required when Enabled is set
	// ("0.0.0.0/0" and "::/0" trust every sender, explicitly).
	Trusted []string `yaml:"trusted"`
}

// Cache configures the session cache (package session); each field sets the
// session.Config field of the same idea.
type Cache struct {
	Mode             string        `yaml:"mode"`               // "stateful", "stateless" or "mixed"
	Size             int           `yaml:"size"`               // Capacity
	Buckets          int           `yaml:"buckets"`            // Buckets
	Lifetime         time.Duration `yaml:"lifetime"`           // Lifetime
	MaxChainLifetime time.Duration `yaml:"max_chain_lifetime"` // MaxChainLifetime
	SNIBinding       bool          `yaml:"sni_binding"`        // the opposite of AllowServerNameMismatch
	SingleUse        bool          `yaml:"single_use"`         // SingleUse
}

// Farm configures sharing with the other servers of a farm (package farm).
// With no URL the daemon serves alone.
type Farm struct {
	URL            string        `yaml:"url"`              // redis://, rediss://, nats://, amqp://...
	Name           string        `yaml:"name"`             // farm.Config.Farm
	SecretFile     string        `yaml:"secret_file"`      // made by "tlsfarm keygen"; read by farm.LoadSecrets
	Mode           string        `yaml:"mode"`             // "broadcast" or "store-only"
	WriteThrough   bool          `yaml:"write_through"`    // farm.Config.WriteThrough
	LookupDeadline time.Duration `yaml:"lookup_deadline"`  // farm.Config.LookupTimeout
	FlushWindow    time.Duration `yaml:"flush_window"`     // farm.Config.FlushWindow
	CarrySessions  bool          `yaml:"carry_sessions"`   // farm.Config.CarrySessions
	MaxDeliveryLag time.Duration `yaml:"max_delivery_lag"` // farm.Config.MaxDeliveryLag

	// Strict refuses to start while the transport is unreachable (waiting
	// up to ConnectTimeout), and fails /readyz while it is down. By default
	// a farm outage only degrades the node to its local cache.
	Strict         bool          `yaml:"strict"`
	ConnectTimeout time.Duration `yaml:"connect_timeout"`

	// RevocationFile keeps the revocations not yet applied farm-wide
	// (farm.Config.RevocationFile; and RevocationFile + ".journal" what
	// changed since it was written), in RevocationFile + ".lifecycle" the
	// retirements and grace cuts not yet written and published, and in
	// RevocationFile + ".sent" (and ".sent.journal") those sent, for
	// peers' re-send requests after a restart; empty: in memory only.
	RevocationFile string `yaml:"revocation_file"`

	// FallbackTicketLifetime is farm.Config.FallbackTicketLifetime; 0
	// turns fallback tickets off.
	FallbackTicketLifetime time.Duration `yaml:"fallback_ticket_lifetime"`

	// Secrets are the farm secrets read from SecretFile, set by Load.
	Secrets []farm.Secret `yaml:"-"`
}

// Tickets configures the session ticket keys (package ticket).
type Tickets struct {
	RotationInterval time.Duration `yaml:"rotation_interval"` // how long each key encrypts
	Keep             int           `yaml:"keep"`              // previous keys that still decrypt
}

// Admin configures the admin HTTP listener (package admin).
type Admin struct {
	// Address is where the admin listener listens (default
	// 127.0.0.1:9443); "off" disables it.
	Address string `yaml:"address"`
	// Token, or the contents of TokenFile (a file only its owner may
	// read), is the bearer token that state-changing requests must
	// present: at least 16 bytes. With neither, they are refused.
	Token     string `yaml:"token"`
	TokenFile string `yaml:"token_file"`

	// BearerToken is Token, or the contents of TokenFile, set by Load.
	BearerToken string `yaml:"-"`
}

// Limits protect the daemon from slow, idle and numerous clients.
type Limits struct {
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"` // proxy.Config.HandshakeTimeout
	IdleTimeout      time.Duration `yaml:"idle_timeout"`      // proxy.Config.IdleTimeout
	MaxConnections   int           `yaml:"max_connections"`   // per listener; 0 for no limit
	DrainTimeout     time.Duration `yaml:"drain_timeout"`     // how long shutdown lets connections finish

	// MaxWebSocketsPerConnection bounds the WebSockets open at once on one
	// HTTP/2 or HTTP/3 connection (proxy.Config.MaxWebSocketsPerConnection);
	// 0 for no limit.
	MaxWebSocketsPerConnection int `yaml:"max_websockets_per_connection"`
}

// Debug holds settings for tests and troubleshooting, never for production.
type Debug struct {
	// ExposeSessionID adds the session ID issued on a connection to the
	// built-in upstream's facts, so that a test can revoke it. The ID is
	// what the client presents to resume; do not hand it out in production.
	ExposeSessionID bool `yaml:"expose_session_id"`
}

// Default listener values.
const (
	defaultAddress      = "127.0.0.1:8443"
	defaultAdminAddress = "127.0.0.1:9443"
	defaultUpstream     = "builtin"
	defaultMinVersion   = "1.2"
	defaultMaxVersion   = "1.3"
)

// defaults returns the configuration used when nothing is set: one listener
// on 127.0.0.1:8443 with a self-signed certificate and the built-in
// upstream, an in-memory stateful cache, no farm, and the admin listener on
// 127.0.0.1:9443.
func defaults() *Config {
	return &Config{
		Log: Log{Format: "text", Level: "info"},
		Cache: Cache{
			Mode:             "stateful",
			Size:             102400,
			Buckets:          256,
			Lifetime:         2 * time.Hour,
			MaxChainLifetime: 24 * time.Hour,
			SNIBinding:       true,
		},
		Farm: Farm{
			Name:           "tlsfarm",
			Mode:           "broadcast",
			LookupDeadline: 250 * time.Millisecond,
			MaxDeliveryLag: 500 * time.Millisecond,
			ConnectTimeout: 10 * time.Second,

			FallbackTicketLifetime: 5 * time.Minute, // farm.Config's default
		},
		Tickets: Tickets{RotationInterval: 12 * time.Hour, Keep: 2},
		Admin:   Admin{Address: defaultAdminAddress},
		Limits: Limits{
			HandshakeTimeout: 10 * time.Second,
			IdleTimeout:      2 * time.Minute,
			MaxConnections:   10000,
			DrainTimeout:     30 * time.Second,

			MaxWebSocketsPerConnection: 16,
		},
	}
}

// listenerDefaults fills the zero fields of l.
func listenerDefaults(l *Listener) {
	if l.Address == "" {
		l.Address = defaultAddress
	}
	if l.Upstream == "" {
		l.Upstream = defaultUpstream
	}
	if l.MinVersion == "" {
		l.MinVersion = defaultMinVersion
	}
	if l.MaxVersion == "" {
		l.MaxVersion = defaultMaxVersion
	}
	if l.ALPN == nil && !isTCP(l.Upstream) {
		l.ALPN = []string{"h2", "http/1.1"}
	}
}
