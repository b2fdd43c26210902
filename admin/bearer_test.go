package admin

import (
	"net/http"
	"testing"
)

// TestBearerSchemeAnyCase sends the admin token under the spellings of
// the Bearer scheme a client may use (RFC 9110 §11.1: the scheme is case
// insensitive; §11.4: one or more spaces before the token; before, two
// were refused), and under malformed headers that must be refused.
func TestBearerSchemeAnyCase(t *testing.T) {
	srv, cache := newHandler(t, nil)
	for _, tt := range []struct {
		auth string
		want int
	}{
		{"Bearer " + token, http.StatusOK},
		{"bearer " + token, http.StatusOK},
		{"BEARER " + token, http.StatusOK},
		{"Bearer  " + token, http.StatusOK}, // 1*SP (RFC 9110 §11.4)
		{"Bearer   ", http.StatusUnauthorized},
		{"Bearer " + token + "x", http.StatusUnauthorized},
		{"Basic " + token, http.StatusUnauthorized},
		{"Bearer" + token, http.StatusUnauthorized},
		{token, http.StatusUnauthorized},
		{"Bearer ", http.StatusUnauthorized},
	} {
		id := insert(t, cache)
		req, _ := http.NewRequest("DELETE", srv.URL+"/sessions/"+id.String(), nil)
		req.Header.Set("Authorization", tt.auth)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("Authorization %q: %d, want %d", tt.auth[:min(len(tt.auth), 8)]+"...", resp.StatusCode, tt.want)
		}
	}
}
