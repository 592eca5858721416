package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/fsm"
)

// fakeLeader is a Leader the test points at a peer.
type fakeLeader struct {
	mu   sync.Mutex
	url  string
	self bool
	err  error
	name string // the leader's node name (LeaderName)
}

var _ api.Leader = (*fakeLeader)(nil)

func (l *fakeLeader) LeaderAPI() (string, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.url, l.self, l.err
}

func (l *fakeLeader) LeaderName() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.name
}

func (l *fakeLeader) setName(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.name = name
}

func (l *fakeLeader) set(url string, self bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.url, l.self, l.err = url, self, err
}

// fakeChecker is a ConsistencyChecker that counts its calls.
type fakeChecker struct {
	mu    sync.Mutex
	calls int
	err   error
}

var _ api.ConsistencyChecker = (*fakeChecker)(nil)

func (c *fakeChecker) VerifyLeader(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if _, ok := ctx.Deadline(); !ok {
		return errors.New("VerifyLeader called without a deadline")
	}
	return c.err
}

func (c *fakeChecker) Calls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

// fakeWaiter is an AppliedWaiter that records what it was asked and
// answers with fn.
type fakeWaiter struct {
	mu      sync.Mutex
	indexes []uint64
	fn      func(ctx context.Context, index uint64) ([]api.Lag, error)
}

var _ api.AppliedWaiter = (*fakeWaiter)(nil)

func (f *fakeWaiter) WaitApplied(ctx context.Context, index uint64) ([]api.Lag, error) {
	f.mu.Lock()
	f.indexes = append(f.indexes, index)
	fn := f.fn
	f.mu.Unlock()
	if fn == nil {
		return nil, nil
	}
	return fn(ctx, index)
}

func (f *fakeWaiter) Indexes() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]uint64(nil), f.indexes...)
}

// fakeClusterSource answers a fixed ClusterStatus.
type fakeClusterSource struct{ cs api.ClusterStatus }

func (f fakeClusterSource) Cluster() api.ClusterStatus { return f.cs }

// seenRequest is what a peer's HTTP server received.
type seenRequest struct {
	method, uri string
	header      http.Header
	body        []byte
}

// peer is one node of an in-process cluster: an API behind a real HTTP
// server (so others can forward to it), with its own fakes.
type peer struct {
	*env
	name    string
	leader  *fakeLeader
	checker *fakeChecker
	waiter  *fakeWaiter
	srv     *httptest.Server

	mu   sync.Mutex
	seen []seenRequest
}

// newPeer starts a node named name. Its Leader points nowhere until set.
func newPeer(t *testing.T, name string, mod ...func(*api.Config)) *peer {
	t.Helper()
	p := &peer{name: name, leader: &fakeLeader{}, checker: &fakeChecker{}, waiter: &fakeWaiter{}}
	client := api.NewForwardClient(nil)
	t.Cleanup(client.CloseIdleConnections)
	p.env = newEnvDeps(t, func(d *api.Deps) {
		d.Leader = p.leader
		d.Consistency = p.checker
		d.AppliedWaiter = p.waiter
		d.ForwardClient = client
	}, mod...)
	p.status.set(func(s *api.Status) { s.Node = name })
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		p.mu.Lock()
		p.seen = append(p.seen, seenRequest{method: r.Method, uri: r.RequestURI, header: r.Header.Clone(), body: body})
		p.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(body))
		p.handler.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *peer) received() []seenRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]seenRequest(nil), p.seen...)
}

// newPair starts a leader and a follower that forwards to it.
func newPair(t *testing.T, mod ...func(*api.Config)) (leader, follower *peer) {
	t.Helper()
	leader = newPeer(t, "edge-1", mod...)
	follower = newPeer(t, "edge-2", mod...)
	leader.leader.set(leader.srv.URL, true, nil)
	follower.leader.set(leader.srv.URL, false, nil)
	return leader, follower
}

// metric returns the /metrics line starting with prefix ("" when absent).
func (e *env) metric(prefix string) string {
	e.t.Helper()
	for line := range strings.Lines(e.do(http.MethodGet, "/metrics", bearer(testToken), "").Body.String()) {
		if strings.HasPrefix(line, prefix) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

func TestForwardWritesToLeader(t *testing.T) {
	tests := []struct {
		name       string
		setup      func(t *testing.T, leader *peer)
		method     string
		path       string
		hdr        http.Header
		body       string
		wantStatus int
		wantCreds  [2]string // header and value the leader must see
		check      func(t *testing.T, leader *peer, rec *httptest.ResponseRecorder)
	}{
		{
			name: "hook, legacy header", method: http.MethodPost, path: hookPath, hdr: legacy(testToken), body: recipeAdd,
			wantStatus: 200, wantCreds: [2]string{"X-Funkypenguin-Token", testToken},
			check: func(t *testing.T, leader *peer, rec *httptest.ResponseRecorder) {
				got := decode[struct {
					Route fsm.Route `json:"route"`
				}](t, rec).Route
				if got.Port != 8080 || len(got.Backends) != 1 {
					t.Fatalf("answer %+v", got)
				}
				if _, ok := leader.fsm.State().Route(8080); !ok {
					t.Fatal("the leader's table lacks the route")
				}
			},
		},
		{
			name: "put, bearer", method: http.MethodPut, path: "/v1/routes/8443", hdr: bearer(testToken), body: `{"name":"web"}`,
			wantStatus: 200, wantCreds: [2]string{"Authorization", "Bearer " + testToken},
			check: func(t *testing.T, leader *peer, rec *httptest.ResponseRecorder) {
				if r := decode[fsm.Route](t, rec); r.Name != "web" {
					t.Fatalf("answer %+v", r)
				}
			},
		},
		{
			name: "register, drawbridge header, second token", method: http.MethodPost, path: "/v1/routes/3333/backends",
			hdr: http.Header{"X-Drawbridge-Token": {otherToken}}, body: `{"address":"10.0.0.5","port":30808,"name":"pool","create":true}`,
			wantStatus: 200, wantCreds: [2]string{"X-Drawbridge-Token", otherToken},
		},
		{
			name: "delete with query string",
			setup: func(t *testing.T, leader *peer) {
				leader.must(http.StatusOK, http.MethodPut, "/v1/routes/8443", `{"name":"web"}`)
			},
			method: http.MethodDelete, path: "/v1/routes/8443?name=web", hdr: bearer(testToken),
			wantStatus: 200, wantCreds: [2]string{"Authorization", "Bearer " + testToken},
			check: func(t *testing.T, leader *peer, rec *httptest.ResponseRecorder) {
				if _, ok := leader.fsm.State().Route(8443); ok {
					t.Fatal("route still on the leader")
				}
			},
		},
		{
			name: "deregister an IPv6 backend",
			setup: func(t *testing.T, leader *peer) {
				leader.must(http.StatusOK, http.MethodPost, "/v1/routes/3333/backends", `{"address":"2001:db8::5","port":30808,"name":"pool","create":true}`)
			},
			method: http.MethodDelete, path: "/v1/routes/3333/backends/[2001:db8::5]:30808?name=pool", hdr: bearer(testToken),
			wantStatus: 200, wantCreds: [2]string{"Authorization", "Bearer " + testToken},
			check: func(t *testing.T, leader *peer, rec *httptest.ResponseRecorder) {
				if got := decode[struct {
					RouteDeleted bool `json:"route_deleted"`
				}](t, rec); !got.RouteDeleted {
					t.Fatalf("answer %s", rec.Body)
				}
			},
		},
		{
			name: "leader's conflict comes back as is",
			setup: func(t *testing.T, leader *peer) {
				leader.must(http.StatusOK, http.MethodPut, "/v1/routes/8080", `{"name":"other"}`)
			},
			method: http.MethodPost, path: hookPath, hdr: legacy(testToken), body: recipeAdd,
			wantStatus: 409, wantCreds: [2]string{"X-Funkypenguin-Token", testToken},
			check: func(t *testing.T, leader *peer, rec *httptest.ResponseRecorder) {
				if msg := errorMessage(t, rec); !strings.Contains(msg, "other") {
					t.Fatalf("message %q", msg)
				}
			},
		},
		{
			name: "leader's 503 keeps Retry-After",
			setup: func(t *testing.T, leader *peer) {
				leader.cluster.fail(errNoQuorum)
			},
			method: http.MethodPut, path: "/v1/routes/8443", hdr: bearer(testToken), body: `{"name":"web"}`,
			wantStatus: 503, wantCreds: [2]string{"Authorization", "Bearer " + testToken},
			check: func(t *testing.T, leader *peer, rec *httptest.ResponseRecorder) {
				if rec.Header().Get("Retry-After") != "1" || !strings.Contains(errorMessage(t, rec), "raft recover") {
					t.Fatalf("answer %v %s", rec.Header(), rec.Body)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			leader, follower := newPair(t)
			if tc.setup != nil {
				tc.setup(t, leader)
			}
			before := leader.cluster.Calls()
			rec := follower.do(tc.method, tc.path, tc.hdr, tc.body)
			if rec.Code != tc.wantStatus {
				t.Fatalf("status %d, want %d; body %s", rec.Code, tc.wantStatus, rec.Body)
			}
			if got := leader.cluster.Calls() - before; got != 1 {
				t.Fatalf("leader applied %d commands, want 1", got)
			}
			if n := follower.cluster.Calls(); n != 0 {
				t.Fatalf("follower applied %d commands itself", n)
			}
			seen := leader.received()
			if len(seen) != 1 {
				t.Fatalf("leader received %d requests, want 1", len(seen))
			}
			got := seen[0]
			if got.method != tc.method || got.uri != tc.path || string(got.body) != tc.body {
				t.Fatalf("leader received %s %s %q, want %s %s %q", got.method, got.uri, got.body, tc.method, tc.path, tc.body)
			}
			if v := got.header.Get(tc.wantCreds[0]); v != tc.wantCreds[1] {
				t.Fatalf("leader saw %s %q: credentials not preserved", tc.wantCreds[0], v)
			}
			if v := got.header.Get(api.ForwardedByHeader); v != "edge-2" {
				t.Fatalf("%s = %q, want edge-2", api.ForwardedByHeader, v)
			}
			if tc.check != nil {
				tc.check(t, leader, rec)
			}
			if m := follower.metric(`drawbridge_http_forwarded_total{result="ok"}`); !strings.HasSuffix(m, " 1") {
				t.Fatalf("forward metric: %q", m)
			}
		})
	}
}

func TestForwardRefused(t *testing.T) {
	tests := []struct {
		name       string
		setup      func(t *testing.T, leader, follower *peer)
		method     string
		path       string
		hdr        http.Header
		body       string
		wantStatus int
		wantMsg    string
		wantMetric string // on the follower, "" for none
	}{
		{
			name: "no leader", setup: func(t *testing.T, _, f *peer) { f.leader.set("", false, errNoQuorum) },
			method: http.MethodPost, path: hookPath, hdr: legacy(testToken), body: recipeAdd,
			wantStatus: 503, wantMsg: errNoQuorum.Error(), wantMetric: `drawbridge_http_forwarded_total{result="no_leader"} 1`,
		},
		{
			name: "leader's address unknown", setup: func(t *testing.T, _, f *peer) { f.leader.set("", false, nil) },
			method: http.MethodPut, path: "/v1/routes/8443", hdr: bearer(testToken), body: `{"name":"web"}`,
			wantStatus: 503, wantMsg: "leader's API address is not known",
		},
		{
			name: "leader unreachable", setup: func(t *testing.T, l, _ *peer) { l.srv.Close() },
			method: http.MethodPut, path: "/v1/routes/8443", hdr: bearer(testToken), body: `{"name":"web"}`,
			wantStatus: 503, wantMsg: "could not reach the leader at http://127.0.0.1:",
			wantMetric: `drawbridge_http_forwarded_total{result="error"} 1`,
		},
		{
			name:   "missing token is refused before forwarding",
			method: http.MethodPost, path: hookPath, body: recipeAdd,
			wantStatus: 401, wantMsg: "missing token",
		},
		{
			name:   "wrong token is refused before forwarding",
			method: http.MethodPost, path: hookPath, hdr: legacy("wrong"), body: recipeAdd,
			wantStatus: 403, wantMsg: "invalid token",
		},
		{
			name:   "oversized body is refused before forwarding",
			method: http.MethodPut, path: "/v1/routes/8443", hdr: bearer(testToken),
			body:       `{"name":"web","balance":"` + strings.Repeat("x", api.DefaultMaxBodyBytes) + `"}`,
			wantStatus: 413, wantMsg: "larger than 65536 bytes",
		},
		{
			name:   "invalid route is refused before forwarding",
			method: http.MethodPut, path: "/v1/routes/8443", hdr: bearer(testToken), body: `{"name":"Not A Name!"}`,
			wantStatus: 400, wantMsg: "name",
		},
		{
			name:   "invalid hook is refused before forwarding",
			method: http.MethodPost, path: hookPath, hdr: legacy(testToken),
			body:       `{"name":"demo","frontend-port":8080,"backend-port":8081,"dst-ip":"not-an-ip","action":"add"}`,
			wantStatus: 400, wantMsg: "dst-ip",
		},
		{
			name:   "bad wait is refused before forwarding",
			method: http.MethodPut, path: "/v1/routes/8443?wait=forever", hdr: bearer(testToken), body: `{"name":"web"}`,
			wantStatus: 400, wantMsg: `wait must be "applied"`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			leader, follower := newPair(t)
			if tc.setup != nil {
				tc.setup(t, leader, follower)
			}
			rec := follower.do(tc.method, tc.path, tc.hdr, tc.body)
			if rec.Code != tc.wantStatus {
				t.Fatalf("status %d, want %d; body %s", rec.Code, tc.wantStatus, rec.Body)
			}
			if msg := errorMessage(t, rec); !strings.Contains(msg, tc.wantMsg) {
				t.Fatalf("message %q does not contain %q", msg, tc.wantMsg)
			}
			if rec.Code == http.StatusServiceUnavailable && rec.Header().Get("Retry-After") != "1" {
				t.Fatal("503 without Retry-After")
			}
			if n := len(leader.received()); n != 0 {
				t.Fatalf("leader received %d requests, want none", n)
			}
			if n := leader.cluster.Calls() + follower.cluster.Calls(); n != 0 {
				t.Fatalf("%d commands applied, want none", n)
			}
			if tc.wantMetric != "" {
				if m := follower.metric(tc.wantMetric); m == "" {
					t.Fatalf("metrics lack %q", tc.wantMetric)
				}
			}
		})
	}
}

// Two followers that each believe the other leads: the request hops once
// and is refused, never bounced back and forth.
func TestForwardLoopProtection(t *testing.T) {
	a, b := newPeer(t, "edge-1"), newPeer(t, "edge-2")
	a.leader.set(b.srv.URL, false, nil)
	b.leader.set(a.srv.URL, false, nil)

	rec := a.do(http.MethodPost, hookPath, legacy(testToken), recipeAdd)
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != "1" {
		t.Fatalf("status %d (Retry-After %q), want 503; body %s", rec.Code, rec.Header().Get("Retry-After"), rec.Body)
	}
	if msg := errorMessage(t, rec); msg != "leader changed while forwarding; retry" {
		t.Fatalf("message %q", msg)
	}
	if na, nb := len(a.received()), len(b.received()); na != 0 || nb != 1 {
		t.Fatalf("a received %d, b received %d requests; want 0 and 1", na, nb)
	}
	if n := a.cluster.Calls() + b.cluster.Calls(); n != 0 {
		t.Fatalf("%d commands applied", n)
	}
	if m := b.metric(`drawbridge_http_forwarded_total{result="loop"}`); !strings.HasSuffix(m, " 1") {
		t.Fatalf("loop metric on b: %q", m)
	}

	// The leader serves a request that carries the header (it was forwarded
	// to it, or a client sent it): the header only stops a second hop.
	b.leader.set(b.srv.URL, true, nil)
	hdr := legacy(testToken)
	hdr.Set(api.ForwardedByHeader, "edge-1")
	if rec := b.do(http.MethodPost, hookPath, hdr, recipeAdd); rec.Code != http.StatusOK {
		t.Fatalf("leader with the forwarded header: %d %s", rec.Code, rec.Body)
	}
}

// Answers to authenticated writes name the node and the leader, whether
// the node led or forwarded; nothing else carries the names, so nobody
// without a token learns them.
func TestWriteAnswersNameTheNodes(t *testing.T) {
	leader, follower := newPair(t)
	leader.leader.setName("edge-1")
	follower.leader.setName("edge-1")
	names := func(rec *httptest.ResponseRecorder) [2]string {
		return [2]string{rec.Header().Get(api.NodeHeader), rec.Header().Get(api.LeaderHeader)}
	}
	for _, tc := range []struct {
		p    *peer
		want [2]string
	}{{leader, [2]string{"edge-1", "edge-1"}}, {follower, [2]string{"edge-2", "edge-1"}}} {
		rec := tc.p.must(http.StatusOK, http.MethodPut, "/v1/routes/8443", `{"name":"web"}`)
		if got := names(rec); got != tc.want {
			t.Fatalf("%s: write answer names %q, want %q", tc.p.name, got, tc.want)
		}
		if got := names(tc.p.do(http.MethodPut, "/v1/routes/8443", nil, `{"name":"web"}`)); got != [2]string{} {
			t.Fatalf("%s: unauthenticated write's answer names %q", tc.p.name, got)
		}
		if got := names(tc.p.do(http.MethodPut, "/v1/routes/8443", bearer("wrong-token-not-a-secret"), `{"name":"web"}`)); got != [2]string{} {
			t.Fatalf("%s: refused token's answer names %q", tc.p.name, got)
		}
		if got := names(tc.p.do(http.MethodGet, "/v1/routes/8443", bearer(testToken), "")); got != [2]string{} {
			t.Fatalf("%s: read answer names %q", tc.p.name, got)
		}
	}
	// No leader known: the answer names only the node.
	follower.leader.set("", false, errNoQuorum)
	follower.leader.setName("")
	rec := follower.do(http.MethodPut, "/v1/routes/8443", bearer(testToken), `{"name":"web"}`)
	if got := names(rec); rec.Code != http.StatusServiceUnavailable || got != [2]string{"edge-2", ""} {
		t.Fatalf("without a leader: %d, names %q", rec.Code, got)
	}
}

func TestConsistentReads(t *testing.T) {
	leader, follower := newPair(t)
	leader.must(http.StatusOK, http.MethodPut, "/v1/routes/8443", `{"name":"web"}`)

	// Without the flag the follower answers from its own (empty) table.
	if got := decode[routeList](t, follower.must(http.StatusOK, http.MethodGet, "/v1/routes", "")); len(got.Routes) != 0 {
		t.Fatalf("local read on the follower: %+v", got)
	}
	if n := len(leader.received()); n != 0 {
		t.Fatalf("a local read reached the leader (%d requests)", n)
	}

	tests := []struct {
		name  string
		node  func() *peer
		path  string
		check func(t *testing.T, rec *httptest.ResponseRecorder)
	}{
		{"list on the follower", func() *peer { return follower }, "/v1/routes?consistent=true", func(t *testing.T, rec *httptest.ResponseRecorder) {
			if got := decode[routeList](t, rec); got.Index != 1 || len(got.Routes) != 1 {
				t.Fatalf("list %+v", got)
			}
		}},
		{"get on the follower", func() *peer { return follower }, "/v1/routes/8443?consistent=true", func(t *testing.T, rec *httptest.ResponseRecorder) {
			if got := decode[fsm.Route](t, rec); got.Name != "web" {
				t.Fatalf("route %+v", got)
			}
		}},
		{"snapshot on the follower", func() *peer { return follower }, "/v1/snapshot?consistent=true", func(t *testing.T, rec *httptest.ResponseRecorder) {
			if cd := rec.Header().Get("Content-Disposition"); !strings.Contains(cd, "attachment") {
				t.Fatalf("Content-Disposition %q", cd)
			}
			st, err := fsm.ReadSnapshot(rec.Body)
			if err != nil || st.Len() != 1 {
				t.Fatalf("snapshot: %v, %d routes", err, st.Len())
			}
		}},
		{"list on the leader", func() *peer { return leader }, "/v1/routes?consistent=1", func(t *testing.T, rec *httptest.ResponseRecorder) {
			if got := decode[routeList](t, rec); len(got.Routes) != 1 {
				t.Fatalf("list %+v", got)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := leader.checker.Calls()
			tc.check(t, tc.node().must(http.StatusOK, http.MethodGet, tc.path, ""))
			if n := leader.checker.Calls() - before; n != 1 {
				t.Fatalf("leader verified its leadership %d times, want 1", n)
			}
			if n := follower.checker.Calls(); n != 0 {
				t.Fatalf("follower verified leadership %d times", n)
			}
		})
	}

	t.Run("leadership not confirmed", func(t *testing.T) {
		leader.checker.mu.Lock()
		leader.checker.err = errors.New("leadership lost: a majority did not answer within 1s")
		leader.checker.mu.Unlock()
		for _, node := range []*peer{leader, follower} {
			rec := node.must(http.StatusServiceUnavailable, http.MethodGet, "/v1/routes?consistent=true", "")
			if msg := errorMessage(t, rec); msg != "cannot serve a consistent read: leadership lost: a majority did not answer within 1s" {
				t.Fatalf("%s: message %q", node.name, msg)
			}
		}
		// Plain reads do not depend on the leader.
		leader.must(http.StatusOK, http.MethodGet, "/v1/routes", "")
	})
	t.Run("bad flag", func(t *testing.T) {
		rec := follower.must(http.StatusBadRequest, http.MethodGet, "/v1/routes?consistent=maybe", "")
		if msg := errorMessage(t, rec); !strings.Contains(msg, "consistent must be true or false") {
			t.Fatalf("message %q", msg)
		}
	})
}

// notApplied is the 504 answer of ?wait=applied.
type notApplied struct {
	Error   string    `json:"error"`
	Index   uint64    `json:"index"`
	Lagging []api.Lag `json:"lagging"`
}

func TestWaitApplied(t *testing.T) {
	lagging := []api.Lag{{Node: "edge-2", Applied: 0, Error: "[ALERT] cannot bind socket"}}
	blockUntilDone := func(ctx context.Context, _ uint64) ([]api.Lag, error) {
		<-ctx.Done()
		return lagging, ctx.Err()
	}
	tests := []struct {
		name        string
		path        string
		waiter      func(ctx context.Context, index uint64) ([]api.Lag, error)
		wantStatus  int
		wantWaits   int
		wantMsg     string
		wantLagging []api.Lag
	}{
		{name: "no wait", path: "/v1/routes/8443", wantStatus: 200},
		{name: "applied everywhere", path: "/v1/routes/8443?wait=applied", wantStatus: 200, wantWaits: 1,
			waiter: func(ctx context.Context, _ uint64) ([]api.Lag, error) {
				if d, ok := ctx.Deadline(); !ok || time.Until(d) > api.DefaultWaitTimeout {
					return nil, errors.New("wait without the default deadline")
				}
				return nil, nil
			}},
		{name: "timeout", path: "/v1/routes/8443?wait=applied&timeout=50ms", waiter: blockUntilDone,
			wantStatus: 504, wantWaits: 1, wantMsg: "committed at index 1 but not applied everywhere within 50ms", wantLagging: lagging},
		{name: "waiter fails", path: "/v1/routes/8443?wait=applied&timeout=1s",
			waiter: func(context.Context, uint64) ([]api.Lag, error) {
				return nil, errors.New("no edge node is alive")
			},
			wantStatus: 504, wantWaits: 1, wantMsg: "committed at index 1 but not applied everywhere within 1s: no edge node is alive",
			wantLagging: []api.Lag{}},
	}
	for _, tc := range tests {
		for _, via := range []string{"leader", "follower"} {
			t.Run(tc.name+" via "+via, func(t *testing.T) {
				leader, follower := newPair(t)
				leader.waiter.fn = tc.waiter
				node := leader
				if via == "follower" {
					node = follower
				}
				rec := node.must(tc.wantStatus, http.MethodPut, tc.path, `{"name":"web"}`)
				if _, ok := leader.fsm.State().Route(8443); !ok {
					t.Fatal("the write is not committed")
				}
				if got := leader.waiter.Indexes(); len(got) != tc.wantWaits || (tc.wantWaits > 0 && got[0] != 1) {
					t.Fatalf("leader waited for indexes %v, want %d wait(s) for index 1", got, tc.wantWaits)
				}
				if n := len(follower.waiter.Indexes()); n != 0 {
					t.Fatalf("the follower waited %d times: the leader does the waiting", n)
				}
				if tc.wantStatus != http.StatusGatewayTimeout {
					return
				}
				got := decode[notApplied](t, rec)
				if got.Error != tc.wantMsg || got.Index != 1 || len(got.Lagging) != len(tc.wantLagging) || got.Lagging == nil {
					t.Fatalf("504 body %s, want message %q and lagging %v", rec.Body, tc.wantMsg, tc.wantLagging)
				}
				if !reflect.DeepEqual(got.Lagging, tc.wantLagging) {
					t.Fatalf("lagging %v, want %v", got.Lagging, tc.wantLagging)
				}
			})
		}
	}
}

func TestWaitAppliedRefused(t *testing.T) {
	tests := []struct {
		name    string
		path    string
		wantMsg string
	}{
		{"unknown wait", "/v1/routes/8443?wait=committed", `wait must be "applied", got "committed"`},
		{"zero timeout", "/v1/routes/8443?wait=applied&timeout=0s", "timeout must be a duration"},
		{"timeout over the maximum", "/v1/routes/8443?wait=applied&timeout=61s", "at most 1m0s"},
		{"timeout not a duration", "/v1/routes/8443?wait=applied&timeout=5", `got "5"`},
		{"timeout without wait", "/v1/routes/8443?timeout=5s", "timeout only applies with wait=applied"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			rec := e.must(http.StatusBadRequest, http.MethodPut, tc.path, `{"name":"web"}`)
			if msg := errorMessage(t, rec); !strings.Contains(msg, tc.wantMsg) {
				t.Fatalf("message %q does not contain %q", msg, tc.wantMsg)
			}
			if n := e.cluster.Calls(); n != 0 {
				t.Fatalf("%d commands applied", n)
			}
		})
	}

	t.Run("domain error does not wait", func(t *testing.T) {
		w := &fakeWaiter{}
		e := newEnvDeps(t, func(d *api.Deps) { d.AppliedWaiter = w })
		e.must(http.StatusOK, http.MethodPut, "/v1/routes/8080", `{"name":"other"}`)
		e.must(http.StatusConflict, http.MethodPost, hookPath+"?wait=applied", recipeAdd)
		if n := len(w.Indexes()); n != 0 {
			t.Fatalf("waited %d times for a write that failed", n)
		}
	})
}

// Without an AppliedWaiter, a single node waits for its own HAProxy.
func TestWaitAppliedSingleNode(t *testing.T) {
	t.Run("haproxy catches up", func(t *testing.T) {
		e := newEnv(t)
		e.status.set(func(s *api.Status) { s.HAProxy = api.HAProxyStatus{Running: true} })
		done := make(chan struct{})
		go func() {
			defer close(done)
			// Report the reload once the write is in the table.
			for e.fsm.State().Index < 1 {
				time.Sleep(5 * time.Millisecond)
			}
			e.status.set(func(s *api.Status) { s.HAProxy.AppliedIndex = 1 })
		}()
		e.must(http.StatusOK, http.MethodPost, hookPath+"?wait=applied&timeout=10s", recipeAdd)
		<-done
	})
	t.Run("haproxy down", func(t *testing.T) {
		e := newEnv(t)
		rec := e.must(http.StatusGatewayTimeout, http.MethodPost, hookPath+"?wait=applied&timeout=50ms", recipeAdd)
		got := decode[notApplied](t, rec)
		want := api.Lag{Node: "edge-1", Applied: 0, Error: "haproxy is not running"}
		if got.Index != 1 || len(got.Lagging) != 1 || !reflect.DeepEqual(got.Lagging[0], want) {
			t.Fatalf("504 body %s", rec.Body)
		}
		if _, ok := e.fsm.State().Route(8080); !ok {
			t.Fatal("the write is not committed")
		}
	})
	// A route whose port another process holds is not served: the write
	// is not applied, and the 504 names the port.
	t.Run("route held back", func(t *testing.T) {
		e := newEnv(t)
		e.status.set(func(s *api.Status) {
			s.HAProxy = api.HAProxyStatus{Running: true, ServedIndex: 1,
				FailedPorts: []api.FailedPort{{Port: 8080, Name: "unifi-adoption", Error: "bind: address already in use"}}}
		})
		rec := e.must(http.StatusGatewayTimeout, http.MethodPost, hookPath+"?wait=applied&timeout=50ms", recipeAdd)
		got := decode[notApplied](t, rec)
		want := api.Lag{Node: "edge-1", Applied: 0, Held: 1, HeldBack: []int{8080}}
		if got.Index != 1 || len(got.Lagging) != 1 || !reflect.DeepEqual(got.Lagging[0], want) {
			t.Fatalf("504 body %s", rec.Body)
		}
		if !strings.Contains(got.Error, "edge-1 holds back 1 route(s), ports 8080") {
			t.Fatalf("504 does not name the held-back port: %q", got.Error)
		}
	})
}

func TestCluster(t *testing.T) {
	t.Run("single node", func(t *testing.T) {
		e := newEnv(t)
		e.status.set(func(s *api.Status) {
			s.Raft = api.RaftStatus{State: "Leader", Leader: "edge-1", AppliedIndex: 1}
			s.HAProxy = api.HAProxyStatus{Running: true, AppliedIndex: 1, ConfigHash: "abc"}
		})
		e.must(http.StatusOK, http.MethodPost, hookPath, recipeAdd)
		if rec := e.do(http.MethodGet, "/v1/cluster", nil, ""); rec.Code != http.StatusUnauthorized {
			t.Fatalf("cluster without token: %d", rec.Code)
		}
		rec := e.must(http.StatusOK, http.MethodGet, "/v1/cluster", "")
		if strings.Contains(rec.Body.String(), "floating_ip") {
			t.Fatalf("floating_ip present without one: %s", rec.Body)
		}
		got := decode[api.ClusterStatus](t, rec)
		want := api.MemberStatus{Name: "edge-1", Role: api.RoleEdge, Status: api.MemberAlive, Voter: true, Version: "test",
			RaftIndex: 1, AppliedIndex: 1, ConfigHash: "abc", Healthy: true}
		if got.Leader != "edge-1" || len(got.Members) != 1 || !reflect.DeepEqual(got.Members[0], want) {
			t.Fatalf("cluster %+v, want one member %+v", got, want)
		}
	})

	t.Run("from the cluster source", func(t *testing.T) {
		at := fixedNow.Add(-time.Minute)
		cs := api.ClusterStatus{
			Leader: "edge-1",
			Members: []api.MemberStatus{
				{Name: "edge-1", Role: api.RoleEdge, Status: api.MemberAlive, Voter: true, RaftAddr: "10.0.0.1:9001",
					APIURL: "https://10.0.0.1:9000", Version: "1.0.0", RaftIndex: 42, AppliedIndex: 41, ConfigHash: "h1", Healthy: true},
				{Name: "edge-2", Role: api.RoleEdge, Status: api.MemberSuspect, Voter: true, LastError: "[ALERT] cannot bind"},
				{Name: "witness", Role: api.RoleWitness, Status: api.MemberAlive, Voter: true, Healthy: true},
			},
			FloatingIP: &api.FloatingIPStatus{Address: "203.0.113.7", Holder: "edge-1", Provider: "digitalocean",
				LastFailover: &api.Failover{At: at, From: "edge-2", To: "edge-1", Duration: 1530 * time.Millisecond, Reason: "edge-2 unhealthy"}},
		}
		e := newEnvDeps(t, func(d *api.Deps) { d.Cluster = fakeClusterSource{cs} })
		rec := e.must(http.StatusOK, http.MethodGet, "/v1/cluster", "")
		if !strings.Contains(rec.Body.String(), `"duration":"1.53s"`) {
			t.Fatalf("failover duration not a duration string: %s", rec.Body)
		}
		got := decode[api.ClusterStatus](t, rec)
		gotJSON, _ := json.Marshal(got)
		wantJSON, _ := json.Marshal(cs)
		if !bytes.Equal(gotJSON, wantJSON) {
			t.Fatalf("cluster\n got %s\nwant %s", gotJSON, wantJSON)
		}
		if f := got.FloatingIP.LastFailover; f.Duration != 1530*time.Millisecond || !f.At.Equal(at) {
			t.Fatalf("failover read back as %+v", f)
		}
	})
}

func TestSnapshotRoundTrip(t *testing.T) {
	src := newEnv(t)
	src.must(http.StatusOK, http.MethodPut, "/v1/routes/8443",
		`{"name":"web","balance":"leastconn","backends":[{"address":"10.0.0.9","port":30443}]}`)
	src.must(http.StatusOK, http.MethodPost, hookPath, recipeAdd)
	rec := src.must(http.StatusOK, http.MethodGet, "/v1/snapshot", "")
	if ct, cd := rec.Header().Get("Content-Type"), rec.Header().Get("Content-Disposition"); ct != "application/json" ||
		cd != `attachment; filename="drawbridge-snapshot-2.json"` {
		t.Fatalf("Content-Type %q, Content-Disposition %q", ct, cd)
	}
	snapshot := rec.Body.String()

	// Restore through a follower whose leader holds another table.
	leader, follower := newPair(t)
	leader.must(http.StatusOK, http.MethodPut, "/v1/routes/7000", `{"name":"old"}`)
	rec = follower.must(http.StatusOK, http.MethodPost, "/v1/snapshot", snapshot)
	got := decode[struct {
		Index  uint64 `json:"index"`
		Routes int    `json:"routes"`
	}](t, rec)
	if got.Index != 2 || got.Routes != 2 {
		t.Fatalf("restore answered %s, want index 2 and 2 routes", rec.Body)
	}
	restored, want := leader.fsm.State(), src.fsm.State()
	if restored.Hash() != want.Hash() || restored.Len() != 2 {
		t.Fatalf("restored table (hash %s, %d routes) differs from the saved one (hash %s)", restored.Hash(), restored.Len(), want.Hash())
	}
	if _, ok := restored.Route(7000); ok {
		t.Fatal("the restore kept a route the snapshot does not have")
	}
	if n := follower.cluster.Calls(); n != 0 {
		t.Fatalf("the follower applied %d commands itself", n)
	}
}

func TestSnapshotRestoreRefused(t *testing.T) {
	valid := func(routes string) string { return `{"format":1,"index":3,"routes":` + routes + `}` }
	tests := []struct {
		name       string
		body       string
		viaPair    bool
		wantStatus int
		wantMsg    string
	}{
		{name: "empty", body: "", wantStatus: 400, wantMsg: "request body is empty"},
		{name: "not JSON", body: "hello", wantStatus: 400, wantMsg: "read snapshot"},
		{name: "no format", body: `{"routes":[]}`, wantStatus: 400, wantMsg: "not a drawbridge snapshot"},
		{name: "newer format", body: `{"format":4,"routes":[]}`, wantStatus: 400, wantMsg: "format 4 is not supported"},
		{name: "trailing data", body: valid(`[]`) + `{}`, wantStatus: 400, wantMsg: "unexpected data after the snapshot"},
		{name: "invalid route", body: valid(`[{"port":8080,"name":"Bad Name","mode":"tcp","balance":"roundrobin","backends":[]}]`),
			wantStatus: 400, wantMsg: "name"},
		{name: "reserved port", body: valid(`[{"port":9001,"name":"raft","mode":"tcp","balance":"roundrobin","backends":[]}]`),
			wantStatus: 400, wantMsg: `route "raft": port 9001`},
		{name: "over the limit", body: valid(`[]`) + strings.Repeat(" ", 512), wantStatus: 413, wantMsg: "snapshot is larger than 256 bytes"},
		{name: "over the limit inside the object", body: valid(`[` + strings.Repeat(`{"port":1},`, 30) + `{"port":1}]`),
			wantStatus: 413, wantMsg: "snapshot is larger than 256 bytes"},
		{name: "over the limit, on a follower", body: valid(`[]`) + strings.Repeat(" ", 512), viaPair: true,
			wantStatus: 413, wantMsg: "larger than 256 bytes"},
		{name: "invalid, answered by the leader", body: "hello", viaPair: true, wantStatus: 400, wantMsg: "read snapshot"},
	}
	small := func(c *api.Config) { c.MaxSnapshotBytes = 256 }
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var node, leader *env
			if tc.viaPair {
				l, f := newPair(t, small)
				node, leader = f.env, l.env
			} else {
				node = newEnv(t, small)
				leader = node
			}
			leader.must(http.StatusOK, http.MethodPut, "/v1/routes/7000", `{"name":"old"}`)
			rec := node.must(tc.wantStatus, http.MethodPost, "/v1/snapshot", tc.body)
			if msg := errorMessage(t, rec); !strings.Contains(msg, tc.wantMsg) {
				t.Fatalf("message %q does not contain %q", msg, tc.wantMsg)
			}
			if n := leader.cluster.Calls(); n != 1 {
				t.Fatalf("%d commands applied, want only the setup's", n)
			}
			if _, ok := leader.fsm.State().Route(7000); !ok {
				t.Fatal("the table changed")
			}
		})
	}
}

func TestWitness(t *testing.T) {
	e := newEnv(t)
	e.must(http.StatusOK, http.MethodPut, "/v1/routes/8080", `{"name":"web"}`)
	if got := decode[api.Status](t, e.must(http.StatusOK, http.MethodGet, "/v1/status", "")); got.Role != api.RoleEdge {
		t.Fatalf("default role %q, want edge", got.Role)
	}
	tests := []struct {
		name       string
		leader     string
		wantStatus int
		wantBody   string
	}{
		{"sees a leader", "edge-1", 200, "ready\n"},
		{"no leader", "", 503, "not ready: witness sees no raft leader (election in progress or quorum lost); a witness runs no haproxy\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// No HAProxy at all: a witness never runs one.
			e.status.set(func(s *api.Status) {
				s.Role = api.RoleWitness
				s.Raft.Leader = tc.leader
				s.HAProxy = api.HAProxyStatus{}
			})
			rec := e.do(http.MethodGet, "/readyz", nil, "")
			if rec.Code != tc.wantStatus || rec.Body.String() != tc.wantBody {
				t.Fatalf("readyz: %d %q, want %d %q", rec.Code, rec.Body, tc.wantStatus, tc.wantBody)
			}
			st := decode[api.Status](t, e.must(http.StatusOK, http.MethodGet, "/v1/status", ""))
			if st.Role != api.RoleWitness {
				t.Fatalf("status role %q", st.Role)
			}
		})
	}
}

// A write that waits longer than the server's WriteTimeout (here for
// ?wait=applied) must still get its answer over a real connection.
func TestWaitOutlivesWriteTimeout(t *testing.T) {
	const hold = 600 * time.Millisecond
	w := &fakeWaiter{fn: func(ctx context.Context, _ uint64) ([]api.Lag, error) {
		select {
		case <-time.After(hold):
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}}
	e := newEnvDeps(t, func(d *api.Deps) { d.AppliedWaiter = w }, func(c *api.Config) {
		c.ApplyTimeout, c.WriteTimeout = 100*time.Millisecond, 200*time.Millisecond
	})
	addr := serve(t, e)
	req, err := http.NewRequest(http.MethodPut, "http://"+addr+"/v1/routes/8443?wait=applied&timeout=5s", strings.NewReader(`{"name":"web"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("answer lost past the write timeout: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, body %q, err %v", resp.StatusCode, body, err)
	}
}

// The leader's answer is streamed back through a small pooled buffer: an
// answer many times its size (a consistent read of a table of 300 routes,
// about 60 KB) arrives whole and byte for byte, and so do answers streamed
// at once by many forwards sharing the pool.
func TestForwardStreamsLargeAnswersWhole(t *testing.T) {
	leader, follower := newPair(t, func(c *api.Config) { c.Limits.Rate = 0 })
	for i := range 300 {
		leader.must(http.StatusOK, http.MethodPut, fmt.Sprintf("/v1/routes/%d", 20000+i),
			fmt.Sprintf(`{"name":"route-with-a-long-name-%03d","backends":[{"address":"10.0.%d.%d","port":30808}]}`, i, i/250, i%250+1))
	}
	want := leader.do(http.MethodGet, "/v1/routes", bearer(testToken), "").Body.String()
	if len(want) < 40<<10 {
		t.Fatalf("the table's answer is only %d bytes; the test wants one many buffers long", len(want))
	}
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := follower.do(http.MethodGet, "/v1/routes?consistent=true", bearer(testToken), "")
			if rec.Code != http.StatusOK || rec.Body.String() != want {
				errs <- fmt.Sprintf("status %d, %d bytes, want %d identical bytes", rec.Code, rec.Body.Len(), len(want))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if n := len(follower.received()); n != 0 {
		t.Fatalf("the follower served %d requests itself", n)
	}
	if n := len(leader.received()); n != 8 {
		t.Fatalf("the leader saw %d forwarded reads, want 8", n)
	}
}
