package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

// Applier commits a command through the cluster. It returns once the command
// is committed and applied on this node (Result carries the FSM's outcome,
// including domain errors such as fsm.ErrPortTaken), or an error when it could
// not be committed at all: no leader, no quorum, timeout, shutdown. The API
// answers that error with 503 and the error's message, so the message should
// tell an operator what is wrong and how to recover.
type Applier interface {
	Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error)
}

// StateReader exposes this node's applied route table. State must never block;
// it may return nil before the first state is known (treated as empty).
type StateReader interface {
	State() *fsm.State
}

// StatusSource reports this node's view of the cluster and of HAProxy, for
// GET /v1/status and GET /readyz. It must be cheap: it is called per request.
type StatusSource interface {
	Status() Status
}

// Defaults applied by DefaultConfig and, for fields whose zero value is
// meaningless, by New.
const (
	DefaultLegacyHeader      = "X-Funkypenguin-Token"
	DefaultMaxBodyBytes      = 64 << 10
	DefaultMaxSnapshotBytes  = 4 << 20
	DefaultHookLease         = 30 * time.Minute
	DefaultApplyTimeout      = 10 * time.Second
	DefaultReadHeaderTimeout = 5 * time.Second
	DefaultReadTimeout       = 30 * time.Second
	DefaultWriteTimeout      = 30 * time.Second
	DefaultIdleTimeout       = 2 * time.Minute
	DefaultShutdownTimeout   = 15 * time.Second
	// DefaultHoldTimeout is how long a write waits for a leader during an
	// election before it is answered 503 (Consul's rpc_hold_timeout).
	DefaultHoldTimeout = 7 * time.Second

	DefaultMaxRoutes           = 1000
	DefaultMaxBackendsPerRoute = 64
	DefaultMaxBackends         = 4000
	DefaultMaxTTL              = 24 * time.Hour
	DefaultRate                = 20
	DefaultBurst               = 100
)

// Limits bound what writers can make the cluster hold and how fast. They are
// checked on the leader before a command is proposed.
type Limits struct {
	// MaxRoutes bounds the routes in the table.
	MaxRoutes int
	// MaxBackendsPerRoute bounds one route's backends (at most
	// fsm.MaxBackendsPerRoute).
	MaxBackendsPerRoute int
	// MaxBackends bounds the backends over all routes.
	MaxBackends int
	// MaxTTL bounds a backend lease (and the hook's lease).
	MaxTTL time.Duration
	// Rate is each token's sustained request rate per second, on every
	// node; 0 turns rate limiting off. Burst is its bucket size.
	Rate  float64
	Burst int
}

// DefaultLimits are drawbridge's limits: sized so that a full table still
// renders, validates and reloads on a 1 GB node.
func DefaultLimits() Limits {
	return Limits{
		MaxRoutes:           DefaultMaxRoutes,
		MaxBackendsPerRoute: DefaultMaxBackendsPerRoute,
		MaxBackends:         DefaultMaxBackends,
		MaxTTL:              DefaultMaxTTL,
		Rate:                DefaultRate,
		Burst:               DefaultBurst,
	}
}

// Config is the API's typed configuration, filled by cmd/ from file, env and
// flags. Start from DefaultConfig: HookLease, MetricsPublic and Limits.Rate
// are taken literally by New (0 and false are meaningful), while zero
// durations, sizes, limits and the legacy header name are replaced by their
// defaults.
type Config struct {
	// Tokens are single-token secrets (api.token, the recipe's shared
	// secret): each is an admin token named LegacyTokenName ("legacy",
	// "legacy-2", …). Kept so existing sidecars work unchanged.
	Tokens []string
	// ScopedTokens are named tokens with a role (api.tokens). With Tokens,
	// at least one token is required: New refuses to build an API anyone
	// could write to. SetTokens replaces both on a reload.
	ScopedTokens []Token
	// LegacyHeader is the header the recipe's sidecars send their token in,
	// accepted besides "Authorization: Bearer" and X-Drawbridge-Token.
	LegacyHeader string
	// MaxBodyBytes bounds a request body; larger bodies get 413.
	MaxBodyBytes int64
	// MaxSnapshotBytes bounds the body of POST /v1/snapshot (a whole route
	// table), which MaxBodyBytes would refuse; larger snapshots get 413.
	MaxSnapshotBytes int64
	// HookLease is the lease given to backends registered through the
	// recipe's hook, which re-posts every REPEAT_INTERVAL: a pod that died
	// stops refreshing and its backend expires. 0 means hook registrations
	// never expire. It must comfortably exceed the sidecars' interval.
	HookLease time.Duration
	// ReservedPorts are public ports no route may use (this node's API, raft
	// and gossip ports and the deny list); refused with 400 before
	// proposing. Every member's API, raft and gossip ports (from
	// Deps.Cluster) are refused as well.
	ReservedPorts fsm.PortRanges
	// OwnEndpoints are this node's listeners, refused as backends (and
	// their ports as routes) even before the cluster view knows them.
	OwnEndpoints []Endpoint
	// BackendPolicy decides which backend addresses are allowed.
	BackendPolicy BackendPolicy
	// Limits bound routes, backends, leases and request rates.
	Limits Limits
	// ApplyTimeout bounds how long a write waits for its commit.
	ApplyTimeout time.Duration
	// TLSCertFile and TLSKeyFile, when both set, make Serve speak HTTPS. The
	// pair is reloaded when either file changes, so renewals need no restart.
	TLSCertFile string
	TLSKeyFile  string
	// HTTP server timeouts. WriteTimeout must exceed ApplyTimeout so a
	// committed write can still be answered.
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	// ShutdownTimeout bounds the graceful shutdown when Serve's context ends.
	ShutdownTimeout time.Duration
	// HoldTimeout is how long a write (or a forwarded write) is held while
	// no leader is known (an election, a dev node's first second) before
	// it is answered 503. 0 means DefaultHoldTimeout; negative: no hold.
	// Reads never wait: they answer from local state.
	HoldTimeout time.Duration
	// MetricsPublic serves /metrics without a token; false (the default)
	// asks for a token of any role. cmd/ sets it when the API listens on
	// loopback only.
	MetricsPublic bool
}

// DefaultConfig returns drawbridge's defaults (no tokens, no TLS).
func DefaultConfig() Config {
	return Config{
		LegacyHeader:      DefaultLegacyHeader,
		MaxBodyBytes:      DefaultMaxBodyBytes,
		MaxSnapshotBytes:  DefaultMaxSnapshotBytes,
		HookLease:         DefaultHookLease,
		ApplyTimeout:      DefaultApplyTimeout,
		ReadHeaderTimeout: DefaultReadHeaderTimeout,
		ReadTimeout:       DefaultReadTimeout,
		WriteTimeout:      DefaultWriteTimeout,
		IdleTimeout:       DefaultIdleTimeout,
		ShutdownTimeout:   DefaultShutdownTimeout,
		HoldTimeout:       DefaultHoldTimeout,
		Limits:            DefaultLimits(),
	}
}

// withDefaults fills zero values that have no meaning of their own.
func (c Config) withDefaults() Config {
	if c.LegacyHeader == "" {
		c.LegacyHeader = DefaultLegacyHeader
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxSnapshotBytes == 0 {
		c.MaxSnapshotBytes = DefaultMaxSnapshotBytes
	}
	if c.ApplyTimeout == 0 {
		c.ApplyTimeout = DefaultApplyTimeout
	}
	if c.ReadHeaderTimeout == 0 {
		c.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = DefaultReadTimeout
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = max(DefaultWriteTimeout, c.ApplyTimeout+5*time.Second)
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.HoldTimeout == 0 {
		c.HoldTimeout = DefaultHoldTimeout
	}
	if c.Limits.MaxRoutes == 0 {
		c.Limits.MaxRoutes = DefaultMaxRoutes
	}
	if c.Limits.MaxBackendsPerRoute == 0 {
		c.Limits.MaxBackendsPerRoute = DefaultMaxBackendsPerRoute
	}
	if c.Limits.MaxBackends == 0 {
		c.Limits.MaxBackends = DefaultMaxBackends
	}
	if c.Limits.MaxTTL == 0 {
		c.Limits.MaxTTL = DefaultMaxTTL
	}
	c.LegacyHeader = http.CanonicalHeaderKey(c.LegacyHeader)
	return c
}

// Validate reports what is wrong with c (after defaults are applied by New).
// It never mentions token values.
func (c Config) Validate() error {
	var errs []error
	if _, err := newTokenSet(c.allTokens()); err != nil {
		errs = append(errs, err)
	}
	for i, t := range c.Tokens {
		if strings.TrimSpace(t) == "" {
			errs = append(errs, fmt.Errorf("token %d is empty", i+1))
		} else if strings.ContainsFunc(t, func(r rune) bool { return r < 0x21 || r == 0x7f }) {
			errs = append(errs, fmt.Errorf("token %d contains whitespace or control characters (cannot be sent in a header)", i+1))
		}
	}
	if c.LegacyHeader != "" && !validHeaderName(c.LegacyHeader) {
		errs = append(errs, fmt.Errorf("legacy header %q is not a valid header name", c.LegacyHeader))
	}
	if c.MaxBodyBytes < 0 {
		errs = append(errs, fmt.Errorf("max body bytes %d is negative", c.MaxBodyBytes))
	}
	if c.MaxSnapshotBytes < 0 {
		errs = append(errs, fmt.Errorf("max snapshot bytes %d is negative", c.MaxSnapshotBytes))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"hook lease", c.HookLease},
		{"apply timeout", c.ApplyTimeout},
		{"read header timeout", c.ReadHeaderTimeout},
		{"read timeout", c.ReadTimeout},
		{"write timeout", c.WriteTimeout},
		{"idle timeout", c.IdleTimeout},
		{"shutdown timeout", c.ShutdownTimeout},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %s is negative", d.name, d.v))
		}
	}
	if c.WriteTimeout > 0 && c.ApplyTimeout > 0 && c.WriteTimeout <= c.ApplyTimeout {
		errs = append(errs, fmt.Errorf("write timeout %s must exceed apply timeout %s, or committed writes could not be answered",
			c.WriteTimeout, c.ApplyTimeout))
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, errors.New("TLS needs both a certificate file and a key file"))
	}
	l := c.Limits
	if l.MaxRoutes < 0 || l.MaxBackends < 0 || l.MaxBackendsPerRoute < 0 || l.MaxTTL < 0 || l.Rate < 0 || l.Burst < 0 {
		errs = append(errs, errors.New("limits must not be negative"))
	}
	if l.MaxBackendsPerRoute > fsm.MaxBackendsPerRoute {
		errs = append(errs, fmt.Errorf("limits.max_backends_per_route %d is above the most a route can hold (%d)", l.MaxBackendsPerRoute, fsm.MaxBackendsPerRoute))
	}
	if l.MaxTTL > maxTTL {
		errs = append(errs, fmt.Errorf("limits.max_ttl %s is above %s", l.MaxTTL, maxTTL))
	}
	if l.MaxTTL > 0 && c.HookLease > l.MaxTTL {
		errs = append(errs, fmt.Errorf("hook lease %s is above limits.max_ttl %s", c.HookLease, l.MaxTTL))
	}
	return errors.Join(errs...)
}

// allTokens is the legacy tokens, then the scoped ones.
func (c Config) allTokens() []Token {
	return append(LegacyTokens(c.Tokens), c.ScopedTokens...)
}

func validHeaderName(s string) bool {
	for _, r := range s {
		if r > 0x7e || r <= ' ' || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r) {
			return false
		}
	}
	return s != ""
}

// Deps are the API's collaborators. Applier, State and Status are required;
// the rest are optional and only matter in a cluster: without them a single
// node serves every request itself, exactly as before clustering.
type Deps struct {
	// Applier commits writes on this node. With Leader set, only the leader
	// is asked to (followers forward the HTTP request instead); an Applier
	// that finds itself no longer leader (a race with an election) returns
	// an error and the write is answered 503, which clients retry.
	Applier Applier
	// State reads this node's applied route table.
	State StateReader
	// Status reports node, raft and HAProxy status.
	Status StatusSource
	// Logger receives request and auth logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the API's metrics; nil means a private registry.
	// The global registry is never used implicitly.
	Registerer prometheus.Registerer
	// Gatherer serves /metrics; nil means Registerer when it is also a
	// Gatherer (as *prometheus.Registry is).
	Gatherer prometheus.Gatherer
	// Now stamps lease ends; nil means time.Now.
	Now func() time.Time

	// Leader tells where writes go. nil: this node commits every write
	// itself (a single node).
	Leader Leader
	// Consistency confirms leadership before a ?consistent=true read is
	// served from the leader's state. nil: such reads are served locally
	// once Leader (if any) says this node leads.
	Consistency ConsistencyChecker
	// AppliedWaiter serves ?wait=applied on writes. nil: the write waits
	// for this node's own HAProxy (Status().HAProxy.AppliedIndex).
	AppliedWaiter AppliedWaiter
	// Cluster answers GET /v1/cluster. nil: a one-member cluster built from
	// Status.
	Cluster ClusterSource
	// Admitter refuses, before the log, a write whose table no node could
	// run (capacity admission); nil admits everything.
	Admitter Admitter
	// Peers removes raft voters (POST /v1/raft/remove-peer). nil: the
	// endpoint answers 501.
	Peers PeerRemover
	// Leases is the leader's mass-expiry guard, for GET /v1/leases and
	// POST /v1/leases/release. nil: nothing is ever held back.
	Leases LeaseGuard
	// ForwardClient carries requests forwarded to the leader; the agent gives it
	// the TLS configuration peers' APIs need. nil means NewForwardClient(nil).
	// Each forwarded request carries its own deadline, so the client needs
	// no overall Timeout.
	ForwardClient *http.Client
}
