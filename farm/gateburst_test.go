package farm_test

import (
	"crypto/tls"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/logtest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// TestGateBurstProbesSpacedLogsOnce: the store probes gated hits begin
// (probe.recheck) under a burst of concurrent hits, not one at a time as
// in TestGateReadsOnceStoreBack. A farm of two nodes on a Redis of the
// test's own, n2's bus on a slow proxy (its hits gated), its store on
// another. With n2's store path cut, 8 clients dial n2 with one session
// for 1.5 s: every hit resumes (cut_off), and n2 begins at most one
// store probe every recheckSpacing (plus the ticker's). The path
// restored, the burst goes on for 1 s: hits are confirmed. The store's
// state changed twice, and n2 logged it twice: one line per change, not
// one per hit's probe. Then the path freezes (a hung store) and n2 is
// closed during a burst, hits waiting on its probe: Close returns within
// 2*OpTimeout, as TestCloseDuringOutage's bound.
func TestGateBurstProbesSpacedLogsOnce(t *testing.T) {
	t.Parallel()
	const (
		maxLag    = 100 * time.Millisecond
		busSlow   = 150 * time.Millisecond
		lookup    = 500 * time.Millisecond
		interval  = 500 * time.Millisecond
		probeTO   = time.Second
		opTimeout = 500 * time.Millisecond
		clients   = 8
	)
	logs := &logtest.Buffer{}
	g := newGateFarm(t, gateFarmOptions{
		MaxLag: maxLag,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Tweak: func(c *farm.Config) {
			c.LookupTimeout = lookup
			c.ProbeInterval = interval
			c.ProbeTimeout = probeTO
			c.OpTimeout = opTimeout
		},
	})
	n2, store2, gated := g.n2, g.store2, g.gated

	s := &tlstest.FrozenCache{}
	g.dial(n2, s)
	g.lagDelivery(busSlow)
	// burst dials n2 with S from clients clients until stop is closed
	// (or for d), and returns the dials and those that did not resume.
	burst := func(d time.Duration, stop <-chan struct{}) (dials, missed int64) {
		var wg sync.WaitGroup
		var nd, nm atomic.Int64
		end := time.Now().Add(d)
		for range clients {
			wg.Go(func() {
				for time.Now().Before(end) {
					select {
					case <-stop:
						return
					default:
					}
					cs, err := tlstest.Dial(n2.Server.Addr, farmtest.Client(tls.VersionTLS13, s))
					nd.Add(1)
					if err != nil || !cs.DidResume {
						nm.Add(1)
					}
				}
			})
		}
		wg.Wait()
		return nd.Load(), nm.Load()
	}
	storeLines := func() (down, up int) {
		for line := range strings.Lines(logs.String()) {
			switch {
			case strings.Contains(line, "farm: the store does not answer"):
				down++
			case strings.Contains(line, "farm: the store answers again"):
				up++
			}
		}
		return down, up
	}

	store2.Cut()
	farmtest.Eventually(t, 10*time.Second, "n2's store probe fails", func() bool { return !n2.Node.StoreProbeUp() })
	begun, start := n2.Node.StoreProbesBegun(), time.Now()
	dials, missed := burst(1500*time.Millisecond, nil)
	probes, elapsed := n2.Node.StoreProbesBegun()-begun, time.Since(start)
	t.Logf("store path cut: %d dials from %d clients in %v, %d not resumed; %d store probes; gated: cut_off %d",
		dials, clients, elapsed.Round(time.Millisecond), missed, probes, gated("cut_off"))
	if missed > 0 {
		t.Errorf("%d of %d dials did not resume S with n2 cut off from its store (cut_off)", missed, dials)
	}
	// One a recheckSpacing for the hits, one an interval for the
	// ticker, and two for the edges.
	if limit := uint64(elapsed/farm.RecheckSpacing+elapsed/interval) + 2; probes > limit {
		t.Errorf("n2 began %d store probes for %d concurrent gated hits in %v, want at most %d",
			probes, dials, elapsed.Round(time.Millisecond), limit)
	}

	store2.Restore()
	confirmed := gated("confirmed")
	dials, missed = burst(time.Second, nil)
	t.Logf("store path restored: %d dials, %d not resumed; gated: confirmed %d", dials, missed, gated("confirmed")-confirmed)
	if gated("confirmed") == confirmed {
		t.Error("no gated hit was confirmed with n2's store back")
	}
	if down, up := storeLines(); down != 1 || up != 1 {
		t.Errorf("n2 logged the store down %d times and up %d times, want once each (one line per change)\n%s", down, up, logs.String())
	}

	// A hung store: Close during a burst of hits that wait on its probe.
	store2.Freeze()
	farmtest.Eventually(t, 10*time.Second, "n2's store probe fails", func() bool { return !n2.Node.StoreProbeUp() })
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		burst(10*time.Second, stop)
	}()
	time.Sleep(300 * time.Millisecond)
	// A stall of the whole test process (a loaded machine) is not a
	// wait in Close: the longest a 5 ms sleep woke late meanwhile is
	// taken off, as in TestCloseDuringOutage.
	meterStop, longest := make(chan struct{}), make(chan time.Duration, 1)
	go func() {
		var most time.Duration
		for {
			select {
			case <-meterStop:
				longest <- most
				return
			default:
			}
			due := time.Now().Add(5 * time.Millisecond)
			time.Sleep(5 * time.Millisecond)
			most = max(most, time.Since(due))
		}
	}()
	closing := time.Now()
	n2.Node.Close()
	took := time.Since(closing)
	close(meterStop)
	stall := <-longest
	close(stop)
	<-done
	t.Logf("Close with n2's store hung, hits gated: %v (longest stall of the test process: %v)",
		took.Round(time.Millisecond), stall.Round(time.Millisecond))
	if took-stall > 2*opTimeout {
		t.Errorf("Close took %v with the store hung and hits waiting on its probe, want at most %v", took, 2*opTimeout)
	}
}
