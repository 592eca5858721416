package agent

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/api/client/clienttest"
	"github.com/drawbridge-lb/drawbridge/cluster"
	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/haproxy"
)

type benchStatus struct{}

func (benchStatus) Status() api.Status { return api.Status{Node: "edge-1", Version: "bench"} }

// benchMembers is a three-node cluster as the leader's API sees it.
type benchMembers struct{}

func (benchMembers) Cluster() api.ClusterStatus {
	var st api.ClusterStatus
	for i := 1; i <= 3; i++ {
		st.Members = append(st.Members, api.MemberStatus{Name: fmt.Sprintf("edge-%d", i), Role: cluster.RoleEdge, Status: "alive",
			RaftAddr: fmt.Sprintf("10.0.0.%d:9001", i), GossipAddr: fmt.Sprintf("10.0.0.%d:9002", i), APIURL: fmt.Sprintf("https://10.0.0.%d:9000", i)})
	}
	return st
}

// BenchmarkPutRoute is one PUT /v1/routes/{port} on the leader, through the
// real handler chain (token, rate limit, decode, scope, reserved ports,
// backend policy against the members, limits, capacity admission, commit
// into the FSM, the audit line at info level), into a table of routes
// with one backend each, as the three-node benchmark writes: most writes
// change an existing route's backend port.
func BenchmarkPutRoute(b *testing.B) {
	for _, n := range []int{200, 1000} {
		b.Run(fmt.Sprintf("routes=%d", n), func(b *testing.B) { benchPutRoute(b, n) })
	}
}

func benchPutRoute(b *testing.B, n int) {
	table := fsm.New()
	for i := range n {
		r := fsm.NewRoute(20000+i, fmt.Sprintf("r%d", 20000+i))
		r.Backends = []fsm.Backend{{Address: "10.99.0.1", Port: 1 + i}}
		if res := table.ApplyCommand(uint64(i+1), &fsm.UpsertRoute{Route: r}); res.Err != nil {
			b.Fatal(res.Err)
		}
	}
	info := &nodeInfo{cfg: &Config{NodeName: "edge-1"}, settings: haproxy.Settings{MaxConn: 1000}, fdLimit: 1 << 20,
		proxy: &haproxy.Manager{}, peers: func() []cluster.Member { return nil }}
	cfg := api.DefaultConfig()
	cfg.Tokens = []string{"bench-token-not-a-secret-000"}
	cfg.Limits = api.Limits{MaxRoutes: 50000, MaxBackendsPerRoute: 64, MaxBackends: 200000}
	cfg.OwnEndpoints = []api.Endpoint{{Node: "edge-1", What: "API", Addr: netip.MustParseAddrPort("10.0.0.1:9000")}}
	logger := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	srv, err := api.New(cfg, api.Deps{Applier: &clienttest.LogApplier{FSM: table}, State: table, Status: benchStatus{},
		Cluster: benchMembers{}, Admitter: info, Logger: logger, Now: time.Now})
	if err != nil {
		b.Fatal(err)
	}
	h := srv.Handler()
	bodies := make([]string, 4096)
	for i := range bodies {
		port := 20000 + i%n
		bodies[i] = fmt.Sprintf(`{"name":"r%d","backends":[{"address":"10.99.0.1","port":%d}]}`, port, 1+(i*7919)%60000)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		body := bodies[i%len(bodies)]
		port := 20000 + (i%len(bodies))%n
		req := httptest.NewRequest(http.MethodPut, fmt.Sprintf("/v1/routes/%d", port), strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer bench-token-not-a-secret-000")
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("PUT: %d %s", rec.Code, rec.Body)
		}
	}
}
