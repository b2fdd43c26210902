// Package natstest gives tests a cluster of NATS servers with JetStream on
// free loopback ports, for tests that must stop one of them: in the test's
// own process (nats-server as a library, the current release), or as
// processes of the machine's nats-server binary, which a test can kill as a
// crash would; and DeleteBuckets, which clears a test's buckets from a
// server it shares.
package natstest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tlsfarm/tlsfarm/internal/testenv"
)

// A Cluster is a NATS cluster with JetStream, stopped when the test ends.
type Cluster struct {
	Servers []*server.Server
	tb      testing.TB
}

// pickPort is testenv.FreePort; tests of this package replace it to hand
// StartProcCluster a client port that something else holds.
var pickPort = testenv.FreePort

// startAttempts is how many sets of free ports StartCluster and
// StartProcCluster try: a port can be taken between the moment it was
// found free and the server's bind (see testenv.FreePort).
const startAttempts = 8

// StartCluster starts n servers named n1, n2, ... that route to each other
// and share JetStream, and waits until JetStream has a meta leader. If
// something took a cluster port before its server could listen on it, it
// starts the cluster again on new ports.
func StartCluster(tb testing.TB, n int) *Cluster {
	tb.Helper()
	return startClusterVia(tb, n, nil)
}

// StartClusterVia is StartCluster, but every route of the last server
// goes through addresses of the test's choosing: it solicits its route to
// each other server at via(that server's route address), and advertises
// via(its own route address), where the others solicit theirs (gossip
// tells them to); the others route to each other directly. A
// nettest.Proxy in front of each address, say, which the test freezes to
// cut the last server off from the rest while its clients still reach it,
// or slows to make it lag. The last server starts once the others have
// their routes, so that gossip never tells it another server's own
// address. It fails tb if a route to or from the last server was
// solicited at an address via did not return. n is at least 2.
func StartClusterVia(tb testing.TB, n int, via func(routeAddr string) string) *Cluster {
	tb.Helper()
	if n < 2 || via == nil {
		tb.Fatalf("natstest: StartClusterVia needs at least 2 servers and a via (n %d)", n)
	}
	return startClusterVia(tb, n, via)
}

func startClusterVia(tb testing.TB, n int, via func(routeAddr string) string) *Cluster {
	tb.Helper()
	for range startAttempts {
		c, err := startCluster(tb, n, via)
		if err == nil {
			return c
		}
		if !errors.Is(err, testenv.ErrPortTaken) {
			tb.Fatal(err)
		}
		tb.Logf("natstest: %v; starting the cluster again on other ports", err)
	}
	tb.Fatalf("NATS cluster did not start: %d sets of ports in a row were taken", startAttempts)
	return nil
}

// startCluster starts the servers of StartCluster (StartClusterVia with
// a via) once, stopping them again if one of them does not start.
func startCluster(tb testing.TB, n int, via func(routeAddr string) string) (*Cluster, error) {
	tb.Helper()
	ports := make([]int, n)
	for i := range ports {
		ports[i] = testenv.FreePort(tb)
	}
	var routes []*url.URL
	for _, p := range ports {
		routes = append(routes, &url.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	// With via, the last server's routes (viaRoutes) and the address it
	// advertises (viaAdvertise) go through via; the others' routes leave
	// it out.
	var viaRoutes []*url.URL
	var viaAdvertise string
	direct := map[string]bool{} // every server's own route address
	if via != nil {
		for _, r := range routes {
			direct[r.Host] = true
		}
		for _, r := range routes[:n-1] {
			viaRoutes = append(viaRoutes, &url.URL{Scheme: "nats-route", Host: via(r.Host)})
		}
		viaAdvertise = via(routes[n-1].Host)
		routes = routes[:n-1]
	}
	c := &Cluster{tb: tb}
	var logs []*logTail
	stop := func() {
		for _, s := range c.Servers {
			s.Shutdown()
			s.WaitForShutdown()
		}
	}
	for i := range n {
		rs, advertise := routes, ""
		if via != nil && i == n-1 {
			rs, advertise = viaRoutes, viaAdvertise
			if err := waitRoutes(c.Servers, n-2, logs); err != nil {
				stop()
				return nil, err
			}
		}
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			JetStream:  true,
			StoreDir:   tb.TempDir(),
			NoSigs:     true,
			Cluster: server.ClusterOpts{
				Name:      "tlsfarm-test",
				Host:      "127.0.0.1",
				Port:      ports[i],
				Advertise: advertise,
			},
			Routes:                 rs,
			DisableJetStreamBanner: true,
		}
		s, err := server.NewServer(opts)
		if err != nil {
			stop()
			return nil, err
		}
		// Keep what the server logs, to tell a taken port and to show
		// why a server did not start.
		log := &logTail{}
		s.SetLogger(log, false, false)
		logs = append(logs, log)
		s.Start()
		c.Servers = append(c.Servers, s)
		if via != nil && i == n-2 {
			// The others must be up (and routed, above) before the
			// last one starts.
			if err := waitReady(c.Servers, logs); err != nil {
				stop()
				return nil, err
			}
		}
	}
	if err := waitReady(c.Servers, logs); err != nil {
		stop()
		return nil, err
	}
	tb.Cleanup(stop)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ready := true
		for _, s := range c.Servers {
			if s.NumRoutes() < n-1 || !s.JetStreamIsCurrent() {
				ready = false
			}
		}
		if ready && c.metaLeader() != nil {
			if via != nil {
				if err := c.checkVia(direct); err != nil {
					return nil, err
				}
			}
			if err := waitPlacement(c.Servers[0].ClientURL(), n, deadline); err != nil {
				return nil, err
			}
			return c, nil
		}
		if time.Now().After(deadline) {
			var out strings.Builder
			for i, s := range c.Servers {
				fmt.Fprintf(&out, "%s (%d routes) logged:\n%s\n", s.Name(), s.NumRoutes(), logs[i].String())
			}
			return nil, fmt.Errorf("NATS cluster: no JetStream meta leader within 30s\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitPlacement waits until the JetStream cluster of n servers reached at
// url places a stream on min(n, 3) of them, or returns an error at
// deadline. A meta leader, and every server current, is not yet that: the
// leader may still count a peer offline, and a bucket created then is
// placed on one server (natsbus falls back to one replica), which a test
// of a replicated bucket then waits on in vain (a run of natsbus's tests
// beside a CPU hog timed out waiting for n3 to be current on a stream it
// held no replica of).
func waitPlacement(url string, n int, deadline time.Time) error {
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cfg := jetstream.StreamConfig{
		Name:     "natstest_placement",
		Subjects: []string{"natstest.placement"},
		Storage:  jetstream.MemoryStorage,
		Replicas: min(n, 3),
	}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := js.CreateStream(ctx, cfg)
		if err == nil {
			err = js.DeleteStream(ctx, cfg.Name)
			cancel()
			return err
		}
		cancel()
		if time.Now().After(deadline) {
			return fmt.Errorf("NATS cluster: no stream placed on %d servers by the start's deadline: %w", cfg.Replicas, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitReady waits until every server of servers accepts connections, or
// returns an error (wrapping testenv.ErrPortTaken if one's port was
// taken); logs holds what each logged.
func waitReady(servers []*server.Server, logs []*logTail) error {
	deadline := time.Now().Add(testenv.StartTimeout)
	for i, s := range servers {
		for !s.ReadyForConnections(100 * time.Millisecond) {
			out := logs[i].String()
			if strings.Contains(strings.ToLower(out), "address already in use") {
				return fmt.Errorf("%w: NATS server %s: %s", testenv.ErrPortTaken, s.Name(), out)
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("NATS server %s did not start within %v; it logged:\n%s", s.Name(), testenv.StartTimeout, out)
			}
		}
	}
	return nil
}

// waitRoutes waits until every server of servers has routes to at least
// want others, for at most 30s.
func waitRoutes(servers []*server.Server, want int, logs []*logTail) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		ready := true
		for _, s := range servers {
			if s.NumRoutes() < want {
				ready = false
			}
		}
		if ready {
			return nil
		}
		if time.Now().After(deadline) {
			var out strings.Builder
			for i, s := range servers {
				fmt.Fprintf(&out, "%s (%d routes) logged:\n%s\n", s.Name(), s.NumRoutes(), logs[i].String())
			}
			return fmt.Errorf("NATS cluster: servers not routed to %d others within 30s\n%s", want, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkVia returns an error if a route between the last server and
// another goes to one's own route address (one of direct): a connection
// through via shows, on the side that solicited it, via's address, and on
// the other an address of via's own.
func (c *Cluster) checkVia(direct map[string]bool) error {
	last := c.Servers[len(c.Servers)-1]
	for _, s := range c.Servers {
		rz, err := s.Routez(nil)
		if err != nil {
			return err
		}
		for _, r := range rz.Routes {
			if s != last && r.RemoteName != last.Name() {
				continue
			}
			if addr := net.JoinHostPort(r.IP, fmt.Sprint(r.Port)); direct[addr] {
				return fmt.Errorf("NATS cluster: %s has a route to %s at its own address %s, not through via", s.Name(), r.RemoteName, addr)
			}
		}
	}
	return nil
}

// A logTail is a nats-server logger that keeps the end of what the server
// logged, debug and trace lines aside.
type logTail struct {
	mu  sync.Mutex
	buf []byte
}

func (l *logTail) logf(level, format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, level...)
	l.buf = fmt.Appendf(l.buf, format, v...)
	l.buf = append(l.buf, '\n')
	if len(l.buf) > 8<<10 {
		l.buf = append(l.buf[:0], l.buf[len(l.buf)-4<<10:]...)
	}
}

func (l *logTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf[max(0, len(l.buf)-4<<10):])
}

func (l *logTail) Noticef(format string, v ...any) { l.logf("[INF] ", format, v...) }
func (l *logTail) Warnf(format string, v ...any)   { l.logf("[WRN] ", format, v...) }
func (l *logTail) Fatalf(format string, v ...any)  { l.logf("[FTL] ", format, v...) }
func (l *logTail) Errorf(format string, v ...any)  { l.logf("[ERR] ", format, v...) }
func (l *logTail) Debugf(string, ...any)           {}
func (l *logTail) Tracef(string, ...any)           {}

func (c *Cluster) metaLeader() *server.Server {
	for _, s := range c.Servers {
		if s.Running() && s.JetStreamIsLeader() {
			return s
		}
	}
	return nil
}

// URL returns the client URLs of every server, separated by commas, with
// query (such as "replicas=3") appended to the last if not empty.
func (c *Cluster) URL(query string) string {
	var us []string
	for _, s := range c.Servers {
		us = append(us, s.ClientURL())
	}
	u := strings.Join(us, ",")
	if query != "" {
		u += "?" + query
	}
	return u
}

// Server returns the running server named name, or nil.
func (c *Cluster) Server(name string) *server.Server {
	for _, s := range c.Servers {
		if s.Name() == name && s.Running() {
			return s
		}
	}
	return nil
}

// A Proc is one nats-server process of a ProcCluster.
type Proc struct {
	Name string
	Port int
	proc *testenv.Proc
}

// Addr returns the server's client address.
func (p *Proc) Addr() string { return fmt.Sprintf("127.0.0.1:%d", p.Port) }

// Kill kills the server at once (SIGKILL, as in a crash) and waits for it.
func (p *Proc) Kill() {
	if p.proc == nil {
		return
	}
	p.proc.Kill()
	p.proc = nil
}

// A ProcCluster is a NATS cluster with JetStream of nats-server processes
// (the machine's binary), for tests that must kill one as a crash would.
type ProcCluster struct {
	Procs []*Proc
}

// Bin returns the path of the machine's nats-server binary, skipping (or
// failing, under TLSFARM_REQUIRE_SERVICES=1) tb if there is none.
func Bin(tb testing.TB) string {
	tb.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		bin = "/usr/sbin/nats-server"
		if _, err := os.Stat(bin); err != nil {
			testenv.Skip(tb, "nats-server is not installed")
		}
	}
	return bin
}

// StartProcCluster starts n nats-server processes named n1, n2, ... that
// route to each other and share JetStream, stopped when the test ends. It
// skips (or fails, under TLSFARM_REQUIRE_SERVICES=1) without the binary.
// It waits only until every server answers: JetStream elects its meta
// leader a moment later. If something took one of the ports before its
// server could listen on it, it starts the cluster again on new ports.
func StartProcCluster(tb testing.TB, n int) *ProcCluster {
	tb.Helper()
	bin := Bin(tb)
	for range startAttempts {
		c, err := startProcCluster(tb, bin, n)
		if err == nil {
			return c
		}
		if !errors.Is(err, testenv.ErrPortTaken) {
			tb.Fatal(err)
		}
		tb.Logf("natstest: %v; starting the cluster again on other ports", err)
	}
	tb.Fatalf("NATS cluster did not start: %d sets of ports in a row were taken", startAttempts)
	return nil
}

// startProcCluster starts the processes of StartProcCluster once,
// killing them again if one does not start.
func startProcCluster(tb testing.TB, bin string, n int) (*ProcCluster, error) {
	tb.Helper()
	cports := make([]int, n)
	for i := range cports {
		cports[i] = testenv.FreePort(tb)
	}
	var routes []string
	for _, p := range cports {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	c := &ProcCluster{}
	kill := func() {
		for _, p := range c.Procs {
			p.Kill()
		}
	}
	for i := range n {
		p := &Proc{Name: fmt.Sprintf("n%d", i+1), Port: pickPort(tb)}
		var err error
		p.proc, err = testenv.StartProc(bin, "-a", "127.0.0.1", "-p", fmt.Sprint(p.Port), "-js", "-sd", tb.TempDir(),
			"--server_name", p.Name, "--cluster_name", "tlsfarm-test",
			"--cluster", routes[i], "--routes", strings.Join(routes, ","))
		if err != nil {
			kill()
			return nil, err
		}
		c.Procs = append(c.Procs, p)
	}
	for _, p := range c.Procs {
		if err := p.proc.WaitReady(testenv.StartTimeout, func() error { return Answers(p.Addr(), p.Name) }); err != nil {
			kill()
			return nil, fmt.Errorf("nats-server %s on %s: %w", p.Name, p.Addr(), err)
		}
	}
	if err := waitPlacement("nats://"+c.Procs[0].Addr(), n, time.Now().Add(30*time.Second)); err != nil {
		kill()
		return nil, err
	}
	tb.Cleanup(kill)
	return c, nil
}

// Answers reports whether the NATS server at addr answers and calls
// itself name: nil if so, testenv.ErrPortTaken if another server answers
// there (one that says nothing within a second is taken for one that
// starts, not one that is not NATS).
func Answers(addr, name string) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	info, ok := strings.CutPrefix(line, "INFO ")
	if !ok {
		return fmt.Errorf("%w: a server that is not NATS answers on %s: %.80q", testenv.ErrPortTaken, addr, line)
	}
	var v struct {
		Name string `json:"server_name"`
	}
	if err := json.Unmarshal([]byte(info), &v); err != nil {
		return fmt.Errorf("%w: a server that is not NATS answers on %s: %v", testenv.ErrPortTaken, addr, err)
	}
	if v.Name != name {
		return fmt.Errorf("%w: NATS server %q answers on %s, not %q", testenv.ErrPortTaken, v.Name, addr, name)
	}
	return nil
}

// URL returns the client URLs of every server, separated by commas, with
// query appended to the last if not empty.
func (c *ProcCluster) URL(query string) string {
	var us []string
	for _, p := range c.Procs {
		us = append(us, "nats://"+p.Addr())
	}
	u := strings.Join(us, ",")
	if query != "" {
		u += "?" + query
	}
	return u
}

// Proc returns the server named name, or nil.
func (c *ProcCluster) Proc(name string) *Proc {
	for _, p := range c.Procs {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// StartPairVia starts two servers, n1 and n2, of a cluster without
// JetStream whose only route goes through an address of the test's
// choosing: n2 solicits its route (every connection of its pool) to
// via(n1's route address), a nettest.Proxy in front of it, say, and n1
// solicits none. Neither advertises its route address, so no second,
// direct route forms. It waits until the route is up, and fails tb if a
// route of n2's does not go to via's address. The servers stop when the
// test ends.
func StartPairVia(tb testing.TB, via func(routeAddr string) string) *Cluster {
	tb.Helper()
	c := &Cluster{tb: tb}
	tb.Cleanup(func() {
		for _, s := range c.Servers {
			s.Shutdown()
			s.WaitForShutdown()
		}
	})
	start := func(name string, routes []*url.URL) *server.Server {
		s, err := server.NewServer(&server.Options{
			ServerName: name,
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			NoSigs:     true,
			Cluster: server.ClusterOpts{
				Name:        "tlsfarm-pair",
				Host:        "127.0.0.1",
				Port:        server.RANDOM_PORT,
				NoAdvertise: true,
			},
			Routes: routes,
		})
		if err != nil {
			tb.Fatal(err)
		}
		s.SetLogger(&logTail{}, false, false)
		s.Start()
		if !s.ReadyForConnections(testenv.StartTimeout) {
			tb.Fatalf("NATS server %s did not start within %v", name, testenv.StartTimeout)
		}
		c.Servers = append(c.Servers, s)
		return s
	}
	n1 := start("n1", nil)
	addr := via(n1.ClusterAddr().String())
	n2 := start("n2", []*url.URL{{Scheme: "nats-route", Host: addr}})
	deadline := time.Now().Add(10 * time.Second)
	for n1.NumRoutes() < 1 || n2.NumRoutes() < 1 {
		if time.Now().After(deadline) {
			tb.Fatalf("NATS pair: no route within 10s (n1 %d, n2 %d)", n1.NumRoutes(), n2.NumRoutes())
		}
		time.Sleep(20 * time.Millisecond)
	}
	rz, err := n2.Routez(nil)
	if err != nil {
		tb.Fatal(err)
	}
	for _, r := range rz.Routes {
		if got := net.JoinHostPort(r.IP, fmt.Sprint(r.Port)); !r.DidSolicit || got != addr {
			tb.Fatalf("NATS pair: n2 has a route to %s (solicited %t), not only through %s", got, r.DidSolicit, addr)
		}
	}
	return c
}

// DeleteBuckets deletes the key-value buckets named from the server nc is
// connected to, so that tests leave nothing on a shared server. A bucket
// that is not there is no error; another failure is logged, not fatal
// (it runs in clean-ups). It waits at most 5 s in all, and does nothing
// if nc is not connected.
func DeleteBuckets(tb testing.TB, nc *nats.Conn, buckets ...string) {
	tb.Helper()
	if !nc.IsConnected() {
		return
	}
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Logf("deleting buckets %v: %v", buckets, err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, b := range buckets {
		if err := js.DeleteKeyValue(ctx, b); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
			tb.Logf("deleting bucket %s: %v", b, err)
		}
	}
}
