//go:build !unix

package farm

// checkStateDir is checked at the first write only on this platform.
func checkStateDir(string) error { return nil }
