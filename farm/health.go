package farm

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// Defaults of the health probe (Config.ProbeInterval, Config.ProbeTimeout).
const (
	defaultProbeInterval = 500 * time.Millisecond
	defaultProbeTimeout  = 800 * time.Millisecond
)

// A probe is the health of one transport path (the bus or the store),
// as the last probe found it.
type probe struct {
	what     string // "bus", "store" or "transport" (both, one server)
	p        transport.Pinger
	up       atomic.Bool
	failures atomic.Uint64 // probes that failed
	changes  atomic.Uint64 // times up changed
	// begun counts the probes begun; lastFailed is the number (in begun)
	// of the last one begun that failed, 0 if none has. Probes of one
	// path run one at a time (see prober).
	begun, lastFailed atomic.Uint64
	// lastAnswered is the number (in begun) of the last probe begun that
	// was answered, 0 if none has.
	lastAnswered atomic.Uint64
	// lastEnded is the number (in begun) of the last probe that ended,
	// answered or not; ended is closed, and replaced, when one does. A
	// probe is in flight while begun is ahead of lastEnded.
	lastEnded atomic.Uint64
	ended     atomic.Pointer[chan struct{}]
	// kick asks the path's prober for a probe now (see recheck), before
	// the prober has set run.
	kick chan struct{}
	// running is held while a probe of the path is in flight, by whoever
	// began it (the prober, or a hit: see recheck), so that the path's
	// probes run one at a time.
	running atomic.Bool
	// run begins a probe of the path on a goroutine of its own, on the
	// node's context, unless one is in flight (see probeOnce) or the
	// node is closing (see goTracked); nil until the prober starts.
	run atomic.Pointer[func()]
	// lastBegan is when the last probe began, as a monotonic offset
	// from probeEpoch (see sinceProbeEpoch), 0 if none has.
	lastBegan atomic.Int64
}

// recheckSpacing is the least time between the start of a path's probe
// and a probe a hit begins (see recheck): during an outage in which every
// gated hit finds the store's probe down, a node probes the store at most
// every recheckSpacing for its hits, not once a hit (a store that comes
// back must not meet every node's handshake rate in connection attempts).
const recheckSpacing = 20 * time.Millisecond

// probeEpoch is the origin of probe.lastBegan: an offset from it is read
// on the monotonic clock, which a step of the wall clock does not move (a
// Unix time stored, then read back, has no monotonic reading: stepped
// back by an hour, it held back every hit's probe for an hour).
var probeEpoch = time.Now()

// sinceProbeEpoch returns the time since probeEpoch, on the monotonic
// clock, in nanoseconds.
func sinceProbeEpoch() int64 { return int64(time.Since(probeEpoch)) }

func newProbe(what string, v any) *probe {
	p, ok := v.(transport.Pinger)
	if !ok {
		return nil
	}
	pr := &probe{what: what, p: p, kick: make(chan struct{}, 1)}
	pr.up.Store(true) // until a probe says otherwise
	ended := make(chan struct{})
	pr.ended.Store(&ended)
	return pr
}

// end records the end of pr's probe seq, and wakes those waiting for it
// (see recheck). The probe has let go of pr.running by then (see
// probeOnce), so the next may have begun, and even ended, first:
// lastEnded never goes back.
func (pr *probe) end(seq uint64) {
	for {
		last := pr.lastEnded.Load()
		if last >= seq || pr.lastEnded.CompareAndSwap(last, seq) {
			break
		}
	}
	next := make(chan struct{})
	close(*pr.ended.Swap(&next))
}

// recheck probes pr's path at once, unless a probe of it is in flight or
// began less than recheckSpacing ago, and waits for the answer until ctx
// ends. It reports whether that probe was answered: false if the probe
// failed, or if ctx ended first. If it begins none (it does not wait for
// one in flight), it reports whether the last probe that ended was
// answered: the caller found the path down, and one may have answered
// since (a hit then reads, rather than go through unchecked). The probe
// runs on a goroutine of its own, begun here, not on the prober's: a
// prober held back (a loaded machine; a 2 s delay planted before each of
// its probes) no longer leaves the hit waiting for a probe that has not
// begun, to find the store cut off by the last one that failed, when it
// is back. Probes of a path still run one at a time (see probeOnce).
//
// The hit gate asks it while the store's probe is down (see checkHit): a
// store back from an outage answers a gated hit's read at once, not from
// the next ProbeInterval on, or within recheckSpacing of its return;
// during the outage one hit every recheckSpacing waits for a probe that
// is refused at once, or, for a store that hangs, one hit per
// ProbeTimeout waits up to its LookupTimeout, and the others not at all.
func (pr *probe) recheck(ctx context.Context) bool {
	if pr == nil {
		return false
	}
	b := pr.begun.Load()
	if pr.lastEnded.Load() < b {
		return pr.up.Load() // one in flight
	}
	if time.Duration(sinceProbeEpoch()-pr.lastBegan.Load()) < recheckSpacing {
		return pr.up.Load() // the last one began a moment ago
	}
	if run := pr.run.Load(); run != nil {
		(*run)()
	} else {
		select {
		case pr.kick <- struct{}{}:
		default:
		}
	}
	for {
		ended := *pr.ended.Load()
		if pr.lastEnded.Load() > b {
			return pr.up.Load()
		}
		select {
		case <-ended:
		case <-ctx.Done():
			return false
		}
	}
}

// begunCount returns the number of pr's probes begun so far (0 if pr is
// nil).
func (pr *probe) begunCount() uint64 {
	if pr == nil {
		return 0
	}
	return pr.begun.Load()
}

// failedSince reports whether one of pr's probes begun after the count
// begun (a begunCount taken earlier) has failed. One begun before, still
// in flight then, may fail later: what it found is of the time it began.
func (pr *probe) failedSince(begun uint64) bool {
	return pr != nil && pr.lastFailed.Load() > begun
}

// answeredSince reports whether one of pr's probes begun after the count
// begun (a begunCount taken earlier) was answered.
func (pr *probe) answeredSince(begun uint64) bool {
	return pr != nil && pr.lastAnswered.Load() > begun
}

// healthy reports whether pr is nil (nothing to probe) or last answered.
func (pr *probe) healthy() bool { return pr == nil || pr.up.Load() }

// initProbes sets up the probes of the node's transport.
func (n *Node) initProbes() {
	switch {
	case n.cfg.Records != nil && any(n.cfg.Records) == any(n.cfg.Bus):
		n.busProbe = newProbe("transport", n.cfg.Bus)
		n.storeProbe = n.busProbe
	default:
		n.busProbe = newProbe("bus", n.cfg.Bus)
		if n.cfg.Records != nil {
			n.storeProbe = newProbe("store", n.cfg.Records)
		}
	}
}

// prober probes the transport every ProbeInterval until ctx is done:
// each path (the bus, the store) in a loop of its own, so that a path
// that hangs holds back no probe of the other, and at once when asked
// (see recheck).
func (n *Node) prober(ctx context.Context) {
	defer n.wg.Done()
	probes := []*probe{n.busProbe}
	if n.storeProbe != nil && n.storeProbe != n.busProbe {
		probes = append(probes, n.storeProbe)
	}
	if probes[0] == nil {
		probes = probes[1:]
	}
	var wg sync.WaitGroup
	for _, pr := range probes {
		run := func() { n.goTracked(func() { n.probeOnce(ctx, pr) }) }
		pr.run.Store(&run)
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(n.cfg.ProbeInterval)
			defer t.Stop()
			for {
				if hold := n.proberHold.Load(); hold != nil {
					(*hold)(ctx) // the tests' (see HoldProber)
				}
				n.probeOnce(ctx, pr)
				for wait := true; wait; {
					select {
					case <-ctx.Done():
						return
					case <-t.C:
						wait = false
					case <-pr.kick:
						// A kick sent as the last probe was about
						// to begin is answered by that probe (see
						// recheck): another now would break the
						// spacing.
						wait = time.Duration(sinceProbeEpoch()-pr.lastBegan.Load()) < recheckSpacing
					}
				}
			}
		}()
	}
	wg.Wait()
}

var errProbeTimeout = errors.New("no answer within the probe timeout")

// goTracked runs f on a goroutine of its own that Close waits for, unless
// Close has begun: work a handshake begins (a hit's probe) must not
// outlive the node.
func (n *Node) goTracked(f func()) {
	n.trackMu.Lock()
	defer n.trackMu.Unlock()
	if n.trackClosed {
		return
	}
	n.tracked.Add(1)
	go func() {
		defer n.tracked.Done()
		f()
	}()
}

// probeOnce runs a probe of pr's path (runProbe) unless one is in flight,
// begun by the prober or by a hit (see recheck): that one answers for
// both. The probe lets go of pr.running before it ends (pr.end): a hit
// that finds no probe in flight (lastEnded caught up with begun) must
// find none holding running either, or the probe it asks for is not
// begun and it waits out its LookupTimeout for nothing. (Ended first,
// with running let go after the log lines and the fallback's update of a
// change of state, a gated hit right after the store's probe failed
// waited so, twice in a row.)
func (n *Node) probeOnce(ctx context.Context, pr *probe) {
	if ctx.Err() != nil || !pr.running.CompareAndSwap(false, true) {
		return
	}
	seq, ended := n.runProbe(ctx, pr)
	pr.running.Store(false)
	if ended {
		pr.end(seq)
	}
}

// runProbe pings pr once, and on a change of state logs it and updates
// the fallback (see updateFallback). It returns the probe's number (in
// pr.begun) and whether the probe ended, answered or not: false if ctx
// ended first. The caller ends it (see probeOnce).
//
// It returns as soon as ctx ends: a transport may end a ping on a hung
// server only at the ping's deadline (go-redis bounds a blocked read by
// the context's deadline but does not end it on cancel), and Close must
// not wait ProbeTimeout, a bound of its own, for it. The ping left behind
// ends by that deadline, or when the transport closes.
func (n *Node) runProbe(ctx context.Context, pr *probe) (seq uint64, ended bool) {
	seq = pr.begun.Add(1)
	pr.lastBegan.Store(sinceProbeEpoch())
	pctx, cancel := context.WithTimeout(ctx, n.cfg.ProbeTimeout)
	done := make(chan error, 1)
	go func() {
		defer cancel()
		done <- pr.p.Ping(pctx)
	}()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		return seq, false
	}
	if err != nil && pctx.Err() == context.DeadlineExceeded {
		err = errProbeTimeout
	}
	if ctx.Err() != nil {
		return seq, false
	}
	if err != nil {
		pr.failures.Add(1)
		pr.lastFailed.Store(seq)
	} else {
		pr.lastAnswered.Store(seq)
	}
	up := err == nil
	if pr.up.Swap(up) == up {
		return seq, true
	}
	pr.changes.Add(1)
	defer n.updateFallback()
	if up {
		n.log.Info("farm: the "+pr.what+" answers again", "probe", pr.what)
		if pr == n.busProbe {
			n.wakeHealer() // catch up on revocations missed meanwhile
		}
		return seq, true
	}
	switch pr.what {
	case "store":
		n.log.Warn("farm: the store does not answer; other nodes cannot look up this node's new sessions, nor this node theirs, until it does",
			"err", err, "probe_timeout", n.cfg.ProbeTimeout.String())
	default:
		n.log.Warn("farm: the "+pr.what+" does not answer; serving from the local cache, and sessions issued meanwhile do not reach the other nodes",
			"err", err, "probe_timeout", n.cfg.ProbeTimeout.String())
	}
	return seq, true
}

// wakeHealer asks the healer to re-read the revocations in the store.
func (n *Node) wakeHealer() {
	select {
	case n.heal <- struct{}{}:
	default:
	}
}
