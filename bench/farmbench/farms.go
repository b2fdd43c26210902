package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
)

// A kind is one sort of farm the benchmark compares.
type kind struct {
	Name  string // short, for -farms
	Title string // for the table
	// Node is the spec of a node (Kind, and tlsfarm's settings), or nil for
	// nginx.
	node func(e *env) nodeSpec
}

// kinds are the farms, in the table's order.
var kinds = []kind{
	{"nginx", "nginx ×3, one shared ticket key file", nil},
	{"go", "Go ×3, one shared ticket key", func(e *env) nodeSpec {
		return nodeSpec{Kind: "go", TicketKey: e.ticketKey}
	}},
	{"stateless", "tlsfarm stateless (farm keys over Redis)", func(e *env) nodeSpec {
		return nodeSpec{Kind: "tlsfarm", SessionMode: "stateless", Mode: "broadcast"}
	}},
	{"stateful-wt", "tlsfarm stateful, broadcast + write-through", func(e *env) nodeSpec {
		return nodeSpec{Kind: "tlsfarm", SessionMode: "stateful", Mode: "broadcast", WriteThrough: true}
	}},
	{"stateful-wt-carry", "tlsfarm stateful, broadcast + write-through, carried sessions", func(e *env) nodeSpec {
		return nodeSpec{Kind: "tlsfarm", SessionMode: "stateful", Mode: "broadcast", WriteThrough: true, Carry: true}
	}},
	{"stateful-wt-nats", "tlsfarm stateful, NATS broadcast + Redis write-through", func(e *env) nodeSpec {
		return nodeSpec{Kind: "tlsfarm", SessionMode: "stateful", Mode: "broadcast", WriteThrough: true, NATSBus: true}
	}},
	{"stateful-wt-lazy", "tlsfarm stateful, broadcast + write-through, lazy peers", func(e *env) nodeSpec {
		return nodeSpec{Kind: "tlsfarm", SessionMode: "stateful", Mode: "broadcast", WriteThrough: true, LazyPeers: true}
	}},
	{"stateful", "tlsfarm stateful, broadcast, async", func(e *env) nodeSpec {
		return nodeSpec{Kind: "tlsfarm", SessionMode: "stateful", Mode: "broadcast"}
	}},
	{"store-wt", "tlsfarm store-only + write-through", func(e *env) nodeSpec {
		return nodeSpec{Kind: "tlsfarm", SessionMode: "stateful", Mode: "store-only", WriteThrough: true}
	}},
	{"alone", "tlsfarm alone (no farm)", func(e *env) nodeSpec {
		return nodeSpec{Kind: "tlsfarm", SessionMode: "stateful"}
	}},
	{"go-alone", "Go alone (each node its own keys)", func(e *env) nodeSpec {
		return nodeSpec{Kind: "go"}
	}},
}

func findKind(name string) (kind, bool) {
	for _, k := range kinds {
		if k.Name == name {
			return k, true
		}
	}
	return kind{}, false
}

// env is what every farm of a run shares: the certificate, the secrets, the
// executables.
type env struct {
	dir        string // scratch, removed at the end
	certFile   string
	keyFile    string
	secretFile string // the tlsfarm farm secret
	ticketKey  string // hex; the Go farm's shared key
	nginxKey   string // nginx's shared ticket key file
	exe        string // this program (or test binary), run as a node
	nginx      string // nginx's path; "" if there is none
	redisURL   string
	redis      *redis.Client
	natsServer string    // nats-server's path; "" if there is none
	nats       *exec.Cmd // the run's own nats-server, if a farm uses NATS
	natsURL    string

	lookupTimeout, writeThroughTimeout time.Duration
	flushWindow                        time.Duration   // tlsfarm nodes' farm.Config.FlushWindow
	profileDir                         string          // if set, node 1 of each Go or tlsfarm farm writes a CPU profile here
	nodes                              int             // nodes per farm
	farmNames                          map[string]bool // farms started, whose keys cleanRedis deletes
}

func newEnv(dir string) (*env, error) {
	e := &env{dir: dir, nodes: 3, farmNames: map[string]bool{}}
	certPEM, keyPEM, err := newCertPEM()
	if err != nil {
		return nil, err
	}
	e.certFile, e.keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(e.certFile, certPEM, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(e.keyFile, keyPEM, 0o600); err != nil {
		return nil, err
	}
	e.secretFile = filepath.Join(dir, "farm.secret")
	if err := farm.WriteSecretFile(e.secretFile, farm.NewSecret(1)); err != nil {
		return nil, err
	}
	var k [32]byte
	rand.Read(k[:])
	e.ticketKey = hex.EncodeToString(k[:])
	var nk [80]byte
	rand.Read(nk[:])
	e.nginxKey = filepath.Join(dir, "nginx-ticket.key")
	if err := os.WriteFile(e.nginxKey, nk[:], 0o600); err != nil {
		return nil, err
	}
	return e, nil
}

// A running farm is three nodes of one kind.
type running struct {
	kind   kind
	name   string // the tlsfarm farm name, unique to this start
	addrs  []string
	nodes  []*child
	nginxs []*exec.Cmd
}

// start starts a farm of kind k.
func (e *env) start(k kind) (*running, error) {
	r := &running{kind: k}
	if k.node == nil {
		return r, e.startNginx(r)
	}
	var b [6]byte
	rand.Read(b[:])
	r.name = "farmbench-" + k.Name + "-" + hex.EncodeToString(b[:])
	// The nodes start side by side; each is ready once it has joined.
	r.nodes = make([]*child, e.nodes)
	errs := make([]error, e.nodes)
	var wg sync.WaitGroup
	for i := range e.nodes {
		spec := k.node(e)
		spec.Name = fmt.Sprintf("n%d", i+1)
		spec.CertFile, spec.KeyFile = e.certFile, e.keyFile
		if spec.Kind == "tlsfarm" && spec.Mode != "" {
			spec.Farm, spec.Redis, spec.SecretFile = r.name, e.redisURL, e.secretFile
			if spec.NATSBus {
				spec.NATS = e.natsURL
			}
			spec.LookupTimeout, spec.WriteThroughTimeout = e.lookupTimeout, e.writeThroughTimeout
			spec.FlushWindow = e.flushWindow
		}
		if e.profileDir != "" && i == 0 {
			spec.CPUProfile = filepath.Join(e.profileDir, fmt.Sprintf("%s-%s.pprof", k.Name, r.name[len(r.name)-12:]))
		}
		wg.Go(func() {
			r.nodes[i], errs[i] = startChild(e.exe, spec)
			if errs[i] != nil {
				errs[i] = fmt.Errorf("%s node %s: %v", k.Name, spec.Name, errs[i])
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		r.nodes = slices.DeleteFunc(r.nodes, func(c *child) bool { return c == nil })
		r.stop(e)
		return nil, err
	}
	for _, c := range r.nodes {
		r.addrs = append(r.addrs, c.addr)
	}
	return r, nil
}

// cpu returns the CPU time the farm's processes have used so far.
func (r *running) cpu() time.Duration {
	var t time.Duration
	for _, c := range r.nodes {
		t += processCPU(c.cmd.Process.Pid, false)
	}
	for _, n := range r.nginxs {
		t += processCPU(n.Process.Pid, true)
	}
	return t
}

// stop stops every process of the farm and returns the nodes' reports. The
// farm's keys in Redis are deleted at the end of the run (env.cleanRedis).
func (r *running) stop(e *env) []nodeReport {
	reps := make([]nodeReport, len(r.nodes))
	var wg sync.WaitGroup
	for i, c := range r.nodes {
		wg.Go(func() {
			var err error
			if reps[i], err = c.stop(); err != nil {
				fmt.Fprintf(os.Stderr, "farmbench: %s: %v\n", r.kind.Name, err)
			}
		})
	}
	wg.Wait()
	for _, n := range r.nginxs {
		stopProcess(n, syscall.SIGQUIT)
	}
	if r.name != "" && r.kind.node(e).Mode != "" {
		e.farmNames[r.name] = true
		// Its sessions would otherwise stay in Redis (for their 2-hour
		// TTL) while the next farms run: a store that grows run after run
		// makes every write and Redis's expiry cycle dearer for the farms
		// measured later.
		e.cleanRedis()
		delete(e.farmNames, r.name)
	}
	return reps
}

// cleanRedis deletes the keys of every farm the run started, in one pass
// over the keyspace (a pass per farm would cost seconds each on a Redis
// that other tests share).
func (e *env) cleanRedis() {
	if len(e.farmNames) == 0 || e.redis == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Coordination keys are tlsfarm:{<farm>}:…, session records
	// tlsfarm:<farm>:{s:…} (see redisbus.Transport.Key and RecordKey).
	iter := e.redis.Scan(ctx, 0, "tlsfarm:*farmbench-*", 5000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		k := iter.Val()
		if !e.farmNames[farmOfKey(k)] {
			continue
		}
		keys = append(keys, k)
		if len(keys) == 1000 {
			e.redis.Unlink(ctx, keys...)
			keys = keys[:0]
		}
	}
	if len(keys) > 0 {
		e.redis.Unlink(ctx, keys...)
	}
}

// farmOfKey returns the farm name in a key of the Redis transport, in either
// of its two forms.
func farmOfKey(k string) string {
	k = strings.TrimPrefix(k, "tlsfarm:")
	if rest, ok := strings.CutPrefix(k, "{"); ok {
		name, _, _ := strings.Cut(rest, "}")
		return name
	}
	name, _, _ := strings.Cut(k, ":")
	return name
}

// A child is a node running in a child process (see runNode).
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *limitedBuffer
	addr   string
}

func startChild(exe string, spec nodeSpec) (*child, error) {
	js, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	// A node built with -race (the test's) would sleep a second at exit.
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	cmd.Env = append(os.Environ(), nodeEnv+"="+string(js), "GORACE="+gorace)
	c := &child{cmd: cmd, lines: make(chan string, 4), stderr: &limitedBuffer{max: 64 << 10}}
	cmd.Stderr = c.stderr
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	line, err := c.expect("ready ", 30*time.Second)
	if err != nil {
		c.stdin.Close()
		stopProcess(cmd, syscall.SIGKILL)
		return nil, fmt.Errorf("%v; stderr: %s", err, c.stderr)
	}
	c.addr = line
	return c, nil
}

// expect waits for a line starting with prefix and returns the rest.
func (c *child) expect(prefix string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				return "", errors.New("node exited")
			}
			if rest, ok := strings.CutPrefix(line, prefix); ok {
				return rest, nil
			}
		case <-t.C:
			return "", fmt.Errorf("no %q line in %v", strings.TrimSpace(prefix), timeout)
		}
	}
}

// stop closes the node's standard input, which stops it, and returns its
// report.
func (c *child) stop() (nodeReport, error) {
	c.stdin.Close()
	var rep nodeReport
	line, err := c.expect("stats ", 30*time.Second)
	if err == nil {
		err = json.Unmarshal([]byte(line), &rep)
	}
	if err != nil {
		stopProcess(c.cmd, syscall.SIGKILL)
		return rep, fmt.Errorf("%v; stderr: %s", err, c.stderr)
	}
	stopProcess(c.cmd, 0)
	return rep, nil
}

// stopProcess waits for cmd to exit, first sending sig if it is not 0, and
// kills it (that one process) if it has not exited after ten seconds.
func stopProcess(cmd *exec.Cmd, sig syscall.Signal) {
	if sig != 0 {
		cmd.Process.Signal(sig)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	mu  sync.Mutex
	b   bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := l.max - l.b.Len(); room > 0 {
		l.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.TrimSpace(l.b.String())
}

// nginxConf is one nginx node: one worker per core, tickets under the shared
// key file, no session cache, a fixed answer, no log but errors.
const nginxConf = `worker_processes auto;
daemon off;
pid %[1]s/nginx-%[2]d.pid;
error_log %[1]s/nginx-%[2]d.err warn;
events { worker_connections 1024; }
http {
	access_log off;
	client_body_temp_path %[1]s/tmp-%[2]d;
	proxy_temp_path %[1]s/tmp-%[2]d;
	fastcgi_temp_path %[1]s/tmp-%[2]d;
	uwsgi_temp_path %[1]s/tmp-%[2]d;
	scgi_temp_path %[1]s/tmp-%[2]d;
	server {
		listen 127.0.0.1:%[3]d ssl;
		ssl_certificate %[4]s;
		ssl_certificate_key %[5]s;
		ssl_protocols TLSv1.2 TLSv1.3;
		ssl_session_tickets on;
		ssl_session_ticket_key %[6]s;
		keepalive_timeout 0;
		location / { return 200 "ok\n"; }
	}
}
`

func (e *env) startNginx(r *running) error {
	if e.nginx == "" {
		return errors.New("nginx is not installed (scripts/farmbench installs it)")
	}
	for i := range e.nodes {
		errFile := filepath.Join(e.dir, fmt.Sprintf("nginx-%d.err", i))
		for attempt := 1; ; attempt++ {
			port, err := freePort()
			if err != nil {
				r.stop(e)
				return err
			}
			conf := filepath.Join(e.dir, fmt.Sprintf("nginx-%d.conf", i))
			text := fmt.Sprintf(nginxConf, e.dir, i, port, e.certFile, e.keyFile, e.nginxKey)
			if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
				r.stop(e)
				return err
			}
			os.MkdirAll(filepath.Join(e.dir, fmt.Sprintf("tmp-%d", i)), 0o755)
			cmd := exec.Command(e.nginx, "-p", e.dir, "-c", conf, "-e", errFile)
			errs := &limitedBuffer{max: 16 << 10}
			cmd.Stdout, cmd.Stderr = errs, errs
			// nginx does not read its standard input, so it would outlive a
			// benchmark that is killed: have the kernel stop it then.
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
			if err := cmd.Start(); err != nil {
				r.stop(e)
				return err
			}
			addr := fmt.Sprintf("127.0.0.1:%d", port)
			err = waitListening(addr, startTimeout, func() string {
				log, _ := os.ReadFile(errFile)
				return errs.String() + string(log)
			})
			if err == nil {
				r.nginxs = append(r.nginxs, cmd)
				r.addrs = append(r.addrs, addr)
				break
			}
			stopProcess(cmd, syscall.SIGKILL)
			if !errors.Is(err, errPortTaken) || attempt == startAttempts {
				log, _ := os.ReadFile(errFile)
				r.stop(e)
				return fmt.Errorf("nginx %d: %v; %s %s", i, err, errs, log)
			}
		}
	}
	return nil
}

// startNATS starts the run's own nats-server (core NATS, no JetStream: the
// farms use it as a bus only) on a free loopback port, so that its CPU is
// that of the farm being measured and nothing else's. stopNATS stops it.
func (e *env) startNATS() error {
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		cmd := exec.Command(e.natsServer, "-a", "127.0.0.1", "-p", fmt.Sprint(port))
		errs := &limitedBuffer{max: 16 << 10}
		cmd.Stdout, cmd.Stderr = errs, errs
		// Have the kernel stop it if the benchmark is killed.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
		if err := cmd.Start(); err != nil {
			return err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		err = waitListening(addr, startTimeout, errs.String)
		if err == nil {
			e.nats, e.natsURL = cmd, "nats://"+addr
			return nil
		}
		stopProcess(cmd, syscall.SIGKILL)
		if !errors.Is(err, errPortTaken) || attempt == startAttempts {
			return fmt.Errorf("nats-server: %v; %s", err, errs)
		}
	}
}

// stopNATS stops the run's nats-server, if it started one.
func (e *env) stopNATS() {
	if e.nats != nil {
		stopProcess(e.nats, syscall.SIGTERM)
		e.nats = nil
	}
}

// natsCPU returns the CPU time the run's nats-server has used so far, or 0.
func (e *env) natsCPU() time.Duration {
	if e.nats == nil {
		return 0
	}
	return processCPU(e.nats.Process.Pid, false)
}

// findExe returns the path of the executable name, also looking in
// /usr/sbin, which is not on every user's PATH, or "".
func findExe(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if !strings.Contains(name, "/") {
		if p, err := exec.LookPath(filepath.Join("/usr/sbin", name)); err == nil {
			return p
		}
	}
	return ""
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// startTimeout is how long the benchmark waits for a server it started
// (nginx, nats-server) to listen: long, for a loaded machine.
const startTimeout = 30 * time.Second

// startAttempts is how many free ports the benchmark tries for a server:
// a port found free can be taken before the server binds it.
const startAttempts = 5

// errPortTaken says that a server could not listen on the free port it
// was given: something took the port first.
var errPortTaken = errors.New("the port was taken before the server could listen on it")

// waitListening waits until something listens on addr, for at most
// timeout; it returns errPortTaken at once if the server's output (as
// output returns it) says that its address is in use.
func waitListening(addr string, timeout time.Duration, output func() string) error {
	deadline := time.Now().Add(timeout)
	for {
		if strings.Contains(strings.ToLower(output()), "address already in use") {
			return errPortTaken
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}
