// Package natsembed runs a NATS server with JetStream inside the process,
// on a loopback port, for a farm that needs no setup: the nodes of
// `tlsfarm demo` share sessions through one. It is a separate package from
// natsbus so that a binary that only connects to NATS does not link a
// server.
//
// An embedded server is a single point of failure and listens on loopback
// only; a production farm uses a NATS cluster of its own.
package natsembed

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// A Config configures an embedded server. The zero value (or nil) is a
// working configuration.
type Config struct {
	// Port is the loopback port to listen on; 0 picks a free one.
	Port int

	// Dir is where JetStream keeps its data. Empty means a new temporary
	// directory, removed by Shutdown; a directory given is kept, so that
	// a server restarted on it finds its buckets again.
	Dir string

	// Logger receives the server's log lines (notices and warnings at
	// info and warn, errors at error). Nil means none.
	Logger *slog.Logger

	// StartTimeout bounds the wait for the server to accept connections
	// (default 10s).
	StartTimeout time.Duration
}

// A Server is a running embedded NATS server with JetStream.
type Server struct {
	ns   *server.Server
	dir  string
	temp bool
}

// Start starts a server and returns once it accepts connections. cfg may
// be nil.
func Start(cfg *Config) (*Server, error) {
	if cfg == nil {
		cfg = &Config{}
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		return nil, fmt.Errorf("natsembed: port %d out of range", cfg.Port)
	}
	s := &Server{dir: cfg.Dir}
	if s.dir == "" {
		dir, err := os.MkdirTemp("", "tlsfarm-nats-")
		if err != nil {
			return nil, fmt.Errorf("natsembed: %v", err)
		}
		s.dir, s.temp = dir, true
	}
	port := cfg.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	opts := &server.Options{
		ServerName:             "tlsfarm-embedded",
		Host:                   "127.0.0.1",
		Port:                   port,
		JetStream:              true,
		StoreDir:               s.dir,
		NoSigs:                 true,
		NoLog:                  cfg.Logger == nil,
		DisableJetStreamBanner: true,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		s.cleanup()
		return nil, fmt.Errorf("natsembed: %v", err)
	}
	if cfg.Logger != nil {
		ns.SetLoggerV2(logger{cfg.Logger}, false, false, false)
	}
	s.ns = ns
	ns.Start()
	timeout := cfg.StartTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	if !ns.ReadyForConnections(timeout) {
		ns.Shutdown()
		ns.WaitForShutdown()
		s.cleanup()
		return nil, errors.New("natsembed: server did not start (is the port in use?)")
	}
	return s, nil
}

// URL returns the server's client URL, "nats://127.0.0.1:<port>".
func (s *Server) URL() string { return s.ns.ClientURL() }

// Dir returns the directory that holds the server's JetStream data.
func (s *Server) Dir() string { return s.dir }

// Shutdown stops the server, waits until it has, and removes its data
// directory if Start made it. Clients reconnect to a server started again
// on the same port.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
	s.cleanup()
}

func (s *Server) cleanup() {
	if s.temp {
		os.RemoveAll(s.dir)
	}
}

// logger adapts a slog.Logger to the server's logging interface.
type logger struct{ l *slog.Logger }

func (l logger) Noticef(format string, v ...any) { l.l.Info(fmt.Sprintf(format, v...)) }
func (l logger) Warnf(format string, v ...any)   { l.l.Warn(fmt.Sprintf(format, v...)) }
func (l logger) Fatalf(format string, v ...any)  { l.l.Error(fmt.Sprintf(format, v...)) }
func (l logger) Errorf(format string, v ...any)  { l.l.Error(fmt.Sprintf(format, v...)) }
func (l logger) Debugf(format string, v ...any)  { l.l.Debug(fmt.Sprintf(format, v...)) }
func (l logger) Tracef(format string, v ...any)  { l.l.Debug(fmt.Sprintf(format, v...)) }
