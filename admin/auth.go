package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
)

// authorized wraps a handler that changes state: it runs only for a request
// that carries the bearer token.
func (h *Handler) authorized(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var want string
		if h.cfg.Token != nil {
			want = h.cfg.Token()
		}
		if want == "" {
			writeError(w, http.StatusForbidden, "no admin token is configured (admin.token or admin.token_file), so state changes are refused")
			return
		}
		got, ok := bearer(r.Header.Get("Authorization"))
		if !ok || !tokenEqual(got, want) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tlsfarm admin"`)
			writeError(w, http.StatusUnauthorized, "a valid bearer token is required")
			return
		}
		next(w, r)
	}
}

// hasToken reports whether r carries the admin token. It is false while no
// token is configured.
func (h *Handler) hasToken(r *http.Request) bool {
	if h.cfg.Token == nil {
		return false
	}
	want := h.cfg.Token()
	got, ok := bearer(r.Header.Get("Authorization"))
	return want != "" && ok && tokenEqual(got, want)
}

// bearer returns the token of an Authorization header of the Bearer
// scheme, whose name is case insensitive (RFC 9110 §11.1) and which one or
// more spaces part from the token (§11.4: 1*SP).
func bearer(auth string) (string, bool) {
	scheme, token, ok := strings.Cut(auth, " ")
	token = strings.TrimLeft(token, " ")
	return token, ok && token != "" && strings.EqualFold(scheme, "Bearer")
}

// tokenEqual compares two tokens in time that depends on neither: the
// hashes hide the lengths from the constant-time comparison.
func tokenEqual(a, b string) bool {
	x, y := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(x[:], y[:]) == 1
}
