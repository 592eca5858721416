package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Defaults and bounds of a Registrar.
const (
	// registerBackoffBase is the first retry delay after a failure; it
	// doubles up to the renewal interval.
	registerBackoffBase = time.Second
	// DeregisterBudget bounds deregistration when a Registrar stops: well
	// inside the 30 s Kubernetes grants a pod between SIGTERM and SIGKILL.
	DeregisterBudget = 10 * time.Second
	// deregisterBackoffBase and deregisterBackoffCap pace retries of the
	// final deregistration within the budget.
	deregisterBackoffBase = 250 * time.Millisecond
	deregisterBackoffCap  = 2 * time.Second
)

// RegistrarConfig is the backend a Registrar keeps registered, and how.
type RegistrarConfig struct {
	// Interval is the time between renewals.
	Interval time.Duration
	// TTL is the lease each registration asks for; longer than Interval
	// (three intervals or more is safest), or the backend drops out
	// between renewals.
	TTL time.Duration
	// FrontendPort is the public port of the route.
	FrontendPort int
	// Name is the route's name; it claims the port.
	Name string
	// Address is the backend's IP literal, canonical (fsm.CanonicalAddress).
	Address string
	// BackendPort is the port traffic is sent to on Address.
	BackendPort int
	// Owner labels the backend; empty sends none.
	Owner string
	// Route options, used only when the registration creates the route.
	Balance       string
	Sticky        *bool
	ProxyProtocol string
	HealthCheck   *bool
}

// registerState is where the registrar stands, for logging state changes
// rather than heartbeats.
type registerState int

const (
	registerStarting registerState = iota
	registerOK
	registerFailing
)

// Registrar keeps one backend registered with a lease: it renews the lease
// every interval, fails over between members (through its Client), backs off
// on failure, and deregisters when Run's context ends. If the process dies
// without deregistering, the lease runs out and the cluster removes the
// backend. It logs state changes (registered, lost contact, recovered,
// lease ran out), not heartbeats. One goroutine drives it (Run); it is not
// safe for concurrent use.
type Registrar struct {
	cfg    RegistrarConfig
	client *Client
	log    *slog.Logger

	// Injected for tests.
	sleep             func(ctx context.Context, d time.Duration) error
	now               func() time.Time
	jitter            func() float64 // in [0, 1)
	backoffBase       time.Duration
	deregisterTimeout time.Duration

	state       registerState
	failKind    string    // kind of the current failure, see failureKind
	failingFrom time.Time // first failure of the current streak
	attempts    int       // failed attempts in the current streak
	leaseEnd    time.Time // when the last accepted lease ends (zero: none yet)
	expiredLog  bool      // lease expiry was logged in this streak
}

// NewRegistrar returns a Registrar of cfg's backend through c. cfg is
// expected valid (cmd/drawbridge's register command validates every
// setting before it builds one).
func NewRegistrar(cfg RegistrarConfig, c *Client, log *slog.Logger) *Registrar {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Registrar{
		cfg:               cfg,
		client:            c,
		log:               log,
		sleep:             sleepContext,
		now:               time.Now,
		jitter:            rand.Float64,
		backoffBase:       registerBackoffBase,
		deregisterTimeout: DeregisterBudget,
	}
}

// sleepContext waits d or until ctx ends.
func sleepContext(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Run registers, renews until ctx ends, then deregisters (within
// DeregisterBudget, on a context of its own) and returns nil: the end of
// ctx is a normal end.
func (r *Registrar) Run(ctx context.Context) error {
	r.log.Info("starting", "name", r.cfg.Name, "frontend_port", r.cfg.FrontendPort,
		"backend", r.backendKey(), "members", strings.Join(r.client.Members(), ","),
		"interval", r.cfg.Interval, "ttl", r.cfg.TTL)
	failures := 0
	for ctx.Err() == nil {
		err := r.attempt(ctx)
		if ctx.Err() != nil {
			break
		}
		var wait time.Duration
		switch {
		case err == nil:
			failures = 0
			// Up to 10% early, so sidecars started together drift apart;
			// never late, so the lease margin is kept.
			wait = r.cfg.Interval - time.Duration(r.jitter()*float64(r.cfg.Interval)/10)
		case refused(err):
			// The cluster answered and refused; an operator has to act
			// (free the port, fix the token). Ask again each interval.
			wait = r.cfg.Interval
		default:
			wait = r.backoff(failures, min(r.backoffBase, r.cfg.Interval), r.cfg.Interval)
			failures++
		}
		if r.sleep(ctx, wait) != nil {
			break
		}
	}
	r.deregister()
	return nil
}

// refused reports whether err is an answer another member or a later
// attempt would not change.
func refused(err error) bool {
	var e *Error
	return errors.As(err, &e) && !e.Retryable()
}

// backoff is the n-th retry delay: base doubling up to ceiling, with the
// upper half jittered so retrying clients spread out.
func (r *Registrar) backoff(n int, base, ceiling time.Duration) time.Duration {
	d := base
	for i := 0; i < n && d < ceiling; i++ {
		d *= 2
	}
	d = min(d, ceiling)
	return d/2 + time.Duration(r.jitter()*float64(d/2))
}

// attempt registers once through the client's member walk.
func (r *Registrar) attempt(ctx context.Context) error {
	body, err := json.Marshal(Registration{
		Address: r.cfg.Address, Port: r.cfg.BackendPort, Owner: r.cfg.Owner,
		TTL: r.cfg.TTL.String(), Name: r.cfg.Name, Create: true,
		Balance: r.cfg.Balance, Sticky: r.cfg.Sticky, ProxyProtocol: r.cfg.ProxyProtocol, HealthCheck: r.cfg.HealthCheck,
	})
	if err != nil {
		return err
	}
	started := r.now()
	_, err = r.client.Try(ctx, http.MethodPost, portPath(r.cfg.FrontendPort)+"/backends", body)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err == nil {
		r.succeeded(started)
		return nil
	}
	err = r.explain(err)
	r.failed(err)
	return err
}

// succeeded records an accepted registration sent at started and logs when
// that changes the state.
func (r *Registrar) succeeded(started time.Time) {
	r.leaseEnd = started.Add(r.cfg.TTL)
	switch r.state {
	case registerStarting:
		r.log.Info("registered", "name", r.cfg.Name, "frontend_port", r.cfg.FrontendPort,
			"backend", r.backendKey(), "member", r.client.Member(), "ttl", r.cfg.TTL)
	case registerFailing:
		r.log.Info("recovered", "member", r.client.Member(),
			"failed_for", r.now().Sub(r.failingFrom).Round(time.Millisecond), "failed_attempts", r.attempts)
	default:
		r.log.Debug("renewed", "member", r.client.Member())
	}
	r.state, r.failKind, r.attempts, r.expiredLog = registerOK, "", 0, false
}

// failed records a failed attempt and logs when the state or the kind of
// failure changes, and once when the lease runs out meanwhile.
func (r *Registrar) failed(err error) {
	kind := failureKind(err)
	if r.state != registerFailing {
		r.failingFrom = r.now()
	}
	r.attempts++
	attrs := append([]any{"reason", errString(err)}, r.leaseAttrs()...)
	level := slog.LevelWarn
	if refused(err) {
		level = slog.LevelError
	}
	switch {
	case r.state == registerOK:
		r.log.Log(context.Background(), level, "lost contact, retrying", attrs...)
	case r.state == registerStarting:
		r.log.Log(context.Background(), level, "cannot register yet, retrying", attrs...)
	case kind != r.failKind:
		r.log.Log(context.Background(), level, "still failing, for another reason", attrs...)
	}
	r.state, r.failKind = registerFailing, kind
	if !r.expiredLog && !r.leaseEnd.IsZero() && !r.now().Before(r.leaseEnd) {
		r.expiredLog = true
		r.log.Error("lease ran out: the backend is no longer routed until a registration succeeds",
			"backend", r.backendKey(), "lease_ended", r.leaseEnd.Format(time.RFC3339))
	}
}

// failureKind groups failures for logging: a change of kind is a state
// change.
func failureKind(err error) string {
	var e *Error
	switch {
	case !errors.As(err, &e):
		return "error"
	case e.Status == 0:
		return "unreachable"
	}
	return strconv.Itoa(e.Status)
}

// deregister removes the backend, trying every member in turn, pausing
// between rounds, until one confirms or deregisterTimeout passes. A missing
// backend, or a port that now belongs to another route, counts as done.
func (r *Registrar) deregister() {
	ctx, cancel := context.WithTimeout(context.Background(), r.deregisterTimeout)
	defer cancel()
	p := DeregisterPath(r.cfg.FrontendPort, r.cfg.Address, r.cfg.BackendPort, r.cfg.Name)
	members := r.client.Members()
	first := r.client.current()
	var last error
	for round := 0; ; round++ {
		for i := range members {
			idx := (first + i) % len(members)
			_, err := r.client.Send(ctx, idx, http.MethodDelete, p, nil)
			var e *Error
			switch {
			case err == nil:
				r.log.Info("deregistered", "backend", r.backendKey(), "frontend_port", r.cfg.FrontendPort,
					"member", members[idx])
				return
			case errors.As(err, &e) && (e.Status == http.StatusNotFound || e.Status == http.StatusConflict):
				r.log.Info("deregistered: backend already gone", "backend", r.backendKey(),
					"frontend_port", r.cfg.FrontendPort, "member", members[idx], "answer", e.Message)
				return
			case refused(err):
				r.log.Error("deregister refused; the lease will expire instead",
					append([]any{"reason", r.explain(err).Error()}, r.leaseAttrs()...)...)
				return
			}
			last = err
			if ctx.Err() != nil {
				break
			}
		}
		if ctx.Err() != nil || r.sleep(ctx, r.backoff(round, deregisterBackoffBase, deregisterBackoffCap)) != nil {
			r.log.Error("deregister failed; the lease will expire instead",
				append([]any{"reason", errString(last), "gave_up_after", r.deregisterTimeout}, r.leaseAttrs()...)...)
			return
		}
	}
}

// leaseAttrs are log attributes for when the last accepted lease ends, if
// there was one.
func (r *Registrar) leaseAttrs() []any {
	if r.leaseEnd.IsZero() {
		return nil
	}
	return []any{"lease_ends", r.leaseEnd.Format(time.RFC3339)}
}

// backendKey is the backend as the API names it: ip:port or [ipv6]:port.
func (r *Registrar) backendKey() string { return BackendKey(r.cfg.Address, r.cfg.BackendPort) }

// routeOwnerRE finds the owning route's name in a 409 answer.
var routeOwnerRE = regexp.MustCompile(`belongs to route "([^"]*)"`)

// explain words a refusal for the operator of a sidecar: whose port it is,
// or which token to check. Other errors come back unchanged.
func (r *Registrar) explain(err error) error {
	var e *Error
	if !errors.As(err, &e) {
		return err
	}
	switch e.Status {
	case http.StatusConflict:
		if m := routeOwnerRE.FindStringSubmatch(e.Message); m != nil {
			return &explained{err: e, msg: fmt.Sprintf("port %d owned by %q, another route (HTTP 409 from %s: %s)", r.cfg.FrontendPort, m[1], e.Member, e.Message)}
		}
		return &explained{err: e, msg: fmt.Sprintf("port %d owned by another route (HTTP 409 from %s: %s)", r.cfg.FrontendPort, e.Member, e.Message)}
	case http.StatusUnauthorized, http.StatusForbidden:
		return &explained{err: e, msg: fmt.Sprintf("token refused by %s (HTTP %d: %s): check DRAWBRIDGE_API_TOKEN / WEBHOOK_TOKEN", e.Member, e.Status, e.Message)}
	}
	return err
}

// explained is an *Error with a message for the sidecar's operator.
type explained struct {
	err *Error
	msg string
}

func (x *explained) Error() string { return x.msg }

// Unwrap returns the *Error explained, so errors.As still finds it.
func (x *explained) Unwrap() error { return x.err }
