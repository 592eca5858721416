package clienttest

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"sync"
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
}

// NewRealAPI serves the API configured by cfg (start from
// api.DefaultConfig(); set Tokens or ScopedTokens) until the test ends.
// Logs go to log (nil: discarded).
func NewRealAPI(tb testing.TB, cfg api.Config, log *slog.Logger) *RealAPI {
	tb.Helper()
	f := fsm.New()
	srv, err := api.New(cfg, api.Deps{
		Applier: &LogApplier{FSM: f},
		State:   f,
		Status:  staticStatus{api.Status{Node: "clienttest", Version: "test"}},
		Logger:  log,
	})
	if err != nil {
		tb.Fatalf("api.New: %v", err)
	}
	r := &RealAPI{Srv: httptest.NewServer(srv.Handler()), API: srv, FSM: f}
	tb.Cleanup(r.Srv.Close)
	return r
}

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
