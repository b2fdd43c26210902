package admin

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/session"
)

// SessionsResponse is the answer of GET /sessions.
type SessionsResponse struct {
	// Cache holds the cache's counters and size, as /metrics exports
	// them (session.Cache.Metrics).
	Cache []metric.Sample `json:"cache"`
	Farm  bool            `json:"farm"` // revocations reach the whole farm
}

func (h *Handler) sessions(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, SessionsResponse{Cache: h.cfg.Cache.Metrics(), Farm: h.cfg.Node != nil})
}

// RevokeResponse is the answer of DELETE /sessions/{id}.
type RevokeResponse struct {
	Revoked bool `json:"revoked"` // always true: a session not found is a 404
	// Farm says how far the revocation has reached beyond this node:
	// "applied" (the farm's store holds the tombstone and the bus carried
	// it: status 200), "pending" (in force here, queued for the farm and
	// retried until applied: status 202), "recorded" (no reachable node
	// knows the session: the revocation is recorded by its ID, in the
	// farm's store and on its bus, so that the node that holds it revokes
	// its chain when it comes back: status 202), or "none" (no farm).
	Farm string `json:"farm"`
	// Note explains a "recorded" answer.
	Note string `json:"note,omitempty"`
}

// recordedNote is RevokeResponse.Note for a revocation recorded by ID.
const recordedNote = "no reachable node knows this session; the revocation is recorded so that the node that holds it revokes its chain when it comes back"

// revokeApplyWait is how long DELETE /sessions/{id} waits for a revocation
// to reach the farm before it answers 202 "pending", on top of the wait
// the node itself adds before it says applied (farm.Node.RevokeApplyWait),
// and at most Config.RevokeTimeout in all.
const revokeApplyWait = time.Second

// revoke handles DELETE /sessions/{id}: it revokes the session and its
// resumption chain, through the farm when there is one. It answers 200 when
// the revocation is applied farm-wide (or there is no farm), 202 when it is
// applied here and pending for the farm, 503 when this node cannot learn
// the session's chain (the farm has no store and this node does not hold
// the session), and 404 when the ID is not one this farm issued, or the
// session could no longer resume anyway, or there is no farm and the cache
// does not hold it. A session that no reachable node knows (its issuer may
// be cut off from the farm) is revoked by its ID: 202 "recorded" (see
// farm.RevokeRecorded), or 202 "pending" while the store is out of reach.
func (h *Handler) revoke(w http.ResponseWriter, r *http.Request) {
	id, err := session.ParseID(r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "not a session ID: "+err.Error())
		return
	}
	if _, ok := h.cfg.Cache.CheckID(id[:]); !ok {
		writeError(w, http.StatusNotFound, "no such session (the ID is not one this farm issued)")
		return
	}
	found, status, farmState := false, http.StatusOK, "none"
	if h.cfg.Node != nil {
		ctx, cancel := context.WithTimeout(r.Context(), min(h.cfg.RevokeTimeout, revokeApplyWait+h.cfg.Node.RevokeApplyWait()))
		defer cancel()
		st, err := h.cfg.Node.RevokeSession(ctx, id)
		if errors.Is(err, farm.ErrNoStore) {
			// Not "no such session": a peer may hold it.
			writeError(w, http.StatusServiceUnavailable, "this node does not hold the session and the farm has no store to ask: send the request to the node that issued it")
			return
		}
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, "the farm's store could not be asked: "+err.Error())
			return
		}
		found = st != farm.RevokeNotFound
		farmState = st.String()
		if st == farm.RevokePending || st == farm.RevokeRecorded {
			status = http.StatusAccepted
		}
	} else {
		_, found = h.cfg.Cache.Remove(id)
	}
	if !found {
		writeError(w, http.StatusNotFound, "no such session (unknown, expired or already revoked)")
		return
	}
	// A prefix of the ID is enough to audit revocations; the whole ID is
	// what a client presents, and stays out of logs.
	h.cfg.Logger.Info("session revoked", "id_prefix", id.String()[:12], "farm", farmState, "remote", r.RemoteAddr)
	resp := RevokeResponse{Revoked: true, Farm: farmState}
	if farmState == farm.RevokeRecorded.String() {
		resp.Note = recordedNote
	}
	writeJSON(w, status, resp)
}
