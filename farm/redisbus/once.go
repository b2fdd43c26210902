package redisbus

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// A onceCmd is a go-redis command that go-redis sends at most once: after
// a failure on its connection (written, perhaps run, no answer read) it
// fails, and is not sent again on another connection, as go-redis would
// send a command that may be retried. A single-server or Sentinel client
// sends none again (see noResend); but a Redis Cluster client sends a
// command again after a network error, on the same node and then on the
// slot's master anew, within the loop that follows MOVED and ASK, and
// MaxRedirects bounds both: only the command itself can say no. A command
// so re-sent goes out with what the farm knew when it first sent it,
// after the farm has moved on (see noResend and
// TestClusterWriteCutInFlightNotSentAgain). A pipeline holding one is not
// sent again either, on that node. MOVED and ASK are still followed: the
// node that answers so ran nothing. So is a failure to get a connection
// for a pipeline (nothing was written); not, for a single command, a
// refused dial, nor answers that a retry would have waited out
// (CLUSTERDOWN, TRYAGAIN, LOADING): the farm tries again itself, with
// what it knows then.
type onceCmd struct{ redis.Cmder }

// NoRetry tells go-redis not to send the command again.
func (onceCmd) NoRetry() bool { return true }

// A sender is what the transport sends commands on: its client, or a
// pipeline.
type sender interface {
	redis.Scripter
	Process(ctx context.Context, cmd redis.Cmder) error
}

// once sends on a sender the commands that change the farm's state (the
// writes, deletes, takes, publishes and scripts of the transport), each
// at most once (see onceCmd); reads, which are harmless to send again, go
// to the sender itself. It is a redis.Scripter whose Eval and EvalSha so
// send a script, for redis.Script's Run, Eval and EvalSha.
type once struct{ s sender }

// send sends cmd on o's sender at most once, and returns it.
func send[C redis.Cmder](ctx context.Context, o once, cmd C) C {
	_ = o.s.Process(ctx, onceCmd{cmd})
	return cmd
}

// Set is SET key value PX ttl (no expiry if ttl is not positive).
func (o once) Set(ctx context.Context, key string, value []byte, ttl time.Duration) *redis.StatusCmd {
	return send(ctx, o, redis.NewStatusCmd(ctx, setArgs(key, value, ttl, "")...))
}

// SetNX is SET key value NX PX ttl (no expiry if ttl is not positive),
// true if it wrote.
func (o once) SetNX(ctx context.Context, key string, value []byte, ttl time.Duration) *redis.BoolCmd {
	return send(ctx, o, redis.NewBoolCmd(ctx, setArgs(key, value, ttl, "nx")...))
}

// SetGet is SET key value PX ttl GET (no expiry if ttl is not positive):
// the value it replaced, or redis.Nil.
func (o once) SetGet(ctx context.Context, key string, value []byte, ttl time.Duration) *redis.StatusCmd {
	return send(ctx, o, redis.NewStatusCmd(ctx, setArgs(key, value, ttl, "get")...))
}

// setArgs is SET key value, then PX ttl if ttl is positive, then the
// option opt if not empty.
func setArgs(key string, value []byte, ttl time.Duration, opt string) []any {
	args := make([]any, 3, 6)
	args[0], args[1], args[2] = "set", key, value
	if ttl > 0 {
		args = append(args, "px", ttlMillis(ttl))
	}
	if opt != "" {
		args = append(args, opt)
	}
	return args
}

// PExpireGT is PEXPIRE key ttl GT: the key's expiry moves to ttl from
// now only if that is later (a key without expiry keeps none).
func (o once) PExpireGT(ctx context.Context, key string, ttl time.Duration) *redis.BoolCmd {
	return send(ctx, o, redis.NewBoolCmd(ctx, "pexpire", key, ttlMillis(ttl), "gt"))
}

// Del is DEL keys.
func (o once) Del(ctx context.Context, keys ...string) *redis.IntCmd {
	args := make([]any, 1+len(keys))
	args[0] = "del"
	for i, k := range keys {
		args[1+i] = k
	}
	return send(ctx, o, redis.NewIntCmd(ctx, args...))
}

// GetDel is GETDEL key.
func (o once) GetDel(ctx context.Context, key string) *redis.StringCmd {
	return send(ctx, o, redis.NewStringCmd(ctx, "getdel", key))
}

// Take is EVALSHA (or EVAL, if eval) of takeScript over the record and
// its retirement mark, whose key is mark: the record's key and
// retireMarkSuffix. It returns the script's bulk string or nil as a
// StringCmd (no copy of the reply), sent at most once.
func (o once) Take(ctx context.Context, mark string, eval bool) *redis.StringCmd {
	c := &takeCmd{keys: [2]string{mark[:len(mark)-len(retireMarkSuffix)], mark}}
	c.args = [5]any{"evalsha", takeHash, 2, &c.keys[0], &c.keys[1]}
	if eval {
		c.args[0], c.args[1] = "eval", takeSource
	}
	cmd := redis.NewStringCmd(ctx, c.args[:]...)
	cmd.SetFirstKeyPos(3) // a cluster routes it by its first key
	c.once = onceCmd{cmd}
	_ = o.s.Process(ctx, &c.once)
	return cmd
}

// A takeCmd holds, in one allocation, what Take sends besides the
// command itself: its arguments, the keys they point to (go-redis writes,
// and routes by, a *string as the string; a string in an any would be an
// allocation of its own), and the onceCmd that wraps it.
type takeCmd struct {
	args [5]any
	keys [2]string
	once onceCmd
}

// takeHash is takeScript's SHA1, as an argument.
var takeHash any = takeScript.Hash()

// Publish is PUBLISH channel msg.
func (o once) Publish(ctx context.Context, channel string, msg []byte) *redis.IntCmd {
	return send(ctx, o, redis.NewIntCmd(ctx, "publish", channel, msg))
}

// SPublish is SPUBLISH channel msg.
func (o once) SPublish(ctx context.Context, channel string, msg []byte) *redis.IntCmd {
	return send(ctx, o, redis.NewIntCmd(ctx, "spublish", channel, msg))
}

// Eval implements redis.Scripter: EVAL script, sent at most once.
func (o once) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return o.eval(ctx, "eval", script, keys, args)
}

// EvalSha implements redis.Scripter: EVALSHA sha1, sent at most once.
func (o once) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return o.eval(ctx, "evalsha", sha1, keys, args)
}

// eval sends the command name (EVAL or EVALSHA) of script, keys and
// args, at most once.
func (o once) eval(ctx context.Context, name, script string, keys []string, args []any) *redis.Cmd {
	a := make([]any, 3+len(keys), 3+len(keys)+len(args))
	a[0], a[1], a[2] = name, script, len(keys)
	for i, k := range keys {
		a[3+i] = k
	}
	cmd := redis.NewCmd(ctx, append(a, args...)...)
	if len(keys) > 0 {
		cmd.SetFirstKeyPos(3) // a cluster routes it by its first key
	}
	return send(ctx, o, cmd)
}

// EvalRO implements redis.Scripter: a read-only script, sent as any read.
func (o once) EvalRO(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return o.s.EvalRO(ctx, script, keys, args...)
}

// EvalShaRO implements redis.Scripter: a read-only script, sent as any
// read.
func (o once) EvalShaRO(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return o.s.EvalShaRO(ctx, sha1, keys, args...)
}

// ScriptExists implements redis.Scripter, as any read.
func (o once) ScriptExists(ctx context.Context, hashes ...string) *redis.BoolSliceCmd {
	return o.s.ScriptExists(ctx, hashes...)
}

// ScriptLoad implements redis.Scripter: SCRIPT LOAD, which the same
// script loaded again leaves as it was.
func (o once) ScriptLoad(ctx context.Context, script string) *redis.StringCmd {
	return o.s.ScriptLoad(ctx, script)
}

var _ redis.Scripter = once{}
