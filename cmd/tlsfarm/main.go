// Command tlsfarm is a TLS terminator whose servers share TLS sessions and
// ticket keys across a farm behind a layer-4 load balancer.
//
// Usage:
//
//	tlsfarm serve [flags]        run the daemon (no flags: https://127.0.0.1:8443)
//	tlsfarm check [-reload] [flags]  check a configuration as serve would, and exit
//	tlsfarm keygen -out FILE     write a new farm secret (mode 0600)
//	tlsfarm keys [flags]         export the farm's ticket keys to nginx, HAProxy or a file
//	tlsfarm probe [flags]        measure resumption across a set of servers
//	tlsfarm demo                 three nodes on loopback, with and without sharing
//
// See docs/config.md for every setting of serve, and docs/operations.md for
// running a farm.
//
// The command only wires the packages together: serve.go runs the daemon
// (signals, SIGHUP reloads in reload.go); daemon.go builds its parts from a
// config.Config (convert.go turns it into a proxy.Config, farm.go joins the
// farm and starts key rotation, transport*.go open the transport a URL
// names, quic.go the HTTP/3 settings) and serves package admin; check.go,
// keygen.go, keys.go and demo.go are the other commands. Handshakes happen
// in package proxy, peers' messages and key rotations in package farm.
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/tlsfarm/tlsfarm/probe"
)

const usage = `tlsfarm: TLS session resumption across a farm of servers.

Usage:
  tlsfarm serve [flags]       run the TLS terminator (no flags: https://127.0.0.1:8443)
  tlsfarm check [-reload] [flags]
                              check a configuration as serve would (listen addresses
                              included; -reload: not those, for a running daemon), and exit
  tlsfarm keygen -out FILE    write a new farm secret (mode 0600; never overwrites)
  tlsfarm keys [flags]        share the farm's ticket keys with nginx, HAProxy or a file
  tlsfarm probe [flags]       measure resumption and handshake latency across servers
  tlsfarm demo                three nodes on loopback probed with sharing on and off

Run "tlsfarm COMMAND -h" for a command's flags. Settings: docs/config.md.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs the command line args and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stderr)
	case "check":
		return check(args[1:], stdout, stderr)
	case "keygen":
		return keygen(args[1:], stdout, stderr)
	case "keys":
		return keys(args[1:], stderr)
	case "probe":
		return probe.Main(args[1:], stdout, stderr)
	case "demo":
		return demo(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "tlsfarm: unknown command %q\n\n%s", args[0], usage)
	return 2
}
