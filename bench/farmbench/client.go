package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/roaming"
)

// A load is what the benchmark's clients do against one farm.
type load struct {
	addrs      []string // the farm's nodes
	version    uint16
	pool       *x509.CertPool
	clients    int           // concurrent clients (c)
	reconnects int           // connections a client makes after its first, before it is replaced
	warmup     time.Duration // load before the measured window, not counted
	duration   time.Duration // the measured window, at most
	maxConns   int           // connections started in the window, at most
	timeout    time.Duration // per connection
	curves     []tls.CurveID // key exchanges the clients offer, in order; nil: Go's defaults

	// mark, if set, is called when the measured window opens (0) and
	// closes (1), so that the caller can read CPU counters.
	mark func(int)
}

// A connResult is one connection of the measured window.
type connResult struct {
	failed    bool
	offered   bool // the client offered a session
	resumed   bool
	sameNode  bool // the session offered was issued by this connection's node
	handshake time.Duration
	group     tls.CurveID // the key exchange negotiated; 0 for none (a TLS 1.2 resumption)
}

// A loadResult is what a load measured.
type loadResult struct {
	window time.Duration
	done   int // connections completed in the window
	conns  []connResult
}

var request = []byte("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")

// run drives the load until its window closes and returns what it measured.
// Each client is a browser behind a balancer: it connects to a node picked at
// random, keeps the newest session it was issued (whichever node issued it),
// offers it on its next connection at once (0 ms between connections), and
// after 1+reconnects connections is replaced by a new client without a
// session.
func (l *load) run(ctx context.Context) loadResult {
	base := &tls.Config{
		ServerName: "localhost",
		RootCAs:    l.pool,
		MinVersion: l.version,
		MaxVersion: l.version,

		CurvePreferences: l.curves,
	}
	var (
		inWindow  atomic.Bool
		started   atomic.Int64
		completed atomic.Int64
		stop      = make(chan struct{})
		stopOnce  sync.Once
		mu        sync.Mutex
		all       []connResult
	)
	halt := func() { stopOnce.Do(func() { close(stop) }) }
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	var wg sync.WaitGroup
	for range l.clients {
		wg.Go(func() {
			var mine []connResult
			defer func() {
				mu.Lock()
				all = append(all, mine...)
				mu.Unlock()
			}()
			for !stopped() && ctx.Err() == nil {
				cc := &roaming.SessionCache{}
				cfg := base.Clone()
				cfg.ClientSessionCache = cc
				for range 1 + l.reconnects {
					if stopped() || ctx.Err() != nil {
						return
					}
					counted := inWindow.Load()
					if counted && started.Add(1) > int64(l.maxConns) && l.maxConns > 0 {
						halt()
						return
					}
					target := rand.IntN(len(l.addrs))
					r := l.connect(ctx, cfg, cc, target)
					if inWindow.Load() {
						completed.Add(1)
					}
					if counted {
						mine = append(mine, r)
					}
				}
			}
		})
	}

	var res loadResult
	select {
	case <-time.After(l.warmup):
	case <-ctx.Done():
	}
	if l.mark != nil {
		l.mark(0)
	}
	opened := time.Now()
	inWindow.Store(true)
	select {
	case <-time.After(l.duration):
	case <-stop:
	case <-ctx.Done():
	}
	inWindow.Store(false)
	res.window = time.Since(opened)
	res.done = int(completed.Load())
	if l.mark != nil {
		l.mark(1)
	}
	halt()
	wg.Wait()
	res.conns = all
	return res
}

// connect makes one connection: dial, handshake, one request, read to the
// end (which takes in a TLS 1.3 ticket), close.
func (l *load) connect(ctx context.Context, cfg *tls.Config, cc *roaming.SessionCache, target int) connResult {
	cctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	cc.Begin(target)
	start := time.Now()
	var d net.Dialer
	raw, err := d.DialContext(cctx, "tcp", l.addrs[target])
	if err != nil {
		return connResult{failed: true}
	}
	defer raw.Close()
	deadline, _ := cctx.Deadline()
	raw.SetDeadline(deadline)
	c := tls.Client(raw, cfg)
	if err := c.HandshakeContext(cctx); err != nil {
		return connResult{failed: true}
	}
	cs := c.ConnectionState()
	r := connResult{handshake: time.Since(start), resumed: cs.DidResume, group: cs.CurveID}
	var from int
	r.offered, from = cc.Offer()
	r.sameNode = r.offered && from == target
	if _, err := c.Write(request); err != nil {
		return connResult{failed: true}
	}
	if n, err := io.Copy(io.Discard, c); n == 0 && err != nil {
		return connResult{failed: true}
	}
	return r
}

// A measurement is one farm's figures in one run, at one TLS version.
type measurement struct {
	HSPerSec            float64
	Conns, Failed       int
	Offered, Resumed    int
	SameOffered         int
	SameResumed         int
	OtherOffered        int
	OtherResumed        int
	FullP50, FullP99    time.Duration
	ResumedP50          time.Duration
	ResumedP99          time.Duration
	ServerCPU, RedisCPU time.Duration       // per handshake; RedisCPU < 0 if unknown
	NATSCPU             time.Duration       // per handshake; < 0 if the farm does not use NATS
	Groups              map[tls.CurveID]int // handshakes by the key exchange negotiated
}

func (r loadResult) measure() measurement {
	var m measurement
	m.HSPerSec = float64(r.done) / r.window.Seconds()
	var full, resumed []time.Duration
	for _, c := range r.conns {
		m.Conns++
		if c.failed {
			m.Failed++
			continue
		}
		if c.group != 0 {
			if m.Groups == nil {
				m.Groups = map[tls.CurveID]int{}
			}
			m.Groups[c.group]++
		}
		if c.offered {
			m.Offered++
			if c.sameNode {
				m.SameOffered++
			} else {
				m.OtherOffered++
			}
		}
		if c.resumed {
			m.Resumed++
			if c.sameNode {
				m.SameResumed++
			} else {
				m.OtherResumed++
			}
			resumed = append(resumed, c.handshake)
		} else {
			full = append(full, c.handshake)
		}
	}
	m.FullP50, m.FullP99 = pct(full, 50), pct(full, 99)
	m.ResumedP50, m.ResumedP99 = pct(resumed, 50), pct(resumed, 99)
	return m
}

// pct returns the nearest-rank percentile p of d, which it sorts.
func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := (p*len(d)+99)/100 - 1
	return d[max(i, 0)]
}
