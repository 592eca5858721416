package k8s

import (
	"context"
	"errors"
	"net/http"

	"github.com/drawbridge-lb/drawbridge/api/client"
	"github.com/drawbridge-lb/drawbridge/fsm"
)

// Routes is what the controller needs from drawbridge: the route table, and
// the floating IP that Services get as their external address.
type Routes interface {
	// ListRoutes returns every route in the table.
	ListRoutes(ctx context.Context) ([]fsm.Route, error)
	// PutRoute creates or replaces the route on r.Port, never taking the
	// port from a route with another name.
	PutRoute(ctx context.Context, r fsm.Route) error
	// DeleteRoute removes the route on port if it is still named name. A
	// route that is already gone, or now named otherwise, is left as it is.
	DeleteRoute(ctx context.Context, port int, name string) error
	// FloatingIP returns the address the cluster's floating IP provider
	// manages, "" when none is configured.
	FloatingIP(ctx context.Context) (string, error)
}

// APIRoutes is Routes over drawbridge's API, with the client's failover
// between members.
type APIRoutes struct {
	C *client.Client
}

var _ Routes = APIRoutes{}

// ListRoutes implements Routes.
func (a APIRoutes) ListRoutes(ctx context.Context) ([]fsm.Route, error) {
	l, err := a.C.Routes(ctx)
	return l.Routes, err
}

// PutRoute implements Routes. It never forces: a port owned by another
// name is a conflict (HTTP 409).
func (a APIRoutes) PutRoute(ctx context.Context, r fsm.Route) error {
	sticky, check := r.Sticky, r.HealthCheck
	spec := client.RouteSpec{Name: r.Name, Balance: r.Balance, Sticky: &sticky, ProxyProtocol: r.ProxyProtocol,
		HealthCheck: &check, CheckPort: r.CheckPort, CheckMode: r.CheckMode, Backends: []client.BackendSpec{}}
	for _, b := range r.Backends {
		spec.Backends = append(spec.Backends, client.BackendSpec{Address: b.Address, Port: b.Port, Owner: b.Owner})
	}
	_, err := a.C.PutRoute(ctx, r.Port, spec)
	return err
}

// DeleteRoute implements Routes.
func (a APIRoutes) DeleteRoute(ctx context.Context, port int, name string) error {
	err := a.C.DeleteRoute(ctx, port, name)
	if s := client.StatusOf(err); s == http.StatusNotFound || s == http.StatusConflict {
		return nil
	}
	return err
}

// FloatingIP implements Routes.
func (a APIRoutes) FloatingIP(ctx context.Context) (string, error) {
	st, err := a.C.Cluster(ctx)
	if err != nil || st.FloatingIP == nil {
		return "", err
	}
	return st.FloatingIP.Address, nil
}

// refusal classifies an error from Routes: a conflict (the port belongs to
// another route) or a refusal (a policy, the token's scope, an invalid
// route) is a decision that retrying soon will not change, and is reported
// on the Service; anything else (a node unreachable, no leader) is retried
// with backoff.
func refusal(err error) (reason string, refused bool) {
	var e *client.Error
	if !errors.As(err, &e) || e.Retryable() || e.Status == 0 {
		return "", false
	}
	switch e.Status {
	case http.StatusConflict:
		return ReasonPortConflict, true
	case http.StatusUnauthorized:
		return ReasonUnauthorized, true
	}
	return ReasonRefused, true
}
