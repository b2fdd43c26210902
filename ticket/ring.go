package ticket

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Defaults for the fields of RingConfig.
const (
	DefaultKeep     = 2
	DefaultInterval = 12 * time.Hour
)

// ErrStaleEpoch is returned by Ring.Set when the State's epoch is not greater
// than that of the key set in use. A farm member that sees it has already
// applied that key set, or a newer one, and can ignore it.
var ErrStaleEpoch = errors.New("ticket: key set epoch is not newer than the one in use")

// A RingConfig configures a Ring. The zero value is valid: every zero field
// means its default.
type RingConfig struct {
	// Keep is how many previous keys Rotate retains: a ticket still resumes
	// for Keep rotations after its key stopped encrypting, and is refused at
	// the rotation after that. If zero, DefaultKeep is used; if negative,
	// no previous keys are kept.
	//
	// crypto/tls tries every key on each ticket it is shown (its tickets
	// carry no key name), so each extra key adds an HMAC-SHA256 to every
	// resumption with an older ticket and to every unknown ticket. Keep it
	// modest: Keep times Interval is how long a ticket lives at least.
	Keep int

	// Interval is how often Run rotates, measured from State.Rotated. If zero,
	// DefaultInterval is used. It must not be negative.
	Interval time.Duration

	// Now returns the current time. If nil, time.Now is used. Run schedules
	// rotations from Now's readings, on a timer that runs in real time.
	Now func() time.Time

	// Logger, if not nil, receives one Info record for each change of the
	// key set, with the epoch, the current key's fingerprint and the number
	// of keys. Key bytes are never logged.
	Logger *slog.Logger

	// Initial, if not nil, is the key set the ring starts with (a copy of it,
	// epoch included), for example one restored after a restart. If nil, the
	// ring draws a fresh current key and a fresh staged key, at epoch 0.
	Initial *State
}

// A Ring holds the session ticket keys of one or more TLS servers and applies
// them to every [tls.Config] registered with it: a key that encrypts new
// tickets (current), a pre-staged key that will encrypt next, and the last few
// keys that encrypted before (previous). All of them decrypt.
//
// A Ring is safe for concurrent use. Printing or logging a Ring shows its
// epoch, key count and current key fingerprint, never key bytes.
type Ring struct {
	keep     int
	interval time.Duration
	now      func() time.Time
	log      *slog.Logger

	mu sync.Mutex
	st *State // the key set in use, owned by the ring, wiped when replaced
	// foreign[i] reports that st.Previous[i] never encrypted in this ring's
	// line of key sets: it came in as a previous key of a set that shared
	// keys with the one before (a farm's merge). nil: none did.
	foreign []bool
	configs map[*tls.Config]int
	changed chan struct{} // capacity 1: wakes Run when st changes
}

// NewRing returns a Ring configured by cfg. Unless cfg.Initial is set, it
// draws a current key and a staged next key from crypto/rand.
func NewRing(cfg RingConfig) (*Ring, error) {
	r := &Ring{
		keep:     cfg.Keep,
		interval: cfg.Interval,
		now:      cfg.Now,
		log:      cfg.Logger,
		configs:  make(map[*tls.Config]int),
		changed:  make(chan struct{}, 1),
	}
	switch {
	case r.keep == 0:
		r.keep = DefaultKeep
	case r.keep < 0:
		r.keep = 0
	}
	switch {
	case r.interval == 0:
		r.interval = DefaultInterval
	case r.interval < 0:
		return nil, fmt.Errorf("ticket: RingConfig.Interval is negative (%v)", r.interval)
	}
	if r.now == nil {
		r.now = time.Now
	}
	if cfg.Initial != nil {
		if err := cfg.Initial.validate(); err != nil {
			return nil, fmt.Errorf("ticket: RingConfig.Initial: %w", err)
		}
		st := cfg.Initial.clone()
		if st.Rotated.IsZero() {
			st.Rotated = r.now()
		}
		r.st = &st
		return r, nil
	}
	cur, err := NewKey()
	if err != nil {
		return nil, err
	}
	next, err := NewKey()
	if err != nil {
		return nil, err
	}
	r.st = &State{Current: cur, Next: next, Rotated: r.now()}
	return r, nil
}

// Update replaces the ring's keys with keys, as Apache Traffic Server's
// TSSslTicketKeyUpdate does: keys[0] encrypts new tickets, and every key
// decrypts, tried in the order given, so list them newest first. Update
// installs exactly these keys (Keep only bounds what Rotate retains), clears
// the staged next key, adds one to the epoch, and applies the keys to every
// registered config. The ring keeps copies of keys; the caller's slice is not
// changed.
//
// Update returns an error, and changes nothing, if keys is empty or if any key
// is all zeros or appears twice.
//
// Update leaves scheduling to its caller: when a ring with no staged key
// rotates, a fresh key starts encrypting at once. A farm that drives keys
// with Update should send each key as a decrypt-only key one period before it
// sends it first, or use Set.
func (r *Ring) Update(keys ...Key) error {
	if len(keys) == 0 {
		return errors.New("ticket: Update needs at least one key")
	}
	names := make([]string, len(keys))
	for i := range keys {
		names[i] = "keys[" + strconv.Itoa(i) + "]"
	}
	if err := checkKeys(names, keys); err != nil {
		return err
	}
	r.mu.Lock()
	if r.st.Epoch == math.MaxUint64 {
		r.mu.Unlock()
		return errors.New("ticket: epoch cannot grow past its maximum")
	}
	st := &State{
		Epoch:    r.st.Epoch + 1,
		Current:  keys[0],
		Previous: append([]Key(nil), keys[1:]...),
		Rotated:  r.now(),
	}
	ch := r.installLocked(st, true, 0, 0) // the caller's order is the order of use
	r.mu.Unlock()
	r.logChange("ticket: keys updated", ch)
	return nil
}

// Rotate rotates the ring's keys as [State.Rotate] does, with the ring's
// Keep: the staged key becomes current, a fresh key is staged, the old
// current key becomes the newest previous key, and previous keys beyond Keep
// are dropped. The new keys are applied to every registered config at once.
//
// The ring overwrites its own copies of dropped keys with zeros. crypto/tls
// keeps separate copies (keys derived from them, in each config) until they
// are replaced, and a State returned earlier by Ring.State is the caller's own.
func (r *Ring) Rotate() error {
	r.mu.Lock()
	ch, err := r.rotateLocked()
	r.mu.Unlock()
	if err != nil {
		return err
	}
	r.logChange("ticket: keys rotated", ch)
	return nil
}

func (r *Ring) rotateLocked() (Status, error) {
	next, err := r.st.Rotate(r.now(), r.keep)
	if err != nil {
		return Status{}, err
	}
	return r.installLocked(&next, false, 0, 0), nil
}

// Set installs a complete key set, such as one distributed by a farm: the
// ring applies a copy of s to every registered config at once and overwrites
// its copies of the keys it held before with zeros. If s.Rotated is zero, the
// ring's current time is used. Set does not trim s.Previous to Keep.
//
// Set returns an error wrapping ErrStaleEpoch if s.Epoch is not greater than
// the epoch in use, and an error if s.Current is zero or any key is zero or
// appears twice; either way nothing changes.
//
// A ring whose keys are set by a farm should not also rotate on its own (with
// Run or Rotate): the farm computes each key set with State.Rotate and
// installs it everywhere.
func (r *Ring) Set(s State) error {
	return r.SetMerged(s, 0, 0)
}

// SetMerged installs s as Set does, and takes s.Previous[from:to] for keys
// merged in from another key set, as the farm that wrote s records them:
// StateByUse puts them with the foreign keys, unless the ring knows one
// as a key of its own line (it held it as current or next, or as a
// previous key it did not count as foreign). So a ring that joins a farm
// after a merge, or misses the set that added the keys, still tells them
// from the farm's own. SetMerged(s, 0, 0) is Set(s).
//
// SetMerged returns an error, and changes nothing, in every case Set
// does, and if from and to are not a range of s.Previous.
func (r *Ring) SetMerged(s State, from, to int) error {
	if err := s.validate(); err != nil {
		return err
	}
	if from < 0 || from > to || to > len(s.Previous) {
		return fmt.Errorf("ticket: merged keys [%d:%d] out of the %d previous keys", from, to, len(s.Previous))
	}
	r.mu.Lock()
	if s.Epoch <= r.st.Epoch {
		cur := r.st.Epoch
		r.mu.Unlock()
		return fmt.Errorf("%w: got epoch %d, in use %d", ErrStaleEpoch, s.Epoch, cur)
	}
	st := s.clone()
	if st.Rotated.IsZero() {
		st.Rotated = r.now()
	}
	ch := r.installLocked(&st, false, from, to)
	r.mu.Unlock()
	r.logChange("ticket: key set installed", ch)
	return nil
}

// State returns a copy of the key set in use. The copy is the caller's: the
// ring neither changes nor wipes it.
func (r *Ring) State() State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st.clone()
}

// StateByUse returns a copy of the key set in use, as State does, with its
// previous keys in the order in which a server holding only some of them
// needs them: first the keys that encrypted in this ring's line of key
// sets, newest first, then, in their given order, the foreign keys, which
// only ever decrypted here. foreign is how many keys end s.Previous that
// are such keys. A consumer that holds a fixed number of keys (nginx's key
// files, HAProxy's three keys) fills it from the front of s.Keys, so the
// keys its server encrypted with go before the foreign ones.
//
// A previous key is foreign if it first reached the ring as a previous key,
// in a key set that Set installed at the epoch right after the ring's and
// that shares a key with it: a rotation adds no such key, and a farm that
// merges key sets after a split adds the other side's keys this way
// (decrypt only). A key the ring held as current or next, a key of the
// ring's initial State, and every key of a set that shares no key with the
// one before (the ring joined a farm, or came back after missing every key
// of it) is not foreign; nor is a key first seen after a gap in epochs,
// which may be a current key the ring missed; nor any key after Update,
// whose caller gives the order of use. A key first seen in the range that
// SetMerged names is foreign in every case.
func (r *Ring) StateByUse() (s State, foreign int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s = r.st.clone()
	if len(r.foreign) == 0 {
		return s, 0
	}
	n := 0
	for i, k := range r.st.Previous {
		if !r.foreign[i] {
			s.Previous[n] = k
			n++
		}
	}
	for i, k := range r.st.Previous {
		if r.foreign[i] {
			s.Previous[n] = k
			n++
			foreign++
		}
	}
	return s, foreign
}

// foreignKeys returns, for each key of st.Previous, whether it is foreign
// (see StateByUse) once st replaces old, whose own flags are oldForeign;
// st.Previous[from:to] are keys its writer merged in (see SetMerged). It
// returns nil if none is.
//
// A rotation brings one key into Previous, the old current key; so a key
// new to the ring in the previous keys of the set that directly follows
// the ring's (its epoch one above) came from another key set. After a gap
// in epochs the ring cannot tell such a key from a current key it missed,
// and takes it as its own, in the order given, unless the writer says it
// merged it.
func foreignKeys(old *State, oldForeign []bool, st *State, from, to int) []bool {
	held := func(k Key) bool {
		return k == old.Current || (!old.Next.isZero() && k == old.Next) || slices.Contains(old.Previous, k)
	}
	shared := held(st.Current) || (!st.Next.isZero() && held(st.Next))
	for _, k := range st.Previous {
		shared = shared || held(k)
	}
	if !shared && from == to {
		return nil
	}
	follows := shared && old.Epoch < math.MaxUint64 && st.Epoch == old.Epoch+1
	var out []bool
	for i, k := range st.Previous {
		f := follows || (i >= from && i < to)
		switch {
		case k == old.Current || k == old.Next:
			f = false
		default:
			if j := slices.Index(old.Previous, k); j >= 0 {
				f = j < len(oldForeign) && oldForeign[j]
			}
		}
		if f {
			if out == nil {
				out = make([]bool, len(st.Previous))
			}
			out[i] = true
		}
	}
	return out
}

// installLocked makes st the key set in use, applies it to every registered
// config, wipes the key set it replaces and wakes Run. If ordered, st's
// previous keys are in their order of use, none foreign (see StateByUse);
// else st.Previous[from:to] are keys merged in (see SetMerged).
// It returns the ring's new Status, for logChange.
func (r *Ring) installLocked(st *State, ordered bool, from, to int) Status {
	old := r.st
	if ordered {
		r.foreign = nil
	} else {
		r.foreign = foreignKeys(old, r.foreign, st, from, to)
	}
	r.st = st
	r.applyLocked(r.configs)
	old.wipe()
	select {
	case r.changed <- struct{}{}:
	default:
	}
	return r.statusLocked()
}

// applyLocked applies the key set in use to cfgs.
func (r *Ring) applyLocked(cfgs map[*tls.Config]int) {
	if len(cfgs) == 0 {
		return
	}
	keys := r.st.tlsKeys(r.foreign)
	for cfg := range cfgs {
		cfg.SetSessionTicketKeys(keys)
	}
	clear(keys)
}

// Register applies the ring's keys to each config with SetSessionTicketKeys
// at once, and again after every Update, Rotate, Set or rotation by Run, until
// unregister is called. Registering turns off crypto/tls's own key rotation
// in each config. A config may be registered by several calls; it stays
// registered until each call's unregister has run. (Registering one config
// with two rings makes them overwrite each other's keys.) Register panics if
// a config is nil.
//
// Every config that can serve a handshake must take its keys from the ring.
// A config's keys are copied by [tls.Config.Clone], and a config returned by
// GetConfigForClient that has keys of its own uses them instead of its
// parent's. So:
//
//   - register the config given to tls.Server or tls.NewListener;
//   - register every config that GetConfigForClient returns which was made
//     before the handshake by cloning a config that had keys, or which was
//     given keys itself: otherwise it keeps the keys of the moment it got
//     them, and servers in a farm stop reading each other's tickets;
//   - a config that GetConfigForClient clones from a registered config during
//     the handshake needs no registration: it copies the current keys;
//   - a config that GetConfigForClient returns with no keys of its own (not
//     cloned, never given keys) falls back to the keys of the config the
//     handshake started with.
//
// Calling unregister more than once has no further effect. After it, the
// configs keep the last keys applied to them but no longer follow the ring.
func (r *Ring) Register(cfgs ...*tls.Config) (unregister func()) {
	for i, cfg := range cfgs {
		if cfg == nil {
			panic("ticket: Register of nil *tls.Config at position " + strconv.Itoa(i))
		}
	}
	add := make(map[*tls.Config]int, len(cfgs))
	for _, cfg := range cfgs {
		add[cfg] = 1
	}
	r.mu.Lock()
	r.applyLocked(add)
	for cfg := range add {
		r.configs[cfg]++
	}
	r.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			for cfg := range add {
				if r.configs[cfg]--; r.configs[cfg] <= 0 {
					delete(r.configs, cfg)
				}
			}
		})
	}
}

// A Status describes a Ring's key set for metrics and health checks. It holds
// no key material.
type Status struct {
	// Epoch is the epoch of the key set in use.
	Epoch uint64
	// Keys is how many keys decrypt tickets: the current key, the staged key
	// if any, and the previous keys.
	Keys int
	// Staged reports whether a next key is staged.
	Staged bool
	// Current is the fingerprint of the key that encrypts new tickets, as
	// returned by Key.String.
	Current string
	// Rotated is when the current key started encrypting.
	Rotated time.Time
	// Due is when Run will next rotate: Rotated plus the ring's Interval.
	Due time.Time
	// Configs is how many distinct configs are registered.
	Configs int
}

// Status returns the ring's Status.
func (r *Ring) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.statusLocked()
}

func (r *Ring) statusLocked() Status {
	n := 1 + len(r.st.Previous)
	if !r.st.Next.isZero() {
		n++
	}
	return Status{
		Epoch:   r.st.Epoch,
		Keys:    n,
		Staged:  !r.st.Next.isZero(),
		Current: r.st.Current.String(),
		Rotated: r.st.Rotated,
		Due:     r.st.Rotated.Add(r.interval),
		Configs: len(r.configs),
	}
}

// String returns a summary of the ring such as
// "ticket.Ring{epoch:3 keys:4 current:key:1a2b3c4d}".
func (r *Ring) String() string {
	st := r.Status()
	return "ticket.Ring{epoch:" + strconv.FormatUint(st.Epoch, 10) +
		" keys:" + strconv.Itoa(st.Keys) + " current:" + st.Current + "}"
}

// Format implements [fmt.Formatter]: every verb prints [Ring.String].
func (r *Ring) Format(f fmt.State, verb rune) { fmt.Fprint(f, r.String()) }

// LogValue implements [slog.LogValuer]: a Ring logs as a group with its
// epoch, number of keys, current key fingerprint and rotation time.
func (r *Ring) LogValue() slog.Value {
	st := r.Status()
	return slog.GroupValue(
		slog.Uint64("epoch", st.Epoch),
		slog.Int("keys", st.Keys),
		slog.String("current", st.Current),
		slog.Time("rotated", st.Rotated),
	)
}

// logChange logs a change of key set, described by the ring's Status just
// after it. It runs after the ring's lock is released.
func (r *Ring) logChange(msg string, st Status) {
	if r.log == nil {
		return
	}
	r.log.LogAttrs(context.Background(), slog.LevelInfo, msg,
		slog.Uint64("epoch", st.Epoch),
		slog.String("current", st.Current),
		slog.Int("keys", st.Keys),
		slog.Time("due", st.Due),
	)
}
