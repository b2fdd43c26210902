package keyexport_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/natsbus/natsembed"
	"github.com/tlsfarm/tlsfarm/keyexport"
	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// A key agent, as "tlsfarm keys" runs beside nginx: it joins the farm's
// key rotation and writes each new key set as nginx's key files, which
// nginx.conf names (the key that encrypts first):
//
//	ssl_session_ticket_key /run/tlsfarm/nginx/ticket-0.key;
//	ssl_session_ticket_key /run/tlsfarm/nginx/ticket-1.key;
//	...
//
// Here the farm runs on an embedded NATS server and the files go to a
// temporary directory, so the example leaves nothing behind; a real agent
// opens the farm's transport (such as redisbus.Open) with the farm's
// secrets (farm.LoadSecrets).
func Example() {
	nats, err := natsembed.Start(nil)
	if err != nil {
		log.Fatal(err)
	}
	defer nats.Shutdown()
	tr, err := natsbus.Open(nats.URL(), "example-keys", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()

	// The agent serves no handshakes: its cache only lets it join, and
	// it needs the farm's bus and coordination keys, not its records.
	cache, err := session.New(&session.Config{Capacity: 64})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()
	node, err := farm.Join(context.Background(), farm.Config{
		Farm:    "example-keys",
		Secrets: []farm.Secret{farm.NewSecret(1)},
		Cache:   cache,
		Bus:     tr,
		Coord:   tr,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()

	const interval, keep = 12 * time.Hour, 2 // the farm's rotation settings
	ring, err := ticket.NewRing(ticket.RingConfig{Interval: interval, Keep: keep})
	if err != nil {
		log.Fatal(err)
	}
	rot, err := node.RotateTicketKeys(context.Background(), farm.RotationConfig{Ring: ring, Interval: interval, Keep: keep})
	if err != nil {
		log.Fatal(err)
	}
	defer rot.Close()

	dir, err := os.MkdirTemp("", "nginx-keys") // mode 0700, as CheckDir wants
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	target, err := keyexport.ParseTarget("nginx:" + dir) // as the -export flag
	if err != nil {
		log.Fatal(err)
	}
	exp, err := keyexport.NewExporter(keyexport.ExporterConfig{
		Ring: ring, Interval: interval, Keep: keep,
		Targets: []keyexport.Target{target},
		// OnChange: keyexport.Command("nginx -s reload", 0),
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- exp.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// Ready is what a health check asks: nil once every target has the
	// farm's keys.
	for exp.Ready() != nil {
		time.Sleep(10 * time.Millisecond)
	}
	for i := range keyexport.NginxFileCount(keep) {
		fi, err := os.Stat(filepath.Join(dir, keyexport.NginxFileName(i)))
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(fi.Name(), fi.Mode(), fi.Size()) // never print the bytes
	}
	st := exp.Status()[0]
	fmt.Println("exported:", st.OK, st.Epoch > 0, st.Exports)
	// Output:
	// ticket-0.key -rw------- 80
	// ticket-1.key -rw------- 80
	// ticket-2.key -rw------- 80
	// ticket-3.key -rw------- 80
	// exported: true true 1
}

// The targets that the -export flag of "tlsfarm keys" takes, one per
// terminator; each describes itself without any key.
func ExampleParseTarget() {
	for _, spec := range []string{
		"nginx:/run/tlsfarm/nginx",
		"haproxy:/etc/haproxy/ticket.keys,socket=/run/haproxy/admin.sock",
		"file:/run/tlsfarm/keys.json",
		"nginx:relative/dir",
	} {
		t, err := keyexport.ParseTarget(spec)
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		fmt.Printf("%T %s\n", t, t)
	}
	// Output:
	// *keyexport.NginxTarget nginx:/run/tlsfarm/nginx
	// *keyexport.HAProxyTarget haproxy:/etc/haproxy/ticket.keys,socket=/run/haproxy/admin.sock
	// *keyexport.FileTarget file:/run/tlsfarm/keys.json
	// error: export "nginx:relative/dir": the directory must be an absolute path
}
