package clienttest

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/fsm"
)

// RealAPI is drawbridge's own API handler (package api) over an in-memory
// route table, without raft: every check the API makes before the log
// (tokens and their scope, route ownership, the backend policy, reserved
// ports, limits) and every rule of the FSM answer as they do on a node. Use
// it where a test is about how a program handles the API's real answers;
// API is the fake for scripted ones.
type RealAPI struct {
	Srv *httptest.Server
	// API is the server behind Srv (SetTokens changes its tokens).
	API *api.Server
	// FSM is the table the API commits to; read it to see what a request
	// changed.
	FSM *fsm.FSM
	// Requests counts the requests Srv received.
	Requests atomic.Int64
}

// NewRealAPI serves the API configured by cfg (start from
// api.DefaultConfig(); set Tokens or ScopedTokens) until the test ends.
// Logs go to log (nil: discarded).
func NewRealAPI(tb testing.TB, cfg api.Config, log *slog.Logger) *RealAPI {
	tb.Helper()
	return newRealAPI(tb, cfg, log, "clienttest", nil)
}

// NewRealCluster serves n APIs as one cluster's nodes, named node-0 to
// node-(n-1): node-0 leads and commits every write, the others forward
// writes to it over HTTP as followers do (with the API's own forwarding
// client). Each answers with its name and the leader's
// (api.NodeHeader, api.LeaderHeader).
func NewRealCluster(tb testing.TB, cfg api.Config, n int, log *slog.Logger) []*RealAPI {
	tb.Helper()
	leader := newRealAPI(tb, cfg, log, "node-0", &staticLeader{self: true, name: "node-0"})
	nodes := []*RealAPI{leader}
	for i := 1; i < n; i++ {
		nodes = append(nodes, newRealAPI(tb, cfg, log, fmt.Sprintf("node-%d", i), &staticLeader{url: leader.URL(), name: "node-0"}))
	}
	return nodes
}

func newRealAPI(tb testing.TB, cfg api.Config, log *slog.Logger, name string, leader api.Leader) *RealAPI {
	f := fsm.New()
	deps := api.Deps{
		Applier: &LogApplier{FSM: f},
		State:   f,
		Status:  staticStatus{api.Status{Node: name, Version: "test"}},
		Logger:  log,
	}
	if leader != nil {
		fc := api.NewForwardClient(nil)
		tb.Cleanup(fc.CloseIdleConnections)
		deps.Leader, deps.ForwardClient = leader, fc
	}
	srv, err := api.New(cfg, deps)
	if err != nil {
		tb.Fatalf("api.New: %v", err)
	}
	r := &RealAPI{API: srv, FSM: f}
	h := srv.Handler()
	r.Srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.Requests.Add(1)
		h.ServeHTTP(w, req)
	}))
	tb.Cleanup(r.Srv.Close)
	return r
}

// staticLeader is a Leader that never changes: this node (self) or the
// node named name at url.
type staticLeader struct {
	url  string
	self bool
	name string
}

func (l *staticLeader) LeaderAPI() (string, bool, error) { return l.url, l.self, nil }
func (l *staticLeader) LeaderName() string               { return l.name }

// URL is the API's base URL.
func (r *RealAPI) URL() string { return r.Srv.URL }

// Route returns the route on port in the table.
func (r *RealAPI) Route(port int) (fsm.Route, bool) { return r.FSM.State().Route(port) }

// LogApplier commits each command into FSM as raft would on a leader of
// one: encoded, decoded, then applied at the next index, one at a time. It
// is the only writer of FSM. The API tests that need a real table without
// raft's disk and network use it (RealAPI, the write-path benchmark).
type LogApplier struct {
	mu  sync.Mutex
	FSM *fsm.FSM
}

var _ api.Applier = (*LogApplier)(nil)

// Apply implements api.Applier.
func (a *LogApplier) Apply(_ context.Context, cmd fsm.Command) (fsm.Result, error) {
	data, err := fsm.Encode(cmd)
	if err != nil {
		return fsm.Result{}, err
	}
	decoded, err := fsm.Decode(data)
	if err != nil {
		return fsm.Result{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.FSM.ApplyCommand(a.FSM.State().Index+1, decoded), nil
}

// staticStatus is a node status that never changes.
type staticStatus struct{ st api.Status }

func (s staticStatus) Status() api.Status { return s.st }
