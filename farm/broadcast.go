package farm

import "time"

// sealSessions returns the broadcast message carrying items.
func (n *Node) sealSessions(now time.Time, items []sessionItem) []byte {
	body, _ := appendSessions(nil, items)
	return n.keys.seal(nil, header{typ: msgSessions, time: now, sender: n.instance, farm: n.cfg.Farm}, body, nil)
}
