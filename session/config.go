package session

import (
	"log/slog"
	"time"
)

// Defaults for the fields of Config, as its field comments state them. The
// cache geometry follows Apache Traffic Server's
// proxy.config.ssl.session_cache.size and .num_buckets.
const (
	defaultCapacity         = 102400
	defaultBuckets          = 256
	defaultLifetime         = 2 * time.Hour
	defaultMaxChainLifetime = 24 * time.Hour
	defaultResumeGrace      = 30 * time.Second
	defaultSweepInterval    = time.Minute
	defaultLoadTimeout      = 5 * time.Millisecond
	defaultMaxStateLen      = 16 << 10
	defaultMaxClockSkew     = 5 * time.Second // as farm.Config.MaxSkew's
)

// maxDuration bounds the durations of a Config that the cache adds to the
// time in Unix nanoseconds: a longer one (such as math.MaxInt64, "no
// bound") would wrap the sum around to a time before 1970. A hundred years
// from now is still within what an int64 of nanoseconds holds.
const maxDuration = 100 * 365 * 24 * time.Hour

// A Config configures a Cache. The zero value is valid: every zero field means
// its default, so a Config need only name what differs. A Lifetime,
// MaxChainLifetime or ResumeGrace longer than 100 years is taken as 100
// years.
type Config struct {
	// Capacity is the most sessions the cache holds (default 102400).
	// When it is full, an insert evicts the least recently used session of
	// the bucket it inserts into, or, if that bucket holds no other, of the
	// next bucket that holds one: eviction is least-recently-used within a
	// bucket, and, since IDs spread evenly, close to it across the cache.
	Capacity int

	// Buckets is the number of independently locked buckets, rounded up to a
	// power of two (default 256). A bucket is chosen by a hash of
	// the whole ID under a seed drawn when the cache is made.
	Buckets int

	// Lifetime is how long a session can be resumed after its ticket was
	// issued (default 2 hours).
	Lifetime time.Duration

	// MaxChainLifetime bounds a resumption chain: a session resumed from a
	// session resumed from a full handshake, and so on, is refused once the
	// full handshake that began the chain is older than this (default
	// 24 hours). This bounds how long one master secret
	// lineage lives; crypto/tls resets its own creation time on every TLS
	// 1.3 ticket and so does not.
	MaxChainLifetime time.Duration

	// ResumeGrace is how long a session stays resumable after a handshake
	// resumed it and was issued its successor (default 30 seconds).
	// A TLS 1.3 resumption always gets a successor (its secret is new); a
	// TLS 1.2 one, whose master secret is the session's, keeps the session
	// under a reissued ticket (a fresh encryption of its ID) unless
	// SingleUse is set or a successor would outlive the session by half a
	// Lifetime or more.
	// It keeps the cache near one session per active client. A negative
	// value leaves resumed sessions to their full Lifetime. Shortening needs
	// the per-handshake link made by Cache.Install.
	ResumeGrace time.Duration

	// MaxClockSkew is how far ahead of the cache's clock the issue time of
	// a stateless ticket may be (default 5 seconds, the default of
	// farm.Config.MaxSkew). A ticket's age is counted from the issue time
	// its binding carries, by the clock of the server that issued it, so a
	// server whose clock runs ahead issues tickets that live longer: a
	// ticket issued more than MaxClockSkew ahead of now, or whose chain
	// starts so, is refused (a full handshake). Within it, a ticket lives
	// up to Lifetime plus MaxClockSkew. A cache whose MaxClockSkew is unset
	// takes the farm's MaxSkew when it joins a farm (see
	// SetDefaultClockSkew). Session IDs need no such bound: a session
	// whose ID says it was issued later than now is inserted as issued now
	// (see Insert).
	MaxClockSkew time.Duration

	// SweepInterval is how often a background sweep removes expired
	// sessions (default one minute; negative disables the sweep, leaving
	// expired sessions to be evicted as their buckets fill). Expired
	// sessions are never returned, whether or not they have been swept.
	// Lapsed revocations and the cache's other bookkeeping are forgotten
	// every minute even with the sweep disabled.
	SweepInterval time.Duration

	// Mode selects the kind of ticket issued and accepted by the crypto/tls
	// glue (default Stateful).
	Mode Mode

	// AllowServerNameMismatch lets a session issued under one server name
	// (SNI) be resumed under another. By default such a resumption is
	// refused: crypto/tls itself does not check, and resuming across virtual
	// hosts is a known attack surface.
	AllowServerNameMismatch bool

	// SingleUse makes a session resume once: it is retired when a
	// handshake that resumed it completes (see HandshakeComplete), across
	// a farm the cache joined. Finding a session alone never retires it:
	// that happens before the client has proved it holds the session's
	// secret. A stateless ticket cannot be retired: New refuses SingleUse
	// in Stateless mode, and a SingleUse cache resumes no stateless ticket
	// in Mixed mode or after SetTicketFallback either (each means a full
	// handshake, counted as tlsfarm_cache_tickets_total{event="single_use"}).
	SingleUse bool

	// MaxStateLen is the largest serialized session state the cache takes
	// (default 16 KiB). Larger ones are refused with an error
	// and counted, never silently dropped.
	MaxStateLen int

	// Logger receives the cache's rare log lines, such as the first panic of
	// a hook (default slog.Default()). Key material never reaches it.
	Logger *slog.Logger

	// Now returns the current time (default time.Now).
	Now func() time.Time

	// pendingTTL replaces the const pendingTTL when set: tests in package
	// session shorten it.
	pendingTTL time.Duration
}
