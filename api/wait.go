package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// AppliedWaiter backs ?wait=applied: a write answered only once the change
// is live everywhere, not merely committed.
type AppliedWaiter interface {
	// WaitApplied returns nil once every alive edge node's HAProxy runs a
	// config of at least index. When ctx ends first it returns an error
	// (ctx.Err(), possibly wrapped) and the nodes still behind.
	WaitApplied(ctx context.Context, index uint64) (lagging []Lag, err error)
}

// Lag is one node that had not applied an index in time.
type Lag struct {
	// Node is the node's name.
	Node string `json:"node"`
	// Applied is the index of the config its HAProxy runs.
	Applied uint64 `json:"applied"`
	// Error is its HAProxy's last error, if any: often why it lags.
	Error string `json:"error,omitempty"`
	// HeldBack are ports of routes its HAProxy does not serve (a port
	// another process holds, a reload that failed): a node that holds any
	// back has not applied the table. Remote nodes name at most 8; Held
	// counts them all.
	HeldBack []int `json:"held_back,omitempty"`
	Held     int   `json:"held,omitempty"`
}

// Bounds of ?wait=applied&timeout=.
const (
	DefaultWaitTimeout = 10 * time.Second
	MaxWaitTimeout     = 60 * time.Second
)

// localWaitPoll is how often the single-node waiter reads Status.
const localWaitPoll = 20 * time.Millisecond

// waitKey carries a write's ?wait=applied timeout from writeEndpoint to
// commit in the request context.
type waitKey struct{}

// notAppliedBody is the 504 answer of a write that committed but was not
// applied everywhere in time.
type notAppliedBody struct {
	Error   string `json:"error"`
	Index   uint64 `json:"index"`
	Lagging []Lag  `json:"lagging"`
}

// parseWait reads ?wait=applied and ?timeout= on a write: 0 when the client
// does not wait.
func parseWait(r *http.Request) (time.Duration, error) {
	q := r.URL.Query()
	switch wait := q.Get("wait"); wait {
	case "":
		if q.Has("timeout") {
			return 0, errorf(http.StatusBadRequest, "timeout only applies with wait=applied")
		}
		return 0, nil
	case "applied":
	default:
		return 0, errorf(http.StatusBadRequest, "wait must be \"applied\", got %s", quoteInput(wait))
	}
	v := q.Get("timeout")
	if v == "" {
		return DefaultWaitTimeout, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 || d > MaxWaitTimeout {
		return 0, errorf(http.StatusBadRequest, "timeout must be a duration such as \"5s\", above 0 and at most %s, got %s",
			MaxWaitTimeout, quoteInput(v))
	}
	return d, nil
}

// waitApplied holds a committed write's answer until index is applied
// everywhere (or on this node's HAProxy without an AppliedWaiter). It
// returns an *Error with status 504 when that takes longer than timeout; the
// answer says the change is committed all the same.
func (s *Server) waitApplied(ctx context.Context, index uint64, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var (
		lagging []Lag
		err     error
	)
	if s.waiter != nil {
		lagging, err = s.waiter.WaitApplied(ctx, index)
	} else {
		lagging, err = s.waitLocal(ctx, index)
	}
	if err == nil {
		return nil
	}
	msg := fmt.Sprintf("committed at index %d but not applied everywhere within %s", index, timeout)
	if !errors.Is(err, context.DeadlineExceeded) {
		msg += ": " + err.Error()
	}
	for _, l := range lagging {
		if l.Held > 0 {
			msg += fmt.Sprintf("; %s holds back %d route(s), ports %s", l.Node, l.Held, portList(l.HeldBack, l.Held))
		}
	}
	s.log.Warn("write committed but not applied everywhere in time", "index", index, "timeout", timeout,
		"lagging", len(lagging), "err", err)
	if lagging == nil {
		lagging = []Lag{}
	}
	return &Error{
		Status:  http.StatusGatewayTimeout,
		Message: msg,
		body:    notAppliedBody{Error: msg, Index: index, Lagging: lagging},
	}
}

// waitLocal is the single-node AppliedWaiter: it polls this node's HAProxy
// status until it runs index. A witness runs no HAProxy and has nothing to
// wait for.
func (s *Server) waitLocal(ctx context.Context, index uint64) ([]Lag, error) {
	tick := time.NewTicker(localWaitPoll)
	defer tick.Stop()
	for {
		st := s.statusSrc.Status()
		if st.Role == RoleWitness || (st.HAProxy.Running && st.HAProxy.AppliedIndex >= index) {
			return nil, nil
		}
		select {
		case <-ctx.Done():
			lag := Lag{Node: st.Node, Applied: st.HAProxy.AppliedIndex, Error: st.HAProxy.LastError, Held: len(st.HAProxy.FailedPorts)}
			for _, f := range st.HAProxy.FailedPorts {
				lag.HeldBack = append(lag.HeldBack, f.Port)
			}
			if !st.HAProxy.Running && lag.Error == "" {
				lag.Error = "haproxy is not running"
			}
			return []Lag{lag}, ctx.Err()
		case <-tick.C:
		}
	}
}

// portList prints ports, with "…" when total says some were left out.
func portList(ports []int, total int) string {
	parts := make([]string, 0, len(ports)+1)
	for _, p := range ports {
		parts = append(parts, strconv.Itoa(p))
	}
	if total > len(ports) {
		parts = append(parts, "…")
	}
	return strings.Join(parts, ", ")
}
