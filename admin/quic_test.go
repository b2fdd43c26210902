package admin

import (
	"strings"
	"testing"

	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

func TestQUICMetrics(t *testing.T) {
	for _, withQUIC := range []bool{false, true} {
		srv, _ := newHandler(t, func(c *Config) {
			c.Proxy = func() ProxyStats {
				p := ProxyStats{}
				if withQUIC {
					p.QUIC = &QUICStats{
						FullHandshakes: 5, ResumedHandshakes: 7, EarlyDataOffered: 4, EarlyDataAccepted: 1,
						EarlyDataRejected: map[string]uint64{"replay": 2, "store_unavailable": 1, "disabled": 0},
						EarlyRequests:     1, TooEarly: 3, Open: 2,
					}
				}
				return p
			}
		})
		_, body := nettest.Do(t, "GET", srv.URL+"/metrics", "")
		if !withQUIC {
			if strings.Contains(body, "tlsfarm_quic_") {
				t.Error("QUIC metrics without an HTTP/3 listener")
			}
			continue
		}
		for _, want := range []string{
			`tlsfarm_quic_handshakes_total{kind="full"} 5`,
			`tlsfarm_quic_handshakes_total{kind="resumed"} 7`,
			`tlsfarm_quic_early_data_offered_total 4`,
			`tlsfarm_quic_early_data_accepted_total 1`,
			`tlsfarm_quic_early_data_rejected_total{reason="replay"} 2`,
			`tlsfarm_quic_early_data_rejected_total{reason="store_unavailable"} 1`,
			`tlsfarm_quic_early_data_rejected_total{reason="disabled"} 0`,
			`tlsfarm_http_early_requests_total 1`,
			`tlsfarm_http_too_early_total 3`,
			`tlsfarm_quic_connections_open 2`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("metrics lack %q", want)
			}
		}
	}
}
