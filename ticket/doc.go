// Package ticket manages the session ticket keys of Go TLS servers, so that
// servers behind one load balancer can resume each other's sessions, and
// rotates those keys without ever refusing a ticket that is still young.
//
// Start with [NewRing] and [Ring.Register]; [Ring.Run] rotates a lone
// server's keys, and a farm drives the ring with [Ring.Set] instead
// (farm.Node.RotateTicketKeys).
//
// # Keys and the ring
//
// A session ticket is the server's session state, encrypted and authenticated
// under a ticket key and handed to the client, which shows it again to resume.
// Any server that holds the key can resume the session, so a farm shares its
// keys; and since anyone who learns a key can read every session it protected,
// keys are rotated and old ones forgotten.
//
// A [Ring] holds one server's keys in three roles:
//
//   - current: the one key that encrypts new tickets;
//   - next: a key staged for the coming rotation, which already decrypts;
//   - previous: the last Keep keys that were current, which still decrypt.
//
// The ring applies them, in the order [current, next, previous...], to every
// [crypto/tls.Config] registered with it ([Ring.Register]), with
// [crypto/tls.Config.SetSessionTicketKeys]. A rotation ([Ring.Rotate], or
// [Ring.Run] every Interval) promotes next to current, stages a fresh key as
// next, moves the old current key to the front of previous, and drops (and
// overwrites with zeros) the previous keys beyond Keep.
//
// Keys can also be installed from outside: [Ring.Update] takes a list of keys,
// newest first, as Apache Traffic Server's TSSslTicketKeyUpdate does, and
// [Ring.Set] installs a whole [State], the form a farm distributes.
//
// # Pre-staging
//
// Servers in a farm never rotate at exactly the same instant. If a server
// started encrypting with a key its peers had not yet received, the tickets
// it issued would not resume on them until the key arrived. So a key is
// staged as next, decrypting everywhere, for a full period before any server
// encrypts with it; a server that rotates early issues tickets that its
// peers, still one rotation behind, already accept. At the other end, a
// ticket issued under key K resumes for Keep rotations after K stopped
// encrypting, and is refused from the rotation after that: with the defaults
// (Keep 2, Interval 12h) a ticket lives between 24 and 36 hours.
//
// # Keep N modest
//
// Go's tickets carry no key name: crypto/tls tries each key in turn, an
// HMAC-SHA256 over the ticket per key, until one authenticates it. A ticket
// under the current key costs one HMAC; a ticket under the oldest key, and
// every forged, corrupted or expired ticket, costs one per key. Each key kept
// adds one HMAC to such tickets: little against a whole handshake for a few
// keys, but a long list makes every junk ticket dearer. Lengthen ticket life
// with a longer Interval rather than a large Keep. The package's benchmarks
// (go test -bench . ./ticket/) measure this; the project README lists the
// numbers of one machine.
//
// # Every config, one key source
//
// crypto/tls copies keys into a config when it is cloned, and a config
// returned by GetConfigForClient that has keys of its own uses them instead
// of its parent's. A config that is cloned ahead of time and not registered
// keeps the keys of the moment it was cloned, which splits a farm: see
// [Ring.Register] for which configs to register.
//
// # Keys stay secret
//
// A [Key] prints, formats, logs and marshals to text only as a fingerprint
// such as "key:1a2b3c4d", so that a key cannot end up in a log line by
// accident. [State.Bytes] is the one way out of the package with key bytes in
// the clear, for a farm to seal before sending. The ring overwrites its own
// copies of keys it drops; crypto/tls keeps its derived keys in each config
// until the next change, and Go makes no promise about copies on stacks or in
// freed memory.
package ticket
