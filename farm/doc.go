// Package farm joins a server's session cache to the other servers of its
// farm, so that a client resumes on any server a session that any server
// issued.
//
// Join makes a Node from a Config: the farm's name and secrets, the local
// session.Cache, and the transports that carry the farm's messages and hold
// its records (package farm/transport defines them; farm/redisbus,
// farm/natsbus and farm/amqpbus implement them). From then on the node
//
//   - publishes each session this server issues, and inserts those its peers
//     publish (Broadcast), or writes each to the store for others to look up
//     on a miss (StoreOnly);
//   - looks up in the store, within Config.LookupTimeout, a session a client
//     presents that the cache lacks;
//   - spreads revocations (Node.RevokeSession) to every node and the store,
//     and retries them until they are in force farm-wide;
//   - offers exactly-once operations through the store (Node.Consume,
//     Node.ConsumeToken, Node.Strike) for single-use sessions and 0-RTT
//     anti-replay;
//   - with Node.RotateTicketKeys, keeps every node's session ticket keys in
//     step with the farm's, under a lease one node holds.
//
// Everything on the bus and in the store is sealed with keys derived from
// the farm's secrets (NewSecret, LoadSecrets): a transport sees only opaque
// envelopes. A node that cannot reach its transport keeps serving from its
// local cache and catches up when the transport returns; Node.Connected
// says which, and Node.Metrics counts what the node did.
//
// Start with Join and Config; the transports' contract is in package
// farm/transport, and docs/farm.md tells the whole story.
//
// Where things are handled, by file: node.go (Join, Close) and config.go
// (Config, Mode); publish.go and queue.go (the cache hook and the publish
// queue), batch.go and broadcast.go (what a batch becomes on the bus and in
// the store); receive.go (a message from the bus) and pending.go (peers'
// sessions kept undecoded, Config.LazyPeers); lookup.go and negcache.go (a
// store lookup on a cache miss, and the IDs known to be missing);
// revoke.go and durable.go (revocations, and keeping them until the farm
// has them); lifecycle.go (single use, grace cuts, retirements, Consume);
// strike.go (0-RTT anti-replay); writeback.go (refilling a store that lost
// its data); rotation.go and keymerge.go (ticket key rotation); envelope.go
// and secret.go (sealing); quickeys.go (QUIC keys); health.go, breaker.go
// and fallback.go (transport health, the store's circuit breaker, fallback
// tickets); metrics.go (the counters).
package farm
