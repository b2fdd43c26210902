package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const usage = `usage: tlsfarm probe -targets host:port[,host:port...] [flags]

Connects to the targets as a layer-4 load balancer would spread a client,
resumes TLS sessions, and reports the resumption rate and handshake latency
per target and overall. Targets may also be given as arguments.

Flags:
`

// Main runs the "tlsfarm probe" command with args (without the command
// name), writing the report to stdout and errors to stderr, and returns the
// exit code: 0 if at least one connection worked and the run meets the
// thresholds that are set; 1 if none worked (or none was made), or if a
// threshold is missed (a line on stderr says which); 2 for bad flags,
// among them a -c beyond what the open-file limit allows (see
// [Config.Concurrency]); 130 if interrupted by SIGINT (Ctrl-C) and 143 if
// by SIGTERM, whether or not the part that ran meets the thresholds.
//
// The thresholds are off unless set: -min-resumption, the least
// ResumptionRate of the total (an offer whose handshake failed counts as
// not resumed; a run in which no handshake offered a session misses it),
// and -max-failures, the most failed connections, as a count or a
// percentage of the connections.
//
// A progress bar is drawn on stderr when stderr is a terminal. SIGINT
// (Ctrl-C) or SIGTERM ends the run early: the connections in flight are
// abandoned at once (they are not counted), and the report of those done
// is printed, with a line on stderr that says the run was interrupted and
// one for the thresholds the part that ran misses. A second signal ends
// the process at once, without a report.
func Main(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tlsfarm probe", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var (
		targets  = fs.String("targets", "", "comma-separated `list` of host:port targets")
		n        = fs.Int("n", 0, "total number of connections (default 100, or unlimited with -d)")
		duration = fs.Duration("d", 0, "run for this long instead of a number of connections")
		clients  = fs.Int("c", 1, "number of concurrent clients, each with its own session cache")
		pick     = fs.String("pick", PickRandom, "how a connection picks its target: random or roundrobin")
		version  = fs.String("tls", "any", "TLS `version`: 1.2, 1.3 or any")
		sni      = fs.String("sni", "", "server `name` to send and verify (default: the first target's host)")
		insecure = fs.Bool("insecure", false, "do not verify the servers' certificates")
		cacert   = fs.String("cacert", "", "PEM `file` of CA certificates to verify the servers with (default: the system's)")
		timeout  = fs.Duration("timeout", defaultTimeout, "limit for each connection, from dial to the server's first bytes")
		rate     = fs.Float64("rate", 0, "connections per second over all clients (0: as fast as possible)")
		request  = fs.String("request", "GET /", "what to send after the handshake: a request line such as \"GET /\", or \"read\" (nothing, wait for the server) or \"none\" (close at once; TLS 1.3 cannot resume)")
		asJSON   = fs.Bool("json", false, "print the report as JSON")
		h3       = fs.Bool("http3", false, "connect over QUIC and speak HTTP/3, with 0-RTT early data where the session allows (TLS 1.3)")
		pp       = fs.Bool("proxy-protocol", false, "begin each TCP connection with a PROXY protocol v2 header, for nodes whose listeners expect one (and trust this host)")

		minResumption fraction
		maxFailures   failureLimit
	)
	fs.Var(&minResumption, "min-resumption", "exit 1 if fewer of the offered sessions resumed: a `share` such as 0.99 or 99% (an offer whose handshake failed counts as not resumed; default: no threshold)")
	fs.Var(&maxFailures, "max-failures", "exit 1 if more connections failed: a `count` such as 0, or a percentage such as 1% (default: no threshold; exit 1 only if every connection failed)")
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "tlsfarm probe: "+format+"\n", a...)
		return 2
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		return fail("%v (see -h)", err)
	}

	cfg := Config{
		ServerName:  *sni,
		Pick:        *pick,
		Connections: *n,
		Duration:    *duration,
		Concurrency: *clients,
		Insecure:    *insecure,
		Timeout:     *timeout,
		Rate:        *rate,
		Request:     *request,
		HTTP3:       *h3,

		ProxyProtocol: *pp,
	}
	if *targets != "" {
		for t := range strings.SplitSeq(*targets, ",") {
			if t = strings.TrimSpace(t); t != "" {
				cfg.Targets = append(cfg.Targets, t)
			}
		}
	}
	cfg.Targets = append(cfg.Targets, fs.Args()...)
	if len(cfg.Targets) == 0 {
		return fail("no targets: use -targets host:port[,host:port...]")
	}
	switch *version {
	case "1.2":
		cfg.Version = tls.VersionTLS12
	case "1.3":
		cfg.Version = tls.VersionTLS13
	case "any", "":
	default:
		return fail("-tls %q: want 1.2, 1.3 or any", *version)
	}
	// Zero is how Config says "unset"; given on the command line it
	// would silently mean the default (100 connections) instead.
	var zeroErr string
	fs.Visit(func(f *flag.Flag) {
		switch {
		case zeroErr != "":
		case f.Name == "n" && *n == 0:
			zeroErr = "-n 0: need at least one connection (leave -n out for the default)"
		case f.Name == "d" && *duration == 0:
			zeroErr = "-d 0s: must be positive (leave -d out to run a number of connections)"
		}
	})
	if zeroErr != "" {
		return fail("%s", zeroErr)
	}
	if *clients < 1 {
		return fail("-c %d: need at least one client", *clients)
	}
	// Not more clients than connections are started (see
	// Config.Concurrency): -n 3 -c 100000 runs 3.
	running := *clients
	if *n > 0 {
		running = min(running, *n)
	}
	if m, limit := maxConcurrency(); m > 0 && running > m {
		return fail("-c %d: %s", *clients, tooManyClients(running, m, limit))
	}
	if *timeout <= 0 {
		return fail("-timeout %v: must be positive", *timeout)
	}
	if *cacert != "" {
		if *insecure {
			return fail("-cacert and -insecure exclude each other")
		}
		pem, err := os.ReadFile(*cacert)
		if err != nil {
			return fail("-cacert: %v", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return fail("-cacert %s: no PEM certificates", *cacert)
		}
	}
	if _, err := prepare(cfg); err != nil {
		return fail("%s", strings.TrimPrefix(err.Error(), "probe: "))
	}

	ctx, interrupted, stop := notifyStop()
	defer stop()
	var progress func(done, total int)
	var b *bar
	if f, ok := stderr.(*os.File); ok && isTerminal(f) {
		b = &bar{w: f, start: time.Now(), duration: cfg.Duration}
		progress = b.draw
	}
	rep, err := Run(ctx, cfg, progress)
	if b != nil {
		b.clear()
	}
	if rep == nil {
		fmt.Fprintf(stderr, "tlsfarm probe: %v\n", err)
		return 1
	}
	if *asJSON {
		err = rep.writeJSON(stdout)
	} else {
		err = rep.WriteTable(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "tlsfarm probe: writing the report: %v\n", err)
		return 1
	}
	if sig := interrupted(); sig != nil {
		// The thresholds are not met by a run cut short, whatever the
		// part that ran shows; that part is said all the same.
		fmt.Fprintf(stderr, "tlsfarm probe: interrupted by %s after %v; the report covers the %s done by then\n",
			signalName(sig), rep.Elapsed.Round(time.Millisecond), plural(rep.Total.Connections, "connection"))
		if why := missed(rep, &minResumption, &maxFailures); why != "" {
			fmt.Fprintf(stderr, "tlsfarm probe: so far, %s\n", why)
		}
		return exitCode(sig)
	}
	switch {
	case rep.Total.Connections == 0:
		fmt.Fprintln(stderr, "tlsfarm probe: no connection was made")
		return 1
	case rep.Total.Failed == rep.Total.Connections:
		fmt.Fprintf(stderr, "tlsfarm probe: all %d connections failed (%s)\n", rep.Total.Connections, errorList(rep.Total.Errors))
		return 1
	}
	if why := missed(rep, &minResumption, &maxFailures); why != "" {
		fmt.Fprintf(stderr, "tlsfarm probe: %s\n", why)
		return 1
	}
	return 0
}

// stopSignals are the signals that end a run early with its report.
var stopSignals = []os.Signal{os.Interrupt, syscall.SIGTERM}

// notifyStop returns a context that ends at the first of stopSignals, a
// function that returns that signal (nil before), and a function that
// stops listening. Once a signal has come, the next has its default
// effect, which ends the process at once, without a report.
func notifyStop() (ctx context.Context, interrupted func() os.Signal, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	c := make(chan os.Signal, 1)
	signal.Notify(c, stopSignals...)
	var got atomic.Value
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-c:
			got.Store(sig)
			signal.Stop(c)
			cancel()
		case <-done:
		}
	}()
	var once sync.Once
	return ctx, func() os.Signal {
			sig, _ := got.Load().(os.Signal)
			return sig
		}, func() {
			once.Do(func() {
				signal.Stop(c)
				close(done)
				cancel()
			})
		}
}

// exitCode returns the exit code of a run that sig interrupted: 128 plus
// the signal's number, as a shell reports a process the signal ended
// (130 for SIGINT, 143 for SIGTERM).
func exitCode(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return 130
}

// signalName names sig as a person sends it: SIGINT (Ctrl-C), SIGTERM.
func signalName(sig os.Signal) string {
	switch sig {
	case os.Interrupt:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return sig.String()
}

// isTerminal reports whether f is a terminal (a character device), without
// a dependency on x/term.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// A bar draws a progress bar on one terminal line.
type bar struct {
	w        io.Writer
	start    time.Time
	duration time.Duration // for runs limited by time
	drawn    bool
}

const barWidth = 30

func (b *bar) draw(done, total int) {
	elapsed := time.Since(b.start)
	var frac float64
	var text string
	switch {
	case total > 0:
		frac = float64(done) / float64(total)
		text = fmt.Sprintf("%d/%d", done, total)
	case b.duration > 0:
		frac = float64(elapsed) / float64(b.duration)
		text = fmt.Sprintf("%d  %v/%v", done, elapsed.Round(100*time.Millisecond), b.duration)
	}
	frac = min(max(frac, 0), 1)
	full := int(frac * barWidth)
	fmt.Fprintf(b.w, "\r[%s%s] %3.0f%%  %s \x1b[K", strings.Repeat("#", full), strings.Repeat(".", barWidth-full), 100*frac, text)
	b.drawn = true
}

// clear erases the bar, so that the report starts on a clean line.
func (b *bar) clear() {
	if b.drawn {
		fmt.Fprint(b.w, "\r\x1b[K")
	}
}
