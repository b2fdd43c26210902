package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/probe"
)

// TestHTTP3FarmWithEarlyData runs two daemons of one farm with -http3
// -early-data and probes them over HTTP/3: sessions resume across the
// nodes, early data is accepted (never more than once per session), the
// TCP listener advertises HTTP/3, and the metrics count it all.
func TestHTTP3FarmWithEarlyData(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	secret, cert, key, leaf := farmFiles(t)
	name := redistest.Farm(t)
	var nodes []*proc
	for _, n := range []string{"h3-a", "h3-b"} {
		nodes = append(nodes, serveProc(t, []string{"-node", n, "-cert", cert, "-key", key, "-http3", "-early-data",
			"-farm", url, "-farm-secret", secret, "-farm-name", name, "-write-through", "-lookup-deadline", "1s"}))
	}
	resp, _, _ := get(t, nodes[0].Listeners[0], clientFor("localhost", leaf), "/")
	if alt := resp.Header.Get("Alt-Svc"); !strings.HasPrefix(alt, `h3=":`) {
		t.Errorf("TCP response Alt-Svc = %q", alt)
	}

	// The farm's strike register began when the nodes wrote its 256
	// markers, as they joined: a ticket carries early data only if issued
	// after that, by its one-second time stamp, plus the farm's clock skew
	// allowance (5s).
	opt, err := goredis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rc := goredis.NewClient(opt)
	defer rc.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		keys, _ := rc.Keys(t.Context(), "tlsfarm:"+name+":{once:??}").Result()
		if len(keys) == 256 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d strike register markers written, want 256", len(keys))
		}
		time.Sleep(50 * time.Millisecond)
	}
	primed := time.Now()
	for !time.Now().Truncate(time.Second).After(primed.Add(5*time.Second + 200*time.Millisecond)) {
		time.Sleep(50 * time.Millisecond)
	}
	code, out, errs := runCmd(t, []string{"probe", "-http3", "-targets", nodes[0].Listeners[0] + "," + nodes[1].Listeners[0],
		"-n", "12", "-pick", "roundrobin", "-insecure", "-sni", "localhost", "-json"})
	if code != 0 {
		t.Fatalf("probe: exit %d\nstdout %s\nstderr %s", code, out, errs)
	}
	var rep probe.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("probe output: %v\n%s", err, out)
	}
	tot := rep.Total
	if tot.Failed != 0 || tot.Resumed != 11 || tot.CrossNode != 11 || tot.EarlyData == 0 {
		t.Fatalf("probe over HTTP/3: %+v", tot)
	}
	// A node counts a QUIC handshake, and whether it accepted early data,
	// once the handshake has completed, on a goroutine of its own, which
	// on a loaded machine may run after the probe has exited: wait for
	// the counts to reach the probe's (then check they went no further).
	var accepted float64
	resumed := make([]float64, len(nodes))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		accepted = 0
		for i, p := range nodes {
			resumed[i] = metric(t, p, `tlsfarm_quic_handshakes_total{kind="resumed"}`)
			accepted += metric(t, p, "tlsfarm_quic_early_data_accepted_total")
		}
		if int(accepted) >= tot.EarlyData && slices.Min(resumed) >= 1 || time.Now().After(deadline) {
			break
		}
	}
	for i, n := range resumed {
		if n < 1 {
			t.Errorf("%s: no resumed QUIC handshake counted (%v)", nodes[i].Listeners[0], n)
		}
	}
	if int(accepted) != tot.EarlyData {
		t.Errorf("the nodes accepted early data %v times, the probe saw %d", accepted, tot.EarlyData)
	}
}
