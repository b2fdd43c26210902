// Package natstest gives tests a cluster of NATS servers with JetStream,
// run in the test's own process (nats-server as a library) on free loopback
// ports, for tests that must stop one of them.
package natstest

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
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
