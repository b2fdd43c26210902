package session

import (
	"fmt"
	"runtime/debug"
	"slices"
)

// An EventKind names a change to, or use of, the cache. Kinds are bits, so
// they can be or-ed together to register one hook for several.
type EventKind uint8

const (
	// EventNew: a session was inserted (by a handshake, Insert, or a
	// session the cache's Farm loaded).
	EventNew EventKind = 1 << iota
	// EventGet: a client or a caller asked for a session; Event.Record has
	// no State if it was not there, or if its state did not parse (a
	// handshake, Get), which counts as a miss too.
	EventGet
	// EventRemove: a session left the cache; Event.Reason says why.
	EventRemove

	eventAll = EventNew | EventGet | EventRemove
)

// String returns "new", "get" or "remove".
func (k EventKind) String() string {
	switch k {
	case EventNew:
		return "new"
	case EventGet:
		return "get"
	case EventRemove:
		return "remove"
	}
	return fmt.Sprintf("EventKind(%d)", uint8(k))
}

// An Origin says what caused an event.
type Origin uint8

const (
	// OriginHandshake: a TLS handshake on this server.
	OriginHandshake Origin = iota
	// OriginAPI: a call of the cache's API, such as Insert or Remove.
	OriginAPI
	// OriginPeer: a call of the API on behalf of another server of the
	// farm. Plugins that share sessions do not send these back out.
	OriginPeer
	// OriginLoader: a session returned by the farm (Farm.Load) on a miss.
	OriginLoader
	// OriginSweep: the background sweep of expired sessions, every
	// Config.SweepInterval.
	OriginSweep
)

// String returns "handshake", "api", "peer", "loader" or "sweep".
func (o Origin) String() string {
	switch o {
	case OriginHandshake:
		return "handshake"
	case OriginAPI:
		return "api"
	case OriginPeer:
		return "peer"
	case OriginLoader:
		return "loader"
	case OriginSweep:
		return "sweep"
	}
	return fmt.Sprintf("Origin(%d)", uint8(o))
}

// A RemoveReason says why a session left the cache.
type RemoveReason uint8

const (
	// Removed: revoked by Remove or RemoveChain.
	Removed RemoveReason = iota
	// Expired: its lifetime (or resumption grace) ran out.
	Expired
	// Evicted: its bucket was full and it was the least recently used.
	Evicted
	// Retired: it was single-use and a handshake that resumed it completed.
	Retired

	numReasons
)

// String returns "removed", "expired", "evicted" or "retired".
func (r RemoveReason) String() string {
	switch r {
	case Removed:
		return "removed"
	case Expired:
		return "expired"
	case Evicted:
		return "evicted"
	case Retired:
		return "retired"
	}
	return fmt.Sprintf("RemoveReason(%d)", uint8(r))
}

// An Event describes one change to, or use of, the cache. It is passed to
// hooks by value; its Record shares State with the cache, which a hook must
// not modify (it may keep it: the cache never modifies a State).
type Event struct {
	Kind   EventKind // what happened
	ID     ID        // the session it happened to
	Origin Origin    // what caused it

	// Reason is why the session left the cache (EventRemove only).
	Reason RemoveReason

	// Record is the session's record: the inserted one for EventNew, the
	// removed one for EventRemove, the found one for EventGet (zero, with
	// no State, if not found: a cached record always has State).
	Record Record
}

type hook struct {
	kinds EventKind
	fn    func(Event)
}

// AddHook registers the hook h for the kinds of event given (or-ed
// together, such as EventNew|EventRemove) and returns a function that unregisters it. Unregistering is
// idempotent, and takes effect for events that start after it returns.
//
// Hooks are called synchronously, in registration order, on the goroutine
// that caused the event, after the cache has released its locks: a hook may
// call the cache. A hook that blocks holds up that goroutine, which may be a
// TLS handshake: hooks that do I/O hand the event to a goroutine of their
// own. A hook that panics is recovered and counted, and the first panic is
// logged.
func (c *Cache) AddHook(kinds EventKind, h func(Event)) (remove func()) {
	if h == nil || kinds&eventAll == 0 {
		panic("session: AddHook with a nil hook or no event kinds")
	}
	hk := &hook{kinds: kinds, fn: h}
	c.hmu.Lock()
	var list []*hook
	if p := c.hooks.Load(); p != nil {
		list = slices.Clone(*p)
	}
	list = append(list, hk)
	c.hooks.Store(&list)
	c.hmu.Unlock()
	return func() {
		c.hmu.Lock()
		defer c.hmu.Unlock()
		p := c.hooks.Load()
		if p == nil {
			return
		}
		list := slices.DeleteFunc(slices.Clone(*p), func(x *hook) bool { return x == hk })
		if len(list) == 0 {
			c.hooks.Store(nil)
		} else {
			c.hooks.Store(&list)
		}
	}
}

// fire dispatches ev to the hooks registered for its kind.
func (c *Cache) fire(ev Event) {
	p := c.hooks.Load()
	if p == nil {
		return
	}
	for _, h := range *p {
		if h.kinds&ev.Kind != 0 {
			c.call(h, &ev)
		}
	}
}

func (c *Cache) call(h *hook, ev *Event) {
	defer func() {
		if r := recover(); r != nil {
			c.ctr.hookPanics.Add(1)
			if c.panicLogged.CompareAndSwap(false, true) {
				// The event is not logged: its record holds a master secret.
				c.cfg.Logger.Error("session: hook panicked; recovered (further panics are only counted)",
					"event", ev.Kind.String(), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			}
		}
	}()
	h.fn(*ev)
}
