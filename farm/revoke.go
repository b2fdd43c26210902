package farm

import (
	"context"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

// revoke revokes the session id across the farm: its whole resumption chain
// stops resuming on every node, including those that only have it in the
// store. It reports false if neither this node nor the store knows id.
func (n *Node) revoke(ctx context.Context, id session.ID) (bool, error) {
	if _, ok := n.cfg.Cache.Remove(id); ok {
		return true, nil // the REMOVE hook publishes the chain
	}
	rec, ok := n.takePending(id)
	if !ok && n.cfg.Records == nil {
		return false, nil
	}
	if !ok {
		var err error
		rec, err = n.fetch(ctx, id)
		if err != nil || rec == nil {
			return false, err
		}
	}
	rev := revocation{chain: rec.Chain, until: n.cfg.Cache.ChainEnd(*rec)}
	// Tombstone locally (nothing cached, so no REMOVE event), then publish.
	n.cfg.Cache.RemoveChain(rev.chain, rev.until, session.OriginPeer)
	n.addRevocation(id, rev)
	return true, nil
}

// healer reads the store's revocations first for Join (see firstSync),
// then again periodically and on reconnect; until a read has succeeded, it
// retries with backoff.
func (n *Node) healer(ctx context.Context) {
	defer n.wg.Done()
	n.firstSync(ctx)
	close(n.synced)
	t := time.NewTicker(n.cfg.HealInterval)
	defer t.Stop()
	if n.cfg.Records != nil {
		n.checkGeneration(ctx)
	}
	for failures := 1; ; {
		var retry <-chan time.Time
		if !n.revsKnown.Load() {
			retry = time.After(backoff(failures))
			failures++
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.heal:
		case <-retry:
		}
		n.readTombstones(ctx)
		if n.cfg.Records != nil {
			n.checkGeneration(ctx)
		}
	}
}

// readTombstones reads the revocations in the store and applies them to the
// cache. The first time it succeeds, the node's revocations are known (see
// Join).
func (n *Node) readTombstones(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	members, err := n.cfg.Coord.SetMembers(ctx, tombstoneKey)
	if err != nil {
		return err
	}
	if len(members) >= transport.MaxSetMembers {
		n.ctr.tombstonesTruncated.Add(1)
		members = members[:transport.MaxSetMembers]
	}
	for _, m := range members {
		_, body, err := n.keys.open(m, n.cfg.Farm, valTombstone, nil, n.cfg.Now(), 0, n.cfg.MaxSkew)
		if err != nil {
			n.ctr.storeRejected.Add(1)
			continue
		}
		revs, err := parseRevocations(body)
		if err != nil {
			n.ctr.storeRejected.Add(1)
			continue
		}
		for _, r := range revs {
			n.cfg.Cache.RemoveChain(r.chain, r.until, session.OriginPeer)
		}
	}
	if !n.revsKnown.Load() {
		n.setRevocationsKnown()
		if n.revsWarned.Load() {
			n.log.Info("farm: read the farm's revocations; resuming sessions from the farm")
		}
	}
	return nil
}
