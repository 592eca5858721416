package api

import (
	"errors"
	"net/http"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

// Admitter is capacity admission: what the nodes cannot run is refused
// before it enters the log, instead of being acknowledged and then failing
// to apply (at about 10,000 routes a reload failed on the descriptor limit
// while writes went on being acknowledged).
type Admitter interface {
	// Admit returns nil when some edge node can run next (the table after
	// the write; current is the table before it), or a *CapacityError
	// naming the limit. It must be cheap: it runs on every write.
	Admit(current, next *fsm.State) error
}

// CapacityError refuses a write no node could run; the API answers it with
// 507 Insufficient Storage and its message.
type CapacityError struct {
	// Message names the limit and the need, for the client.
	Message string
}

func (e *CapacityError) Error() string { return e.Message }

// admit asks the Admitter about the table cmd would produce. A command the
// table would refuse on its merits is left to the commit to answer.
func (s *Server) admit(cmd fsm.Command) error {
	if s.admitter == nil {
		return nil
	}
	cur := s.currentState()
	next, err := cur.Preview(cmd)
	if err != nil || next == nil {
		return nil
	}
	err = s.admitter.Admit(cur, next)
	if err == nil {
		return nil
	}
	s.metrics.commits.WithLabelValues(commitCapacity).Inc()
	var ce *CapacityError
	if errors.As(err, &ce) {
		s.log.Warn("write refused: no node has the capacity", "command", cmd.Type().String(), "err", ce.Message)
		return &Error{Status: http.StatusInsufficientStorage, Message: ce.Message}
	}
	return &Error{Status: http.StatusServiceUnavailable, Message: "capacity admission: " + err.Error()}
}
