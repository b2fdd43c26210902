package probe

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"time"
)

// Ways a connection picks its target; see [Config.Pick].
const (
	// PickRandom sends each connection to a target chosen uniformly at
	// random, as a hashing balancer does for a client whose source port
	// changes on every connection.
	PickRandom = "random"
	// PickRoundRobin sends connection k (counted from 0 over the whole
	// run, across all clients) to target k mod len(Targets).
	PickRoundRobin = "roundrobin"
)

// Special values of [Config.Request].
const (
	// RequestNone sends nothing after the handshake and closes at once. A
	// TLS 1.3 client then never reads the server's ticket, which arrives
	// after the handshake, so TLS 1.3 sessions cannot resume.
	RequestNone = "none"
	// RequestRead sends nothing and waits for the server's first bytes,
	// for servers that speak first.
	RequestRead = "read"
)

// Defaults for the zero values of Config.
const (
	defaultConnections = 100
	defaultTimeout     = 10 * time.Second
)

// fileReserve is how many of the process's open files Run leaves to other
// uses than the clients' sockets: standard streams, the poller, files a
// caller has open.
const fileReserve = 64

// maxConcurrency returns the most clients a run may have, and the
// open-file limit it follows from: each client holds a socket while it
// connects, so no more than the limit, less fileReserve. It returns 0, 0
// if there is no such limit.
func maxConcurrency() (clients, limit int) {
	l := openFileLimit()
	if l == 0 || l > math.MaxInt32 {
		return 0, 0
	}
	return max(int(l)-fileReserve, 1), int(l)
}

// tooManyClients describes the refusal of n clients, over the most, m,
// that the open-file limit allows.
func tooManyClients(n, m, limit int) string {
	return fmt.Sprintf("%d clients are more than the open-file limit of %d allows (%d: each client holds a socket, and %d files are kept for other uses); use fewer clients or raise the limit (ulimit -n)",
		n, limit, m, fileReserve)
}

// A Config describes a probe run. Only Targets is required; the zero value
// of every other field has a useful meaning. A Config may be reused after
// [Run] returns and must not be modified while Run uses it.
type Config struct {
	// Targets lists the servers to connect to, as host:port. A target
	// without a port gets port 443. The same server may be listed twice;
	// it is then counted as two targets.
	Targets []string

	// ServerName is sent in the server name indication extension, checked
	// against the servers' certificates, and sent as the HTTP Host. If
	// empty, the host of the first target is used (an IP address is
	// checked against the certificate but not sent as SNI).
	ServerName string

	// Pick is PickRandom or PickRoundRobin. If empty, PickRandom is used.
	Pick string

	// Connections is the total number of connections to make, over all
	// clients. Duration limits the run by time instead: connections start
	// until Duration has passed, and those in flight then are completed.
	// If both are set, the run stops at whichever limit comes first; if
	// both are zero, Run makes 100 connections.
	Connections int
	Duration    time.Duration

	// Concurrency is the number of simulated clients, each making one
	// connection at a time. Each client has its own session cache, which
	// holds the newest session it was issued and offers it to every
	// target, as a browser does behind a balancer's single name. If zero,
	// one client is used; if more than Connections, Connections clients
	// (the report says how many).
	//
	// Each client holds a socket while it connects, so Run refuses more
	// clients than the process's open-file limit (RLIMIT_NOFILE) allows,
	// less 64 kept for other files: beyond it, connections would fail for
	// want of a file descriptor and be counted against the targets.
	Concurrency int

	// Version pins the TLS version: tls.VersionTLS12 or tls.VersionTLS13.
	// If zero, the client offers TLS 1.2 and 1.3 and the server chooses.
	Version uint16

	// Insecure skips verification of the servers' certificates. Otherwise
	// they are verified against RootCAs, or the host's roots if RootCAs is
	// nil.
	Insecure bool
	RootCAs  *x509.CertPool

	// Timeout bounds each connection, from the start of its dial to the
	// arrival of the server's first bytes (default 10s).
	Timeout time.Duration

	// Rate limits how many connections start per second, over all
	// clients. If zero, clients connect as fast as they can.
	Rate float64

	// Request says what a client does after the handshake, before it
	// closes the connection:
	//
	//   - "" sends "GET / HTTP/1.1" with Host and "Connection: close";
	//   - "/path" or a request line such as "HEAD /healthz" sends that
	//     request, with Host and "Connection: close";
	//   - RequestRead sends nothing;
	//   - RequestNone sends nothing and closes at once.
	//
	// Except with RequestNone, the client then reads until the server's
	// first bytes arrive (or the server closes) and closes the connection
	// without reading the rest. That read is what takes in a TLS 1.3
	// ticket, which the server sends after the handshake.
	Request string

	// HTTP3 makes each connection over QUIC to the target's UDP port, and
	// sends the request (a GET unless Request says otherwise) as HTTP/3,
	// each connection from a UDP port of its own; the connection is done
	// when the response's head arrives (the body is not read).
	// A client whose session allows 0-RTT sends a GET or HEAD in early
	// data (for any other method it offers none); if the server refuses
	// the early data, the handshake still counts (resumed or not), and
	// the request is sent again after it, on a new resumed connection
	// (quic-go's HTTP/3 client cannot reuse the refused one), which is
	// not counted. The report counts, in EarlyData, the connections whose
	// early data was accepted. TLS 1.3 only.
	HTTP3 bool

	// ProxyProtocol makes each TCP connection begin with a PROXY protocol
	// version 2 header that names the connection's own addresses, before
	// the TLS handshake, as a balancer that sends the PROXY protocol does.
	// It is for probing nodes directly whose listeners expect the header
	// (and trust the probe's address); a listener that does not expect it
	// fails the handshake. It cannot be combined with HTTP3.
	ProxyProtocol bool
}

// plan is a validated Config with its defaults applied.
type plan struct {
	cfg      Config
	addrs    []string // host:port, in Targets order
	requests [][]byte // per target; nil for RequestNone and RequestRead
	read     bool     // read the server's first bytes after the request
	tls      *tls.Config

	h3Method string   // with Config.HTTP3
	h3URLs   []string // with Config.HTTP3: per target
}

// prepare validates cfg and applies its defaults.
func prepare(cfg Config) (*plan, error) {
	if len(cfg.Targets) == 0 {
		return nil, errors.New("probe: no targets")
	}
	p := &plan{cfg: cfg}
	var hosts, ports []string
	for _, t := range cfg.Targets {
		addr, host, port, err := splitTarget(t)
		if err != nil {
			return nil, err
		}
		p.addrs = append(p.addrs, addr)
		hosts = append(hosts, host)
		ports = append(ports, port)
	}
	c := &p.cfg
	if c.ServerName == "" {
		c.ServerName = hosts[0]
	}
	switch c.Pick {
	case "":
		c.Pick = PickRandom
	case PickRandom, PickRoundRobin:
	default:
		return nil, fmt.Errorf("probe: unknown pick %q (want %q or %q)", c.Pick, PickRandom, PickRoundRobin)
	}
	switch {
	case c.Connections < 0:
		return nil, fmt.Errorf("probe: negative number of connections %d", c.Connections)
	case c.Duration < 0:
		return nil, fmt.Errorf("probe: negative duration %v", c.Duration)
	case c.Connections == 0 && c.Duration == 0:
		c.Connections = defaultConnections
	}
	switch {
	case c.Concurrency < 0:
		return nil, fmt.Errorf("probe: negative concurrency %d", c.Concurrency)
	case c.Concurrency == 0:
		c.Concurrency = 1
	case c.Connections > 0 && c.Concurrency > c.Connections:
		// The others would never connect; each costs memory all the same
		// (-c 2000000 -n 1 took gigabytes).
		c.Concurrency = c.Connections
	}
	if m, limit := maxConcurrency(); m > 0 && c.Concurrency > m {
		return nil, errors.New("probe: concurrency: " + tooManyClients(c.Concurrency, m, limit))
	}
	switch c.Version {
	case 0, tls.VersionTLS12, tls.VersionTLS13:
	default:
		return nil, fmt.Errorf("probe: unsupported TLS version %#04x (want TLS 1.2 or 1.3)", c.Version)
	}
	switch {
	case c.Timeout < 0:
		return nil, fmt.Errorf("probe: negative timeout %v", c.Timeout)
	case c.Timeout == 0:
		c.Timeout = defaultTimeout
	}
	switch {
	case c.Rate < 0:
		return nil, fmt.Errorf("probe: negative rate %g", c.Rate)
	case math.IsNaN(c.Rate):
		return nil, errors.New("probe: rate is not a number")
	case c.Rate > 0 && float64(time.Second)/c.Rate > float64(math.MaxInt64):
		// The spacing would overflow a time.Duration (and wrap to no limit).
		return nil, fmt.Errorf("probe: rate %g is too low (one connection in more than %v)", c.Rate, time.Duration(math.MaxInt64).Round(time.Hour))
	}

	if c.HTTP3 && c.ProxyProtocol {
		return nil, errors.New("probe: the PROXY protocol is for TCP; it cannot be used with HTTP/3")
	}
	switch {
	case c.HTTP3:
		if err := prepareHTTP3(p, ports); err != nil {
			return nil, err
		}
	case c.Request == RequestNone:
	case c.Request == RequestRead:
		p.read = true
	default:
		line, err := requestLine(c.Request)
		if err != nil {
			return nil, err
		}
		p.read = true
		for _, port := range ports {
			p.requests = append(p.requests, []byte(line+"\r\nHost: "+authority(c.ServerName, port)+"\r\nConnection: close\r\n\r\n"))
		}
	}

	minV, maxV := uint16(tls.VersionTLS12), uint16(tls.VersionTLS13)
	if c.Version != 0 {
		minV, maxV = c.Version, c.Version
	}
	p.tls = &tls.Config{
		ServerName:         c.ServerName,
		MinVersion:         minV,
		MaxVersion:         maxV,
		InsecureSkipVerify: c.Insecure,
		RootCAs:            c.RootCAs,
	}
	return p, nil
}

// splitTarget returns target as a dialable address, its host and its port.
func splitTarget(target string) (addr, host, port string, err error) {
	host, port, err = net.SplitHostPort(target)
	if err != nil {
		// A bare host name or IPv4 address gets the HTTPS port.
		if target == "" || strings.ContainsAny(target, ":[]") {
			return "", "", "", fmt.Errorf("probe: bad target %q: want host:port", target)
		}
		host, port = target, "443"
	}
	if host == "" || port == "" {
		return "", "", "", fmt.Errorf("probe: bad target %q: want host:port", target)
	}
	// A port by name ("https") becomes its number, which the HTTP Host
	// and the HTTP/3 URL need; a number out of range is refused here
	// rather than counted as a failed dial on every connection.
	n, err := net.LookupPort("tcp", port)
	if err != nil || n < 1 || n > 65535 {
		return "", "", "", fmt.Errorf("probe: bad target %q: port %q is not a port number from 1 to 65535 or a known service", target, port)
	}
	port = strconv.Itoa(n)
	return net.JoinHostPort(host, port), host, port, nil
}

// authority returns the HTTP authority (Host) of a request to port under
// serverName: an IPv6 address bracketed, the port left out if it is 443.
func authority(serverName, port string) string {
	if port == "443" {
		if strings.Contains(serverName, ":") {
			return "[" + serverName + "]"
		}
		return serverName
	}
	return net.JoinHostPort(serverName, port)
}

// requestLine turns a Config.Request other than RequestNone and RequestRead
// into an HTTP/1.1 request line.
func requestLine(req string) (string, error) {
	if req == "" {
		return "GET / HTTP/1.1", nil
	}
	if strings.ContainsAny(req, "\r\n") {
		return "", fmt.Errorf("probe: bad request %q: line breaks are added by the probe", req)
	}
	f := strings.Fields(req)
	switch {
	case len(f) == 1 && strings.HasPrefix(f[0], "/"):
		return "GET " + f[0] + " HTTP/1.1", nil
	case len(f) == 2 && strings.HasPrefix(f[1], "/"):
		return f[0] + " " + f[1] + " HTTP/1.1", nil
	case len(f) == 3 && strings.HasPrefix(f[1], "/") && strings.HasPrefix(f[2], "HTTP/1."):
		return strings.Join(f, " "), nil
	}
	return "", fmt.Errorf("probe: bad request %q: want %q, %q, a path or a request line such as \"GET /\"", req, RequestNone, RequestRead)
}

// versionName names a Config.Version for reports.
func versionName(v uint16) string {
	if v == 0 {
		return "any"
	}
	return tls.VersionName(v)
}
