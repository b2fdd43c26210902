// Package docscheck holds only a test: that the names README.md and
// docs/*.md quote in backquotes (test, benchmark, fuzz and example
// functions, paths in the repository, tlsfarm_* metrics) exist in the code.
// It has no API.
package docscheck
