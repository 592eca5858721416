package api

import (
	"net/http"
	"time"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

// forbidden is a 403 with the reason.
func forbidden(format string, args ...any) *Error {
	return errorf(http.StatusForbidden, format, args...)
}

// notOwner is a 403 for a route another token owns, with CodeNotOwner.
func notOwner(format string, args ...any) *Error {
	e := forbidden(format, args...)
	e.Code = CodeNotOwner
	return e
}

// authorizeRoute checks that tok may create or change the route name on
// port, given the route there now (nil: none). An admin may; a register token
// only within its ports and name globs, and only a route it owns (the route
// records its owner token's name, through the log).
func authorizeRoute(tok *Token, port int, name string, existing *fsm.Route) error {
	if tok == nil || tok.Role == RoleAdmin {
		return nil
	}
	if tok.Role != RoleRegister {
		return forbidden("token %s has role %s; writes need an admin or register token", tok.Name, tok.Role)
	}
	if !tok.Ports.Contains(port) {
		return forbidden("token %s may not route port %d (its ports: %s)", tok.Name, port, tok.Ports)
	}
	if name != "" && !tok.mayName(name) {
		return forbidden("token %s may not use route name %q (its names: %v)", tok.Name, name, tok.Names)
	}
	if existing != nil {
		if existing.Name != name && name != "" {
			// The FSM answers 409 for a name clash; say who owns it
			// first, so the 403 names the reason.
			if existing.Token != tok.Name {
				return notOwner("port %d belongs to route %q of %s; token %s cannot take it", port, existing.Name, ownerDesc(existing), tok.Name)
			}
		}
		if existing.Token != tok.Name {
			return notOwner("route %q on port %d belongs to %s; token %s may change only its own routes", existing.Name, port, ownerDesc(existing), tok.Name)
		}
	}
	return nil
}

// ownerDesc names a route's owner for a message.
func ownerDesc(r *fsm.Route) string {
	if r.Token == "" {
		return "no token (made before scoped tokens, or restored); only an admin token may change it"
	}
	return "token " + r.Token
}

// canRead reports whether tok may read route r's backends: admin and read
// tokens read everything, a register token its own routes only.
func canRead(tok *Token, r *fsm.Route) bool {
	return tok == nil || tok.Role != RoleRegister || r.Token == tok.Name
}

// checkTTL checks a registration's TTL against the limits and tok's
// max_ttl.
func (s *Server) checkTTL(tok *Token, ttl time.Duration) error {
	if ttl > s.cfg.Limits.MaxTTL {
		return errorf(http.StatusBadRequest, "ttl %s is above the limit of %s (limits.max_ttl)", ttl, s.cfg.Limits.MaxTTL)
	}
	if tok != nil && tok.Role == RoleRegister && tok.MaxTTL > 0 {
		switch {
		case ttl == 0:
			return forbidden("token %s registers leased backends only: give a ttl of at most %s", tok.Name, tok.MaxTTL)
		case ttl > tok.MaxTTL:
			return forbidden("ttl %s is above token %s's max_ttl of %s", ttl, tok.Name, tok.MaxTTL)
		}
	}
	return nil
}

// hookLease is the lease a hook registration gets: Config.HookLease, cut to
// a register token's max_ttl.
func (s *Server) hookLease(tok *Token) time.Duration {
	lease := s.cfg.HookLease
	if tok != nil && tok.Role == RoleRegister && tok.MaxTTL > 0 && (lease == 0 || lease > tok.MaxTTL) {
		lease = tok.MaxTTL
	}
	return lease
}

// checkLimits refuses a change that would take the table past the limits:
// adding a route (newRoute), and taking a route to routeBackends backends
// while the table's total changes by delta.
func (s *Server) checkLimits(st *fsm.State, port int, newRoute bool, routeBackends, delta int) error {
	l := s.cfg.Limits
	switch {
	case newRoute && st.Len() >= l.MaxRoutes:
		return errorf(http.StatusBadRequest, "the table holds %d routes, the limit (limits.max_routes); no route added on port %d", st.Len(), port)
	case routeBackends > l.MaxBackendsPerRoute:
		return errorf(http.StatusBadRequest, "route on port %d would have %d backends, above the limit of %d (limits.max_backends_per_route)", port, routeBackends, l.MaxBackendsPerRoute)
	case delta > 0 && st.BackendCount()+delta > l.MaxBackends:
		return errorf(http.StatusBadRequest, "the table holds %d backends; %d more would pass the limit of %d (limits.max_backends)", st.BackendCount(), delta, l.MaxBackends)
	}
	return nil
}

// checkBackends runs the backend policy over bs.
func (s *Server) checkBackends(bs []fsm.Backend, tok *Token, eps []Endpoint) error {
	for _, b := range bs {
		if err := s.checkBackend(b.Address, b.Port, tok, eps); err != nil {
			return err
		}
	}
	return nil
}

// routeOf returns the route on port in st, or nil.
func routeOf(st *fsm.State, port int) *fsm.Route {
	if r, ok := st.Route(port); ok {
		return &r
	}
	return nil
}
