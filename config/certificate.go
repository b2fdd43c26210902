package config

import (
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/redact"
)

// notBeforeSlack is how far ahead of this clock a certificate's NotBefore
// may be: a certificate just issued by a CA whose clock runs ahead of this
// one is taken, not refused until the next reload.
const notBeforeSlack = 5 * time.Minute

// loadCertificate reads and parses the pair named by cert, naming the file
// at fault in its error, and fills in cert.Names from the certificate when
// the configuration gives none.
func (c *Config) loadCertificate(cert *Certificate, key string) error {
	if cert.Cert == "" {
		return c.problem(key+".cert", "is required (a PEM file with the certificate chain)")
	}
	if cert.Key == "" {
		return c.problem(key+".key", "is required (a PEM file with the private key of %s)", cert.Cert)
	}
	certPEM, err := readRegularFile(cert.Cert, maxPEMFile)
	if err != nil {
		return c.problem(key+".cert", "%v", err)
	}
	keyPEM, err := readRegularFile(cert.Key, maxPEMFile)
	if err != nil {
		return c.problem(key+".key", "%v", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return c.problem(key, "%s and %s: %v", cert.Cert, cert.Key, err)
	}
	// A certificate no verifying client accepts is refused: at start, and
	// on a reload, which then keeps the running one (a renewal that
	// installed the wrong file would otherwise fail every client).
	if leaf := pair.Leaf; leaf != nil {
		const day = "2006-01-02 15:04:05 UTC"
		if now := time.Now(); now.After(leaf.NotAfter) {
			return c.problem(key+".cert", "%s expired on %s", cert.Cert, leaf.NotAfter.UTC().Format(day))
		} else if now.Add(notBeforeSlack).Before(leaf.NotBefore) {
			return c.problem(key+".cert", "%s is not valid before %s", cert.Cert, leaf.NotBefore.UTC().Format(day))
		}
	}
	cert.Loaded = &pair
	for i, n := range cert.Names {
		n = strings.ToLower(strings.TrimSuffix(n, "."))
		if n == "" || strings.Contains(n[1:], "*") || (n[0] == '*' && !strings.HasPrefix(n, "*.")) {
			return c.problem(key+".names", "%q is not a server name (such as example.com or *.example.com)", cert.Names[i])
		}
		cert.Names[i] = n
	}
	if len(cert.Names) == 0 && pair.Leaf != nil {
		for _, n := range pair.Leaf.DNSNames {
			cert.Names = append(cert.Names, strings.ToLower(n))
		}
	}
	return nil
}

// Size limits of the files a configuration names: far above any real one,
// far below what would hurt to read into memory at every start and reload.
const (
	maxConfigFile = 1 << 20 // the YAML file: a configuration is a few KB
	maxPEMFile    = 1 << 20 // a certificate chain or a private key
)

// readRegularFile reads the file at path, refusing anything but a regular
// file: reading a named pipe would block the start, or a reload, until
// something writes to it, and a device might never end. A directory is
// left to the read, which says what it is. A file longer than limit bytes
// is refused (a huge file, or one that grows as it is read, would take the
// memory of a start or a reload), with an error that says so.
func readRegularFile(path string, limit int64) ([]byte, error) {
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() && !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %s: refused (the wrong file?)", path, sizeName(limit))
	}
	return data, nil
}

// sizeName writes a byte count as KiB or MiB when it is a whole number of
// them.
func sizeName(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// ParseVersion parses a TLS version: "1.0", "1.1", "1.2" or "1.3" (a
// "TLS" prefix is allowed).
func ParseVersion(s string) (uint16, error) {
	v := strings.TrimPrefix(strings.TrimPrefix(strings.ToUpper(s), "TLS"), "V")
	switch strings.TrimSpace(v) {
	case "1.0", "10":
		return tls.VersionTLS10, nil
	case "1.1", "11":
		return tls.VersionTLS11, nil
	case "1.2", "12":
		return tls.VersionTLS12, nil
	case "1.3", "13":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("%q is not a TLS version (1.0, 1.1, 1.2 or 1.3)", redact.URL(s))
}
