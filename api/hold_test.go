package api_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/fsm"
)

func withHold(d time.Duration) func(*api.Config) {
	return func(c *api.Config) { c.HoldTimeout = d }
}

// later runs f after d, in the background.
func later(d time.Duration, f func()) {
	go func() { time.Sleep(d); f() }()
}

// A write that arrives during an election waits for the new leader and is
// committed, instead of failing with 503 at once.
func TestWriteHeldUntilLeaderAppears(t *testing.T) {
	p := newPeer(t, "edge-1", withHold(10*time.Second))
	p.leader.set("", false, errNoQuorum)
	later(200*time.Millisecond, func() { p.leader.set(p.srv.URL, true, nil) })
	rec := p.do(http.MethodPost, hookPath, legacy(testToken), recipeAdd)
	if rec.Code != http.StatusOK {
		t.Fatalf("held write: %d %s", rec.Code, rec.Body)
	}
	if n := p.cluster.Calls(); n != 1 {
		t.Fatalf("%d applies, want 1", n)
	}
}

// Without a leader for the whole hold, the write gets today's 503 with the
// reason and Retry-After, and nothing is applied.
func TestWriteHoldTimesOut(t *testing.T) {
	p := newPeer(t, "edge-1", withHold(150*time.Millisecond))
	p.leader.set("", false, errNoQuorum)
	rec := p.do(http.MethodPut, "/v1/routes/8443", bearer(testToken), `{"name":"web"}`)
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != "1" {
		t.Fatalf("status %d (Retry-After %q), want 503", rec.Code, rec.Header().Get("Retry-After"))
	}
	if msg := errorMessage(t, rec); !strings.Contains(msg, "raft recover") {
		t.Fatalf("503 without the reason: %q", msg)
	}
	if n := p.cluster.Calls(); n != 0 {
		t.Fatalf("%d applies, want none", n)
	}
}

// countingLeader counts LeaderAPI calls.
type countingLeader struct {
	*fakeLeader
	calls atomic.Int64
}

func (l *countingLeader) LeaderAPI() (string, bool, error) {
	l.calls.Add(1)
	return l.fakeLeader.LeaderAPI()
}

// Reads answer from local state during an election: they never ask who
// leads, so they never wait for it.
func TestReadsDoNotWaitForALeader(t *testing.T) {
	l := &countingLeader{fakeLeader: &fakeLeader{err: errNoQuorum}}
	e := newEnvDeps(t, func(d *api.Deps) { d.Leader = l }, withHold(time.Hour))
	for _, path := range []string{"/v1/routes", "/v1/status", "/readyz", "/healthz"} {
		rec := e.do(http.MethodGet, path, bearer(testToken), "")
		if rec.Code == http.StatusServiceUnavailable && path != "/readyz" {
			t.Fatalf("GET %s: %d %s", path, rec.Code, rec.Body)
		}
	}
	if n := l.calls.Load(); n != 0 {
		t.Fatalf("reads asked for the leader %d times", n)
	}
}

// A follower holds a write while it knows no leader and forwards it to the
// leader that appears.
func TestForwardedWriteHeldUntilLeaderAppears(t *testing.T) {
	leader, follower := newPair(t, withHold(10*time.Second))
	follower.leader.set("", false, errNoQuorum)
	later(200*time.Millisecond, func() { follower.leader.set(leader.srv.URL, false, nil) })
	rec := follower.do(http.MethodPost, hookPath, legacy(testToken), recipeAdd)
	if rec.Code != http.StatusOK {
		t.Fatalf("held forwarded write: %d %s", rec.Code, rec.Body)
	}
	if n := len(leader.received()); n != 1 {
		t.Fatalf("leader received %d requests, want 1", n)
	}
	if n := leader.cluster.Calls(); n != 1 {
		t.Fatalf("%d applies, want 1", n)
	}
}

// The node a follower forwards to has just lost the leadership (it refuses
// the write without applying it, and says so), or is down: the follower
// holds the write and sends it to the new leader once it knows it.
func TestForwardedWriteFollowsNewLeader(t *testing.T) {
	for _, tc := range []struct {
		name string
		old  func(old *peer, next *peer)
	}{
		{"old leader refuses", func(old, next *peer) { old.leader.set(next.srv.URL, false, nil) }},
		{"old leader unreachable", func(old, _ *peer) { old.srv.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := newPeer(t, "edge-1", withHold(10*time.Second))
			next := newPeer(t, "edge-3", withHold(10*time.Second))
			follower := newPeer(t, "edge-2", withHold(10*time.Second))
			next.leader.set(next.srv.URL, true, nil)
			follower.leader.set(old.srv.URL, false, nil)
			tc.old(old, next)
			later(300*time.Millisecond, func() { follower.leader.set(next.srv.URL, false, nil) })
			rec := follower.do(http.MethodPost, hookPath, legacy(testToken), recipeAdd)
			if rec.Code != http.StatusOK {
				t.Fatalf("write: %d %s", rec.Code, rec.Body)
			}
			if n := old.cluster.Calls(); n != 0 {
				t.Fatalf("old leader applied %d", n)
			}
			if n := next.cluster.Calls(); n != 1 {
				t.Fatalf("new leader applied %d, want 1", n)
			}
		})
	}
}

// notLeaderErr is what the cluster answers when leadership moved before
// the entry was proposed.
type notLeaderErr struct{}

func (notLeaderErr) Error() string { return "not the raft leader: the leader is edge-3" }

// maybeErr is a commit failure after which the entry may still commit.
type maybeErr struct{}

func (maybeErr) Error() string      { return "leadership lost while committing" }
func (maybeErr) MaybeApplied() bool { return true }

// flipApplier is an Applier that loses the leadership while proposing: it
// makes the Leader report an election, then (after a moment) edge-3, and
// fails with err.
type flipApplier struct {
	leader *fakeLeader
	err    error
	calls  atomic.Int64
}

func (f *flipApplier) Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error) {
	f.calls.Add(1)
	f.leader.set("", false, errNoQuorum)
	later(100*time.Millisecond, func() { f.leader.set("http://edge-3.invalid", false, nil) })
	return fsm.Result{}, f.err
}

// The leader loses leadership between routing and proposing: a write that
// was not proposed is held until the new leader is known and refused with
// the not-applied mark (so the forwarding node resends it there); one that
// may have been proposed is never retried and never so marked.
func TestCommitAfterLeadershipMoved(t *testing.T) {
	for _, tc := range []struct {
		name        string
		err         error
		wantMarked  bool
		wantMessage string
	}{
		{"not proposed", notLeaderErr{}, true, "nothing was applied"},
		{"maybe applied", maybeErr{}, false, "not confirmed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &fakeLeader{url: "http://edge-1.invalid", self: true}
			f := &flipApplier{leader: l, err: tc.err}
			e := newEnvDeps(t, func(d *api.Deps) { d.Leader = l; d.Applier = f }, withHold(10*time.Second))
			hdr := legacy(testToken)
			hdr.Set(api.ForwardedByHeader, "edge-2")
			rec := e.do(http.MethodPost, hookPath, hdr, recipeAdd)
			marked := rec.Header().Get("X-Drawbridge-Not-Applied") == "1"
			if rec.Code != http.StatusServiceUnavailable || marked != tc.wantMarked {
				t.Fatalf("status %d, not-applied mark %v; body %s", rec.Code, marked, rec.Body)
			}
			if msg := errorMessage(t, rec); !strings.Contains(msg, tc.wantMessage) {
				t.Fatalf("message %q lacks %q", msg, tc.wantMessage)
			}
			if n := f.calls.Load(); n != 1 {
				t.Fatalf("proposed %d times, want once", n)
			}
		})
	}
}
