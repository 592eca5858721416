package api_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A leader that vanishes mid-forward (no reset, no answer) must not hold the
// caller until the forward deadline: once this node sees another leader,
// the forward is abandoned with a 503 that says the outcome is unknown.
func TestForwardAbandonedWhenLeaderChanges(t *testing.T) {
	hung := make(chan struct{})
	gone := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-hung // never answers while the test runs
	}))
	defer gone.Close()
	defer close(hung)

	follower := newPeer(t, "edge-2")
	follower.leader.set(gone.URL, false, nil)
	go func() {
		time.Sleep(300 * time.Millisecond)
		follower.leader.set("", false, errors.New("no raft leader"))
	}()
	start := time.Now()
	rec := follower.do("POST", "/hooks/update-haproxy", legacy(testToken), hookBody(`"web"`, "8080", "30080", `"10.0.0.1"`, `"add"`))
	took := time.Since(start)
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if msg := errorMessage(t, rec); !strings.Contains(msg, "went away") || !strings.Contains(msg, "may or may not be applied") {
		t.Errorf("message: %s", msg)
	}
	if took > 5*time.Second {
		t.Errorf("the forward held the caller %v after the leader changed", took)
	}
}

// maybeApplied is a commit error after which the entry may still commit.
type maybeApplied struct{}

func (maybeApplied) Error() string {
	return "not the raft leader: leadership lost while committing log"
}
func (maybeApplied) MaybeApplied() bool { return true }

func TestLeadershipLostSaysMayStillApply(t *testing.T) {
	e := newEnv(t)
	e.cluster.fail(maybeApplied{})
	rec := e.do("POST", "/hooks/update-haproxy", legacy(testToken), hookBody(`"web"`, "8080", "30080", `"10.0.0.1"`, `"add"`))
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if msg := errorMessage(t, rec); !strings.Contains(msg, "not confirmed") || strings.Contains(msg, "not committed") {
		t.Errorf("message claims a definite outcome: %s", msg)
	}
}
