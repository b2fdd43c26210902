package admin

import (
	"context"
	"net/http"

	"github.com/tlsfarm/tlsfarm/session"
)

// SessionsResponse is the answer of GET /sessions.
type SessionsResponse struct {
	Cache session.Stats `json:"cache"`
	Farm  bool          `json:"farm"` // revocations reach the whole farm
}

func (h *Handler) sessions(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, SessionsResponse{Cache: h.cfg.Cache.Stats(), Farm: h.cfg.Node != nil})
}

// RevokeResponse is the answer of DELETE /sessions/{id}.
type RevokeResponse struct {
	Revoked bool `json:"revoked"`
	Farm    bool `json:"farm"` // revoked farm-wide, not only here
}

// revoke handles DELETE /sessions/{id}: it revokes the session and its
// resumption chain, through the farm when there is one.
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
	var found bool
	if h.cfg.Node != nil {
		ctx, cancel := context.WithTimeout(r.Context(), h.cfg.RevokeTimeout)
		defer cancel()
		found, err = h.cfg.Node.Revoke(ctx, id)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, "the farm's store could not be asked: "+err.Error())
			return
		}
	} else {
		found = h.cfg.Cache.Remove(id)
	}
	if !found {
		writeError(w, http.StatusNotFound, "no such session (unknown, expired or already revoked)")
		return
	}
	// A prefix of the ID is enough to audit revocations; the whole ID is
	// what a client presents, and stays out of logs.
	h.cfg.Logger.Info("session revoked", "id_prefix", id.String()[:12], "farm", h.cfg.Node != nil, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, RevokeResponse{Revoked: true, Farm: h.cfg.Node != nil})
}
