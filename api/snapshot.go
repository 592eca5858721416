package api

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

// snapshotRestored answers POST /v1/snapshot.
type snapshotRestored struct {
	// Index is the raft index of the entry that replaced the table.
	Index uint64 `json:"index"`
	// Routes is how many routes the table holds now.
	Routes int `json:"routes"`
}

// handleSnapshotSave serves GET /v1/snapshot: this node's route table (the
// leader's with ?consistent=true) in fsm's versioned snapshot format, as a
// JSON attachment that POST /v1/snapshot takes back.
func (s *Server) handleSnapshotSave(w http.ResponseWriter, r *http.Request) error {
	if tok := identity(r.Context()); tok != nil && tok.Role == RoleRegister {
		return forbidden("a snapshot holds every token's backends: it needs an admin or read token, and %s has role register", tok.Name)
	}
	st := s.currentState()
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Disposition", fmt.Sprintf(`attachment; filename="drawbridge-snapshot-%d.json"`, st.Index))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}
	if err := fsm.WriteSnapshot(w, st); err != nil {
		// The status is out: the client sees a truncated (invalid) snapshot.
		s.log.Warn("snapshot not sent in full", "index", st.Index, "err", err)
	}
	return nil
}

// handleSnapshotRestore serves POST /v1/snapshot: it replaces the whole
// route table with the snapshot in the body (within
// Config.MaxSnapshotBytes) through one log entry, so every node ends with
// the same table. Routes on ports this node reserves are refused, as a PUT
// of them would be.
func (s *Server) handleSnapshotRestore(w http.ResponseWriter, r *http.Request) error {
	body := &limitWatch{r: http.MaxBytesReader(w, r.Body, s.cfg.MaxSnapshotBytes)}
	st, err := fsm.ReadSnapshot(body)
	if err != nil {
		switch {
		case body.tooLarge != nil:
			return errorf(http.StatusRequestEntityTooLarge, "snapshot is larger than %d bytes", body.tooLarge.Limit)
		case errors.Is(err, io.EOF):
			return errorf(http.StatusBadRequest, "request body is empty, expected a snapshot from GET /v1/snapshot")
		}
		return badRequest(err)
	}
	routes := st.Routes()
	eps, reserved := s.members()
	for _, rt := range routes {
		if err := fsm.CheckPort(rt.Port, reserved); err != nil {
			return errorf(http.StatusBadRequest, "route %s: %s", strconv.Quote(rt.Name), message(err))
		}
		if err := s.checkBackends(rt.Backends, nil, eps); err != nil {
			return errorf(http.StatusBadRequest, "route %s: %s", strconv.Quote(rt.Name), err.(*Error).Message)
		}
		if len(rt.Backends) > s.cfg.Limits.MaxBackendsPerRoute {
			return errorf(http.StatusBadRequest, "route %s has %d backends, above the limit of %d (limits.max_backends_per_route)",
				strconv.Quote(rt.Name), len(rt.Backends), s.cfg.Limits.MaxBackendsPerRoute)
		}
		for _, b := range rt.Backends {
			if b.TTL > s.cfg.Limits.MaxTTL {
				return errorf(http.StatusBadRequest, "route %s: backend %s has a ttl of %s, above the limit of %s (limits.max_ttl)",
					strconv.Quote(rt.Name), b.Key(), b.TTL, s.cfg.Limits.MaxTTL)
			}
		}
	}
	if len(routes) > s.cfg.Limits.MaxRoutes || st.BackendCount() > s.cfg.Limits.MaxBackends {
		return errorf(http.StatusBadRequest, "snapshot holds %d routes and %d backends, above the limits of %d and %d (limits.max_routes, limits.max_backends)",
			len(routes), st.BackendCount(), s.cfg.Limits.MaxRoutes, s.cfg.Limits.MaxBackends)
	}
	cmd := &fsm.ReplaceTable{Routes: routes}
	if err := validate(cmd); err != nil {
		return err
	}
	noteChange(r.Context(), cmd)
	res, err := s.commit(r.Context(), cmd)
	if err != nil {
		return err
	}
	s.log.Info("route table replaced from a snapshot", "index", res.Index, "routes", len(cmd.Routes),
		"snapshot_index", st.Index)
	writeJSON(w, http.StatusOK, snapshotRestored{Index: res.Index, Routes: len(cmd.Routes)})
	return nil
}

// limitWatch remembers that the body hit its size limit, whatever error the
// reader above it (fsm.ReadSnapshot) reports for it.
type limitWatch struct {
	r        io.Reader
	tooLarge *http.MaxBytesError
}

func (l *limitWatch) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	if err != nil && l.tooLarge == nil {
		errors.As(err, &l.tooLarge)
	}
	return n, err
}
