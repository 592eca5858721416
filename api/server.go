// Package api is drawbridge's HTTP surface: the recipe-compatible webhook
// (POST /hooks/update-haproxy), the REST v1 route API, cluster status,
// snapshots, health and metrics. Every node serves it. Writes are committed
// by the leader: a follower authenticates the request, then forwards it to
// the leader's API (credentials and all, marked with ForwardedByHeader so it
// never hops twice) and streams the answer back; the answer comes once the
// change is committed, or with ?wait=applied once every edge node's HAProxy
// runs it. Reads come from this node's applied state; ?consistent=true
// asks the leader.
//
// The package knows nothing of raft or HAProxy: it defines the small
// interfaces it needs (Applier, StateReader, StatusSource, and for a cluster
// Leader, ConsistencyChecker, AppliedWaiter, ClusterSource), and internal/agent adapts
// the real components to them, so handlers are tested against fakes.
//
// Input is allow-listed before it is proposed: ports are whole numbers in
// range and not reserved, addresses are IP literals, names match the route
// name pattern, and each command is validated by fsm before it reaches the
// log. Nothing a client sends can render an invalid or injected HAProxy line.
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

// Server is the API. Build it with New, mount Handler, or run Serve.
type Server struct {
	cfg         Config
	applier     Applier
	stateSrc    StateReader
	statusSrc   StatusSource
	leader      Leader             // nil: this node commits every write
	consistency ConsistencyChecker // nil: nothing to verify
	waiter      AppliedWaiter      // nil: wait for this node's HAProxy
	cluster     ClusterSource      // nil: a cluster of one
	admitter    Admitter           // nil: every write fits
	peers       PeerRemover        // nil: membership is not changed here
	leases      LeaseGuard         // nil: no lease reaper
	client      *http.Client       // forwards to the leader
	log         *slog.Logger
	now         func() time.Time
	gatherer    prometheus.Gatherer

	tokens  tokenStore
	limiter *rateLimiter
	audits  *slog.Logger // one line per write
	metrics *metrics
	certs   *CertReloader          // nil: plain HTTP
	empty   *fsm.State             // served while the StateReader has none yet
	view    memberView             // the members' endpoints, parsed once per change
	self    atomic.Pointer[string] // this node's name, once known (selfName)

	mux       *http.ServeMux
	unmatched http.Handler
}

// New validates cfg and deps and builds the API. It refuses a configuration
// without a token, and fails when the TLS pair cannot be loaded.
func New(cfg Config, deps Deps) (*Server, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	switch {
	case deps.Applier == nil:
		return nil, errors.New("api: Deps.Applier is required")
	case deps.State == nil:
		return nil, errors.New("api: Deps.State is required")
	case deps.Status == nil:
		return nil, errors.New("api: Deps.Status is required")
	}
	s := &Server{
		cfg:         cfg,
		applier:     deps.Applier,
		stateSrc:    deps.State,
		statusSrc:   deps.Status,
		leader:      deps.Leader,
		consistency: deps.Consistency,
		waiter:      deps.AppliedWaiter,
		cluster:     deps.Cluster,
		admitter:    deps.Admitter,
		peers:       deps.Peers,
		leases:      deps.Leases,
		client:      deps.ForwardClient,
		log:         deps.Logger,
		now:         deps.Now,
		gatherer:    deps.Gatherer,
		empty:       &fsm.State{},
		mux:         http.NewServeMux(),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.audits = s.log.With("component", "audit")
	s.log = s.log.With("component", "api")
	if s.now == nil {
		s.now = time.Now
	}
	set, err := newTokenSet(cfg.allTokens())
	if err != nil {
		return nil, fmt.Errorf("api: %w", err) // Validate caught it; kept for safety
	}
	s.tokens.p.Store(set)
	s.limiter = newRateLimiter(cfg.Limits.Rate, cfg.Limits.Burst, s.now)
	if s.client == nil {
		s.client = NewForwardClient(nil)
	}
	reg := deps.Registerer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg = r
		if s.gatherer == nil {
			s.gatherer = r
		}
	}
	if s.gatherer == nil {
		g, ok := reg.(prometheus.Gatherer)
		if !ok {
			return nil, errors.New("api: Deps.Gatherer is required when Deps.Registerer is not a Gatherer")
		}
		s.gatherer = g
	}
	m, err := newMetrics(reg, s)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	s.metrics = m
	if cfg.TLSCertFile != "" {
		c, err := NewCertReloader(cfg.TLSCertFile, cfg.TLSKeyFile, s.log)
		if err != nil {
			return nil, fmt.Errorf("api: %w", err)
		}
		s.certs = c
	}
	s.routes()
	return s, nil
}

// routes registers every endpoint. Handler names label the metrics.
//
// Writes (writeEndpoint) are committed by the leader and forwarded to it
// from other nodes; reads (readEndpoint) are local unless ?consistent=true;
// everything else (status, cluster, health, metrics) is always this node's
// own answer, so it still answers when the leader is gone.
//
// Each endpoint names the access it needs: read (any token), write (admin
// or register; handlers then check a register token's scope and
// ownership), admin, or public.
func (s *Server) routes() {
	body, snapshot := s.cfg.MaxBodyBytes, s.cfg.MaxSnapshotBytes
	s.handle("POST /hooks/update-haproxy", "hook", accessWrite, s.writeEndpoint(body, s.handleHook))

	s.handle("GET /v1/routes", "routes_list", accessRead, s.readEndpoint(s.handleListRoutes))
	s.handle("GET /v1/routes/{port}", "route_get", accessRead, s.readEndpoint(s.handleGetRoute))
	s.handle("PUT /v1/routes/{port}", "route_put", accessWrite, s.writeEndpoint(body, s.handlePutRoute))
	s.handle("DELETE /v1/routes/{port}", "route_delete", accessWrite, s.writeEndpoint(body, s.handleDeleteRoute))
	s.handle("POST /v1/routes/{port}/backends", "backend_register", accessWrite, s.writeEndpoint(body, s.handleRegisterBackend))
	s.handle("DELETE /v1/routes/{port}/backends/{hostport}", "backend_deregister", accessWrite, s.writeEndpoint(body, s.handleDeregisterBackend))
	s.handle("GET /v1/snapshot", "snapshot_save", accessRead, s.readEndpoint(s.handleSnapshotSave))
	s.handle("POST /v1/snapshot", "snapshot_restore", accessAdmin, s.writeEndpoint(snapshot, s.handleSnapshotRestore))
	s.handle("GET /v1/status", "status", accessRead, s.handleStatus)
	s.handle("GET /v1/cluster", "cluster", accessRead, s.handleCluster)
	// Changing raft membership is an operator's act: admin tokens only.
	s.handle("POST /v1/raft/remove-peer", "raft_remove_peer", accessAdmin, s.writeEndpoint(body, s.handleRemovePeer))
	// The guard lives on the leader: both are forwarded to it.
	s.handle("GET /v1/leases", "leases", accessRead, s.writeEndpoint(0, s.handleLeases))
	s.handle("POST /v1/leases/release", "leases_release", accessAdmin, s.writeEndpoint(body, s.handleReleaseLeases))

	s.handle("GET /healthz", "healthz", accessPublic, s.handleHealthz)
	s.handle("GET /readyz", "readyz", accessPublic, s.handleReadyz)

	scrape := promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	})
	metricsAccess := accessRead
	if s.cfg.MetricsPublic {
		metricsAccess = accessPublic
	}
	s.handle("GET /metrics", "metrics", metricsAccess, func(w http.ResponseWriter, r *http.Request) error {
		scrape.ServeHTTP(w, r)
		return nil
	})

	// Requests no pattern matches still get JSON errors, a log line and a
	// metric; the mux decides between 404 and 405 (with Allow).
	s.unmatched = s.instrument("unmatched", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mux.ServeHTTP(&fallbackWriter{ResponseWriter: w, r: r}, r)
	}))
}

// handlerFunc is an endpoint that may fail with an *Error.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// handle mounts h at pattern: instrumented, behind a token with the access
// it needs, and (writes) audited.
func (s *Server) handle(pattern, name string, need access, h handlerFunc) {
	var next http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isWrite(r) {
			if err := h(w, r); err != nil {
				s.writeErr(w, r, err)
			}
			return
		}
		entry := &auditEntry{}
		r = r.WithContext(context.WithValue(r.Context(), auditKey{}, entry))
		rec := &statusRecorder{ResponseWriter: w}
		reason := ""
		if err := h(rec, r); err != nil {
			var e *Error
			if errors.As(err, &e) {
				reason = e.Message
			}
			s.writeErr(rec, r, err)
		}
		status := rec.status
		if status == 0 {
			status = http.StatusOK
		}
		s.audit(r, identity(r.Context()), entry, status, reason)
	})
	if need != accessPublic {
		next = s.requireToken(need, next)
	}
	s.mux.Handle(pattern, s.instrument(name, next))
}

// writeErr answers a handler's error; anything but an *Error is a bug and
// answered 500 without detail.
func (s *Server) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	var e *Error
	if !errors.As(err, &e) {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		e = &Error{Status: http.StatusInternalServerError, Message: "internal error"}
	}
	if e.Status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
		if e.notApplied && r.Header.Get(ForwardedByHeader) != "" {
			w.Header().Set(notAppliedHeader, "1")
		}
	}
	if e.body != nil {
		writeJSON(w, e.Status, e.body)
		return
	}
	writeJSON(w, e.Status, errorBody{Error: e.Message, Code: e.Code})
}

// Handler returns the API as an http.Handler (for tests, or to mount it in
// another server). Serve uses it.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := s.mux.Handler(r); pattern == "" {
			s.unmatched.ServeHTTP(w, r)
			return
		}
		s.mux.ServeHTTP(w, r)
	})
}

// Serve answers requests on l until ctx ends, then shuts down gracefully:
// it stops accepting, lets requests in flight finish (within
// Config.ShutdownTimeout) and returns nil. It speaks HTTPS when a certificate
// is configured and plain HTTP otherwise. Serve closes l.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		WriteTimeout:      s.cfg.WriteTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		// Handshake failures and bad requests from scanners are noise.
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	scheme := "http"
	if s.certs != nil {
		srv.TLSConfig = s.certs.TLSConfig()
		scheme = "https"
	}
	errc := make(chan error, 1)
	go func() {
		if s.certs != nil {
			errc <- srv.ServeTLS(l, "", "")
			return
		}
		errc <- srv.Serve(l)
	}()
	s.log.Info("api listening", "addr", l.Addr().String(), "scheme", scheme)

	select {
	case err := <-errc:
		return fmt.Errorf("serve api on %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(shutdownCtx)
	<-errc // http.ErrServerClosed once Shutdown has begun
	if err != nil {
		_ = srv.Close()
		return fmt.Errorf("shut down api: %w", err)
	}
	s.log.Info("api stopped")
	return nil
}

// instrument counts, times and (at debug level) logs every request. It logs
// the method, path, status, duration and remote address: never headers.
func (s *Server) instrument(name string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		start := time.Now()
		next.ServeHTTP(rec, r)
		elapsed := time.Since(start)
		status := rec.status
		if status == 0 {
			status = http.StatusOK
		}
		s.metrics.requests.WithLabelValues(name, strconv.Itoa(status)).Inc()
		s.metrics.duration.WithLabelValues(name).Observe(elapsed.Seconds())
		s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", status,
			"duration", elapsed, "remote", r.RemoteAddr)
	})
}

// Interface guards.
var (
	_ error               = (*Error)(nil)
	_ http.ResponseWriter = (*statusRecorder)(nil)
	_ http.ResponseWriter = (*fallbackWriter)(nil)
)

// statusRecorder remembers the status code a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// currentState is the applied table, never nil.
func (s *Server) currentState() *fsm.State {
	if st := s.stateSrc.State(); st != nil {
		return st
	}
	return s.empty
}

// commit proposes cmd and waits for it, bounded by Config.ApplyTimeout. It
// returns an *Error for anything but success: 503 when the cluster could not
// commit, and the domain error's status (400, 404, 409) otherwise. When the
// request asked ?wait=applied (writeEndpoint put the timeout in ctx), a
// successful commit then waits for it to be applied everywhere: 504 if that
// takes too long.
func (s *Server) commit(ctx context.Context, cmd fsm.Command) (fsm.Result, error) {
	if ctx.Value(validateOnlyKey{}) != nil {
		// Capacity admission is the leader's call, on its own view.
		return fsm.Result{}, errValidated
	}
	if err := s.admit(cmd); err != nil {
		return fsm.Result{}, err
	}
	applyCtx, cancel := context.WithTimeout(ctx, s.cfg.ApplyTimeout)
	defer cancel()
	res, err := s.applier.Apply(applyCtx, cmd)
	for err != nil && s.leaderMoved(ctx, err) {
		// Leadership moved before the entry was proposed: nothing was
		// applied. Hold the write until this node leads again (then try
		// again) or another does (then the client, or the forwarding
		// node, sends it there).
		_, self, lerr := s.leader.LeaderAPI()
		if lerr != nil || !self {
			return fsm.Result{}, &Error{Status: http.StatusServiceUnavailable, notApplied: true,
				Message: "not committed: leadership moved before the change was proposed; nothing was applied; retry: " + err.Error()}
		}
		res, err = s.applier.Apply(applyCtx, cmd)
	}
	if err != nil {
		s.metrics.commits.WithLabelValues(commitUnavailable).Inc()
		s.log.Warn("write not committed", "command", cmd.Type().String(), "err", err)
		msg := "not committed: " + err.Error()
		var maybe interface{ MaybeApplied() bool }
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			msg = fmt.Sprintf("not confirmed within %s, the change may still be applied: %v", s.cfg.ApplyTimeout, err)
		case errors.As(err, &maybe) && maybe.MaybeApplied():
			msg = "not confirmed: " + err.Error()
		}
		return fsm.Result{}, &Error{Status: http.StatusServiceUnavailable, Message: msg}
	}
	if res.Err != nil {
		status, outcome, code := classify(res.Err)
		s.metrics.commits.WithLabelValues(outcome).Inc()
		return res, &Error{Status: status, Message: message(res.Err), Code: code}
	}
	s.metrics.commits.WithLabelValues(commitOK).Inc()
	auditOf(ctx).index = res.Index
	if wait, ok := ctx.Value(waitKey{}).(time.Duration); ok && wait > 0 {
		if err := s.waitApplied(ctx, res.Index, wait); err != nil {
			return res, err
		}
	}
	return res, nil
}

// validate runs cmd's own validation (which canonicalises it) before it is
// proposed, so an invalid command never reaches the log.
func validate(cmd fsm.Command) error {
	if err := cmd.Validate(); err != nil {
		return badRequest(err)
	}
	return nil
}

// checkPort refuses a public port that is out of range, reserved on this
// node, or any member's API, raft or gossip port. It runs on the leader
// before proposing, never in the FSM: nodes' reserved sets may differ.
func (s *Server) checkPort(port int, reserved fsm.PortRanges) error {
	if err := fsm.CheckPort(port, reserved); err != nil {
		return badRequest(err)
	}
	return nil
}
