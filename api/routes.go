package api

import (
	"errors"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

// routeList answers GET /v1/routes: the table and the index it was read at.
type routeList struct {
	Index  uint64      `json:"index"`
	Routes []fsm.Route `json:"routes"`
}

// routeRequest is the body of PUT /v1/routes/{port}. Unset optional fields
// take NewRoute's defaults (roundrobin, sticky, health checks on).
type routeRequest struct {
	// Port, when present, must equal the port in the path.
	Port          *int   `json:"port"`
	Name          string `json:"name"`
	Balance       string `json:"balance"`
	Sticky        *bool  `json:"sticky"`
	ProxyProtocol string `json:"proxy_protocol"`
	HealthCheck   *bool  `json:"health_check"`
	// CheckPort sends health checks to this port of every backend (0 or
	// absent: the backend's own port); CheckMode "http" checks by GET
	// /healthz wanting 200 ("" or absent: TCP connect). Both are
	// validated by fsm.Route.Validate (400) and need health checks on.
	CheckPort int              `json:"check_port"`
	CheckMode string           `json:"check_mode"`
	Backends  []backendRequest `json:"backends"`
	// Force takes the port over from a route with another name.
	Force bool `json:"force"`
}

// backendRequest is one backend in a PUT body.
type backendRequest struct {
	Address string `json:"address"`
	Port    int    `json:"port"`
	Owner   string `json:"owner"`
}

// registerRequest is the body of POST /v1/routes/{port}/backends.
type registerRequest struct {
	Address string `json:"address"`
	Port    int    `json:"port"`
	Owner   string `json:"owner"`
	// TTL gives the backend a lease ("90s", or seconds); 0 or absent: none.
	TTL ttl `json:"ttl"`
	// Name, when set, must be the route's name (409 otherwise).
	Name string `json:"name"`
	// Create makes the route (implicitly, named Name, with the options
	// below) when the port has none; without it a missing route is a 404.
	Create        bool   `json:"create"`
	Balance       string `json:"balance"`
	Sticky        *bool  `json:"sticky"`
	ProxyProtocol string `json:"proxy_protocol"`
	HealthCheck   *bool  `json:"health_check"`
}

// routeDeleted answers DELETE /v1/routes/{port}.
type routeDeleted struct {
	Deleted bool `json:"deleted"`
	Port    int  `json:"port"`
}

// backendDeleted answers DELETE /v1/routes/{port}/backends/{hostport}: the
// route as it remains, or null with route_deleted=true when the route went
// with its last backend (routes created by registration do).
type backendDeleted struct {
	Port         int        `json:"port"`
	Backend      string     `json:"backend"`
	Route        *fsm.Route `json:"route"`
	RouteDeleted bool       `json:"route_deleted"`
}

// pathPort reads the {port} path value.
func pathPort(r *http.Request) (int, error) {
	port, err := parsePort("port", r.PathValue("port"))
	if err != nil {
		return 0, badRequest(err)
	}
	return port, nil
}

// queryName reads the optional ?name= a delete must match.
func queryName(r *http.Request) (string, error) {
	name := r.URL.Query().Get("name")
	if name == "" {
		return "", nil
	}
	if err := fsm.ValidateName("name", name); err != nil {
		return "", badRequest(err)
	}
	return name, nil
}

// handleListRoutes answers the table; a register token sees only the
// routes it owns.
func (s *Server) handleListRoutes(w http.ResponseWriter, r *http.Request) error {
	st := s.currentState()
	tok := identity(r.Context())
	routes := st.Routes()
	visible := routes[:0]
	for i := range routes {
		if canRead(tok, &routes[i]) {
			visible = append(visible, routes[i])
		}
	}
	writeJSON(w, http.StatusOK, routeList{Index: st.Index, Routes: visible})
	return nil
}

func (s *Server) handleGetRoute(w http.ResponseWriter, r *http.Request) error {
	port, err := pathPort(r)
	if err != nil {
		return err
	}
	route, ok := s.currentState().Route(port)
	if !ok {
		return errorf(http.StatusNotFound, "no route on port %d", port)
	}
	if tok := identity(r.Context()); !canRead(tok, &route) {
		return forbidden("route on port %d belongs to %s; token %s reads only its own routes", port, ownerDesc(&route), tok.Name)
	}
	writeJSON(w, http.StatusOK, route)
	return nil
}

// handlePutRoute creates or replaces the route on {port}. Replacing keeps
// nothing of the old route; a port owned by another name is a 409 unless
// force is set.
func (s *Server) handlePutRoute(w http.ResponseWriter, r *http.Request) error {
	port, err := pathPort(r)
	if err != nil {
		return err
	}
	var req routeRequest
	if err := s.decodeBody(w, r, &req, decodeOptions{}); err != nil {
		return err
	}
	if req.Port != nil && *req.Port != port {
		return errorf(http.StatusBadRequest, "port %d in the body differs from port %d in the path", *req.Port, port)
	}
	if req.Name == "" {
		return errorf(http.StatusBadRequest, "name is required")
	}
	tok := identity(r.Context())
	eps, reserved := s.members()
	if err := s.checkPort(port, reserved); err != nil {
		return err
	}
	if req.Force && tok != nil && tok.Role != RoleAdmin {
		return forbidden("force takes a port from another route: it needs an admin token, and %s has role %s", tok.Name, tok.Role)
	}
	st := s.currentState()
	existing := routeOf(st, port)
	if err := authorizeRoute(tok, port, req.Name, existing); err != nil {
		return err
	}
	if tok != nil && tok.Role == RoleRegister && tok.MaxTTL > 0 && len(req.Backends) > 0 {
		// PUT's backends carry no lease: a token bound to leases would
		// otherwise place permanent ones.
		return forbidden("token %s registers leased backends only: PUT sets backends without a lease; register each with POST /v1/routes/%d/backends and a ttl of at most %s", tok.Name, port, tok.MaxTTL)
	}
	route := fsm.NewRoute(port, req.Name)
	applyRouteOptions(&route, req.Balance, req.Sticky, req.ProxyProtocol, req.HealthCheck)
	route.CheckPort, route.CheckMode = req.CheckPort, req.CheckMode
	if tok != nil {
		route.Token = tok.Name
	}
	for i, b := range req.Backends {
		if b.Address == "" {
			return errorf(http.StatusBadRequest, "backends[%d]: address is required", i)
		}
		route.Backends = append(route.Backends, fsm.Backend{Address: b.Address, Port: b.Port, Owner: b.Owner})
	}
	cmd := &fsm.UpsertRoute{Route: route, Force: req.Force, Scope: scopeOf(tok)}
	if err := validate(cmd); err != nil {
		return err
	}
	if err := s.checkBackends(cmd.Route.Backends, tok, eps); err != nil {
		return err
	}
	delta := len(cmd.Route.Backends)
	if existing != nil {
		delta -= len(existing.Backends)
	}
	if err := s.checkLimits(st, port, existing == nil, len(cmd.Route.Backends), delta); err != nil {
		return err
	}
	noteChange(r.Context(), cmd)
	res, err := s.commit(r.Context(), cmd)
	if err != nil {
		return err
	}
	if res.Route == nil {
		return errors.New("upsert route committed without a route in its result")
	}
	writeJSON(w, http.StatusOK, res.Route)
	return nil
}

// applyRouteOptions overrides NewRoute's defaults with what a client set.
func applyRouteOptions(r *fsm.Route, balance string, sticky *bool, proxyProtocol string, healthCheck *bool) {
	if balance != "" {
		r.Balance = balance
	}
	if sticky != nil {
		r.Sticky = *sticky
	}
	r.ProxyProtocol = proxyProtocol
	if healthCheck != nil {
		r.HealthCheck = *healthCheck
	}
}

// handleDeleteRoute removes the route on {port}; with ?name= only if the
// route has that name (409 otherwise). Reserved ports are not checked:
// removing what exists is always allowed.
func (s *Server) handleDeleteRoute(w http.ResponseWriter, r *http.Request) error {
	port, err := pathPort(r)
	if err != nil {
		return err
	}
	name, err := queryName(r)
	if err != nil {
		return err
	}
	if err := s.authorizeDelete(r, port, name); err != nil {
		return err
	}
	cmd := &fsm.DeleteRoute{Port: port, Name: name, Scope: scopeOf(identity(r.Context()))}
	if err := validate(cmd); err != nil {
		return err
	}
	noteChange(r.Context(), cmd)
	res, err := s.commit(r.Context(), cmd)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, routeDeleted{Deleted: res.Deleted, Port: port})
	return nil
}

// handleRegisterBackend adds or refreshes one backend of the route on
// {port}, stamping its lease end (now + ttl) here, before proposing: the FSM
// never reads a clock.
func (s *Server) handleRegisterBackend(w http.ResponseWriter, r *http.Request) error {
	port, err := pathPort(r)
	if err != nil {
		return err
	}
	var req registerRequest
	if err := s.decodeBody(w, r, &req, decodeOptions{}); err != nil {
		return err
	}
	switch {
	case req.Address == "":
		return errorf(http.StatusBadRequest, "address is required")
	case req.Port == 0:
		return errorf(http.StatusBadRequest, "port is required (the backend's port)")
	case req.Create && req.Name == "":
		return errorf(http.StatusBadRequest, "name is required when create is true")
	case !req.Create && (req.Balance != "" || req.Sticky != nil || req.ProxyProtocol != "" || req.HealthCheck != nil):
		return errorf(http.StatusBadRequest, "balance, sticky, proxy_protocol and health_check only apply with create: true")
	}
	tok := identity(r.Context())
	if err := s.checkTTL(tok, time.Duration(req.TTL)); err != nil {
		return err
	}
	backend := fsm.Backend{Address: req.Address, Port: req.Port, Owner: req.Owner}
	if req.TTL > 0 {
		backend.ExpiresAt = s.now().Add(time.Duration(req.TTL)).UTC()
		backend.TTL = time.Duration(req.TTL)
	}
	cmd := &fsm.RegisterBackend{Port: port, Name: req.Name, Backend: backend}
	if req.Create {
		create := fsm.NewRoute(port, req.Name)
		create.Implicit = true
		applyRouteOptions(&create, req.Balance, req.Sticky, req.ProxyProtocol, req.HealthCheck)
		cmd.Create = &create
	}
	if err := s.admitRegistration(r, cmd); err != nil {
		return err
	}
	res, err := s.commit(r.Context(), cmd)
	if err != nil {
		return err
	}
	if res.Route == nil {
		return errors.New("register backend committed without a route in its result")
	}
	writeJSON(w, http.StatusOK, res.Route)
	return nil
}

// handleDeregisterBackend removes the backend {hostport} ("10.0.0.5:30808"
// or "[2001:db8::5]:30808") from the route on {port}; ?name= must match the
// route's name when given.
func (s *Server) handleDeregisterBackend(w http.ResponseWriter, r *http.Request) error {
	port, err := pathPort(r)
	if err != nil {
		return err
	}
	hostport := r.PathValue("hostport")
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		return errorf(http.StatusBadRequest, "backend %s must be ip:port or [ipv6]:port", quoteInput(hostport))
	}
	name, err := queryName(r)
	if err != nil {
		return err
	}
	if err := s.authorizeDelete(r, port, name); err != nil {
		return err
	}
	cmd := &fsm.DeregisterBackend{Port: port, Name: name, Address: ap.Addr().String(), BackendPort: int(ap.Port()),
		Scope: scopeOf(identity(r.Context()))}
	if err := validate(cmd); err != nil {
		return err
	}
	noteChange(r.Context(), cmd)
	res, err := s.commit(r.Context(), cmd)
	if err != nil {
		return err
	}
	key := fsm.Backend{Address: cmd.Address, Port: cmd.BackendPort}.Key()
	writeJSON(w, http.StatusOK, backendDeleted{Port: port, Backend: key, Route: res.Route, RouteDeleted: res.Deleted})
	return nil
}

// admitRegistration validates a backend registration (the REST one or the
// hook's) and runs every check that happens before the log: reserved ports,
// the token's scope and ownership, the backend policy and the limits.
func (s *Server) admitRegistration(r *http.Request, cmd *fsm.RegisterBackend) error {
	tok := identity(r.Context())
	eps, reserved := s.members()
	if err := s.checkPort(cmd.Port, reserved); err != nil {
		return err
	}
	if cmd.Create != nil && tok != nil {
		cmd.Create.Token = tok.Name
	}
	cmd.Scope = scopeOf(tok)
	if err := validate(cmd); err != nil {
		return err
	}
	st := s.currentState()
	existing := routeOf(st, cmd.Port)
	name := cmd.Name
	if name == "" && existing != nil {
		name = existing.Name
	}
	if err := authorizeRoute(tok, cmd.Port, name, existing); err != nil {
		return err
	}
	if err := s.checkBackend(cmd.Backend.Address, cmd.Backend.Port, tok, eps); err != nil {
		return err
	}
	switch {
	case existing == nil && cmd.Create != nil:
		if err := s.checkLimits(st, cmd.Port, true, 1, 1); err != nil {
			return err
		}
	case existing != nil && !hasBackend(existing, cmd.Backend):
		if err := s.checkLimits(st, cmd.Port, false, len(existing.Backends)+1, 1); err != nil {
			return err
		}
	}
	noteChange(r.Context(), cmd)
	return nil
}

// authorizeDelete checks a route delete or a backend deregistration: a
// register token must name the route (?name=), and own it.
func (s *Server) authorizeDelete(r *http.Request, port int, name string) error {
	tok := identity(r.Context())
	if tok == nil || tok.Role == RoleAdmin {
		return nil
	}
	if name == "" {
		return forbidden("a delete without ?name= needs an admin token; token %s has role %s", tok.Name, tok.Role)
	}
	existing := routeOf(s.currentState(), port)
	if existing == nil {
		return nil // the FSM answers 404
	}
	return authorizeRoute(tok, port, name, existing)
}

// scopeOf is the Scope a command carries for tok: its name for a register
// token (Apply then refuses to change a route it does not own), "" for an
// admin.
func scopeOf(tok *Token) string {
	if tok != nil && tok.Role == RoleRegister {
		return tok.Name
	}
	return ""
}

// hasBackend reports whether r already holds b (a refresh, not an add).
func hasBackend(r *fsm.Route, b fsm.Backend) bool {
	_, found := slices.BinarySearchFunc(r.Backends, b, fsm.CompareBackends)
	return found
}
