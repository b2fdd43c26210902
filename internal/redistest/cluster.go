package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/internal/testenv"
)

// A Cluster is a Redis Cluster of private redis-servers on free loopback
// ports, made for one test and stopped when it ends.
type Cluster struct {
	Nodes []*Server
	tb    testing.TB
}

// StartCluster starts masters × (1 + replicas) redis-servers in cluster
// mode with the given cluster-node-timeout, joins them into a cluster with
// redis-cli --cluster create, and waits until every node reports the
// cluster healthy and every replica has synchronized with its master (so
// that a test may kill a master at once and see a replica take over).
func StartCluster(tb testing.TB, masters, replicas int, nodeTimeout time.Duration) *Cluster {
	tb.Helper()
	return StartClusterVia(tb, masters, replicas, nodeTimeout, nil)
}

// StartClusterVia is StartCluster with every node reached through the
// address via returns for the node's own, if via is not nil (such as a
// nettest.Proxy's, which a test freezes or cuts to hold or drop what a
// client sends the node): each node announces that address
// (cluster-announce-ip and cluster-announce-port), so that a client,
// which connects where the cluster says a slot is (CLUSTER SLOTS, MOVED),
// goes through it. The cluster bus stays direct
// (cluster-announce-bus-port), and so does redis-cli --cluster create; a
// replica replicates from its master's announced address. The Cluster's
// URL names the announced addresses, and its lookups (MasterOf, Masters)
// return the node that announced one.
func StartClusterVia(tb testing.TB, masters, replicas int, nodeTimeout time.Duration, via func(addr string) string) *Cluster {
	tb.Helper()
	return startCluster(tb, masters, replicas, nodeTimeout, via, nil, "")
}

// LinkSource is the loopback address that the nodes of a cluster started
// by StartClusterLinked make their own connections from.
const LinkSource = "127.0.0.2"

// StartClusterLinked is StartClusterVia (via must not be nil) with every
// node making its own connections, a replica's link to its master among
// them, from LinkSource (bind-source-addr), while clients connect from
// 127.0.0.1: a nettest.Proxy that via returns for a master then tells its
// replicas' links from the clients' connections, and FreezeFrom(LinkSource)
// holds the master's replication stream and nothing else. If busVia is
// not nil, each node's cluster bus is reached through the address busVia
// returns for the node's and its bus's (on the host via gave; such as another
// proxy's, which a test freezes to hold what the other nodes send the node
// over the bus: gossip, and the messages of sharded pub/sub, which Redis
// passes from a master to its replicas over the bus, not in the
// replication stream).
func StartClusterLinked(tb testing.TB, masters, replicas int, nodeTimeout time.Duration, via func(addr string) string, busVia func(node, bus string) string) *Cluster {
	tb.Helper()
	if via == nil {
		tb.Fatal("redistest: StartClusterLinked needs via: a node learns a peer's address from its connection where the peer announces none")
	}
	return startCluster(tb, masters, replicas, nodeTimeout, via, busVia, LinkSource)
}

// startCluster is StartClusterVia, the nodes' buses reached through the
// address busVia returns if it is not nil, and the nodes connecting from
// source if it is not empty.
func startCluster(tb testing.TB, masters, replicas int, nodeTimeout time.Duration, via func(addr string) string, busVia func(node, bus string) string, source string) *Cluster {
	tb.Helper()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		testenv.Skip(tb, "redis-cli is not installed")
	}
	c := &Cluster{tb: tb}
	var addrs []string
	for range masters * (1 + replicas) {
		// The cluster bus port and the announced address are found
		// anew for each port start tries, and kept by Restart, as the
		// server's port is.
		busPort, busFor, announcedBus := 0, 0, 0
		announced := ""
		s := start(tb, func(s *Server) []string {
			var more []string
			if s.Port != busFor {
				busPort, busFor = testenv.FreePort(tb), s.Port
				announcedBus = busPort
				if busVia != nil {
					_, p, err := net.SplitHostPort(busVia(s.Addr(), net.JoinHostPort("127.0.0.1", fmt.Sprint(busPort))))
					if err != nil {
						tb.Fatalf("redistest: the bus address to announce for %s: %v", s.Addr(), err)
					}
					fmt.Sscan(p, &announcedBus)
				}
				if via != nil {
					announced = via(s.Addr())
				}
			}
			if announced != "" {
				host, port, err := net.SplitHostPort(announced)
				if err != nil {
					tb.Fatalf("redistest: the address to announce for %s: %v", s.Addr(), err)
				}
				more = []string{"--cluster-announce-ip", host, "--cluster-announce-port", port,
					"--cluster-announce-bus-port", fmt.Sprint(announcedBus)}
			}
			if source != "" {
				more = append(more, "--bind-source-addr", source)
			}
			return serverArgs(s, append([]string{"--cluster-enabled", "yes",
				"--cluster-port", fmt.Sprint(busPort),
				"--cluster-config-file", "nodes.conf",
				"--cluster-node-timeout", fmt.Sprint(nodeTimeout.Milliseconds()),
				"--repl-diskless-sync-delay", "0"}, more...)...)
		})
		s.announced = announced
		c.Nodes = append(c.Nodes, s)
		addrs = append(addrs, s.Addr())
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", fmt.Sprint(replicas), "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		tb.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.WaitHealthy(30 * time.Second)
	WaitSynced(tb, 30*time.Second, c.Nodes...)
	c.waitRoles(masters, masters*replicas, 30*time.Second)
	return c
}

// waitRoles waits until every node lists masters masters that hold slots
// and replicas replicas, none of them failing. A node learns the roles of
// the others by gossip, seconds after the cluster says cluster_state:ok
// on a loaded machine; until then it lists a replica it has not heard
// from as a master of no slots.
func (c *Cluster) waitRoles(masters, replicas int, timeout time.Duration) {
	c.tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		agreed := true
		var last string
		for _, s := range c.Nodes {
			nodes, err := c.nodes(s)
			last = nodes
			if err != nil {
				agreed = false
				break
			}
			m, r := 0, 0
			for _, n := range parseNodes(nodes) {
				switch {
				case n.failing:
					agreed = false
				case n.master && len(n.slots) > 0:
					m++
				case !n.master:
					r++
				}
			}
			if !agreed || m != masters || r != replicas {
				agreed = false
				break
			}
		}
		if agreed {
			return
		}
		if time.Now().After(deadline) {
			c.tb.Fatalf("the cluster's nodes do not agree on %d masters and %d replicas after %v; one sees:\n%s", masters, replicas, timeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A clusterNode is a line of CLUSTER NODES.
type clusterNode struct {
	id, addr, masterID string
	master, failing    bool
	slots              []string // numbers and ranges
}

// parseNodes parses the text of CLUSTER NODES.
func parseNodes(text string) []clusterNode {
	var out []clusterNode
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		n := clusterNode{id: f[0], addr: addr, masterID: f[3],
			master: strings.Contains(f[2], "master"), failing: strings.Contains(f[2], "fail")}
		for _, s := range f[8:] {
			if !strings.HasPrefix(s, "[") {
				n.slots = append(n.slots, s)
			}
		}
		out = append(out, n)
	}
	return out
}

// nodes returns CLUSTER NODES as the node s sees the cluster.
func (c *Cluster) nodes(s *Server) (string, error) {
	if s.proc == nil {
		return "", fmt.Errorf("%s is down", s.Addr())
	}
	cl := redis.NewClient(&redis.Options{Addr: s.Addr(), DialTimeout: time.Second, ReadTimeout: time.Second, MaxRetries: -1})
	defer cl.Close()
	return cl.ClusterNodes(context.Background()).Result()
}

// view returns CLUSTER NODES as the first live node that answers sees the
// cluster, parsed.
func (c *Cluster) view() []clusterNode {
	c.tb.Helper()
	for _, s := range c.Nodes {
		if nodes, err := c.nodes(s); err == nil {
			return parseNodes(nodes)
		}
	}
	c.tb.Fatal("no live node of the cluster answers")
	return nil
}

// server returns the node at addr, or that announced addr, or nil.
func (c *Cluster) server(addr string) *Server {
	for _, s := range c.Nodes {
		if s.Addr() == addr || s.announced == addr {
			return s
		}
	}
	return nil
}

// MasterOf returns the master that holds slot, as a live node sees it, or
// nil if none does.
func (c *Cluster) MasterOf(slot int) *Server {
	c.tb.Helper()
	for _, n := range c.view() {
		if !n.master || n.failing {
			continue
		}
		for _, r := range n.slots {
			lo, hi, ok := strings.Cut(r, "-")
			if !ok {
				hi = lo
			}
			var a, b int
			fmt.Sscan(lo, &a)
			fmt.Sscan(hi, &b)
			if a <= slot && slot <= b {
				return c.server(n.addr)
			}
		}
	}
	return nil
}

// ReplicasOf returns the replicas of master m, as a live node sees them.
func (c *Cluster) ReplicasOf(m *Server) []*Server {
	c.tb.Helper()
	view := c.view()
	var id string
	for _, n := range view {
		if c.server(n.addr) == m {
			id = n.id
		}
	}
	var out []*Server
	for _, n := range view {
		if !n.master && n.masterID == id {
			if s := c.server(n.addr); s != nil {
				out = append(out, s)
			}
		}
	}
	return out
}

// NodesText returns CLUSTER NODES as the first live node that answers
// sees the cluster, for a test's log.
func (c *Cluster) NodesText() string {
	for _, s := range c.Nodes {
		if nodes, err := c.nodes(s); err == nil {
			return s.Addr() + " sees:\n" + nodes
		}
	}
	return "no live node answers"
}

// WaitSynced waits until every replica among servers (a master passes at
// once) has completed a synchronization with its master: INFO replication
// says master_link_status:up.
//
// Until then a replica holds no data, and Redis counts it as cut off from
// its master since it started: Redis Cluster will not promote it when its
// master dies ("Disconnected from master for longer than allowed",
// cluster-replica-validity-factor), not that time, nor ever after, so the
// cluster stays down for the dead master's slots; a sentinel promotes it
// empty. A cluster says cluster_state:ok seconds before its replicas are in
// sync: a Redis 7 master answers a replica's first PSYNC with a diskless
// full sync that it starts only after repl-diskless-sync-delay (5s by
// default, to serve replicas that come later with the same transfer; the
// servers here set 0: a test's data is small enough to send once per
// replica).
func WaitSynced(tb testing.TB, timeout time.Duration, servers ...*Server) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for _, s := range servers {
		if s.proc == nil {
			continue
		}
		cl := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
		for {
			info, err := cl.Info(context.Background(), "replication").Result()
			if err == nil && (strings.Contains(info, "role:master") || strings.Contains(info, "master_link_status:up")) {
				break
			}
			if time.Now().After(deadline) {
				cl.Close()
				tb.Fatalf("%s has not synchronized with its master after %v: %v\n%s", s.Addr(), timeout, err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
		cl.Close()
	}
}

// URL returns the cluster's redis+cluster:// URL, naming every node (at
// the address it announces, if StartClusterVia gave it one), with the
// extra query (such as "reload=1s") appended if not empty.
func (c *Cluster) URL(query string) string {
	u := "redis+cluster://" + c.Nodes[0].clientAddr() + "?"
	for _, s := range c.Nodes[1:] {
		u += "addr=" + s.clientAddr() + "&"
	}
	return strings.TrimSuffix(u+query, "&")
}

// clientAddr returns the address a client reaches s at: the one it
// announces, if any (see StartClusterVia), or its own.
func (s *Server) clientAddr() string {
	if s.announced != "" {
		return s.announced
	}
	return s.Addr()
}

// Client returns a go-redis client for the node s, closed when the test
// ends.
func (c *Cluster) Client(s *Server) *redis.Client {
	cl := redis.NewClient(&redis.Options{Addr: s.Addr(), DialTimeout: time.Second, MaxRetries: -1})
	c.tb.Cleanup(func() { cl.Close() })
	return cl
}

// WaitHealthy waits until every live node says cluster_state:ok and that
// all 16384 slots are served, and every live master has keys' slots.
func (c *Cluster) WaitHealthy(timeout time.Duration) {
	c.tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok := true
		for _, s := range c.Nodes {
			if s.proc == nil {
				continue
			}
			cl := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
			info, err := cl.ClusterInfo(context.Background()).Result()
			cl.Close()
			if err != nil || !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_slots_ok:16384") {
				ok = false
				break
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			c.tb.Fatalf("Redis Cluster not healthy after %v", timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Masters returns the nodes that are masters of slots now, as a live node
// sees it: a replica that the node has not yet heard from (a young
// cluster) shows as a master of no slots, and is not one.
func (c *Cluster) Masters() []*Server {
	c.tb.Helper()
	var ms []*Server
	for _, n := range c.view() {
		if n.master && !n.failing && len(n.slots) > 0 {
			if s := c.server(n.addr); s != nil {
				ms = append(ms, s)
			}
		}
	}
	return ms
}

// CountKeys returns how many keys matching pattern node s holds.
func (c *Cluster) CountKeys(s *Server, pattern string) int {
	c.tb.Helper()
	cl := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer cl.Close()
	n := 0
	iter := cl.Scan(context.Background(), 0, pattern, 1000).Iterator()
	for iter.Next(context.Background()) {
		n++
	}
	if err := iter.Err(); err != nil {
		c.tb.Fatalf("SCAN on %s: %v", s.Addr(), err)
	}
	return n
}

// A Sentinel is a Redis master with replicas, watched by sentinels, all
// private redis-servers on free loopback ports made for one test.
type Sentinel struct {
	Master    *Server
	Replicas  []*Server
	Sentinels []*Server
	Name      string // the master's name for the sentinels
}

// StartSentinel starts a master, its replicas and the sentinels (quorum
// two, or one for a single sentinel) that watch it, with a down-after of
// downAfter, and waits until the replicas have synchronized with the master
// and the sentinels know the replicas and each other.
func StartSentinel(tb testing.TB, replicas, sentinels int, downAfter time.Duration) *Sentinel {
	tb.Helper()
	return StartSentinelVia(tb, replicas, sentinels, downAfter, nil)
}

// StartSentinelVia is StartSentinel with the replicas' replication links
// made through link, if not nil: each replica replicates from the address
// link returns for the master's (such as a nettest.Proxy's, which a test
// freezes to hold writes back from the replicas). The sentinels then see
// replicas that name another master than theirs and, once
// failover-timeout has passed since they found them, point them at the
// master itself: with a link, failover-timeout is 10 minutes, not 10
// seconds.
func StartSentinelVia(tb testing.TB, replicas, sentinels int, downAfter time.Duration, link func(master string) string) *Sentinel {
	tb.Helper()
	// No wait before a full sync (see WaitSynced).
	st := &Sentinel{Name: "tlsfarm-test", Master: StartWith(tb, "--repl-diskless-sync-delay", "0")}
	failoverTimeout := 10 * time.Second
	for range replicas {
		host, port := "127.0.0.1", fmt.Sprint(st.Master.Port)
		if link != nil {
			var err error
			if host, port, err = net.SplitHostPort(link(st.Master.Addr())); err != nil {
				tb.Fatal(err)
			}
			failoverTimeout = 10 * time.Minute
		}
		st.Replicas = append(st.Replicas, StartWith(tb, "--replicaof", host, port))
	}
	quorum := min(2, sentinels)
	for range sentinels {
		s := start(tb, func(s *Server) []string {
			conf := filepath.Join(s.dir, "sentinel.conf")
			if _, err := os.Stat(conf); err == nil {
				return []string{conf, "--sentinel"} // a restart: the sentinel's own file
			}
			text := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\n"+
				"sentinel monitor %s 127.0.0.1 %d %d\n"+
				"sentinel down-after-milliseconds %s %d\n"+
				"sentinel failover-timeout %s %d\n"+
				"sentinel parallel-syncs %s 1\n",
				s.Port, s.dir, st.Name, st.Master.Port, quorum, st.Name, downAfter.Milliseconds(), st.Name, failoverTimeout.Milliseconds(), st.Name)
			if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
				tb.Fatal(err)
			}
			return []string{conf, "--sentinel"}
		})
		st.Sentinels = append(st.Sentinels, s)
	}
	// Wait until every sentinel knows the replicas and the other sentinels:
	// a failover needs a majority of sentinels that know each other.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok := true
		for _, s := range st.Sentinels {
			cl := redis.NewSentinelClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
			rs, err := cl.Replicas(context.Background(), st.Name).Result()
			ss, err2 := cl.Sentinels(context.Background(), st.Name).Result()
			cl.Close()
			if err != nil || err2 != nil || len(rs) < replicas || len(ss) < sentinels-1 {
				ok = false
				break
			}
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatal("sentinels did not learn the replicas and each other within 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	WaitSynced(tb, 30*time.Second, st.Replicas...)
	return st
}

// URL returns the redis+sentinel:// URL naming every sentinel.
func (st *Sentinel) URL() string {
	u := "redis+sentinel://" + st.Sentinels[0].Addr() + "?master_name=" + st.Name
	for _, s := range st.Sentinels[1:] {
		u += "&addr=" + s.Addr()
	}
	return u
}

// MasterAddr returns the master's address as the first sentinel that
// answers reports it.
func (st *Sentinel) MasterAddr() string {
	for _, s := range st.Sentinels {
		cl := redis.NewSentinelClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
		a, err := cl.GetMasterAddrByName(context.Background(), st.Name).Result()
		cl.Close()
		if err == nil && len(a) == 2 {
			return a[0] + ":" + a[1]
		}
	}
	return ""
}

// Slot returns the Redis Cluster hash slot of key (CRC16 of its hash tag,
// or of the whole key, modulo 16384).
func Slot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % 16384
}

// WaitReplicasListed writes a key to every master and waits until every
// live node's CLUSTER SLOTS lists each master's replicas beside it. Redis
// 7 leaves out of CLUSTER SLOTS a replica whose replication offset is
// still zero (one that has not yet received a write, as in a fresh
// cluster), so a client that sends reads, or subscriptions, to replicas
// (go-redis's ReadOnly) sees none and uses the masters.
func (c *Cluster) WaitReplicasListed(timeout time.Duration) {
	c.tb.Helper()
	view := c.view()
	want := map[*Server]int{} // replicas, by master
	byID := map[string]*Server{}
	for _, n := range view {
		if n.master && !n.failing && len(n.slots) > 0 {
			m := c.server(n.addr)
			if m == nil {
				c.tb.Fatalf("redistest: no node at %s", n.addr)
			}
			want[m], byID[n.id] = 0, m
		}
	}
	for _, n := range view {
		if m, ok := byID[n.masterID]; ok && !n.master && !n.failing {
			want[m]++
		}
	}
	do := func(s *Server, f func(*redis.Client) error) error {
		cl := redis.NewClient(&redis.Options{Addr: s.Addr(), DialTimeout: time.Second, ReadTimeout: time.Second, MaxRetries: -1})
		defer cl.Close()
		return f(cl)
	}
	for m := range want {
		for i := 0; ; i++ {
			k := fmt.Sprintf("redistest:listed:{%d}", i)
			if c.MasterOf(Slot(k)) != m {
				continue
			}
			if err := do(m, func(cl *redis.Client) error { return cl.Set(context.Background(), k, "1", time.Minute).Err() }); err != nil {
				c.tb.Fatalf("SET on %s: %v", m.Addr(), err)
			}
			break
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		listed := true
		var last []redis.ClusterSlot
		for _, s := range c.Nodes {
			if s.proc == nil {
				continue
			}
			err := do(s, func(cl *redis.Client) (err error) {
				//lint:ignore SA1019 what go-redis reads its map of the slots from
				last, err = cl.ClusterSlots(context.Background()).Result()
				return err
			})
			if err != nil {
				listed = false
				break
			}
			for _, r := range last {
				if len(r.Nodes) == 0 {
					listed = false
					break
				}
				m := c.server(r.Nodes[0].Addr)
				if n, ok := want[m]; !ok || len(r.Nodes)-1 != n {
					listed = false
					break
				}
			}
			if !listed {
				break
			}
		}
		if listed {
			return
		}
		if time.Now().After(deadline) {
			c.tb.Fatalf("CLUSTER SLOTS does not list every master's replicas after %v; one node lists %v", timeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
