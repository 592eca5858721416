package fsm

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync/atomic"
	"time"
)

// State is an immutable snapshot of the route table. Readers share it without
// locks: Apply never modifies a State, it builds the next one (sharing every
// unchanged route) and swaps it in. All accessors return deep copies. The zero
// State is an empty table at index 0.
type State struct {
	// Index is the raft index of the last log entry applied to reach this
	// state, whether or not that entry changed anything (a refused command
	// still advances it). Entries raft keeps to itself (no-ops, membership
	// changes) never reach the FSM, so Index may trail raft's applied index.
	// Treat it as read-only: a State is shared by every reader.
	Index uint64

	routes   []*Route // sorted by Port; a *Route in a State is never modified
	backends int      // total backends over routes

	hash atomic.Pointer[string] // lazily computed Hash
}

// NewState builds a State from routes, validating (and canonicalising) each
// one. It refuses two routes on one port and an implicit route without
// backends (Apply never leaves one). Restore uses it; so can tests elsewhere.
func NewState(index uint64, routes []Route) (*State, error) {
	s := &State{Index: index, routes: make([]*Route, 0, len(routes))}
	for i := range routes {
		r := routes[i].Clone()
		if err := r.Validate(); err != nil {
			return nil, fmt.Errorf("route %d (port %d): %w", i, r.Port, err)
		}
		if r.Implicit && len(r.Backends) == 0 {
			return nil, invalid("implicit route on port %d has no backends", r.Port)
		}
		s.routes = append(s.routes, &r)
		s.backends += len(r.Backends)
	}
	slices.SortFunc(s.routes, func(a, b *Route) int { return cmp.Compare(a.Port, b.Port) })
	for i := 1; i < len(s.routes); i++ {
		if s.routes[i-1].Port == s.routes[i].Port {
			return nil, invalid("two routes on port %d", s.routes[i].Port)
		}
	}
	return s, nil
}

// Routes returns a deep copy of every route, sorted by port.
func (s *State) Routes() []Route {
	out := make([]Route, len(s.routes))
	for i, r := range s.routes {
		out[i] = r.Clone()
	}
	return out
}

// Route returns a deep copy of the route on port, if there is one.
func (s *State) Route(port int) (Route, bool) {
	if r := s.get(port); r != nil {
		return r.Clone(), true
	}
	return Route{}, false
}

// RouteChange is one port whose route differs between two States: Old is
// its route in the earlier State and New in the later one (deep copies; nil
// where the port has no route).
type RouteChange struct {
	Port     int
	Old, New *Route
}

// ChangesSince returns the routes that differ between prev (nil: an empty
// table) and s, by port. Every State shares the routes a command left
// unchanged with the State it was built from, so those are told apart by
// identity: between a State and one a few entries older this is a walk
// over the table without copying it, plus a copy of each changed route.
// States that share nothing (after a restore) compare as wholly changed,
// which is still correct. Per-write checks use it to stay incremental.
func (s *State) ChangesSince(prev *State) []RouteChange {
	var old []*Route
	if prev != nil {
		old = prev.routes
	}
	cur := s.routes
	if len(old) == len(cur) && (len(cur) == 0 || &old[0] == &cur[0]) {
		return nil // the same slice: nothing changed
	}
	var out []RouteChange
	copyOf := func(r *Route) *Route {
		c := r.Clone()
		return &c
	}
	i, j := 0, 0
	for i < len(old) || j < len(cur) {
		switch {
		case i < len(old) && j < len(cur) && old[i] == cur[j]:
			i++
			j++
		case j == len(cur) || (i < len(old) && old[i].Port < cur[j].Port):
			out = append(out, RouteChange{Port: old[i].Port, Old: copyOf(old[i])})
			i++
		case i == len(old) || cur[j].Port < old[i].Port:
			out = append(out, RouteChange{Port: cur[j].Port, New: copyOf(cur[j])})
			j++
		default:
			if old[i] != cur[j] {
				out = append(out, RouteChange{Port: cur[j].Port, Old: copyOf(old[i]), New: copyOf(cur[j])})
			}
			i++
			j++
		}
	}
	return out
}

// Len is the number of routes.
func (s *State) Len() int { return len(s.routes) }

// BackendCount is the number of backends over all routes.
func (s *State) BackendCount() int { return s.backends }

// Hash is the hex SHA-256 of the canonical JSON of the routes (the JSON array
// of Routes(), which Validate has canonicalised). Nodes that applied the same
// entries report the same hash, whatever their Index; nodes report it so a
// diverging node shows. It is computed once per State.
func (s *State) Hash() string {
	if h := s.hash.Load(); h != nil {
		return *h
	}
	d := sha256.New()
	if err := writeRoutesJSON(d, s.routes); err != nil {
		panic(fmt.Sprintf("drawbridge fsm: hash routes: %v", err)) // a Route always marshals
	}
	h := hex.EncodeToString(d.Sum(nil))
	s.hash.Store(&h)
	return h
}

// writeRoutesJSON writes routes as one JSON array, a route at a time, so a
// large table is never held twice in memory.
func writeRoutesJSON(w io.Writer, routes []*Route) error {
	sep := []byte("[")
	for _, r := range routes {
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		if _, err := w.Write(sep); err != nil {
			return err
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		sep = []byte(",")
	}
	if len(routes) == 0 {
		_, err := io.WriteString(w, "[]")
		return err
	}
	_, err := io.WriteString(w, "]")
	return err
}

func (s *State) find(port int) (int, bool) {
	return slices.BinarySearchFunc(s.routes, port, func(r *Route, port int) int { return cmp.Compare(r.Port, port) })
}

// get returns the shared (read-only) route on port, or nil.
func (s *State) get(port int) *Route {
	if i, ok := s.find(port); ok {
		return s.routes[i]
	}
	return nil
}

// at returns the same table at a new index. The route slice is shared: no
// State ever writes to it.
func (s *State) at(index uint64) *State {
	next := &State{Index: index, routes: s.routes, backends: s.backends}
	next.hash.Store(s.hash.Load())
	return next
}

// with returns the table at index with the route on port replaced by r, or
// removed when r is nil. r must not be modified afterwards.
func (s *State) with(index uint64, port int, r *Route) *State {
	i, found := s.find(port)
	next := &State{Index: index, backends: s.backends}
	rest := s.routes[i:]
	if found {
		next.backends -= len(s.routes[i].Backends)
		rest = s.routes[i+1:]
	}
	routes := make([]*Route, 0, len(s.routes)+1)
	routes = append(routes, s.routes[:i]...)
	if r != nil {
		routes = append(routes, r)
		next.backends += len(r.Backends)
	}
	next.routes = append(routes, rest...)
	return next
}

// Result is what Apply (as interface{}) and ApplyCommand return for an entry.
// Domain errors are values here, never panics: the entry is committed either
// way, and every node reaches the same Result.
type Result struct {
	// Route is a copy of the route as the command left it; nil when the
	// command removed it, failed, or (ExpireLeases) spans many routes.
	Route *Route
	// Deleted reports that the command removed the route on its port
	// (DeleteRoute, or DeregisterBackend taking an implicit route's last backend).
	Deleted bool
	// Expired is the number of backends ExpireLeases removed.
	Expired int
	// Index is the raft log index of the entry that produced this result.
	Index uint64
	// Err is the domain error, if any: wraps ErrInvalid, ErrPortTaken,
	// ErrNotFound or ErrUnknownCommand. State did not change when it is set
	// (but Index still advanced).
	Err error
}

// apply is the pure core of the FSM: the state after applying c as entry
// index, and its result. s is never modified and c is never retained or
// modified (it is copied before it is validated and canonicalised).
func (s *State) apply(index uint64, c Command) (*State, Result) {
	c, err := cloneCommand(c)
	if err == nil {
		err = c.Validate()
	}
	if err != nil {
		return s.at(index), Result{Err: err, Index: index}
	}
	next, res := commands[c.Type()].apply(s, index, c)
	res.Index = index
	if res.Err != nil {
		return s.at(index), res
	}
	return next, res
}

func portTaken(port int, owner string) error {
	return fmt.Errorf("%w: port %d belongs to route %q", ErrPortTaken, port, owner)
}

// notOwner refuses a scoped command on a route scope does not own. Nil
// when the command is not scoped or the route is scope's.
func notOwner(scope string, r *Route) error {
	if scope == "" || r == nil || r.Token == scope {
		return nil
	}
	owner := "no token"
	if r.Token != "" {
		owner = "token " + r.Token
	}
	return fmt.Errorf("%w: route %q on port %d belongs to %s, not token %s", ErrForbidden, r.Name, r.Port, owner, scope)
}

func routeNotFound(port int) error {
	return fmt.Errorf("%w: no route on port %d", ErrNotFound, port)
}

func result(r *Route) Result {
	c := r.Clone()
	return Result{Route: &c}
}

func (s *State) replaceTable(index uint64, c *ReplaceTable) (*State, Result) {
	next, err := NewState(index, c.Routes)
	return next, Result{Err: err}
}

func (s *State) upsertRoute(index uint64, c *UpsertRoute) (*State, Result) {
	r := c.Route // already a private, validated copy
	r.Implicit = false
	if err := notOwner(c.Scope, s.get(r.Port)); err != nil {
		return nil, Result{Err: err}
	}
	if c.Scope != "" {
		r.Token = c.Scope
	}
	if old := s.get(r.Port); old != nil && old.Name != r.Name && !c.Force {
		return nil, Result{Err: portTaken(r.Port, old.Name)}
	}
	return s.with(index, r.Port, &r), result(&r)
}

func (s *State) deleteRoute(index uint64, c *DeleteRoute) (*State, Result) {
	old := s.get(c.Port)
	switch {
	case old == nil:
		return nil, Result{Err: routeNotFound(c.Port)}
	case c.Name != "" && old.Name != c.Name:
		return nil, Result{Err: portTaken(c.Port, old.Name)}
	}
	if err := notOwner(c.Scope, old); err != nil {
		return nil, Result{Err: err}
	}
	return s.with(index, c.Port, nil), Result{Deleted: true}
}

func (s *State) registerBackend(index uint64, c *RegisterBackend) (*State, Result) {
	var r Route
	switch old := s.get(c.Port); {
	case old == nil && c.Create == nil:
		return nil, Result{Err: routeNotFound(c.Port)}
	case old == nil:
		r = *c.Create // private, validated copy
		r.Implicit = true
		if c.Scope != "" {
			r.Token = c.Scope
		}
	case c.Name != "" && old.Name != c.Name:
		return nil, Result{Err: portTaken(c.Port, old.Name)}
	case notOwner(c.Scope, old) != nil:
		return nil, Result{Err: notOwner(c.Scope, old)}
	default:
		r = old.Clone()
	}
	i, found := slices.BinarySearchFunc(r.Backends, c.Backend, CompareBackends)
	switch {
	case found: // refresh: owner and lease (ExpiresAt, TTL) are the registrant's
		r.Backends[i] = c.Backend
	case len(r.Backends) >= MaxBackendsPerRoute:
		return nil, Result{Err: invalid("route on port %d already has %d backends, at most %d allowed",
			c.Port, len(r.Backends), MaxBackendsPerRoute)}
	default:
		r.Backends = slices.Insert(r.Backends, i, c.Backend)
	}
	return s.with(index, c.Port, &r), result(&r)
}

func (s *State) deregisterBackend(index uint64, c *DeregisterBackend) (*State, Result) {
	old := s.get(c.Port)
	switch {
	case old == nil:
		return nil, Result{Err: routeNotFound(c.Port)}
	case c.Name != "" && old.Name != c.Name:
		return nil, Result{Err: portTaken(c.Port, old.Name)}
	}
	if err := notOwner(c.Scope, old); err != nil {
		return nil, Result{Err: err}
	}
	key := Backend{Address: c.Address, Port: c.BackendPort}
	i, found := slices.BinarySearchFunc(old.Backends, key, CompareBackends)
	if !found {
		return nil, Result{Err: fmt.Errorf("%w: backend %s is not in route %q on port %d",
			ErrNotFound, key.Key(), old.Name, c.Port)}
	}
	if old.Implicit && len(old.Backends) == 1 {
		return s.with(index, c.Port, nil), Result{Deleted: true}
	}
	r := old.Clone()
	r.Backends = slices.Delete(r.Backends, i, i+1)
	return s.with(index, c.Port, &r), result(&r)
}

func expired(b Backend, now time.Time) bool {
	return !b.ExpiresAt.IsZero() && !b.ExpiresAt.After(now)
}

// expireLeases walks routes in port order (the slice is sorted), so every
// node removes the same backends and routes. With only set, just the
// backends it names may go (the map is only looked up, never iterated).
func (s *State) expireLeases(index uint64, now time.Time, only []LeaseRef) (*State, Result) {
	var pick map[LeaseRef]bool
	if len(only) > 0 {
		pick = make(map[LeaseRef]bool, len(only))
		for _, ref := range only {
			pick[ref] = true
		}
	}
	next := &State{Index: index, routes: make([]*Route, 0, len(s.routes))}
	removed := 0
	for _, r := range s.routes {
		expired := func(b Backend, now time.Time) bool {
			return expired(b, now) && (pick == nil || pick[LeaseRef{Port: r.Port, Address: b.Address, BackendPort: b.Port}])
		}
		n := 0
		for _, b := range r.Backends {
			if expired(b, now) {
				n++
			}
		}
		removed += n
		if n == 0 {
			next.routes = append(next.routes, r)
			next.backends += len(r.Backends)
			continue
		}
		if r.Implicit && n == len(r.Backends) {
			continue
		}
		nr := *r
		nr.Backends = make([]Backend, 0, len(r.Backends)-n)
		for _, b := range r.Backends {
			if !expired(b, now) {
				nr.Backends = append(nr.Backends, b)
			}
		}
		next.routes = append(next.routes, &nr)
		next.backends += len(nr.Backends)
	}
	if removed == 0 {
		return s.at(index), Result{}
	}
	return next, Result{Expired: removed}
}

// SnapshotFormat is the version of the snapshot encoding WriteSnapshot
// produces. ReadSnapshot refuses any other, so a node never half-reads a
// snapshot written by a newer drawbridge.
//
// Format 2 adds Route.Token (the owner token). A format-1 snapshot has no
// owners and reads as it always did, so ReadSnapshot takes both. Format 3
// adds Route.CheckPort and Route.CheckMode; an older snapshot is read
// without them (as the build that wrote it read it).
const SnapshotFormat = 3

// oldestSnapshotFormat is the oldest format ReadSnapshot still reads.
const oldestSnapshotFormat = 1

// WriteSnapshot encodes s as one JSON object:
// {"format":1,"index":N,"routes":[...]} followed by a newline. Routes are
// written one at a time. It is what FSM snapshots persist.
func WriteSnapshot(w io.Writer, s *State) error {
	if _, err := fmt.Fprintf(w, `{"format":%d,"index":%d,"routes":`, SnapshotFormat, s.Index); err != nil {
		return err
	}
	if err := writeRoutesJSON(w, s.routes); err != nil {
		return err
	}
	_, err := io.WriteString(w, "}\n")
	return err
}

// ReadSnapshot decodes what WriteSnapshot wrote into a fresh State, validating
// every route (see NewState). Unknown fields are ignored, so a newer
// drawbridge may add some within a format; an unknown format is refused.
func ReadSnapshot(r io.Reader) (*State, error) {
	var file struct {
		Format *int            `json:"format"`
		Index  uint64          `json:"index"`
		Routes json.RawMessage `json:"routes"`
	}
	dec := json.NewDecoder(r)
	if err := dec.Decode(&file); err != nil {
		return nil, fmt.Errorf("read snapshot: %w", err)
	}
	switch {
	case file.Format == nil:
		return nil, errors.New("read snapshot: not a drawbridge snapshot (no format field)")
	case *file.Format < oldestSnapshotFormat || *file.Format > SnapshotFormat:
		return nil, fmt.Errorf("read snapshot: format %d is not supported (this drawbridge reads format %d; upgrade it)",
			*file.Format, SnapshotFormat)
	}
	if err := dec.Decode(new(json.RawMessage)); err != io.EOF {
		return nil, errors.New("read snapshot: unexpected data after the snapshot object")
	}
	var routes []Route
	if len(file.Routes) > 0 {
		if err := json.Unmarshal(file.Routes, &routes); err != nil {
			return nil, fmt.Errorf("read snapshot: routes: %w", err)
		}
	}
	if *file.Format < 3 {
		for i := range routes {
			routes[i] = withoutCheckFields(routes[i])
		}
	}
	s, err := NewState(file.Index, routes)
	if err != nil {
		return nil, fmt.Errorf("read snapshot: %w", err)
	}
	return s, nil
}

// Preview returns the table c would produce if it were the next entry,
// without changing s (and the domain error it would meet, if any). The
// leader uses it to admit a write before proposing it.
func (s *State) Preview(c Command) (*State, error) {
	next, res := s.apply(s.Index+1, c)
	return next, res.Err
}
