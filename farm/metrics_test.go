package farm_test

import (
	"cmp"
	"crypto/tls"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/metric"
)

// TestMetricsConsistent: the samples of a node and of its rotator are what
// the admin API's collector can export as they are — each name with one
// help text, one kind and one set of label names, no two samples of a name
// with the same label values — and they count what happened: a session
// published by one node and inserted by the other.
func TestMetricsConsistent(t *testing.T) {
	t.Parallel()
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: redisTransport(redistest.URL(t)),
		Rotation: &farm.RotationConfig{Interval: time.Hour}})
	tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, tlstest.NoResume{}))
	farmtest.Eventually(t, 5*time.Second, "n2 inserted n1's session", func() bool {
		return farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_inserted_total") == 1
	})
	// n1 counts its publish once the bus has returned, which may be
	// after n2 has the message.
	farmtest.Eventually(t, 5*time.Second, "n1 counted the session published", func() bool {
		return farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_published_total", "kind", "session") >= 1
	})
	if got := farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_published_total", "kind", "session"); got != 1 {
		t.Errorf("n1 published %d sessions, want 1", got)
	}
	for _, m := range ms {
		check(t, m.Name+" node", m.Node.Metrics(), "tlsfarm_farm_")
		check(t, m.Name+" rotator", m.Rotator.Metrics(), "tlsfarm_ticket_")
	}
}

func check(t *testing.T, what string, samples []metric.Sample, prefix string) {
	t.Helper()
	type shape struct {
		help   string
		kind   metric.Kind
		labels string
	}
	shapes := map[string]shape{}
	seen := map[string]bool{}
	for _, s := range samples {
		var names, series []string
		for _, l := range s.Labels {
			names = append(names, l.Name)
			series = append(series, l.Name+"="+l.Value)
		}
		sh := shape{s.Help, s.Kind, strings.Join(names, ",")}
		if have, ok := shapes[s.Name]; ok && have != sh {
			t.Errorf("%s: %s has two shapes: %+v and %+v", what, s.Name, have, sh)
		}
		shapes[s.Name] = sh
		key := s.Name + "{" + strings.Join(series, ",") + "}"
		if seen[key] {
			t.Errorf("%s: %s given twice", what, key)
		}
		seen[key] = true
		if !strings.HasPrefix(s.Name, prefix) || s.Help == "" {
			t.Errorf("%s: %s: want a name starting %s and a help text", what, s, prefix)
		}
		if s.Kind == metric.Histogram && !slices.IsSortedFunc(s.Buckets, func(a, b metric.Bucket) int { return cmp.Compare(a.Count, b.Count) }) {
			t.Errorf("%s: %s: buckets not cumulative: %v", what, s.Name, s.Buckets)
		}
	}
	if len(samples) == 0 {
		t.Errorf("%s: no samples", what)
	}
}
