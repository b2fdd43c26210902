// Package config reads the configuration of the tlsfarm daemon from a YAML
// file, command-line flags and TLSFARM_* environment variables, and checks
// it before anything starts.
//
// # Sources and precedence
//
// Every setting has a YAML key, and most have a flag and an environment
// variable (see Settings). A flag wins over the environment, the
// environment over the file, and the file over the default. Flags and
// environment variables set the first listener, and that listener's first
// certificate; further listeners and certificates need the file.
//
// # Errors
//
// Load returns errors of one line that name the setting and,
// where it came from a file, the line: a daemon started with a bad
// configuration says exactly what to fix and does not start. Unknown YAML
// keys are errors, so that a misspelt setting is not silently ignored.
//
// # Reload
//
// Some settings can change while the daemon runs (on SIGHUP); the others
// need a restart. Setting.Reloadable says which, and RestartOnly lists the
// restart-only settings that differ between two configurations.
//
// Start with Load, which returns a checked Config; Settings lists every
// setting with its flag, environment variable and default, as
// docs/config.md does.
package config
