// Package fsm holds drawbridge's replicated route table and the commands that
// change it. It is pure: no clock, no network, no HAProxy. Every node applies the
// same committed commands in the same order and must reach the same state, so
// Apply never reads the time (leases carry leader-stamped instants), never
// iterates maps in random order, and never does IO.
package fsm

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"time"
)

// Balance algorithms a route may use. The list is closed: anything else is
// refused before it reaches the log, so no value can inject HAProxy syntax.
const (
	BalanceRoundRobin = "roundrobin"
	BalanceLeastConn  = "leastconn"
	BalanceSource     = "source"
	BalanceFirst      = "first"
	BalanceRandom     = "random"
)

// PROXY protocol versions that may be sent to backends ("" = off).
const (
	ProxyProtocolOff = ""
	ProxyProtocolV1  = "v1"
	ProxyProtocolV2  = "v2"
)

// Health-check modes a route may use ("" = TCP connect). The list is closed.
const (
	CheckModeTCP  = ""
	CheckModeHTTP = "http"
)

// ModeTCP is the only proxy mode drawbridge renders today.
const ModeTCP = "tcp"

// MaxBackendsPerRoute bounds one route's backend set, so a runaway registrar
// cannot grow a single HAProxy backend without limit.
const MaxBackendsPerRoute = 256

// Domain errors. They come back as the Result of Apply (never a panic) and map
// to HTTP statuses in api/.
var (
	// ErrInvalid wraps every validation failure (HTTP 400).
	ErrInvalid = errors.New("invalid")
	// ErrPortTaken means another route name already owns the public port (HTTP 409).
	ErrPortTaken = errors.New("port taken")
	// ErrNotFound means the route or backend does not exist (HTTP 404).
	ErrNotFound = errors.New("not found")
	// ErrUnknownCommand means the entry was written by a newer drawbridge and
	// this node cannot interpret it.
	ErrUnknownCommand = errors.New("unknown command")
	// ErrForbidden means a scoped command tried to change a route another
	// token owns (HTTP 403).
	ErrForbidden = errors.New("forbidden")
)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// Backend is one server behind a route: an IP literal and a port, who
// registered it, and when its lease ends (zero = no lease).
type Backend struct {
	Address   string    `json:"address"`
	Port      int       `json:"port"`
	Owner     string    `json:"owner,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// TTL is the lease length the registrar asked for. The leader waits at
	// least this long after an election before expiring anything, so owners
	// get one full lease to find the new leader.
	TTL time.Duration `json:"ttl,omitempty"`
}

// Key identifies a backend within its route: "addr:port", or "[v6]:port".
// It never panics; an address that does not parse (a backend that has not
// been validated yet) is joined as given, so it still yields a usable label.
func (b Backend) Key() string {
	if a, err := netip.ParseAddr(b.Address); err == nil && b.Port >= 0 && b.Port <= 65535 {
		return netip.AddrPortFrom(a, uint16(b.Port)).String()
	}
	return net.JoinHostPort(b.Address, strconv.Itoa(b.Port))
}

// CompareBackends orders backends by address then port, the order in which a
// route keeps them. Addresses compare as netip.Addr does: every IPv4 address
// before every IPv6 one, then by address bytes (so 10.0.0.9 < 10.0.0.10, unlike
// text order). Addresses that do not parse sort after all valid ones, by text,
// so the order stays total. It returns -1, 0 or +1 like cmp.Compare.
func CompareBackends(a, b Backend) int {
	aa, aerr := netip.ParseAddr(a.Address)
	ba, berr := netip.ParseAddr(b.Address)
	switch {
	case aerr == nil && berr == nil:
		if c := aa.Compare(ba); c != 0 {
			return c
		}
	case aerr == nil:
		return -1
	case berr == nil:
		return +1
	default:
		if c := cmp.Compare(a.Address, b.Address); c != 0 {
			return c
		}
	}
	return cmp.Compare(a.Port, b.Port)
}

// Route is one public port and where its traffic goes. Routes are keyed by
// Port; Name is the label that owns the port.
type Route struct {
	Port          int    `json:"port"`
	Name          string `json:"name"`
	Mode          string `json:"mode"`
	Balance       string `json:"balance"`
	Sticky        bool   `json:"sticky"`
	ProxyProtocol string `json:"proxy_protocol,omitempty"`
	HealthCheck   bool   `json:"health_check"`
	// CheckPort, when not 0, is the port health checks go to instead of
	// each backend's own port (kube-proxy's healthCheckNodePort).
	CheckPort int `json:"check_port,omitempty"`
	// CheckMode is how a backend is checked: "" connects over TCP; "http"
	// sends GET /healthz and wants status 200 (what kube-proxy answers
	// only on nodes with ready local endpoints).
	CheckMode string `json:"check_mode,omitempty"`
	// Implicit marks a route created by a backend registration (the recipe's
	// hook, the sidecar) rather than by PUT. An implicit route is removed when
	// its last backend goes, by deregistration or lease expiry; an explicit
	// one stays until it is deleted.
	Implicit bool `json:"implicit,omitempty"`
	// Token is the name of the API token that owns the route: the one that
	// created it (or last replaced it with PUT). A register token may change
	// only the routes it owns. Empty: made before scoped tokens, or
	// restored from a snapshot without owners; only an admin may change it.
	// Stamped by the leader into the command, so every node records the same.
	Token    string    `json:"token,omitempty"`
	Backends []Backend `json:"backends"`
}

// NewRoute returns a route with drawbridge's defaults: TCP, roundrobin,
// sticky by source (as the recipe did), health checks on.
func NewRoute(port int, name string) Route {
	return Route{
		Port:        port,
		Name:        name,
		Mode:        ModeTCP,
		Balance:     BalanceRoundRobin,
		Sticky:      true,
		HealthCheck: true,
		Backends:    []Backend{},
	}
}

// Clone returns a deep copy.
func (r Route) Clone() Route {
	c := r
	c.Backends = append([]Backend(nil), r.Backends...)
	if c.Backends == nil {
		c.Backends = []Backend{}
	}
	return c
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// ValidateName checks a route name or owner label.
func ValidateName(field, name string) error {
	if !nameRE.MatchString(name) {
		return invalid("%s %q must match [a-z0-9][a-z0-9._-]{0,62}", field, truncate(name))
	}
	return nil
}

// ValidatePort checks a TCP port number.
func ValidatePort(field string, port int) error {
	if port < 1 || port > 65535 {
		return invalid("%s %d out of range 1-65535", field, port)
	}
	return nil
}

// CanonicalAddress parses an IP literal (v4 or v6, no zone) and returns its
// canonical text. Hostnames are refused: a backend is where traffic goes, and
// resolving names at render time would make nodes disagree.
func CanonicalAddress(s string) (string, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return "", invalid("address %q is not an IP address", truncate(s))
	}
	a = a.Unmap()
	if a.IsUnspecified() || a.IsMulticast() {
		return "", invalid("address %q cannot be a backend", s)
	}
	return a.String(), nil
}

// Validate checks a backend in place, canonicalising its address and storing
// its lease end in UTC (so every node renders and hashes the same text).
func (b *Backend) Validate() error {
	addr, err := CanonicalAddress(b.Address)
	if err != nil {
		return err
	}
	b.Address = addr
	if !b.ExpiresAt.IsZero() {
		b.ExpiresAt = b.ExpiresAt.UTC()
	}
	if err := ValidatePort("backend port", b.Port); err != nil {
		return err
	}
	if b.TTL < 0 {
		return invalid("backend ttl %s is negative", b.TTL)
	}
	if b.Owner != "" {
		if err := ValidateName("owner", b.Owner); err != nil {
			return err
		}
	}
	return nil
}

// Validate checks every field of a route against the allow-lists. It
// canonicalises in place: backend addresses and leases (see Backend.Validate),
// backends sorted by CompareBackends, and a nil backend list made empty (so a
// route always encodes as "backends":[] and hashes the same everywhere).
func (r *Route) Validate() error {
	if err := ValidatePort("port", r.Port); err != nil {
		return err
	}
	if err := ValidateName("name", r.Name); err != nil {
		return err
	}
	if r.Token != "" {
		if err := ValidateName("token", r.Token); err != nil {
			return err
		}
	}
	if r.Mode != ModeTCP {
		return invalid("mode %q not supported (only tcp)", truncate(r.Mode))
	}
	switch r.Balance {
	case BalanceRoundRobin, BalanceLeastConn, BalanceSource, BalanceFirst, BalanceRandom:
	default:
		return invalid("balance %q must be one of roundrobin, leastconn, source, first, random", truncate(r.Balance))
	}
	switch r.ProxyProtocol {
	case ProxyProtocolOff, ProxyProtocolV1, ProxyProtocolV2:
	default:
		return invalid("proxy_protocol %q must be empty, v1 or v2", truncate(r.ProxyProtocol))
	}
	if r.CheckPort != 0 {
		if err := ValidatePort("check_port", r.CheckPort); err != nil {
			return err
		}
	}
	switch r.CheckMode {
	case CheckModeTCP, CheckModeHTTP:
	default:
		return invalid("check_mode %q must be empty (tcp) or http", truncate(r.CheckMode))
	}
	if !r.HealthCheck && (r.CheckPort != 0 || r.CheckMode != CheckModeTCP) {
		return invalid("check_port and check_mode need health_check on")
	}
	if len(r.Backends) > MaxBackendsPerRoute {
		return invalid("route has %d backends, at most %d allowed", len(r.Backends), MaxBackendsPerRoute)
	}
	for i := range r.Backends {
		if err := r.Backends[i].Validate(); err != nil {
			return err
		}
	}
	if r.Backends == nil {
		r.Backends = []Backend{}
	}
	slices.SortStableFunc(r.Backends, CompareBackends)
	for i := 1; i < len(r.Backends); i++ {
		if CompareBackends(r.Backends[i-1], r.Backends[i]) == 0 {
			return invalid("backend %s listed twice", r.Backends[i].Key())
		}
	}
	return nil
}

// truncate keeps error messages short when a caller sends a huge value.
func truncate(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
