package k8s

import (
	"context"
	"errors"
	"fmt"
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

// DeleteRoute implements Routes. A route that is gone (404), now named
// otherwise (409) or owned by another token (403 not_owner: the port was
// freed and taken by someone else since the list) is not ours to delete.
func (a APIRoutes) DeleteRoute(ctx context.Context, port int, name string) error {
	err := a.C.DeleteRoute(ctx, port, name)
	if s := client.StatusOf(err); s == http.StatusNotFound || s == http.StatusConflict || codeOf(err) == client.CodeNotOwner {
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

// refusal classifies an error from Routes. Decisions that retrying soon
// will not change are reported on the Service:
//   - ReasonPortConflict: the port belongs to a route of another name (409,
//     seen with an admin token) or to another token's route (403
//     not_owner: a register token sees only its own routes, so it learns of
//     the other route only from this answer);
//   - ReasonForbidden: the token's scope refuses it (403: a port outside
//     its ports, a name outside its globs, a backend outside its CIDRs);
//   - ReasonUnauthorized: drawbridge does not know the token (403
//     invalid_token; 401 without one);
//   - ReasonRefused: anything else drawbridge refused (400: the cluster's
//     backend policy, a reserved port, a limit, an invalid route).
//
// Anything else (no member reachable, no leader, 5xx, 429) is retried with
// backoff.
func refusal(err error) (reason string, refused bool) {
	var e *client.Error
	if !errors.As(err, &e) || e.Retryable() || e.Status == 0 {
		return "", false
	}
	switch {
	case e.Status == http.StatusConflict || e.Code == client.CodePortTaken || e.Code == client.CodeNotOwner:
		return ReasonPortConflict, true
	case e.Status == http.StatusUnauthorized || e.Code == client.CodeInvalidToken:
		return ReasonUnauthorized, true
	case e.Status == http.StatusForbidden:
		return ReasonForbidden, true
	}
	return ReasonRefused, true
}

// codeOf returns the API's code in err's chain, "" when none.
func codeOf(err error) string {
	var e *client.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// apiMessage is what drawbridge said, without which member said it: the
// Service's condition must not change when the client fails over.
func apiMessage(err error) string {
	var e *client.Error
	if errors.As(err, &e) && e.Status != 0 {
		return fmt.Sprintf("HTTP %d: %s", e.Status, e.Message)
	}
	return err.Error()
}
