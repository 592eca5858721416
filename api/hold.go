package api

import (
	"context"
	"errors"
	"net/http"
	"time"
)

// Writes during an election are held, not refused: while no leader is
// known (an election, a dev node's first second) a write waits up to
// Config.HoldTimeout for one, then goes to it (forwarded or committed
// here). Only when none appears in time is it answered 503, as before.
// A write is never sent twice to a leader that may have applied it: it is
// retried only when it provably was not (the forward could not connect, or
// the node reached did not lead and said so, or leadership moved before
// the entry was proposed). Reads never wait.

// holdPoll is how often a held write looks for a leader.
const holdPoll = 20 * time.Millisecond

// holdKey carries a write's hold deadline from writeEndpoint to commit.
type holdKey struct{}

// holdTimeout is the configured hold, 0 when holding is off.
func (s *Server) holdTimeout() time.Duration {
	return max(s.cfg.HoldTimeout, 0)
}

// holdUntil is the hold deadline of a write that starts now.
func (s *Server) holdUntil() time.Time {
	return time.Now().Add(s.holdTimeout())
}

// holdForLeader is leaderFor that, while no leader is known, waits for one
// until hold passes (or the request ends), then answers as leaderFor does.
func (s *Server) holdForLeader(r *http.Request, hold time.Time) (string, error) {
	t := time.NewTicker(holdPoll)
	defer t.Stop()
	for {
		if _, _, retry := s.whereTo(r, false); !retry || !time.Now().Before(hold) {
			return s.leaderFor(r) // decides again, and counts the outcome once
		}
		select {
		case <-r.Context().Done():
			return s.leaderFor(r)
		case <-t.C:
		}
	}
}

// leaderMoved reports whether a failed Apply failed because this node no
// longer leads, before the entry was proposed (so nothing was applied), and
// a leader is known again or appears before the hold deadline in ctx. A
// failure after which the entry may still commit (MaybeApplied, a commit
// timeout) is never retried.
func (s *Server) leaderMoved(ctx context.Context, err error) bool {
	hold, ok := ctx.Value(holdKey{}).(time.Time)
	if !ok || s.leader == nil {
		return false
	}
	var maybe interface{ MaybeApplied() bool }
	if errors.As(err, &maybe) && maybe.MaybeApplied() || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, context.Canceled) {
		return false
	}
	if _, self, lerr := s.leader.LeaderAPI(); lerr == nil && self {
		return false // still the leader: the failure was something else
	}
	t := time.NewTicker(holdPoll)
	defer t.Stop()
	for time.Now().Before(hold) {
		if _, _, lerr := s.leader.LeaderAPI(); lerr == nil {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return false
}
