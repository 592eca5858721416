package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

const (
	testToken  = "s3cret-token-for-tests"
	otherToken = "second-token"
)

// fixedNow is the clock the API stamps leases with in tests.
var fixedNow = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// fakeCluster is an Applier that commits into a real fsm.FSM through the log
// encoding, as raft would, so handler tests see the FSM's real semantics.
type fakeCluster struct {
	fsm *fsm.FSM

	mu    sync.Mutex
	index uint64
	calls int
	err   error // when set, Apply fails with it (no quorum, …)
	block bool  // when set, Apply waits for its context to end
}

var (
	_ api.Applier     = (*fakeCluster)(nil)
	_ api.StateReader = (*fsm.FSM)(nil)
)

func (c *fakeCluster) Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error) {
	c.mu.Lock()
	c.calls++
	err, block := c.err, c.block
	c.mu.Unlock()
	if block {
		<-ctx.Done()
		return fsm.Result{}, ctx.Err()
	}
	if err != nil {
		return fsm.Result{}, err
	}
	data, err := fsm.Encode(cmd)
	if err != nil {
		return fsm.Result{}, err
	}
	decoded, err := fsm.Decode(data)
	if err != nil {
		return fsm.Result{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.index++
	return c.fsm.ApplyCommand(c.index, decoded), nil
}

func (c *fakeCluster) Calls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

func (c *fakeCluster) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.err = err
}

// fakeStatus is a StatusSource the test sets.
type fakeStatus struct {
	mu sync.Mutex
	st api.Status
}

func (f *fakeStatus) Status() api.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st
}

func (f *fakeStatus) set(fn func(*api.Status)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(&f.st)
}

// env is one API under test with its fakes.
type env struct {
	t       *testing.T
	server  *api.Server
	handler http.Handler
	cluster *fakeCluster
	fsm     *fsm.FSM
	status  *fakeStatus
	reg     *prometheus.Registry
	logs    *testenv.Buffer
}

// newEnv builds an API with two tokens, ports 9000-9002 reserved, a fixed
// clock, and logs to t.Log (and a buffer). mod may adjust the config.
func newEnv(t *testing.T, mod ...func(*api.Config)) *env {
	t.Helper()
	return newEnvDeps(t, nil, mod...)
}

// newEnvDeps is newEnv with a hook to set the optional Deps (Leader,
// AppliedWaiter, …) before the API is built.
func newEnvDeps(t *testing.T, deps func(*api.Deps), mod ...func(*api.Config)) *env {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Tokens = []string{testToken, otherToken}
	reserved, err := fsm.ParsePortRanges([]string{"9000-9002"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.ReservedPorts = reserved
	// Tests that want a write held during an election set their own; the
	// rest expect the 503 without waiting the default 7 s.
	cfg.HoldTimeout = -1
	for _, m := range mod {
		m(&cfg)
	}
	f := fsm.New()
	e := &env{
		t:       t,
		cluster: &fakeCluster{fsm: f},
		fsm:     f,
		status:  &fakeStatus{st: api.Status{Node: "edge-1", Version: "test"}},
		reg:     prometheus.NewRegistry(),
		logs:    &testenv.Buffer{},
	}
	logger := slog.New(slog.NewTextHandler(io.MultiWriter(t.Output(), e.logs), &slog.HandlerOptions{Level: slog.LevelDebug}))
	d := api.Deps{
		Applier:    e.cluster,
		State:      f,
		Status:     e.status,
		Logger:     logger,
		Registerer: e.reg,
		Gatherer:   e.reg,
		Now:        func() time.Time { return fixedNow },
	}
	if deps != nil {
		deps(&d)
	}
	e.server, err = api.New(cfg, d)
	if err != nil {
		t.Fatalf("api.New: %v", err)
	}
	e.handler = e.server.Handler()
	return e
}

// auth is a header set carrying the test token the usual way.
func bearer(tok string) http.Header {
	return http.Header{"Authorization": {"Bearer " + tok}}
}

func legacy(tok string) http.Header {
	return http.Header{"X-Funkypenguin-Token": {tok}}
}

// do sends one request through the handler.
func (e *env) do(method, path string, hdr http.Header, body string) *httptest.ResponseRecorder {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, rd)
	for k, vs := range hdr {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	rec := httptest.NewRecorder()
	e.handler.ServeHTTP(rec, req)
	return rec
}

// must sends an authenticated request and fails the test unless it answers
// want.
func (e *env) must(want int, method, path, body string) *httptest.ResponseRecorder {
	e.t.Helper()
	rec := e.do(method, path, bearer(testToken), body)
	if rec.Code != want {
		e.t.Fatalf("%s %s: status %d, want %d; body %s", method, path, rec.Code, want, rec.Body)
	}
	return rec
}

// decode unmarshals a JSON answer.
func decode[T any](t *testing.T, rec *httptest.ResponseRecorder) T {
	t.Helper()
	var v T
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json (body %s)", ct, rec.Body)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("decode %s: %v", rec.Body, err)
	}
	return v
}

// errorMessage returns the "error" of a JSON error answer.
func errorMessage(t *testing.T, rec *httptest.ResponseRecorder) string {
	t.Helper()
	return decode[struct {
		Error string `json:"error"`
	}](t, rec).Error
}

// hookBody builds a recipe payload; values are inserted verbatim (so a test
// can pass numbers, strings or junk).
func hookBody(name, frontend, backend, ip, action string) string {
	return `{"name": ` + name + `, "frontend-port": ` + frontend + `, "backend-port": ` + backend +
		`, "dst-ip": ` + ip + `, "action": ` + action + `}`
}

var errNoQuorum = errors.New("no leader: 1 of 2 voters reachable, a majority (2) is needed; run `drawbridge raft recover` on the survivor")
