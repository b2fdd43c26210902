package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// nodeEnv carries a nodeSpec (JSON) to a child process: when it is set, the
// program (or the test binary) runs one server node instead of the benchmark.
const nodeEnv = "TLSFARM_FARMBENCH_NODE"

// A nodeSpec tells a child process which server to run.
type nodeSpec struct {
	Kind      string // "go" or "tlsfarm"
	Name      string // n1, n2, n3
	CertFile  string
	KeyFile   string
	TicketKey string // Go: hex of the one shared ticket key; "" for the node's own keys

	// tlsfarm only.
	SessionMode         string // "stateful" or "stateless"
	Farm                string // "" for a cache alone
	Redis               string
	NATSBus             bool   // broadcast over NATS, keep records in Redis
	NATS                string // the NATS URL, with NATSBus
	SecretFile          string
	Mode                string // "broadcast" or "store-only"
	WriteThrough        bool
	LazyPeers           bool
	Carry               bool          // farm.Config.CarrySessions (stateful: rotates the farm's ticket keys too)
	LookupTimeout       time.Duration // 0: the farm's default
	WriteThroughTimeout time.Duration // 0: the farm's default
	FlushWindow         time.Duration // farm.Config.FlushWindow; 0: none

	CPUProfile string // if set, write a CPU profile of the node's whole run here
}

// nodeReport is what a child says when it stops.
type nodeReport struct {
	Handshakes int64
	Failed     int64
	Farm       []metric.Sample `json:",omitempty"`
}

// response is what every Go server answers, as nginx's `return 200 "ok\n"`.
var response = []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")

// runNode runs the node spec describes: it prints "ready ADDR" once it
// serves (for a farm, once it is subscribed and, for stateless tickets, holds
// the farm's keys), serves until its standard input closes, then prints
// "stats JSON" and returns.
func runNode(specJSON string) error {
	var spec nodeSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return fmt.Errorf("bad node spec: %v", err)
	}
	if spec.CPUProfile != "" {
		f, err := os.Create(spec.CPUProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	cert, err := tls.LoadX509KeyPair(spec.CertFile, spec.KeyFile)
	if err != nil {
		return err
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var cache *session.Cache
	var node *farm.Node
	switch spec.Kind {
	case "go":
		if spec.TicketKey != "" {
			var k [32]byte
			if b, err := hex.DecodeString(spec.TicketKey); err != nil || len(b) != len(k) {
				return errors.New("bad ticket key")
			} else {
				copy(k[:], b)
			}
			cfg.SetSessionTicketKeys([][32]byte{k})
		}
	case "tlsfarm":
		cache, node, err = startTLSFarm(ctx, spec, cfg)
		if err != nil {
			return err
		}
		defer cache.Close()
		if node != nil {
			defer node.Close()
		}
	default:
		return fmt.Errorf("unknown node kind %q", spec.Kind)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	var rep nodeReport
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				ok := serveConn(raw, cfg, cache)
				mu.Lock()
				if ok {
					rep.Handshakes++
				} else {
					rep.Failed++
				}
				mu.Unlock()
			})
		}
	})
	fmt.Printf("ready %s\n", ln.Addr())

	io.Copy(io.Discard, os.Stdin) // the parent closes it to stop us
	ln.Close()
	wg.Wait()
	if node != nil {
		rep.Farm = node.Metrics()
	}
	b, _ := json.Marshal(rep)
	fmt.Printf("stats %s\n", b)
	return nil
}

// startTLSFarm makes the node's session cache and, unless it is alone, joins
// it to its farm; it returns when the node can serve as its farm intends.
func startTLSFarm(ctx context.Context, spec nodeSpec, cfg *tls.Config) (*session.Cache, *farm.Node, error) {
	mode, err := session.ParseMode(spec.SessionMode)
	if err != nil {
		return nil, nil, err
	}
	cache, err := session.New(&session.Config{Mode: mode})
	if err != nil {
		return nil, nil, err
	}
	if spec.Farm == "" {
		cache.Install(cfg)
		return cache, nil, nil
	}
	secrets, err := farm.LoadSecrets(spec.SecretFile)
	if err != nil {
		return nil, nil, err
	}
	tr, err := redisbus.Open(spec.Redis, spec.Farm)
	if err != nil {
		return nil, nil, err
	}
	fmode, err := farm.ParseMode(spec.Mode)
	if err != nil {
		return nil, nil, err
	}
	var bus transport.Bus = tr
	if spec.NATSBus {
		nb, err := natsbus.Open(spec.NATS, spec.Farm, nil)
		if err != nil {
			return nil, nil, err
		}
		bus = nb
	}
	node, err := farm.Join(ctx, farm.Config{
		Farm: spec.Farm, NodeName: spec.Name, Secrets: secrets, Cache: cache,
		Bus: bus, Store: tr, Mode: fmode, WriteThrough: spec.WriteThrough, LazyPeers: spec.LazyPeers,
		CarrySessions: spec.Carry,
		LookupTimeout: spec.LookupTimeout, WriteThroughTimeout: spec.WriteThroughTimeout,
		FlushWindow: spec.FlushWindow,
		Logger:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return nil, nil, err
	}
	var ring *ticket.Ring
	if mode != session.Stateful || spec.Carry {
		if ring, err = ticket.NewRing(ticket.RingConfig{}); err != nil {
			return nil, nil, err
		}
		ring.Register(cfg)
		if _, err := node.RotateTicketKeys(ctx, farm.RotationConfig{Ring: ring}); err != nil {
			return nil, nil, err
		}
	}
	cache.Install(cfg)
	deadline := time.Now().Add(20 * time.Second)
	for !node.Connected() || ring != nil && ring.State().Epoch == 0 {
		if time.Now().After(deadline) {
			return nil, nil, errors.New("the farm did not come up in 20s (is Redis, or NATS, running?)")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if spec.Carry {
		// A node admits carried copies only of sessions issued MaxSkew
		// (5s by default) after it began to reach the farm: measure the
		// steady state, not a start.
		time.Sleep(5*time.Second + 100*time.Millisecond)
	}
	return cache, node, nil
}

// serveConn completes the handshake on raw, reads one HTTP request, answers
// it and closes, as nginx does with `return 200` and keep-alive off.
func serveConn(raw net.Conn, cfg *tls.Config, cache *session.Cache) bool {
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Server(raw, cfg)
	if err := c.Handshake(); err != nil {
		return false
	}
	if cache != nil {
		cache.HandshakeComplete(c)
	}
	r := bufio.NewReaderSize(c, 512)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return false
		}
		if len(bytes.TrimSpace(line)) == 0 {
			break
		}
	}
	if _, err := c.Write(response); err != nil {
		return false
	}
	c.Close()
	return true
}

// processCPU returns the CPU time (user and system) pid has used, from
// /proc; with children, that of its children too (nginx's workers).
func processCPU(pid int, children bool) time.Duration {
	t := procStatCPU(pid)
	if !children {
		return t
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var p int
		if _, err := fmt.Sscanf(e.Name(), "%d", &p); err != nil || p == pid {
			continue
		}
		if procStatPPID(p) == pid {
			t += procStatCPU(p)
		}
	}
	return t
}

// procStatFields returns the fields of /proc/pid/stat after the command
// name (field 3 onwards).
func procStatFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// clockTicks is USER_HZ, which is 100 on every Linux this runs on.
const clockTicks = 100

func procStatCPU(pid int) time.Duration {
	f := procStatFields(pid)
	if len(f) < 13 {
		return 0
	}
	var u, s int64
	fmt.Sscanf(f[11], "%d", &u) // utime is field 14
	fmt.Sscanf(f[12], "%d", &s) // stime is field 15
	return time.Duration(u+s) * time.Second / clockTicks
}

func procStatPPID(pid int) int {
	f := procStatFields(pid)
	if len(f) < 2 {
		return 0
	}
	var p int
	fmt.Sscanf(f[1], "%d", &p)
	return p
}
