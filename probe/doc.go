// Package probe is the client side of tlsfarm: it connects to a list of TLS
// servers the way a layer-4 load balancer spreads one client over a farm,
// resumes sessions, and reports how often resumption worked and what full
// and resumed handshakes cost.
//
// Each simulated client (see [Config.Concurrency]) keeps one session, the
// newest it was issued, and offers it to whichever target its next
// connection lands on, as a browser does behind a balancer's single name.
// With N servers that cannot read each other's sessions, about 1 in N
// offers resumes; a farm that shares sessions or ticket keys resumes nearly
// every one. The [Report] says which: it counts offers, resumptions, and
// resumptions on a target other than the one that issued the session
// (cross-node), per target and overall.
//
// The package uses crypto/tls (and quic-go for Config.HTTP3); it knows
// nothing of tlsfarm's servers and can probe any TLS endpoint.
//
// Start with Config and Run; Report.WriteTable prints what Run found, and
// Main is the whole "tlsfarm probe" command.
package probe
