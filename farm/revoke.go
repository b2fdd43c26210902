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

// healer re-reads the store's revocations periodically and on reconnect.
func (n *Node) healer(ctx context.Context) {
	defer n.wg.Done()
	t := time.NewTicker(n.cfg.HealInterval)
	defer t.Stop()
	n.readTombstones(ctx)
	if n.cfg.Records != nil {
		n.checkGeneration(ctx)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.heal:
		}
		n.readTombstones(ctx)
		if n.cfg.Records != nil {
			n.checkGeneration(ctx)
		}
	}
}

func (n *Node) readTombstones(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	members, err := n.cfg.Coord.SetMembers(ctx, tombstoneKey)
	if err != nil {
		return
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
}
