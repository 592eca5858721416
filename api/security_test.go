package api_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/fsm"
)

// Secrets of the scoped tokens the security tests use (obviously fake).
const (
	adminSecret = "fake-admin-secret-0000"
	unifiSecret = "fake-unifi-secret-1111"
	gameSecret  = "fake-games-secret-2222"
	readSecret  = "fake-reader-secret-3333"
)

// scoped configures an admin, two register tokens (unifi: ports 8000-8099,
// names unifi-*, backends in 10.0.0.0/16, leases up to 10m; games: ports
// 27000-27100, any name) and a read token, besides the legacy tokens.
func scoped(c *api.Config) {
	ports := func(s string) fsm.PortRanges {
		p, err := fsm.ParsePortRanges([]string{s})
		if err != nil {
			panic(err)
		}
		return p
	}
	c.ScopedTokens = []api.Token{
		{Name: "ops", Role: api.RoleAdmin, SHA256: api.HashSecret(adminSecret)},
		{Name: "unifi", Role: api.RoleRegister, SHA256: api.HashSecret(unifiSecret), Ports: ports("8000-8099"),
			Names: []string{"unifi-*"}, BackendCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}, MaxTTL: 10 * time.Minute},
		{Name: "games", Role: api.RoleRegister, SHA256: api.HashSecret(gameSecret), Ports: ports("27000-27100"), Names: []string{"*"}},
		{Name: "grafana", Role: api.RoleRead, SHA256: api.HashSecret(readSecret)},
	}
}

// req sends one request with a token and checks the status and, when want
// is set, that the error names it.
func (e *env) req(secret string, wantStatus int, method, path, body, wantMsg string) string {
	e.t.Helper()
	rec := e.do(method, path, bearer(secret), body)
	if rec.Code != wantStatus {
		e.t.Fatalf("%s %s: status %d, want %d; body %s", method, path, rec.Code, wantStatus, rec.Body)
	}
	if wantMsg != "" && !strings.Contains(rec.Body.String(), wantMsg) {
		e.t.Fatalf("%s %s: body %s does not say %q", method, path, rec.Body, wantMsg)
	}
	return rec.Body.String()
}

func TestScopedTokenRoles(t *testing.T) {
	e := newEnv(t, scoped)
	reg := `{"address":"10.0.0.5","port":30808,"ttl":"5m","name":"unifi-a","create":true}`

	// The register token makes its own route, which records it as owner.
	e.req(unifiSecret, 200, http.MethodPost, "/v1/routes/8080/backends", reg, "")
	if r, _ := e.fsm.State().Route(8080); r.Token != "unifi" {
		t.Fatalf("owner recorded %q, want unifi", r.Token)
	}

	tests := []struct {
		name, secret, method, path, body string
		wantStatus                       int
		wantMsg                          string
	}{
		{"another register token cannot add to it", gameSecret, "POST", "/v1/routes/8080/backends",
			`{"address":"10.0.0.6","port":1,"ttl":"5m"}`, 403, "token games may not route port 8080"},
		{"nor delete it", gameSecret, "DELETE", "/v1/routes/8080?name=unifi-a", "", 403, "may not route port 8080"},
		{"nor deregister from it", gameSecret, "DELETE", "/v1/routes/8080/backends/10.0.0.5:30808?name=unifi-a", "", 403, "may not route port 8080"},
		{"nor force it, even on its own ports", gameSecret, "PUT", "/v1/routes/27000", `{"name":"x","force":true}`, 403, "force takes a port from another route: it needs an admin token"},
		{"nor restore a snapshot", gameSecret, "POST", "/v1/snapshot", `{"format":1,"routes":[]}`, 403, "needs an admin token"},
		{"nor read a snapshot of everyone's backends", gameSecret, "GET", "/v1/snapshot", "", 403, "holds every token's backends"},
		{"nor read the route", gameSecret, "GET", "/v1/routes/8080", "", 403, "belongs to token unifi"},
		{"a register token's delete needs a name", unifiSecret, "DELETE", "/v1/routes/8080", "", 403, "without ?name= needs an admin token"},
		{"outside its name globs", unifiSecret, "POST", "/v1/routes/8081/backends",
			`{"address":"10.0.0.5","port":1,"ttl":"5m","name":"grafana","create":true}`, 403, `may not use route name`},
		{"outside its ports", unifiSecret, "PUT", "/v1/routes/9999", `{"name":"unifi-x"}`, 403, "may not route port 9999"},
		{"outside its backend CIDRs", unifiSecret, "POST", "/v1/routes/8080/backends",
			`{"address":"192.168.1.5","port":1,"ttl":"5m"}`, 403, "may only name backends in 10.0.0.0/16"},
		{"above its max_ttl", unifiSecret, "POST", "/v1/routes/8080/backends",
			`{"address":"10.0.0.7","port":1,"ttl":"1h"}`, 403, "above token unifi's max_ttl of 10m0s"},
		{"without a lease when it has a max_ttl", unifiSecret, "POST", "/v1/routes/8080/backends",
			`{"address":"10.0.0.7","port":1}`, 403, "registers leased backends only"},
		{"nor permanent backends through PUT when it has a max_ttl", unifiSecret, "PUT", "/v1/routes/8081",
			`{"name":"unifi-p","backends":[{"address":"10.0.0.8","port":1}]}`, 403, "registers leased backends only: PUT sets backends without a lease"},
		{"but a route without backends through PUT", unifiSecret, "PUT", "/v1/routes/8082", `{"name":"unifi-e"}`, 200, ""},
		{"a read token cannot write", readSecret, "PUT", "/v1/routes/8081", `{"name":"x"}`, 403, "role read"},
		{"a read token reads the route", readSecret, "GET", "/v1/routes/8080", "", 200, "10.0.0.5"},
		{"a read token reads the snapshot", readSecret, "GET", "/v1/snapshot", "", 200, "10.0.0.5"},
		{"a read token reads metrics", readSecret, "GET", "/metrics", "", 200, "drawbridge_routes"},
		{"the owner refreshes its backend", unifiSecret, "POST", "/v1/routes/8080/backends", reg, 200, ""},
		{"an admin may change any route", adminSecret, "POST", "/v1/routes/8080/backends",
			`{"address":"10.0.9.9","port":2}`, 200, ""},
		{"the legacy token is an admin", testToken, "PUT", "/v1/routes/27001", `{"name":"legacy-route"}`, 200, ""},
		{"a register token cannot change the legacy token's route", gameSecret, "PUT", "/v1/routes/27001", `{"name":"legacy-route"}`, 403, "belongs to token legacy"},
		{"the owner deletes with a name", unifiSecret, "DELETE", "/v1/routes/8080/backends/10.0.0.5:30808?name=unifi-a", "", 200, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e.t = t
			before := e.fsm.State().Hash()
			e.req(tc.secret, tc.wantStatus, tc.method, tc.path, tc.body, tc.wantMsg)
			if tc.wantStatus != 200 && e.fsm.State().Hash() != before {
				t.Fatal("a refused request changed the table")
			}
		})
	}
	e.t = t

	// A register token sees only its own routes in the list.
	list := decode[struct{ Routes []fsm.Route }](t, e.do(http.MethodGet, "/v1/routes", bearer(gameSecret), ""))
	for _, r := range list.Routes {
		if r.Token != "games" {
			t.Fatalf("token games listed route %+v of another token", r)
		}
	}
}

func TestScopedTokenHookUsesItsLease(t *testing.T) {
	e := newEnv(t, scoped)
	rec := e.do(http.MethodPost, hookPath, legacy(unifiSecret), hookBody(`"unifi-b"`, `8090`, `30000`, `"10.0.1.2"`, `"add"`))
	if rec.Code != 200 {
		t.Fatalf("hook: %d %s", rec.Code, rec.Body)
	}
	r, _ := e.fsm.State().Route(8090)
	if r.Token != "unifi" || r.Backends[0].TTL != 10*time.Minute {
		t.Fatalf("route %+v: want owner unifi and the token's 10m lease (the hook's 30m is above its max_ttl)", r)
	}
	// The recipe's payload with another token's port is refused, not a 409.
	rec = e.do(http.MethodPost, hookPath, legacy(gameSecret), hookBody(`"unifi-b"`, `8090`, `30000`, `"10.0.1.3"`, `"add"`))
	if rec.Code != 403 {
		t.Fatalf("hook onto another token's route: %d %s", rec.Code, rec.Body)
	}
}

func TestBackendPolicy(t *testing.T) {
	members := fakeClusterSource{cs: api.ClusterStatus{Members: []api.MemberStatus{
		{Name: "edge-1", RaftAddr: "10.0.0.1:9001", APIURL: "https://10.0.0.1:9000", GossipAddr: "10.0.0.1:9002"},
		{Name: "edge-2", RaftAddr: "10.0.0.2:7001", APIURL: "https://10.0.0.2:7000", GossipAddr: "10.0.0.2:7002"},
	}}}
	withMembers := func(d *api.Deps) { d.Cluster = members }
	tests := []struct {
		name      string
		policy    api.BackendPolicy
		addr      string
		port      int
		wantOK    bool
		wantMsg   string
		frontPort int
	}{
		{name: "metadata service", addr: "169.254.169.254", port: 80, wantMsg: "link-local"},
		{name: "metadata, even with loopback allowed", policy: api.BackendPolicy{AllowLoopback: true}, addr: "169.254.169.254", port: 80, wantMsg: "metadata"},
		{name: "metadata through an IPv4-mapped address", addr: "::ffff:169.254.169.254", port: 80, wantMsg: "link-local"},
		{name: "metadata through NAT64", addr: "64:ff9b::a9fe:a9fe", port: 80, wantMsg: "through NAT64"},
		{name: "IPv6 link-local", addr: "fe80::1", port: 80, wantMsg: "link-local"},
		{name: "loopback", addr: "127.0.0.1", port: 22, wantMsg: "loopback"},
		{name: "loopback v6", addr: "::1", port: 8081, wantMsg: "loopback"},
		{name: "loopback allowed for a demo", policy: api.BackendPolicy{AllowLoopback: true}, addr: "127.0.0.1", port: 8081, wantOK: true},
		{name: "loopback allowed, but not a member's raft port", policy: api.BackendPolicy{AllowLoopback: true}, addr: "127.0.0.1", port: 7001, wantMsg: "edge-2's raft port"},
		{name: "0/8 reaches this host", addr: "0.1.2.3", port: 80, wantMsg: "0.0.0.0/8"},
		{name: "broadcast", addr: "255.255.255.255", port: 80, wantMsg: "broadcast"},
		{name: "multicast", addr: "224.0.0.1", port: 80, wantMsg: "address"},
		{name: "a member's own address", addr: "10.0.0.2", port: 22, wantMsg: "cluster member edge-2's own address"},
		{name: "the floating IP", policy: api.BackendPolicy{DenyAddrs: []netip.Addr{netip.MustParseAddr("203.0.113.10")}}, addr: "203.0.113.10", port: 80, wantMsg: "floating IP"},
		{name: "outside backend_cidrs", policy: api.BackendPolicy{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}}, addr: "192.168.0.5", port: 80, wantMsg: "not in routes.backend_cidrs (10.0.0.0/16)"},
		{name: "inside backend_cidrs", policy: api.BackendPolicy{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}}, addr: "10.0.5.5", port: 80, wantOK: true},
		{name: "an ordinary private address", addr: "10.0.0.5", port: 30808, wantOK: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnvDeps(t, withMembers, func(c *api.Config) { c.BackendPolicy = tc.policy })
			want := 400
			if tc.wantOK {
				want = 200
			}
			// Every way a backend enters: PUT, register, the hook, a snapshot.
			e.req(testToken, want, http.MethodPut, "/v1/routes/8080",
				fmt.Sprintf(`{"name":"web","backends":[{"address":%q,"port":%d}]}`, tc.addr, tc.port), tc.wantMsg)
			e.req(testToken, want, http.MethodPost, "/v1/routes/8081/backends",
				fmt.Sprintf(`{"name":"web2","create":true,"address":%q,"port":%d}`, tc.addr, tc.port), tc.wantMsg)
			rec := e.do(http.MethodPost, hookPath, legacy(testToken), hookBody(`"web3"`, `8082`, fmt.Sprint(tc.port), fmt.Sprintf("%q", tc.addr), `"add"`))
			if rec.Code != want || !strings.Contains(rec.Body.String(), tc.wantMsg) {
				t.Fatalf("hook: %d %s", rec.Code, rec.Body)
			}
			snap := fmt.Sprintf(`{"format":1,"routes":[{"port":8083,"name":"w","mode":"tcp","balance":"roundrobin","backends":[{"address":%q,"port":%d}]}]}`, tc.addr, tc.port)
			e.req(testToken, want, http.MethodPost, "/v1/snapshot", snap, tc.wantMsg)
		})
	}
}

func TestReservedPortsOfEveryMember(t *testing.T) {
	members := fakeClusterSource{cs: api.ClusterStatus{Members: []api.MemberStatus{
		{Name: "edge-2", RaftAddr: "10.0.0.2:7001", APIURL: "http://10.0.0.2:7000", GossipAddr: "10.0.0.2:7002"},
	}}}
	e := newEnvDeps(t, func(d *api.Deps) { d.Cluster = members })
	for _, port := range []string{"7000", "7001", "7002", "9001"} {
		e.req(testToken, 400, http.MethodPut, "/v1/routes/"+port, `{"name":"grab"}`, "is reserved")
	}
}

func TestLimits(t *testing.T) {
	lim := func(c *api.Config) {
		c.Limits.MaxRoutes = 2
		c.Limits.MaxBackendsPerRoute = 2
		c.Limits.MaxBackends = 3
	}
	e := newEnv(t, lim)
	e.req(testToken, 400, http.MethodPost, "/v1/routes/8080/backends",
		`{"address":"10.0.0.5","port":1,"ttl":"8784h","name":"year","create":true}`, "above the limit of 24h0m0s (limits.max_ttl)")
	e.req(testToken, 200, http.MethodPut, "/v1/routes/8080", `{"name":"a","backends":[{"address":"10.0.0.1","port":1},{"address":"10.0.0.2","port":1}]}`, "")
	e.req(testToken, 400, http.MethodPost, "/v1/routes/8080/backends", `{"address":"10.0.0.3","port":1}`, "limits.max_backends_per_route")
	e.req(testToken, 200, http.MethodPost, "/v1/routes/8080/backends", `{"address":"10.0.0.2","port":1,"ttl":"1m"}`, "") // a refresh adds nothing
	e.req(testToken, 200, http.MethodPut, "/v1/routes/8081", `{"name":"b","backends":[{"address":"10.0.0.1","port":1}]}`, "")
	e.req(testToken, 400, http.MethodPut, "/v1/routes/8082", `{"name":"c"}`, "limits.max_routes")
	e.req(testToken, 400, http.MethodPost, "/v1/routes/8081/backends", `{"address":"10.0.0.3","port":1}`, "limits.max_backends")
	three := `{"format":1,"routes":[{"port":1,"name":"a","mode":"tcp","balance":"roundrobin","backends":[]},{"port":2,"name":"b","mode":"tcp","balance":"roundrobin","backends":[]},{"port":3,"name":"c","mode":"tcp","balance":"roundrobin","backends":[]}]}`
	e.req(testToken, 400, http.MethodPost, "/v1/snapshot", three, "limits.max_routes")
}

func TestSnapshotSizeCapDefault(t *testing.T) {
	e := newEnv(t)
	big := `{"format":1,"routes":[]}` + strings.Repeat(" ", api.DefaultMaxSnapshotBytes)
	e.req(testToken, 413, http.MethodPost, "/v1/snapshot", big, "snapshot is larger than 4194304 bytes")
}

func TestRateLimit(t *testing.T) {
	e := newEnv(t, scoped, func(c *api.Config) { c.Limits.Rate = 1; c.Limits.Burst = 5 })
	var ok, limited int
	for i := range 12 {
		rec := e.do(http.MethodPut, fmt.Sprintf("/v1/routes/%d", 27000+i), bearer(gameSecret), `{"name":"g"}`)
		switch rec.Code {
		case 200:
			ok++
		case 429:
			limited++
			if ra := rec.Header().Get("Retry-After"); ra != "1" {
				t.Fatalf("Retry-After %q, want 1", ra)
			}
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
	}
	// The clock is fixed: exactly the burst passes.
	if ok != 5 || limited != 7 {
		t.Fatalf("%d ok, %d limited; want 5 and 7", ok, limited)
	}
	// Another token has its own bucket.
	e.req(adminSecret, 200, http.MethodPut, "/v1/routes/8080", `{"name":"a"}`, "")
	if m := e.metric(`drawbridge_api_writes_total{result="rate_limited",token="games"}`); !strings.HasSuffix(m, " 7") {
		t.Fatalf("metric: %q", m)
	}
}

func TestAuditLines(t *testing.T) {
	e := newEnv(t, scoped)
	e.req(unifiSecret, 200, http.MethodPost, "/v1/routes/8080/backends", `{"address":"10.0.0.5","port":30808,"ttl":"5m","name":"unifi-a","create":true}`, "")
	e.req(gameSecret, 403, http.MethodDelete, "/v1/routes/8080?name=unifi-a", "", "")
	e.do(http.MethodPut, "/v1/routes/8081", bearer("not-a-token-at-all"), `{"name":"x"}`)
	logs := e.logs.String()
	for _, want := range []string{
		`component=audit token=unifi role=register remote=192.0.2.1:1234 method=POST path=/v1/routes/8080/backends change="register-backend port=8080 name=unifi-a backend=10.0.0.5:30808 ttl=5m0s create=true" result=ok status=200 index=1`,
		`component=audit token=games role=register remote=192.0.2.1:1234 method=DELETE path=/v1/routes/8080 change="" result=forbidden status=403 reason="token games may not route port 8080`,
		`component=audit token=- role="" remote=192.0.2.1:1234 method=PUT path=/v1/routes/8081 change="" result=unauthenticated status=403 reason="invalid token"`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("no audit line %s", want)
		}
	}
	for _, secret := range []string{unifiSecret, gameSecret, "not-a-token-at-all"} {
		if strings.Contains(logs, secret) {
			t.Fatal("a secret reached the log")
		}
	}
	if t.Failed() {
		t.Log(logs)
	}
}

func TestForwardedWriteAuditedOnceByLeader(t *testing.T) {
	leader, follower := newPair(t)
	follower.must(http.StatusOK, http.MethodPut, "/v1/routes/8080", `{"name":"web"}`)
	if n := strings.Count(leader.logs.String(), "component=audit"); n != 1 {
		t.Fatalf("leader wrote %d audit lines, want 1:\n%s", n, leader.logs)
	}
	if !strings.Contains(leader.logs.String(), "forwarded_by=edge-2 client=192.0.2.1:1234") {
		t.Fatalf("audit line does not name the forwarding node and client:\n%s", leader.logs)
	}
	if n := strings.Count(follower.logs.String(), "component=audit"); n != 0 {
		t.Fatalf("follower wrote %d audit lines for a write it forwarded", n)
	}
}

func TestTokenReload(t *testing.T) {
	e := newEnv(t, scoped)
	e.req(gameSecret, 200, http.MethodPut, "/v1/routes/27000", `{"name":"g"}`, "")
	if err := e.server.SetTokens([]api.Token{{Name: "ops", Role: api.RoleAdmin, SHA256: api.HashSecret(adminSecret)}}); err != nil {
		t.Fatal(err)
	}
	e.req(gameSecret, 403, http.MethodPut, "/v1/routes/27000", `{"name":"g"}`, "invalid token")
	e.req(adminSecret, 200, http.MethodPut, "/v1/routes/27000", `{"name":"g"}`, "")
	// A bad set is refused and the current one stays.
	if err := e.server.SetTokens([]api.Token{{Name: "Bad Name", Role: api.RoleAdmin, SHA256: api.HashSecret("x")}}); err == nil {
		t.Fatal("a bad token set was accepted")
	}
	e.req(adminSecret, 200, http.MethodGet, "/v1/routes", "", "")
}

func TestTokenConfigRefused(t *testing.T) {
	h := api.HashSecret("some-secret-value-1")
	tests := []struct {
		name   string
		tokens []api.Token
		want   string
	}{
		{"unknown role", []api.Token{{Name: "a", Role: "root", SHA256: h}}, `role "root"`},
		{"register without ports", []api.Token{{Name: "a", Role: api.RoleRegister, SHA256: h, Names: []string{"*"}}}, "needs ports"},
		{"register without names", []api.Token{{Name: "a", Role: api.RoleRegister, SHA256: h, Ports: fsm.PortRanges{{First: 1, Last: 2}}}}, "needs names"},
		{"scope on an admin", []api.Token{{Name: "a", Role: api.RoleAdmin, SHA256: h, Names: []string{"*"}}}, "only apply to role register"},
		{"same secret twice", []api.Token{{Name: "a", Role: api.RoleAdmin, SHA256: h}, {Name: "b", Role: api.RoleRead, SHA256: h}}, "have the same secret"},
		{"same name twice", []api.Token{{Name: "a", Role: api.RoleAdmin, SHA256: h}, {Name: "a", Role: api.RoleRead, SHA256: api.HashSecret("y")}}, "used twice"},
		{"no secret", []api.Token{{Name: "a", Role: api.RoleAdmin}}, "no secret"},
		{"clashes with the legacy name", []api.Token{{Name: "legacy", Role: api.RoleRead, SHA256: api.HashSecret("zz")}}, "used twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := api.DefaultConfig()
			cfg.Tokens = []string{testToken}
			cfg.ScopedTokens = tc.tokens
			_, err := api.New(cfg, api.Deps{Applier: &fakeCluster{fsm: fsm.New()}, State: fsm.New(), Status: &fakeStatus{}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}

func TestMetricsNeedAToken(t *testing.T) {
	e := newEnv(t)
	if rec := e.do(http.MethodGet, "/metrics", nil, ""); rec.Code != http.StatusUnauthorized {
		t.Fatalf("metrics without a token by default: %d", rec.Code)
	}
	pub := newEnv(t, func(c *api.Config) { c.MetricsPublic = true })
	if rec := pub.do(http.MethodGet, "/metrics", nil, ""); rec.Code != http.StatusOK {
		t.Fatalf("public metrics: %d", rec.Code)
	}
}

// fakeGuard is a LeaseGuard holding two backends back until released.
type fakeGuard struct{ held api.HeldLeases }

func (g *fakeGuard) HeldLeases() api.HeldLeases { return g.held }
func (g *fakeGuard) ReleaseHeld() (api.HeldLeases, error) {
	if !g.held.Held {
		return api.HeldLeases{}, api.ErrNothingHeld
	}
	h := g.held
	g.held = api.HeldLeases{}
	return h, nil
}

func TestLeaseGuardEndpoints(t *testing.T) {
	g := &fakeGuard{held: api.HeldLeases{Held: true, Expired: 2, Total: 3, Backends: []api.HeldLease{
		{Port: 8080, Route: "a", Backend: "10.0.0.1:1"}, {Port: 8081, Route: "b", Backend: "10.0.0.2:1"}}}}
	e := newEnvDeps(t, func(d *api.Deps) { d.Leases = g }, scoped)
	e.req(readSecret, 200, http.MethodGet, "/v1/leases", "", `"backend":"10.0.0.1:1"`)
	e.req(gameSecret, 403, http.MethodPost, "/v1/leases/release", "", "needs an admin token")
	e.req(adminSecret, 200, http.MethodPost, "/v1/leases/release", "", `"expired":2`)
	e.req(adminSecret, 404, http.MethodPost, "/v1/leases/release", "", "holds nothing back")
	if !strings.Contains(e.logs.String(), `change="release-held-leases expired=2 total=3"`) {
		t.Fatal("release not audited")
	}
}

// racer is an Applier that commits another writer's command first, once:
// two writers racing for one port between the leader's checks and the log.
type racer struct {
	*fakeCluster
	first fsm.Command
	once  sync.Once
}

func (r *racer) Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error) {
	r.once.Do(func() {
		if res, err := r.fakeCluster.Apply(ctx, r.first); err != nil || res.Err != nil {
			panic(fmt.Sprintf("the racing write failed: %v %v", err, res.Err))
		}
	})
	return r.fakeCluster.Apply(ctx, cmd)
}

// A refusal because the port is someone else's carries a code a program
// can act on (the Kubernetes controller reports it as a port conflict), on
// every path: the admin's 409, a register token's 403 from the checks
// before the log, and the 403 Apply gives when another token won a race.
// A refusal of the token's scope carries none; an unknown token its own.
func TestOwnershipRefusalsCarryACode(t *testing.T) {
	code := func(t *testing.T, rec *httptest.ResponseRecorder, status int, want string) {
		t.Helper()
		got := decode[struct {
			Error string `json:"error"`
			Code  string `json:"code"`
		}](t, rec)
		if rec.Code != status || got.Code != want {
			t.Fatalf("%d %q (%s), want %d with code %q", rec.Code, got.Code, got.Error, status, want)
		}
	}
	e := newEnv(t, scoped)
	e.req(testToken, 200, "PUT", "/v1/routes/27001", `{"name":"legacy-route"}`, "")
	code(t, e.do("PUT", "/v1/routes/27001", bearer(adminSecret), `{"name":"other"}`), 409, api.CodePortTaken)
	code(t, e.do("PUT", "/v1/routes/27001", bearer(gameSecret), `{"name":"other"}`), 403, api.CodeNotOwner)
	code(t, e.do("PUT", "/v1/routes/27001", bearer(gameSecret), `{"name":"legacy-route"}`), 403, api.CodeNotOwner)
	code(t, e.do("DELETE", "/v1/routes/27001?name=legacy-route", bearer(gameSecret), ""), 403, api.CodeNotOwner)
	code(t, e.do("PUT", "/v1/routes/9999", bearer(gameSecret), `{"name":"g"}`), 403, "")
	code(t, e.do("PUT", "/v1/routes/27003", bearer("fake-unknown-secret-9999"), `{"name":"g"}`), 403, api.CodeInvalidToken)
	code(t, e.do("GET", "/v1/routes", bearer("fake-unknown-secret-9999"), ""), 403, api.CodeInvalidToken)
	code(t, e.do("PUT", "/v1/routes/27002", bearer(gameSecret), `{"name":"g","backends":[{"address":"169.254.169.254","port":80}]}`), 400, "")

	unifiFirst := fsm.NewRoute(27005, "first")
	unifiFirst.Token = "unifi"
	raced := newEnvDeps(t, func(d *api.Deps) {
		d.Applier = &racer{fakeCluster: d.Applier.(*fakeCluster), first: &fsm.UpsertRoute{Route: unifiFirst, Scope: "unifi"}}
	}, scoped)
	code(t, raced.do("PUT", "/v1/routes/27005", bearer(gameSecret), `{"name":"second"}`), 403, api.CodeNotOwner)
	if r, _ := raced.fsm.State().Route(27005); r.Name != "first" || r.Token != "unifi" {
		t.Fatalf("the race's winner was changed: %+v", r)
	}
}

// changingMembers is a cluster view a test changes between requests; with
// addresser set it also answers MemberAddresses (as the agent does), with
// the same members.
type changingMembers struct {
	mu      sync.Mutex
	members []api.MemberStatus
}

func (c *changingMembers) Cluster() api.ClusterStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	return api.ClusterStatus{Members: slices.Clone(c.members)}
}

func (c *changingMembers) set(ms ...api.MemberStatus) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.members = ms
}

type changingAddresses struct{ *changingMembers }

func (c changingAddresses) MemberAddresses() []api.MemberAddress {
	var out []api.MemberAddress
	for _, m := range c.Cluster().Members {
		out = append(out, api.MemberAddress{Name: m.Name, RaftAddr: m.RaftAddr, GossipAddr: m.GossipAddr, APIURL: m.APIURL})
	}
	return out
}

// The members' endpoints are parsed once and kept, so each write does not
// pay for it; they must still follow every change of the membership: a
// member that joins has its ports reserved and its address refused as a
// backend at once, one that moves is checked at its new address, and one
// that is gone no longer holds anything.
func TestMemberChecksFollowMembership(t *testing.T) {
	for _, addresser := range []bool{false, true} {
		t.Run(fmt.Sprintf("addresser=%v", addresser), func(t *testing.T) {
			view := &changingMembers{}
			var src api.ClusterSource = view
			if addresser {
				src = changingAddresses{view}
			}
			e := newEnvDeps(t, func(d *api.Deps) { d.Cluster = src })
			put := func(port int, addr string, want int, msg string) {
				t.Helper()
				e.req(testToken, want, http.MethodPut, fmt.Sprintf("/v1/routes/%d", port),
					fmt.Sprintf(`{"name":"r%d","backends":[{"address":%q,"port":80}]}`, port, addr), msg)
			}
			view.set(api.MemberStatus{Name: "edge-1", RaftAddr: "10.0.0.1:9001", GossipAddr: "10.0.0.1:9002", APIURL: "https://10.0.0.1:9000"})
			put(7001, "10.0.0.3", 200, "")
			put(7002, "10.0.0.2", 200, "")
			// edge-2 joins with its listeners on 7001-7003.
			view.set(api.MemberStatus{Name: "edge-1", RaftAddr: "10.0.0.1:9001", GossipAddr: "10.0.0.1:9002", APIURL: "https://10.0.0.1:9000"},
				api.MemberStatus{Name: "edge-2", RaftAddr: "10.0.0.2:7001", GossipAddr: "10.0.0.2:7002", APIURL: "https://10.0.0.2:7003"})
			put(7003, "10.0.0.3", 400, "is reserved")
			put(8080, "10.0.0.2", 400, "cluster member edge-2's own address")
			// edge-2 moves to 10.0.0.4 (same ports).
			view.set(api.MemberStatus{Name: "edge-1", RaftAddr: "10.0.0.1:9001", GossipAddr: "10.0.0.1:9002", APIURL: "https://10.0.0.1:9000"},
				api.MemberStatus{Name: "edge-2", RaftAddr: "10.0.0.4:7001", GossipAddr: "10.0.0.4:7002", APIURL: "https://10.0.0.4:7003"})
			put(8080, "10.0.0.2", 200, "")
			put(8081, "10.0.0.4", 400, "cluster member edge-2's own address")
			// edge-2 is gone: its ports and address are free again.
			view.set(api.MemberStatus{Name: "edge-1", RaftAddr: "10.0.0.1:9001", GossipAddr: "10.0.0.1:9002", APIURL: "https://10.0.0.1:9000"})
			put(7003, "10.0.0.4", 200, "")
			put(9001, "10.0.0.5", 400, "is reserved")
		})
	}
}
