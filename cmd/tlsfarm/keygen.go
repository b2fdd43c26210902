package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/internal/redact"
)

// keygen writes a new farm secret file.
func keygen(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tlsfarm keygen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "`file` to write the secret to (required; never overwritten)")
	id := fs.Uint("id", 0, "secret `ID`, 0-255: give a new secret a new ID when replacing a farm's secret")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	switch {
	case *out == "":
		fmt.Fprintln(stderr, "tlsfarm keygen: -out FILE is required")
		return 2
	case *id > 255:
		fmt.Fprintln(stderr, "tlsfarm keygen: -id must be 0-255")
		return 2
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "tlsfarm keygen: unexpected argument %q\n", redact.URL(fs.Arg(0)))
		return 2
	}
	if err := farm.WriteSecretFile(*out, farm.NewSecret(uint8(*id))); err != nil {
		fmt.Fprintf(stderr, "tlsfarm keygen: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote farm secret %d to %s (mode 0600); copy it to every node of the farm over a secure channel\n", *id, *out)
	return 0
}
