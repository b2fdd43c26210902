// Package redisclients is an experiment, not a transport: it measures
// go-redis and rueidis side by side on the farm's Redis hot paths. See
// its benchmarks.
package redisclients
