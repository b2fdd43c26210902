// Package keyexport hands a farm's session ticket keys to TLS terminators
// that are not Go programs: nginx, HAProxy, and anything that reads a JSON
// file. It is the library behind "tlsfarm keys".
//
// A farm's key set (a [ticket.State]: the key that encrypts, the pre-staged
// next key and the previous keys) is turned into a [Set], whose keys are
// derived for one consumer with HKDF-SHA256: each format has its own label (docs/keys.md
// lists them),
// so no terminator ever holds a key that another kind of terminator, or a
// tlsfarm node, uses. A [Target] writes a Set in its terminator's format, and
// an [Exporter] follows a [ticket.Ring] and exports every new key set to its
// targets, retrying failures and reporting each target's state.
//
// Files are written with these rules: mode 0600, into a
// directory that no other user can write to or replace (see [CheckDir]),
// never through a symbolic link,
// each file by temporary file, fsync and rename, and every file of a set
// staged before the first is renamed into place. Nothing in this package logs
// or returns key bytes in an error.
//
// Start with ParseTarget (the -export flag of "tlsfarm keys") or a Target
// value, and NewExporter; Exporter.Status and Exporter.Ready report how the
// targets are doing.
package keyexport
