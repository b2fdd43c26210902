package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tlsfarm/tlsfarm/admin"
	"github.com/tlsfarm/tlsfarm/config"
	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/internal/redact"
	"github.com/tlsfarm/tlsfarm/keyexport"
	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// keysUsage introduces tlsfarm keys' flags.
const keysUsage = `Usage: tlsfarm keys -farm URL -farm-secret FILE -export TARGET... [flags]

Joins a farm's ticket key rotation, as a serve node does, and exports every
new key set to nginx, HAProxy or a JSON file. Targets (-export, repeatable):

  nginx:DIR                   DIR/ticket-0.key ... raw 80-byte nginx key files
  haproxy:FILE[,socket=PATH]  HAProxy tls-ticket-keys FILE, pushed live through
                              the runtime API at PATH (no reload)
  file:PATH                   the key set as JSON

See docs/keys.md.

`

// keysOptions are the settings of tlsfarm keys.
type keysOptions struct {
	node, farmURL, farmName, secretFile, adminAddr string
	logLevel, logFormat                            string
	rotation                                       time.Duration
	keep                                           int
	targets                                        []keyexport.Target
	onChange                                       string
	onChangeTimeout                                time.Duration
	secrets                                        []farm.Secret
}

// envDefault returns the environment's value for the setting with the
// given key (the variable serve reads), or def.
func envDefault(getenv func(string) string, key, def string) string {
	for _, s := range config.Settings() {
		if s.Key == key && s.Env != "" {
			if v := getenv(s.Env); v != "" {
				return v
			}
		}
	}
	return def
}

// parseKeys parses tlsfarm keys' command line. It returns nil and the exit
// code when the agent must not start.
func parseKeys(args []string, getenv func(string) string, stderr io.Writer) (*keysOptions, int) {
	o := &keysOptions{}
	fs := flag.NewFlagSet("tlsfarm keys", flag.ContinueOnError)
	fs.SetOutput(stderr)
	host, _ := os.Hostname()
	fs.StringVar(&o.node, "node", envDefault(getenv, "node", host), "name of this agent in logs and the farm ($TLSFARM_NODE)")
	// The farm URL may hold a password: $TLSFARM_FARM_URL applies after
	// parsing, so that -h never prints it as the flag's default.
	fs.StringVar(&o.farmURL, "farm", "", "farm transport `URL` with a store: redis://, rediss:// or nats:// ($TLSFARM_FARM_URL)")
	fs.StringVar(&o.farmName, "farm-name", envDefault(getenv, "farm.name", "tlsfarm"), "farm `name` ($TLSFARM_FARM_NAME)")
	fs.StringVar(&o.secretFile, "farm-secret", envDefault(getenv, "farm.secret_file", ""), "farm secret `file` (made by tlsfarm keygen) ($TLSFARM_FARM_SECRET_FILE)")
	rot := fs.String("ticket-rotation", envDefault(getenv, "tickets.rotation_interval", "12h"), "`duration` each ticket key encrypts for: the farm's setting, at least 1s ($TLSFARM_TICKET_ROTATION)")
	keep := fs.String("ticket-keep", envDefault(getenv, "tickets.keep", "2"), "`n` previous ticket keys kept: the farm's setting, 1-16 ($TLSFARM_TICKET_KEEP)")
	fs.StringVar(&o.adminAddr, "admin", "127.0.0.1:9444", "admin listener `address` (health and metrics), or off")
	// The flag package quotes a value it cannot parse in its error,
	// which a misplaced farm URL would put on stderr with its password:
	// values that need parsing are taken as strings and parsed below,
	// where refusals show them through redact.URL.
	var exports []string
	fs.Func("export", "export `target`: nginx:DIR, haproxy:FILE[,socket=PATH] or file:PATH (repeatable)", func(v string) error {
		exports = append(exports, v)
		return nil
	})
	fs.StringVar(&o.onChange, "on-change", "", "shell `command` to run after the targets change, such as \"nginx -s reload\"")
	onChangeTimeout := fs.String("on-change-timeout", keyexport.DefaultCommandTimeout.String(), "longest the -on-change command may run, a `duration`")
	fs.StringVar(&o.logLevel, "log-level", envDefault(getenv, "log.level", "info"), "log level: debug, info, warn or error ($TLSFARM_LOG_LEVEL)")
	fs.StringVar(&o.logFormat, "log-format", envDefault(getenv, "log.format", "text"), "log format: text or json ($TLSFARM_LOG_FORMAT)")
	fs.Usage = func() {
		fmt.Fprint(stderr, keysUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, 0
		}
		return nil, 2
	}
	fail := func(format string, a ...any) (*keysOptions, int) {
		fmt.Fprintf(stderr, "tlsfarm keys: "+format+"\n", a...)
		return nil, 2
	}
	var err error
	if fs.NArg() > 0 {
		return fail("unexpected argument %q", redact.URL(fs.Arg(0))) // maybe a farm URL without -farm
	}
	written := make(map[string]keyexport.Target, len(exports))
	for _, v := range exports {
		t, err := keyexport.ParseTarget(v)
		if err != nil {
			return fail("-export: %s", redact.URL(err.Error()))
		}
		// Two exporters of one file would write it at once, and a target
		// given twice would also fail every scrape of /metrics (its
		// metrics, labelled by target, as duplicates).
		w := writtenPath(t)
		if u, ok := written[w]; ok {
			if u.String() == t.String() {
				return fail("-export %s is given twice", redact.URL(t.String()))
			}
			return fail("-export %s and -export %s write the same file", redact.URL(u.String()), redact.URL(t.String()))
		}
		written[w] = t
		o.targets = append(o.targets, t)
	}
	// A file of another target named as one of an nginx target's key
	// files: the nginx target writes every ticket-N.key of its count
	// there, and random keys into any higher N it finds, so the two
	// targets took turns with the file (a JSON or HAProxy file with a
	// raw key in it, or an nginx key file with JSON).
	for _, t := range o.targets {
		n, ok := t.(*keyexport.NginxTarget)
		if !ok {
			continue
		}
		for _, u := range o.targets {
			if w, ok := strings.CutPrefix(writtenPath(u), "file "); ok && filepath.Dir(w) == n.Dir && nginxKeyName(filepath.Base(w)) {
				return fail("-export %s is an nginx key file of -export %s, which writes every ticket-N.key there: name it otherwise", redact.URL(u.String()), redact.URL(n.String()))
			}
		}
	}
	if o.farmURL == "" {
		o.farmURL = envDefault(getenv, "farm.url", "")
	}
	if o.rotation, err = time.ParseDuration(*rot); err != nil || o.rotation < time.Second || o.rotation > config.MaxDuration {
		return fail("-ticket-rotation %q: want a duration of at least 1s and at most %dh (a year)", redact.URL(*rot), config.MaxDuration/time.Hour)
	}
	if o.keep, err = strconv.Atoi(*keep); err != nil || o.keep < 1 || o.keep > 16 {
		return fail("-ticket-keep %q: want 1 to 16", redact.URL(*keep))
	}
	if o.onChangeTimeout, err = time.ParseDuration(*onChangeTimeout); err != nil {
		return fail("-on-change-timeout %q: want a duration such as 30s", redact.URL(*onChangeTimeout))
	}
	if o.onChangeTimeout <= 0 || o.onChangeTimeout > config.MaxDuration {
		return fail("-on-change-timeout %v: must be positive and at most %dh", o.onChangeTimeout, config.MaxDuration/time.Hour)
	}
	switch {
	case o.farmURL == "":
		return fail("-farm URL is required: the agent joins a farm's key rotation")
	case !config.HasStore(transportName(o.farmURL)):
		return fail("-farm: key rotation needs a transport with a store (redis or nats), not %s", transportName(o.farmURL))
	case o.secretFile == "":
		return fail("-farm-secret FILE is required (the farm's secret, made by tlsfarm keygen)")
	case len(o.targets) == 0:
		return fail("at least one -export target is required")
	}
	if _, err := config.ParseLevel(o.logLevel); err != nil {
		return fail("-log-level: %s", redact.URL(err.Error()))
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return fail("-log-format %q: want text or json", redact.URL(o.logFormat))
	}
	if o.secrets, err = farm.LoadSecrets(o.secretFile); err != nil {
		fmt.Fprintf(stderr, "tlsfarm keys: -farm-secret: %v\n", err)
		return nil, 1
	}
	for _, t := range o.targets {
		if err := checkTarget(t); err != nil {
			fmt.Fprintf(stderr, "tlsfarm keys: -export %s: %v\n", t, err)
			return nil, 1
		}
	}
	return o, 0
}

// writtenPath names what a target writes: an nginx target's directory, or
// the file of the others.
func writtenPath(t keyexport.Target) string {
	switch t := t.(type) {
	case *keyexport.NginxTarget:
		return "dir " + filepath.Clean(t.Dir)
	case *keyexport.HAProxyTarget:
		return "file " + filepath.Clean(t.File)
	case *keyexport.FileTarget:
		return "file " + filepath.Clean(t.Path)
	}
	return t.String()
}

// nginxKeyName reports whether name is the name of an nginx target's key
// file, ticket-N.key (see keyexport.NginxFileName and NginxStaleFiles).
func nginxKeyName(name string) bool {
	num, ok := strings.CutPrefix(name, "ticket-")
	if !ok {
		return false
	}
	num, ok = strings.CutSuffix(num, ".key")
	n, err := strconv.Atoi(num)
	return ok && err == nil && n >= 0 && keyexport.NginxFileName(n) == name
}

// checkTarget checks at start that a target's directory is safe to write
// key files in, and removes what an interrupted write left there.
func checkTarget(t keyexport.Target) error {
	var dir string
	switch t := t.(type) {
	case *keyexport.NginxTarget:
		dir = t.Dir
	case *keyexport.HAProxyTarget:
		dir = filepath.Dir(t.File)
	case *keyexport.FileTarget:
		dir = filepath.Dir(t.Path)
	}
	if err := keyexport.CheckDir(dir); err != nil {
		return err
	}
	keyexport.RemoveStaleTemps(dir)
	return nil
}

// keys runs the key agent until SIGTERM or SIGINT; a second one during the
// stop exits at once. SIGHUP is logged and otherwise ignored.
func keys(args []string, stderr io.Writer) int {
	// SIGHUP is caught from the start, as serve's is: the agent has
	// nothing to reload, and SIGHUP's default action ended it at once,
	// its lease left to expire, when a hook reloaded every tlsfarm process
	// (pkill -HUP -x tlsfarm, for serve's certificates).
	hups := make(chan os.Signal, 1)
	signal.Notify(hups, syscall.SIGHUP)
	defer signal.Stop(hups)
	o, code := parseKeys(args, os.Getenv, stderr)
	if o == nil {
		return code
	}
	// As serve: a log reader that goes away must not end the agent.
	survivePipes()
	lvl, _ := config.ParseLevel(o.logLevel)
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler = slog.NewTextHandler(stderr, opts)
	if o.logFormat == "json" {
		h = slog.NewJSONHandler(stderr, opts)
	}
	log := slog.New(h)
	go func() {
		for range hups {
			log.Info("SIGHUP: tlsfarm keys has nothing to reload; restart it to change its settings")
		}
	}()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	a, err := startKeys(o, log)
	if err != nil {
		fmt.Fprintf(stderr, "tlsfarm keys: %v\n", err)
		return 1
	}
	<-ctx.Done()
	log.Info("stopping")
	// The stop releases the lease and flushes the farm, which with a hung
	// store waits for its timeouts (seconds): a second stop signal ends
	// the agent at once, the lease left to expire. The signal context
	// still caught the signals, and dropped them.
	stop()
	again := make(chan os.Signal, 1)
	signal.Notify(again, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-again
		log.Error("second stop signal: exiting at once; the rotation lease, if held, is left to expire", "signal", s.String())
		os.Exit(1)
	}()
	a.stop()
	return 0
}

// A keysAgent is one running tlsfarm keys.
type keysAgent struct {
	log       *slog.Logger
	cache     *session.Cache
	ring      *ticket.Ring
	node      *farm.Node
	transport io.Closer
	rotator   *farm.Rotator
	exporter  *keyexport.Exporter
	admin     *http.Server
	adminAddr string
	cancel    context.CancelFunc
	done      chan struct{}
}

// startKeys joins the farm's key rotation and starts exporting.
func startKeys(o *keysOptions, log *slog.Logger) (_ *keysAgent, err error) {
	a := &keysAgent{log: log, done: make(chan struct{})}
	bg, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	defer func() {
		if err != nil {
			close(a.done)
			a.stop()
		}
	}()
	if o.rotation < time.Minute {
		log.Warn("the ticket rotation interval is under 1m: fine for a trial or a test, too short for production",
			"ticket_rotation", o.rotation.String())
	}
	// The agent handles no handshakes; the farm needs a cache to join, and
	// a small one holds the few sessions peers announce meanwhile.
	if a.cache, err = session.New(&session.Config{Capacity: 64, Logger: log}); err != nil {
		return nil, err
	}
	if a.ring, err = ticket.NewRing(ticket.RingConfig{Keep: o.keep, Interval: o.rotation, Logger: log}); err != nil {
		return nil, err
	}
	bus, store, closer, err := openTransport(o.farmURL, o.farmName)
	if err != nil {
		return nil, fmt.Errorf("-farm: %v", err)
	}
	a.transport = closer
	if store == nil {
		return nil, errors.New("-farm: key rotation needs a transport with a store (redis or nats)")
	}
	a.node, err = farm.Join(bg, farm.Config{
		Farm: o.farmName, NodeName: o.node, Secrets: o.secrets, Cache: a.cache,
		// The key set and the lease only: the agent keeps no sessions.
		Bus: bus, Coord: store, Logger: log,
	})
	if err != nil {
		return nil, fmt.Errorf("farm: %v", err)
	}
	a.rotator, err = a.node.RotateTicketKeys(bg, farm.RotationConfig{
		Ring: a.ring, Interval: o.rotation, Keep: o.keep,
		// The exporter hands on farm key sets only (never epoch 0): the
		// ring's own keys encrypt nothing, and are not for the farm.
		ExportOnly: true,
	})
	if err != nil {
		return nil, fmt.Errorf("tickets: %v", err)
	}
	ec := keyexport.ExporterConfig{
		Ring: a.ring, Interval: o.rotation, Keep: o.keep, Targets: o.targets, Logger: log,
		// Never wait longer than a fraction of an interval to retry.
		RetryMax: min(keyexport.DefaultRetryMax, max(o.rotation/4, keyexport.DefaultRetryMin)),
	}
	if o.onChange != "" {
		ec.OnChange = keyexport.Command(o.onChange, o.onChangeTimeout)
	}
	if a.exporter, err = keyexport.NewExporter(ec); err != nil {
		return nil, err
	}
	for _, t := range o.targets {
		if t, ok := t.(*keyexport.NginxTarget); ok {
			if stale, _ := keyexport.NginxStaleFiles(t.Dir, o.keep); len(stale) > 0 {
				log.Warn("key files from a higher -ticket-keep: they get random keys that decrypt nothing; "+
					"remove their ssl_session_ticket_key lines from nginx.conf, reload nginx, then delete the files",
					"target", t.String(), "files", strings.Join(stale, " "))
			}
		}
	}
	if err := a.startAdmin(o.adminAddr, o.node); err != nil {
		return nil, err
	}
	go func() {
		defer close(a.done)
		a.exporter.Run(bg)
	}()
	names := make([]string, len(o.targets))
	for i, t := range o.targets {
		names[i] = t.String()
	}
	log.Info("tlsfarm keys ready", "node", o.node, "farm", o.farmName, "farm_transport", transportName(o.farmURL),
		"ticket_rotation", o.rotation.String(), "ticket_keep", o.keep, "exports", strings.Join(names, " "), "admin", a.adminAddr)
	return a, nil
}

// startAdmin serves health and metrics on addr, unless it is "off".
func (a *keysAgent) startAdmin(addr, node string) error {
	a.adminAddr = "off"
	if addr == "off" {
		return nil
	}
	h, err := admin.New(admin.Config{
		NodeName: node, Cache: a.cache, Node: a.node, Ring: a.ring, Rotation: a.rotator.Metrics,
		Ready: a.exporter.Ready, Exports: a.exportStatus, Logger: a.log,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("-admin: %w", err)
	}
	a.adminAddr = ln.Addr().String()
	// The bounds of serve's admin listener: a request (its body too) must
	// arrive within 10 s and its answer be taken within 10 s, and a
	// keep-alive connection waits 2 min (serve's default idle timeout) for
	// its next request. Without them a client that stalls holds a
	// goroutine and a file descriptor of the agent for as long as it stays.
	a.admin = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
	go a.admin.Serve(ln)
	return nil
}

// exportStatus converts the exporter's state for the admin API.
func (a *keysAgent) exportStatus() []admin.ExportStatus {
	st := a.exporter.Status()
	out := make([]admin.ExportStatus, len(st))
	for i, s := range st {
		out[i] = admin.ExportStatus{
			Target: s.Target, Epoch: s.Epoch, OK: s.OK, Error: s.Error,
			LastAttempt: s.LastAttempt, LastSuccess: s.LastSuccess, Exports: s.Exports, Failures: s.Failures,
		}
	}
	return out
}

// stop releases the lease (so that another member takes over at once) and
// stops everything, in reverse order of start.
func (a *keysAgent) stop() {
	if a.admin != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		a.admin.Shutdown(ctx)
		cancel()
	}
	if a.rotator != nil {
		a.rotator.Close()
	}
	a.cancel()
	<-a.done
	if a.node != nil {
		a.node.Close()
	}
	if a.transport != nil {
		a.transport.Close()
	}
	if a.cache != nil {
		a.cache.Close()
	}
}
