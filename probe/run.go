package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/quic-go/quic-go/http3"

	"github.com/tlsfarm/tlsfarm/internal/roaming"
)

// Kinds of failure counted in [Stats.Errors].
const (
	FailRefused     = "refused"     // the target refused the TCP connection
	FailDial        = "dial"        // any other failure to connect
	FailTimeout     = "timeout"     // Config.Timeout passed before the connection was done
	FailCertificate = "certificate" // the server's certificate did not verify
	FailHandshake   = "handshake"   // any other handshake failure, such as an alert
	FailRequest     = "request"     // writing the request or reading the answer failed
)

// progressEvery is how often Run reports progress.
const progressEvery = 100 * time.Millisecond

// Run makes the connections cfg describes and reports on them.
//
// If progress is not nil, Run calls it from one goroutine, about ten times a
// second and once more when the last connection is done, with the number of
// connections done and the number planned (0 when the run is limited by
// Config.Duration alone).
//
// Run returns an error without connecting if cfg is not valid. A failed
// connection is not an error: it is counted in the report. If ctx ends
// before the run does, Run abandons the connections in flight, which the
// report does not count, and returns the report so far with ctx.Err().
func Run(ctx context.Context, cfg Config, progress func(done, total int)) (*Report, error) {
	p, err := prepare(cfg)
	if err != nil {
		return nil, err
	}
	start := time.Now()

	// stop ends the starting of new connections; ctx ends everything.
	stop := ctx
	if p.cfg.Duration > 0 {
		var cancel context.CancelFunc
		stop, cancel = context.WithTimeout(ctx, p.cfg.Duration)
		defer cancel()
	}
	r := &runner{plan: p, stop: stop, lat: make([]latencies, len(p.addrs))}
	if p.cfg.Rate > 0 {
		r.pace = &pacer{every: time.Duration(float64(time.Second) / p.cfg.Rate)}
	}

	workers := make([]*worker, p.cfg.Concurrency)
	var wg sync.WaitGroup
	for i := range workers {
		w := newWorker(r)
		workers[i] = w
		wg.Go(func() { w.run(ctx) })
	}

	if progress != nil {
		total := p.cfg.Connections
		finished := make(chan struct{})
		reported := make(chan struct{})
		go func() {
			defer close(reported)
			t := time.NewTicker(progressEvery)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					progress(int(r.done.Load()), total)
				case <-finished:
					progress(int(r.done.Load()), total)
					return
				}
			}
		}()
		wg.Wait()
		close(finished)
		<-reported
	} else {
		wg.Wait()
	}

	rep := newReport(p, workers, r.lat)
	rep.Elapsed = time.Since(start)
	return rep, ctx.Err()
}

// runner is the state that the clients of one run share.
type runner struct {
	plan   *plan
	stop   context.Context
	pace   *pacer       // nil without a rate limit
	lat    []latencies  // per target, of the connections counted
	issued atomic.Int64 // connections handed out
	done   atomic.Int64 // connections finished and counted
}

// next hands out the sequence number of the next connection, or reports
// that the run is over.
func (r *runner) next() (int, bool) {
	if r.stop.Err() != nil {
		return 0, false
	}
	k := r.issued.Add(1) - 1
	if n := r.plan.cfg.Connections; n > 0 && k >= int64(n) {
		return 0, false
	}
	return int(k), true
}

// target picks the target of connection k.
func (r *runner) target(k int) int {
	n := len(r.plan.addrs)
	if r.plan.cfg.Pick == PickRoundRobin {
		return k % n
	}
	return rand.IntN(n)
}

// A pacer spaces connection starts evenly. A client that falls behind does
// not earn a burst.
type pacer struct {
	mu    sync.Mutex
	next  time.Time
	every time.Duration
}

// wait blocks until the caller's slot, or returns ctx's error.
func (p *pacer) wait(ctx context.Context) error {
	p.mu.Lock()
	now := time.Now()
	if p.next.Before(now) {
		p.next = now
	}
	slot := p.next
	p.next = p.next.Add(p.every)
	p.mu.Unlock()

	d := time.Until(slot)
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// A worker is one simulated client: one connection at a time, one session
// cache, and its own tallies, merged when the run ends.
type worker struct {
	r      *runner
	cache  *roaming.SessionCache
	tls    *tls.Config
	dialer net.Dialer
	buf    []byte
	tally  []tally // per target

	qtls *tls.Config // with Config.HTTP3
}

func newWorker(r *runner) *worker {
	w := &worker{
		r:     r,
		cache: &roaming.SessionCache{},
		tls:   r.plan.tls.Clone(),
		buf:   make([]byte, 1024),
		tally: make([]tally, len(r.plan.addrs)),
	}
	w.tls.ClientSessionCache = w.cache
	if r.plan.cfg.HTTP3 {
		w.qtls = w.tls.Clone()
		w.qtls.MinVersion, w.qtls.MaxVersion = tls.VersionTLS13, tls.VersionTLS13
		w.qtls.NextProtos = []string{http3.NextProtoH3}
	}
	return w
}

func (w *worker) run(ctx context.Context) {
	for {
		k, ok := w.r.next()
		if !ok {
			return
		}
		if w.r.pace != nil && w.r.pace.wait(w.r.stop) != nil {
			return
		}
		target := w.r.target(k)
		res := w.connect(ctx, target)
		if ctx.Err() != nil {
			// Abandoned, not failed: the caller gave up on the run.
			return
		}
		w.count(target, res)
	}
}

// count adds res, the outcome of a connection to target, to the run's
// counts and latencies.
func (w *worker) count(target int, res result) {
	w.tally[target].add(res)
	if res.failure == "" {
		w.r.lat[target].record(res)
	}
	w.r.done.Add(1)
}

// result is the outcome of one connection.
type result struct {
	failure   string // a kind of failure, or "" if the connection worked
	resumed   bool
	offered   bool // the client offered a session (with a failure: in a handshake that failed)
	early     bool // HTTP/3: the server accepted 0-RTT early data
	crossNode bool // it resumed a session another target issued
	connect   time.Duration
	handshake time.Duration
}

// connect makes one connection to target: dial, handshake, request, read.
func (w *worker) connect(ctx context.Context, target int) result {
	p := w.r.plan
	if p.cfg.HTTP3 {
		return w.connectQUIC(ctx, target)
	}
	cctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()

	w.cache.Begin(target)
	start := time.Now()
	raw, err := w.dialer.DialContext(cctx, "tcp", p.addrs[target])
	if err != nil {
		return result{failure: dialFailure(err)}
	}
	if p.cfg.ProxyProtocol {
		raw.SetWriteDeadline(time.Now().Add(p.cfg.Timeout))
		h := proxyproto.HeaderProxyFromAddrs(2, raw.LocalAddr(), raw.RemoteAddr())
		if _, err := h.WriteTo(raw); err != nil {
			raw.Close()
			return result{failure: dialFailure(err)}
		}
		raw.SetWriteDeadline(time.Time{})
	}
	dialed := time.Now()
	conn := tls.Client(raw, w.tls)
	defer conn.Close()
	if err := conn.HandshakeContext(cctx); err != nil {
		return result{failure: handshakeFailure(err), offered: w.cache.HandedOut()}
	}
	done := time.Now()
	offered, issuer := w.cache.Offer()
	res := result{
		resumed:   conn.ConnectionState().DidResume,
		connect:   done.Sub(start),
		handshake: done.Sub(dialed),
	}
	res.offered = offered || res.resumed
	res.crossNode = res.resumed && issuer != target

	if !p.read {
		return res
	}
	deadline, _ := cctx.Deadline()
	conn.SetDeadline(deadline)
	// The deadline does not see ctx; wake a blocked read when ctx ends.
	defer context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })()
	if p.requests != nil {
		if _, err := conn.Write(p.requests[target]); err != nil {
			return result{failure: requestFailure(err)}
		}
	}
	// Reading takes in a TLS 1.3 ticket, which comes before any data.
	if n, err := conn.Read(w.buf); n == 0 && err != nil && !errors.Is(err, io.EOF) {
		return result{failure: requestFailure(err)}
	}
	return res
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

func dialFailure(err error) string {
	switch {
	case isTimeout(err):
		return FailTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		return FailRefused
	}
	return FailDial
}

func handshakeFailure(err error) string {
	var (
		verr *tls.CertificateVerificationError
		herr x509.HostnameError
		uerr x509.UnknownAuthorityError
		cerr x509.CertificateInvalidError
	)
	switch {
	case isTimeout(err):
		return FailTimeout
	case errors.As(err, &verr), errors.As(err, &herr), errors.As(err, &uerr), errors.As(err, &cerr):
		return FailCertificate
	}
	return FailHandshake
}

func requestFailure(err error) string {
	if isTimeout(err) {
		return FailTimeout
	}
	return FailRequest
}
