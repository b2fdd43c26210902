package main

import (
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/keyexport"
)

// The rotation interval of the tests with real terminators: short enough
// to watch three rotations in about 20 seconds.
const (
	testRotation = 5 * time.Second
	testKeep     = 2
	// settle is how long after a member applies a new key set the tests
	// wait before relying on it everywhere: nginx's reload is asynchronous.
	settle = 1500 * time.Millisecond
)

func farmArgs(url, secret, name string) []string {
	return []string{"-farm", url, "-farm-secret", secret, "-farm-name", name,
		"-ticket-rotation", testRotation.String(), "-ticket-keep", strconv.Itoa(testKeep)}
}

// TestKeysNginxAndServeFarm runs one farm of two nginx servers, each with
// its own tlsfarm keys agent and key directory, and two tlsfarm serve nodes
// in stateless mode, rotating every 5s and keeping 2 keys. It checks that
//   - nginx reads each part of an exported key from where the agent put it
//     (a ticket nginx issues opens with the derived keys);
//   - a ticket from either nginx resumes on the other, at TLS 1.2 and 1.3,
//     and a serve node's ticket on the other serve node; neither kind's
//     tickets resume on the other kind (each kind has its own derived keys);
//   - a frozen ticket lives through two rotations and is refused after the
//     third;
//   - under continuous load across both nginx servers, no resumption fails
//     at any rotation boundary;
//   - every member of the farm holds the same epoch, and one holds the lease.
func TestKeysNginxAndServeFarm(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	secret, cert, key, leaf := farmFiles(t)
	name := redistest.Farm(t)
	fa := farmArgs(url, secret, name)

	var nginxes []*server
	var agents []*keysAgent
	for i := range 2 {
		dir := privateDir(t)
		srv, reload := newNginx(t, fmt.Sprintf("nginx-%d", i), dir, testKeep, cert, key)
		a := startAgent(t, fmt.Sprintf("keys-%d", i), append(fa, "-export", "nginx:"+dir, "-on-change", reload)...)
		waitExported(t, a, 1, 10*time.Second)
		srv.start()
		nginxes = append(nginxes, srv)
		agents = append(agents, a)
	}
	var serves []*proc
	for i := range 2 {
		serves = append(serves, serveProc(t, append([]string{"-node", fmt.Sprintf("serve-%d", i), "-cert", cert, "-key", key,
			"-cache-mode", "stateless"}, fa...)))
	}
	n0, n1 := nginxes[0].addr(), nginxes[1].addr()
	s0, s1 := serves[0].Listeners[0], serves[1].Listeners[0]

	// nginx's layout: name, HMAC key, AES key.
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		openWithRing(t, agents[0].ring, serverTicket(t, n0, v), keyexport.NginxKey, 48, 16)
	}

	// Across the servers of each kind, and not across kinds.
	for _, v := range []string{"1.2", "1.3"} {
		ng, sv := tempFile(t), tempFile(t)
		mustResume(t, false, "full handshake on nginx-0", n0, v, "", ng)
		mustResume(t, true, "nginx-0's ticket on nginx-1", n1, v, ng, "")
		mustResume(t, false, "full handshake on serve-0", s0, v, "", sv)
		mustResume(t, true, "serve-0's ticket on serve-1", s1, v, sv, "")
		mustResume(t, false, "nginx-0's ticket on serve-1", s1, v, ng, "")
		mustResume(t, false, "serve-0's ticket on nginx-1", n1, v, sv, "")
	}

	// Continuous load: two chains of resumptions (TLS 1.2 and 1.3), each
	// alternating between the two nginx servers, every session taken from
	// the one before, until the frozen tickets are done. The chains use Go's
	// client, which keeps a ticket that nginx renews on a TLS 1.2
	// resumption (openssl s_client saves only new sessions).
	stop := make(chan struct{})
	var loadWG sync.WaitGroup
	var resumptions atomic.Int64
	var failures []string
	var failMu sync.Mutex
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		loadWG.Add(1)
		go func() {
			defer loadWG.Done()
			cfg := clientFor("localhost", leaf)
			cfg.MinVersion, cfg.MaxVersion = v, v
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
			for i := 0; i <= 3000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				addr := []string{n0, n1}[i%2]
				resumed, err := httpGet(addr, cfg)
				switch {
				case err != nil:
					t.Errorf("TLS %s on %s: %v", tls.VersionName(v), addr, err)
					return
				case i > 0 && !resumed:
					failMu.Lock()
					failures = append(failures, fmt.Sprintf("%s at %s on %s, farm epoch %d",
						tls.VersionName(v), time.Now().Format("15:04:05.000"), addr, agents[0].ring.Status().Epoch))
					failMu.Unlock()
				case resumed:
					resumptions.Add(1)
				}
				time.Sleep(25 * time.Millisecond)
			}
		}()
	}

	// A frozen ticket of each version, issued just after a rotation.
	e0 := agents[0].ring.Status().Epoch
	waitEpoch(t, agents[0], e0+1, 2*testRotation)
	e0++
	time.Sleep(settle)
	frozen := map[string]string{"1.2": tempFile(t), "1.3": tempFile(t)}
	for v, f := range frozen {
		mustResume(t, false, "a full handshake for the frozen ticket", n0, v, "", f)
	}
	for k := uint64(1); k <= 3; k++ {
		waitEpoch(t, agents[0], e0+k, 2*testRotation)
		time.Sleep(settle)
		checkOneFarm(t, agents, serves, e0+k)
		for v, f := range frozen {
			mustResume(t, k <= 2, fmt.Sprintf("the frozen ticket after %d rotations", k), n1, v, f, "")
		}
	}
	close(stop)
	loadWG.Wait()
	if len(failures) > 0 {
		t.Errorf("%d resumptions under load failed (of %d):\n%s", len(failures), resumptions.Load(), strings.Join(failures, "\n"))
	}
	if resumptions.Load() < 20 {
		t.Errorf("only %d resumptions under load", resumptions.Load())
	}
	t.Logf("%d resumptions under load across 3 rotations, none failed", resumptions.Load())
}

// checkOneFarm checks that every member of the farm is at epoch and that
// exactly one holds the rotation lease.
func checkOneFarm(t *testing.T, agents []*keysAgent, serves []*proc, epoch uint64) {
	t.Helper()
	holders := 0
	for i, a := range agents {
		if got := a.ring.Status().Epoch; got != epoch {
			t.Errorf("agent %d is at epoch %d, want %d", i, got, epoch)
		}
		if farmtest.Counter(a.rotator.Metrics(), "tlsfarm_ticket_rotation_lease_holder") == 1 {
			holders++
		}
	}
	for i, p := range serves {
		if got := metric(t, p, "tlsfarm_ticket_key_epoch"); got != float64(epoch) {
			t.Errorf("serve-%d is at epoch %v, want %d", i, got, epoch)
		}
		if metric(t, p, "tlsfarm_ticket_rotation_lease_holder") == 1 {
			holders++
		}
	}
	if holders != 1 {
		t.Errorf("%d members hold the rotation lease, want 1", holders)
	}
}

// waitEpoch waits until the agent's ring holds the given epoch.
func waitEpoch(t *testing.T, a *keysAgent, epoch uint64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for a.ring.Status().Epoch < epoch {
		if time.Now().After(deadline) {
			t.Fatalf("epoch %d not reached within %v (at %d)", epoch, timeout, a.ring.Status().Epoch)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// httpGet makes one HTTP/1.0 request over TLS to addr and reads the whole
// answer (so that TLS 1.3 tickets reach cfg's session cache), and reports
// whether the handshake resumed a session.
func httpGet(addr string, cfg *tls.Config) (bool, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return false, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"); err != nil {
		return false, err
	}
	if _, err := io.ReadAll(c); err != nil {
		return false, err
	}
	return c.ConnectionState().DidResume, nil
}

func tempFile(t *testing.T) string {
	f, err := os.CreateTemp(t.TempDir(), "session-*.pem")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	os.Remove(f.Name())
	return f.Name()
}

// TestKeysHAProxyRuntime runs two HAProxy servers, each with its own agent
// that writes its tls-ticket-keys file and pushes each rotation through the
// runtime API, with no reload. Tickets resume across the two before and
// after two rotations; a ticket lives through one rotation, not two
// (HAProxy holds one previous key); a HAProxy restarted from the file
// resumes tickets issued before its restart.
func TestKeysHAProxyRuntime(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	secret, cert, key, _ := farmFiles(t)
	fa := farmArgs(url, secret, redistest.Farm(t))

	var hs []*server
	var agents []*keysAgent
	var files []string
	for i := range 2 {
		file := filepath.Join(privateDir(t), "tls-ticket.keys")
		srv, sock := newHAProxy(t, fmt.Sprintf("haproxy-%d", i), file, cert, key)
		a := startAgent(t, fmt.Sprintf("keys-%d", i), append(fa, "-export", "haproxy:"+file+",socket="+sock)...)
		waitUntil(t, 10*time.Second, func() bool { _, err := os.Stat(file); return err == nil }, "the agent wrote no %s", file)
		srv.start()
		waitExported(t, a, 1, 10*time.Second) // through the runtime API too
		hs, agents, files = append(hs, srv), append(agents, a), append(files, file)
	}
	h0, h1 := hs[0].addr(), hs[1].addr()
	pids := []int{hs[0].pid(), hs[1].pid()}

	// HAProxy's layout: name, AES key, HMAC key.
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		openWithRing(t, agents[0].ring, serverTicket(t, h0, v), keyexport.HAProxyKey, 16, 48)
	}
	// Tickets issued at epoch e, with both HAProxy servers at e.
	e := agents[0].ring.Status().Epoch
	for _, a := range agents {
		waitExported(t, a, e, 2*testRotation)
	}
	before := map[string]string{}
	for _, v := range []string{"1.2", "1.3"} {
		a, b := tempFile(t), tempFile(t)
		mustResume(t, false, "full handshake on haproxy-0", h0, v, "", a)
		mustResume(t, true, "haproxy-0's ticket on haproxy-1", h1, v, a, "")
		mustResume(t, false, "full handshake on haproxy-1", h1, v, "", b)
		mustResume(t, true, "haproxy-1's ticket on haproxy-0", h0, v, b, "")
		before[v] = a
	}
	if agents[0].ring.Status().Epoch != e {
		t.Skip("the machine is too slow for a 5s rotation: a rotation passed while issuing the tickets")
	}

	// Two rotations, pushed live. HAProxy holds one previous key, so the
	// tickets from epoch e resume after the first and not after the second.
	for r := uint64(1); r <= 2; r++ {
		for _, a := range agents {
			waitExported(t, a, e+r, 2*testRotation)
		}
		for _, v := range []string{"1.2", "1.3"} {
			mustResume(t, r == 1, fmt.Sprintf("haproxy-0's ticket from epoch e on haproxy-1 after %d rotations", r), h1, v, before[v], "")
		}
		for i, a := range agents {
			if st := a.exporter.Status()[0]; !st.OK || st.Exports < 1+r {
				t.Errorf("agent %d: %+v", i, st)
			}
			rt := &keyexport.HAProxyRuntime{Socket: filepath.Join(hs[i].dir, "admin.sock"), ID: files[i]}
			live, err := rt.Keys(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			file, _ := os.ReadFile(files[i])
			lines := strings.Fields(string(file))
			if strings.Join(live, " ") != strings.Join(lines[len(lines)-len(live):], " ") {
				t.Errorf("haproxy-%d's live keys are not the last %d of its file", i, len(live))
			}
		}
		for _, v := range []string{"1.2", "1.3"} {
			a, b := tempFile(t), tempFile(t)
			mustResume(t, false, "full handshake on haproxy-1 after a rotation", h1, v, "", a)
			mustResume(t, true, "haproxy-1's new ticket on haproxy-0", h0, v, a, "")
			mustResume(t, false, "full handshake on haproxy-0 after a rotation", h0, v, "", b)
			mustResume(t, true, "haproxy-0's new ticket on haproxy-1", h1, v, b, "")
		}
	}
	for i, s := range hs {
		if s.pid() != pids[i] {
			t.Errorf("haproxy-%d was restarted", i)
		}
	}

	// The agent reports each target on its admin listener.
	code, body := nettest.Do(t, "GET", "http://"+agents[0].adminAddr+"/metrics", "")
	for _, want := range []string{
		`tlsfarm_key_export_ok{target="haproxy:` + files[0],
		`tlsfarm_ticket_key_epoch `,
		`tlsfarm_ticket_rotation_lease_holder `,
	} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("the agent's metrics (%d) lack %q", code, want)
		}
	}
	if code, body := nettest.Do(t, "GET", "http://"+agents[0].adminAddr+"/healthz", ""); code != 200 || !strings.Contains(body, `"exports"`) || !strings.Contains(body, `"status": "ok"`) {
		t.Errorf("the agent's /healthz: %d %s", code, body)
	}
	if code, _ := nettest.Do(t, "GET", "http://"+agents[0].adminAddr+"/readyz", ""); code != 200 {
		t.Errorf("the agent's /readyz: %d", code)
	}

	// A restart reads the file: tickets issued before it still resume.
	issued := map[string]string{}
	for _, v := range []string{"1.2", "1.3"} {
		issued[v] = tempFile(t)
		mustResume(t, false, "full handshake on haproxy-0", h0, v, "", issued[v])
	}
	hs[1].stop()
	hs[1].start()
	for _, v := range []string{"1.2", "1.3"} {
		mustResume(t, true, "a ticket from before the restart on the restarted haproxy-1", h1, v, issued[v], "")
	}
}

// TestKeysNginxLowerKeep lowers -ticket-keep from 3 to 2 on an nginx
// target whose nginx.conf still lists the five files of keep 3. The file
// the agent no longer writes, ticket-4.key, held a key the farm has since
// dropped: a ticket another nginx issued under that key must not resume,
// and nginx must still start with the five files listed.
func TestKeysNginxLowerKeep(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	secret, cert, key, _ := farmFiles(t)
	dir, oldDir := privateDir(t), privateDir(t)

	// The key left in ticket-4.key by a run with -ticket-keep 3, and an
	// nginx that issues tickets under it.
	var dropped [80]byte
	rand.Read(dropped[:])
	stale := filepath.Join(dir, keyexport.NginxFileName(4))
	for _, p := range []string{stale, filepath.Join(oldDir, keyexport.NginxFileName(0))} {
		if err := os.WriteFile(p, dropped[:], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old, _ := newNginx(t, "nginx-old", oldDir, -1, cert, key) // ticket-0.key only
	old.start()
	issued := map[string]string{}
	for _, v := range []string{"1.2", "1.3"} {
		issued[v] = tempFile(t)
		mustResume(t, false, "full handshake on nginx-old", old.addr(), v, "", issued[v])
		mustResume(t, true, "nginx-old's ticket on nginx-old", old.addr(), v, issued[v], "")
	}

	a := startAgent(t, "keys", append(farmArgs(url, secret, redistest.Farm(t)), "-export", "nginx:"+dir)...)
	waitExported(t, a, 1, 10*time.Second)
	if b, err := os.ReadFile(stale); err != nil || len(b) != 80 || [80]byte(b) == dropped {
		t.Errorf("%s still holds the dropped key (or is not an 80-byte key file: %v)", stale, err)
	}
	srv, _ := newNginx(t, "nginx", dir, 3, cert, key) // nginx.conf of -ticket-keep 3
	srv.start()
	for _, v := range []string{"1.2", "1.3"} {
		mustResume(t, false, "a ticket under a key the farm dropped", srv.addr(), v, issued[v], "")
		own := tempFile(t)
		mustResume(t, false, "full handshake on nginx", srv.addr(), v, "", own)
		mustResume(t, true, "nginx's own ticket", srv.addr(), v, own, "")
	}
}
