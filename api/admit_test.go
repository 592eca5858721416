package api_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/fsm"
)

// refuseGrowth admits a table of at most max routes.
type refuseGrowth struct{ max int }

func (a refuseGrowth) Admit(cur, next *fsm.State) error {
	if next.Len() > a.max && next.Len() > cur.Len() {
		return &api.CapacityError{Message: "the route table would need 4 file descriptors; the most any edge node has is 3"}
	}
	return nil
}

// A write no node could run is refused with 507 and the admitter's words,
// before it is proposed; one that shrinks the table passes.
func TestCapacityRefusedWith507(t *testing.T) {
	e := newEnvDeps(t, func(d *api.Deps) { d.Admitter = refuseGrowth{max: 1} })
	e.must(http.StatusOK, http.MethodPut, "/v1/routes/8080", `{"name":"web"}`)
	calls := e.cluster.Calls()
	rec := e.do(http.MethodPut, "/v1/routes/8081", bearer(testToken), `{"name":"more"}`)
	if rec.Code != http.StatusInsufficientStorage || !strings.Contains(errorMessage(t, rec), "file descriptors") {
		t.Fatalf("over capacity: %d %s", rec.Code, rec.Body)
	}
	if e.cluster.Calls() != calls {
		t.Fatal("a refused write was proposed")
	}
	if m := e.metric(`drawbridge_commits_total{result="capacity"}`); !strings.HasSuffix(m, " 1") {
		t.Fatalf("capacity metric: %q", m)
	}
	e.must(http.StatusOK, http.MethodDelete, "/v1/routes/8080", "")
}

// A node that skipped newer log entries says so in /metrics.
func TestUnknownCommandsMetric(t *testing.T) {
	e := newEnv(t)
	e.status.set(func(s *api.Status) { s.UnknownCommands = 3 })
	if m := e.metric("drawbridge_unknown_commands "); m != "drawbridge_unknown_commands 3" {
		t.Fatalf("metric line %q", m)
	}
	st := decode[api.Status](t, e.must(http.StatusOK, http.MethodGet, "/v1/status", ""))
	if st.UnknownCommands != 3 {
		t.Fatalf("status unknown_commands %d", st.UnknownCommands)
	}
}
