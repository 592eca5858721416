package client

import (
	"context"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/fsm"
)

// RouteList is the route table as one member read it, at Index.
type RouteList struct {
	Index  uint64      `json:"index"`
	Routes []fsm.Route `json:"routes"`
}

// RouteSpec is the body of PUT /v1/routes/{port}: the whole route. Unset
// optional fields take the API's defaults (roundrobin, sticky, health checks
// on).
type RouteSpec struct {
	Name          string `json:"name"`
	Balance       string `json:"balance,omitempty"`
	Sticky        *bool  `json:"sticky,omitempty"`
	ProxyProtocol string `json:"proxy_protocol,omitempty"`
	HealthCheck   *bool  `json:"health_check,omitempty"`
	// CheckPort sends health checks to this port of every backend (0: the
	// backend's own port); CheckMode "http" checks by GET /healthz wanting
	// 200 (empty: TCP connect).
	CheckPort int           `json:"check_port,omitempty"`
	CheckMode string        `json:"check_mode,omitempty"`
	Backends  []BackendSpec `json:"backends"`
	// Force takes the port over from a route with another name.
	Force bool `json:"force,omitempty"`
}

// BackendSpec is one backend of a RouteSpec.
type BackendSpec struct {
	Address string `json:"address"`
	Port    int    `json:"port"`
	Owner   string `json:"owner,omitempty"`
}

// Registration is the body of POST /v1/routes/{port}/backends: one backend,
// with a lease when TTL is set, and the route to create when the port has
// none.
type Registration struct {
	Address string `json:"address"`
	Port    int    `json:"port"`
	Owner   string `json:"owner,omitempty"`
	// TTL is the lease ("90s"); empty: the backend never expires.
	TTL string `json:"ttl,omitempty"`
	// Name, when set, must be the route's name (409 otherwise).
	Name string `json:"name,omitempty"`
	// Create makes the route (implicitly: it goes with its last backend)
	// when the port has none, with the options below.
	Create        bool   `json:"create,omitempty"`
	Balance       string `json:"balance,omitempty"`
	Sticky        *bool  `json:"sticky,omitempty"`
	ProxyProtocol string `json:"proxy_protocol,omitempty"`
	HealthCheck   *bool  `json:"health_check,omitempty"`
}

// BackendRemoved answers a deregistration: the route as it remains, or nil
// with RouteDeleted when the route went with its last backend.
type BackendRemoved struct {
	Port         int        `json:"port"`
	Backend      string     `json:"backend"`
	Route        *fsm.Route `json:"route"`
	RouteDeleted bool       `json:"route_deleted"`
}

// WriteOption changes how a write is answered.
type WriteOption func(url.Values)

// WaitApplied makes a write answer only once every alive edge node's HAProxy
// runs it (?wait=applied), or 504 with the nodes still behind.
func WaitApplied() WriteOption { return func(q url.Values) { q.Set("wait", "applied") } }

// ReadOption changes how a read is served.
type ReadOption func(url.Values)

// Consistent serves a read from the leader after it confirms its leadership
// (?consistent=true), instead of from the asked member's applied table.
func Consistent() ReadOption { return func(q url.Values) { q.Set("consistent", "true") } }

func withQuery[O ~func(url.Values)](path string, q url.Values, opts []O) string {
	for _, o := range opts {
		o(q)
	}
	if len(q) == 0 {
		return path
	}
	return path + "?" + q.Encode()
}

// Routes lists the route table.
func (c *Client) Routes(ctx context.Context, opts ...ReadOption) (RouteList, error) {
	var out RouteList
	err := c.Do(ctx, http.MethodGet, withQuery("/v1/routes", url.Values{}, opts), nil, &out)
	return out, err
}

// Route returns the route on port; a missing route is an *Error with
// Status 404.
func (c *Client) Route(ctx context.Context, port int, opts ...ReadOption) (fsm.Route, error) {
	var out fsm.Route
	err := c.Do(ctx, http.MethodGet, withQuery(portPath(port), url.Values{}, opts), nil, &out)
	return out, err
}

// PutRoute creates or replaces the route on port and returns it as stored.
// Another route's port is an *Error with Status 409 unless spec.Force.
func (c *Client) PutRoute(ctx context.Context, port int, spec RouteSpec, opts ...WriteOption) (fsm.Route, error) {
	var out fsm.Route
	err := c.Do(ctx, http.MethodPut, withQuery(portPath(port), url.Values{}, opts), spec, &out)
	return out, err
}

// DeleteRoute removes the route on port. A non-empty name must be the
// route's (409 otherwise), so a caller never removes another's route.
func (c *Client) DeleteRoute(ctx context.Context, port int, name string, opts ...WriteOption) error {
	q := url.Values{}
	if name != "" {
		q.Set("name", name)
	}
	return c.Do(ctx, http.MethodDelete, withQuery(portPath(port), q, opts), nil, nil)
}

// RegisterBackend adds or refreshes one backend of the route on port and
// returns the route as stored.
func (c *Client) RegisterBackend(ctx context.Context, port int, reg Registration, opts ...WriteOption) (fsm.Route, error) {
	var out fsm.Route
	err := c.Do(ctx, http.MethodPost, withQuery(portPath(port)+"/backends", url.Values{}, opts), reg, &out)
	return out, err
}

// DeregisterBackend removes the backend address:backendPort from the route
// on port. A non-empty name must be the route's (409 otherwise).
func (c *Client) DeregisterBackend(ctx context.Context, port int, address string, backendPort int, name string, opts ...WriteOption) (BackendRemoved, error) {
	var out BackendRemoved
	err := c.Do(ctx, http.MethodDelete, DeregisterPath(port, address, backendPort, name, opts...), nil, &out)
	return out, err
}

// DeregisterPath is the path that deregisters address:backendPort from the
// route on port: /v1/routes/{port}/backends/{ip:port or [ipv6]:port}.
func DeregisterPath(port int, address string, backendPort int, name string, opts ...WriteOption) string {
	q := url.Values{}
	if name != "" {
		q.Set("name", name)
	}
	return withQuery(portPath(port)+"/backends/"+url.PathEscape(BackendKey(address, backendPort)), q, opts)
}

// BackendKey is a backend as the API names it: ip:port, or [ipv6]:port.
func BackendKey(address string, port int) string {
	a, err := netip.ParseAddr(address)
	if err != nil || port < 0 || port > 65535 {
		return address + ":" + strconv.Itoa(port)
	}
	return netip.AddrPortFrom(a, uint16(port)).String()
}

// Cluster returns the members, their raft and HAProxy state, and the
// floating IP, as the asked member sees them (GET /v1/cluster).
func (c *Client) Cluster(ctx context.Context) (api.ClusterStatus, error) {
	var out api.ClusterStatus
	err := c.Do(ctx, http.MethodGet, "/v1/cluster", nil, &out)
	return out, err
}

// Status returns the asked member's own status (GET /v1/status).
func (c *Client) Status(ctx context.Context) (api.Status, error) {
	var out api.Status
	err := c.Do(ctx, http.MethodGet, "/v1/status", nil, &out)
	return out, err
}
