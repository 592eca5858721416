package api_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/fsm"
)

func TestStatus(t *testing.T) {
	e := newEnv(t)
	e.status.set(func(s *api.Status) {
		s.Raft = api.RaftStatus{State: "Leader", Leader: "edge-1", LastIndex: 7, CommitIndex: 7, AppliedIndex: 7}
		s.HAProxy = api.HAProxyStatus{Running: true, MasterPID: 42, AppliedIndex: 1, Reloads: 3,
			LastReloadAt: fixedNow, FailedPorts: []api.FailedPort{{Port: 25, Name: "smtp", Error: "address in use"}}}
	})
	e.must(http.StatusOK, http.MethodPost, hookPath, recipeAdd)

	if rec := e.do(http.MethodGet, "/v1/status", nil, ""); rec.Code != http.StatusUnauthorized {
		t.Fatalf("status without token: %d", rec.Code)
	}
	got := decode[api.Status](t, e.must(http.StatusOK, http.MethodGet, "/v1/status", ""))
	st := e.fsm.State()
	want := api.StateStatus{Index: st.Index, Hash: st.Hash(), Routes: 1, Backends: 1}
	if got.Node != "edge-1" || got.Raft.State != "Leader" || got.State != want ||
		got.HAProxy.MasterPID != 42 || len(got.HAProxy.FailedPorts) != 1 || !got.HAProxy.LastReloadAt.Equal(fixedNow) {
		t.Fatalf("status %+v, want state %+v", got, want)
	}
}

func TestHealthAndReadiness(t *testing.T) {
	e := newEnv(t)
	if rec := e.do(http.MethodGet, "/healthz", nil, ""); rec.Code != http.StatusOK || rec.Body.String() != "ok\n" {
		t.Fatalf("healthz: %d %q", rec.Code, rec.Body)
	}
	e.must(http.StatusOK, http.MethodPut, "/v1/routes/8080", `{"name":"web"}`)
	e.must(http.StatusOK, http.MethodPut, "/v1/routes/8081", `{"name":"web2"}`) // state index 2

	tests := []struct {
		name       string
		haproxy    api.HAProxyStatus
		unknown    uint64
		wantStatus int
		wantBody   string
	}{
		{"route held back", api.HAProxyStatus{Running: true, AppliedIndex: 1, ServedIndex: 2,
			FailedPorts: []api.FailedPort{{Port: 8081, Name: "web2", Error: "bind: address already in use"}}}, 0, 503,
			"not ready: haproxy serves index 2 except 1 route(s) it holds back, e.g. port 8081 (details in /v1/status)\n"},
		{"skipped newer commands", api.HAProxyStatus{Running: true, AppliedIndex: 2}, 3, 503,
			"not ready: this node skipped 3 log entries written by a newer drawbridge: its table may differ from the cluster's; upgrade it\n"},
		{"not running", api.HAProxyStatus{Running: false, AppliedIndex: 2}, 0, 503, "not ready: haproxy is not running\n"},
		// HAProxy's own error (paths, alerts) is internal: /readyz is
		// public and says only that the node is behind.
		{"behind", api.HAProxyStatus{Running: true, AppliedIndex: 1, LastError: "[ALERT] cannot bind\nsocket /etc/drawbridge/secret.pem"}, 0, 503,
			"not ready: haproxy is behind the route table\n"},
		{"caught up", api.HAProxyStatus{Running: true, AppliedIndex: 2}, 0, 200, "ready\n"},
		{"ahead (state read before haproxy reported)", api.HAProxyStatus{Running: true, AppliedIndex: 3}, 0, 200, "ready\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e.status.set(func(s *api.Status) { s.HAProxy, s.UnknownCommands = tc.haproxy, tc.unknown })
			rec := e.do(http.MethodGet, "/readyz", nil, "")
			if rec.Code != tc.wantStatus || rec.Body.String() != tc.wantBody {
				t.Fatalf("readyz: %d %q, want %d %q", rec.Code, rec.Body, tc.wantStatus, tc.wantBody)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	e.must(http.StatusOK, http.MethodPost, hookPath, recipeAdd)
	e.must(http.StatusOK, http.MethodPost, hookPath, hookBody(`"unifi-adoption"`, `8080`, `30808`, `"10.0.0.2"`, `"add"`))
	e.must(http.StatusConflict, http.MethodPost, hookPath, hookBody(`"other"`, `8080`, `30808`, `"10.0.0.2"`, `"add"`))
	e.must(http.StatusNotFound, http.MethodDelete, "/v1/routes/9999", "")
	e.do(http.MethodPost, hookPath, nil, recipeAdd)
	e.do(http.MethodPost, hookPath, legacy("wrong"), recipeAdd)
	e.cluster.fail(errNoQuorum)
	e.must(http.StatusServiceUnavailable, http.MethodPut, "/v1/routes/8081", `{"name":"x"}`)
	e.do(http.MethodGet, "/nope", nil, "")

	rec := e.do(http.MethodGet, "/metrics", bearer(testToken), "")
	if rec.Code != http.StatusOK {
		t.Fatalf("metrics: %d", rec.Code)
	}
	body := rec.Body.String()
	for _, want := range []string{
		`drawbridge_http_requests_total{code="200",handler="hook"} 2`,
		`drawbridge_http_requests_total{code="409",handler="hook"} 1`,
		`drawbridge_http_requests_total{code="401",handler="hook"} 1`,
		`drawbridge_http_requests_total{code="403",handler="hook"} 1`,
		`drawbridge_http_requests_total{code="404",handler="route_delete"} 1`,
		`drawbridge_http_requests_total{code="503",handler="route_put"} 1`,
		`drawbridge_http_requests_total{code="404",handler="unmatched"} 1`,
		`drawbridge_http_request_duration_seconds_count{handler="hook"} 5`,
		`drawbridge_auth_failures_total{reason="missing"} 1`,
		`drawbridge_auth_failures_total{reason="invalid"} 1`,
		`drawbridge_commits_total{result="ok"} 2`,
		`drawbridge_commits_total{result="conflict"} 1`,
		`drawbridge_commits_total{result="not_found"} 1`,
		`drawbridge_commits_total{result="unavailable"} 1`,
		`drawbridge_commits_total{result="invalid"} 0`,
		"drawbridge_routes 1",
		"drawbridge_backends 2",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if t.Failed() {
		t.Log(body)
	}
}

func TestMetricsPrivate(t *testing.T) {
	e := newEnv(t, func(c *api.Config) { c.MetricsPublic = false })
	if rec := e.do(http.MethodGet, "/metrics", nil, ""); rec.Code != http.StatusUnauthorized {
		t.Fatalf("private metrics without token: %d", rec.Code)
	}
	e.must(http.StatusOK, http.MethodGet, "/metrics", "")
}

func TestUnknownPathAndMethod(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name       string
		method     string
		path       string
		wantStatus int
		wantMsg    string
		wantAllow  string
	}{
		{"unknown path", http.MethodGet, "/v2/routes", 404, "no such endpoint: /v2/routes", ""},
		{"root", http.MethodGet, "/", 404, "no such endpoint: /", ""},
		{"hook with GET", http.MethodGet, hookPath, 405, "method GET not allowed on /hooks/update-haproxy (allowed: POST)", "POST"},
		{"status with POST", http.MethodPost, "/v1/status", 405, "method POST not allowed", "GET, HEAD"},
		{"routes with PATCH", http.MethodPatch, "/v1/routes/8080", 405, "not allowed", "DELETE, GET, HEAD, PUT"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := e.do(tc.method, tc.path, bearer(testToken), "")
			if rec.Code != tc.wantStatus {
				t.Fatalf("status %d, want %d; body %s", rec.Code, tc.wantStatus, rec.Body)
			}
			if msg := errorMessage(t, rec); !strings.Contains(msg, tc.wantMsg) {
				t.Fatalf("message %q does not contain %q", msg, tc.wantMsg)
			}
			if got := rec.Header().Get("Allow"); got != tc.wantAllow {
				t.Fatalf("Allow %q, want %q", got, tc.wantAllow)
			}
		})
	}
}

func TestTokensNeverLogged(t *testing.T) {
	e := newEnv(t)
	e.do(http.MethodPost, hookPath, legacy(testToken), recipeAdd)
	e.do(http.MethodPost, hookPath, legacy("wrong-secret-value"), recipeAdd)
	e.do(http.MethodGet, "/v1/routes", bearer(otherToken), "")
	e.do(http.MethodGet, "/v1/routes", http.Header{"X-Drawbridge-Token": {"another-wrong-secret"}}, "")
	logs := e.logs.String()
	for _, secret := range []string{testToken, otherToken, "wrong-secret-value", "another-wrong-secret"} {
		if strings.Contains(logs, secret) {
			t.Fatalf("a token reached the log:\n%s", logs)
		}
	}
	if !strings.Contains(logs, "authentication failed") || !strings.Contains(logs, "status=403") {
		t.Fatalf("auth failure not logged:\n%s", logs)
	}
}

func TestNewRefuses(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := fsm.New()
	deps := func() api.Deps {
		return api.Deps{Applier: &fakeCluster{fsm: f}, State: f, Status: &fakeStatus{}, Registerer: prometheus.NewRegistry()}
	}
	tests := []struct {
		name    string
		cfg     func(*api.Config)
		deps    func(*api.Deps)
		wantErr string
	}{
		{name: "no token", cfg: func(c *api.Config) { c.Tokens = nil }, wantErr: "no API token configured"},
		{name: "empty token", cfg: func(c *api.Config) { c.Tokens = []string{"ok", " "} }, wantErr: "token 2 is empty"},
		{name: "token with newline", cfg: func(c *api.Config) { c.Tokens = []string{"abc\n"} }, wantErr: "token 1 contains whitespace"},
		{name: "cert without key", cfg: func(c *api.Config) { c.TLSCertFile = garbage }, wantErr: "both a certificate file and a key file"},
		{name: "bad TLS files", cfg: func(c *api.Config) { c.TLSCertFile, c.TLSKeyFile = garbage, garbage }, wantErr: "load tls certificate"},
		{name: "missing TLS files", cfg: func(c *api.Config) { c.TLSCertFile, c.TLSKeyFile = garbage+"x", garbage }, wantErr: "stat tls file"},
		{name: "write timeout below apply timeout", cfg: func(c *api.Config) { c.WriteTimeout = time.Second }, wantErr: "must exceed apply timeout"},
		{name: "negative lease", cfg: func(c *api.Config) { c.HookLease = -time.Second }, wantErr: "hook lease -1s is negative"},
		{name: "no applier", deps: func(d *api.Deps) { d.Applier = nil }, wantErr: "Deps.Applier is required"},
		{name: "registerer without gatherer", deps: func(d *api.Deps) { d.Registerer = prometheus.WrapRegistererWithPrefix("x_", prometheus.NewRegistry()) },
			wantErr: "Deps.Gatherer is required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := api.DefaultConfig()
			cfg.Tokens = []string{testToken}
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			d := deps()
			if tc.deps != nil {
				tc.deps(&d)
			}
			_, err := api.New(cfg, d)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("New: %v, want an error containing %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), testToken) {
				t.Fatal("error message leaks a token")
			}
		})
	}
}

func TestNewDefaultsZeroConfig(t *testing.T) {
	f := fsm.New()
	_, err := api.New(api.Config{Tokens: []string{testToken}}, api.Deps{Applier: &fakeCluster{fsm: f}, State: f, Status: &fakeStatus{}})
	if err != nil {
		t.Fatalf("zero config with a token: %v", err)
	}
}
