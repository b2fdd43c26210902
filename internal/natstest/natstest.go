// Package natstest gives tests a cluster of NATS servers with JetStream on
// free loopback ports, for tests that must stop one of them: in the test's
// own process (nats-server as a library, the current release), or as
// processes of the machine's nats-server binary, which a test can kill as a
// crash would.
package natstest

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/tlsfarm/tlsfarm/internal/testenv"
)

// A Cluster is a NATS cluster with JetStream, stopped when the test ends.
type Cluster struct {
	Servers []*server.Server
	tb      testing.TB
}

// StartCluster starts n servers named n1, n2, ... that route to each other
// and share JetStream, and waits until JetStream has a meta leader.
func StartCluster(tb testing.TB, n int) *Cluster {
	tb.Helper()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	var routes []*url.URL
	for _, p := range ports {
		routes = append(routes, &url.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	c := &Cluster{tb: tb}
	for i := range n {
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			JetStream:  true,
			StoreDir:   tb.TempDir(),
			NoSigs:     true,
			NoLog:      true,
			Cluster: server.ClusterOpts{
				Name: "tlsfarm-test",
				Host: "127.0.0.1",
				Port: ports[i],
			},
			Routes:                 routes,
			DisableJetStreamBanner: true,
		}
		s, err := server.NewServer(opts)
		if err != nil {
			tb.Fatal(err)
		}
		s.Start()
		tb.Cleanup(func() {
			s.Shutdown()
			s.WaitForShutdown()
		})
		c.Servers = append(c.Servers, s)
	}
	for _, s := range c.Servers {
		if !s.ReadyForConnections(10 * time.Second) {
			tb.Fatalf("NATS server %s did not start", s.Name())
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ready := true
		for _, s := range c.Servers {
			if s.NumRoutes() < n-1 || !s.JetStreamIsCurrent() {
				ready = false
			}
		}
		if ready && c.metaLeader() != nil {
			return c
		}
		if time.Now().After(deadline) {
			tb.Fatal("NATS cluster: no JetStream meta leader within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

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
	cmd  *exec.Cmd
}

// Addr returns the server's client address.
func (p *Proc) Addr() string { return fmt.Sprintf("127.0.0.1:%d", p.Port) }

// Kill kills the server at once (SIGKILL, as in a crash) and waits for it.
func (p *Proc) Kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	p.cmd.Process.Kill()
	p.cmd.Wait()
	p.cmd = nil
}

// A ProcCluster is a NATS cluster with JetStream of nats-server processes
// (the machine's binary), for tests that must kill one as a crash would.
type ProcCluster struct {
	Procs []*Proc
}

// StartProcCluster starts n nats-server processes named n1, n2, ... that
// route to each other and share JetStream, stopped when the test ends. It
// skips (or fails, under TLSFARM_REQUIRE_SERVICES=1) without the binary.
// It waits only until every server accepts connections: JetStream elects
// its meta leader a moment later.
func StartProcCluster(tb testing.TB, n int) *ProcCluster {
	tb.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		bin = "/usr/sbin/nats-server"
		if _, err := os.Stat(bin); err != nil {
			testenv.Skip(tb, "nats-server is not installed")
		}
	}
	cports := make([]int, n)
	for i := range cports {
		cports[i] = freePort(tb)
	}
	var routes []string
	for _, p := range cports {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	c := &ProcCluster{}
	for i := range n {
		p := &Proc{Name: fmt.Sprintf("n%d", i+1), Port: freePort(tb)}
		p.cmd = exec.Command(bin, "-a", "127.0.0.1", "-p", fmt.Sprint(p.Port), "-js", "-sd", tb.TempDir(),
			"--server_name", p.Name, "--cluster_name", "tlsfarm-test",
			"--cluster", routes[i], "--routes", strings.Join(routes, ","))
		if err := p.cmd.Start(); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(p.Kill)
		c.Procs = append(c.Procs, p)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range c.Procs {
		for !testenv.Reachable(p.Addr()) {
			if time.Now().After(deadline) {
				tb.Fatalf("nats-server %s on %s did not start", p.Name, p.Addr())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return c
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

func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
