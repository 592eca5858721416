package agent

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/cluster"
	"github.com/drawbridge-lb/drawbridge/cluster/floatingip"
	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/haproxy"
	"github.com/drawbridge-lb/drawbridge/internal/tlsutil"
)

// Run states (Agent.runState).
const (
	runNew = iota
	runStarted
	runNever
)

// Deps are what the agent takes from its caller besides Config.
type Deps struct {
	// Logger receives every component's logs (each adds its own
	// "component" attribute); nil discards them.
	Logger *slog.Logger
	// Stdout is where a token generated under --dev is announced; nil
	// discards the announcement (the token is still kept in the data dir).
	Stdout io.Writer
	// Version is reported in status, gossip metadata and logs.
	Version string
	// ConfigFile is the config file the Config came from ("" when none):
	// its change reloads the API tokens.
	ConfigFile string
	// ReloadConfig loads the configuration again (file, environment,
	// flags), for ReloadTokens; nil reloads only the token files.
	ReloadConfig func() (*Config, error)
}

// Agent is one drawbridge node: the raft node and its route table, the
// managed HAProxy, gossip membership, the floating-IP owner and the API.
// Build it with New, run it with Run, stop it with Shutdown (or by ending
// Run's context). See the package documentation for the lifecycle.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	version string

	// Prepared by New; nothing runs yet.
	lock         *dirLock // the data directory's, held from New until stop
	tokens       []api.Token
	reserved     fsm.PortRanges
	policy       api.BackendPolicy
	configFile   string
	reloadConfig func() (*Config, error)
	tokenMu      sync.Mutex  // serialises token reloads
	server       *api.Server // set once the API is built
	gossipKey    []byte
	raftTLS      *tls.Config
	forward      *http.Client
	reg          *prometheus.Registry
	table        *fsm.FSM
	proxy        *haproxy.Manager // nil on a witness
	info         *nodeInfo

	// Started by Run, in this order; each is nil (false) until started,
	// which is how stop knows what to stop.
	pidFile      bool
	node         *cluster.Node
	proxyStarted bool
	members      *cluster.Membership
	clus         *cluster.Cluster
	owner        *floatingip.Owner // nil when no floating IP is managed
	ln           net.Listener
	pprofLn      net.Listener       // debug.pprof_addr's, nil when off
	stopLoops    context.CancelFunc // nil until the loops and the API run
	loops        sync.WaitGroup
	serveErr     chan error

	// runState is runNew until Run starts (runStarted) or Shutdown comes
	// first (runNever).
	runMu        sync.Mutex
	runState     int
	shutdown     chan struct{} // closed by Shutdown
	shutdownOnce sync.Once
	done         chan struct{} // closed when Run returns
}

// New checks and loads everything the agent needs before it starts: the
// data dir, tokens, reserved ports, gossip key, TLS material, the HAProxy
// binary. It opens no port and starts no goroutine. Under --dev without a
// token it generates one, keeps it in the data dir and announces it on
// deps.Stdout.
func New(cfg Config, deps Deps) (*Agent, error) {
	logger := deps.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	stdout := deps.Stdout
	if stdout == nil {
		stdout = io.Discard
	}
	a := &Agent{
		cfg:          cfg,
		log:          logger,
		version:      deps.Version,
		shutdown:     make(chan struct{}),
		configFile:   deps.ConfigFile,
		reloadConfig: deps.ReloadConfig,
		done:         make(chan struct{}),
	}
	c := &a.cfg
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	// Nothing in the data dir is touched before its lock is held.
	lock, err := lockDataDir(c.DataDir)
	if err != nil {
		return nil, err
	}
	a.lock = lock
	ok := false
	defer func() {
		if !ok {
			lock.release()
		}
	}()
	tokens, legacy, err := buildTokens(c, stdout)
	if err != nil {
		return nil, err
	}
	a.tokens = tokens
	if legacy > 0 {
		logger.Warn(legacyWarning)
	}
	if a.policy, err = c.backendPolicy(); err != nil {
		return nil, err
	}
	if a.reserved, err = c.reservedPorts(); err != nil {
		return nil, err
	}
	if a.gossipKey, err = loadGossipKey(c.Gossip); err != nil {
		return nil, err
	}
	if c.Raft.TLSCAFile != "" {
		a.raftTLS, err = cluster.LoadRaftTLS(cluster.TLSFiles{CAFile: c.Raft.TLSCAFile, CertFile: c.Raft.TLSCertFile, KeyFile: c.Raft.TLSKeyFile})
		if err != nil {
			return nil, fmt.Errorf("raft TLS: %w", err)
		}
	}
	if a.forward, err = newForwardClient(c.API.ForwardCAFile); err != nil {
		return nil, err
	}
	a.reg = prometheus.NewRegistry()
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// A witness runs no HAProxy; an edge node refuses to start without one.
	for _, w := range c.Warnings() {
		logger.Warn("configuration: " + w)
	}
	if c.Role == roleEdge {
		if a.proxy, err = newHAProxyManager(c, logger, a.reg); err != nil {
			return nil, err
		}
	}
	a.table = fsm.New()
	a.info = &nodeInfo{cfg: c, version: a.version, table: a.table, proxy: a.proxy, fdLimit: haproxy.DescriptorLimit()}
	if a.info.settings, err = c.haproxySettings(); err != nil {
		return nil, err
	}
	ok = true
	return a, nil
}

// Run starts the agent's components in order, serves until ctx ends,
// Shutdown is called or the API server fails, then stops them in order and
// returns. HAProxy is left running on purpose: an agent that stops or
// crashes never stops traffic, and the next agent adopts the running
// master. Run may be called once.
func (a *Agent) Run(ctx context.Context) error {
	a.runMu.Lock()
	state := a.runState
	if state == runNew {
		a.runState = runStarted
	}
	a.runMu.Unlock()
	switch state {
	case runNever:
		return nil
	case runStarted:
		return errors.New("agent: Run called twice")
	}
	defer close(a.done)
	select {
	case <-a.shutdown:
		a.lock.release()
		return nil
	default:
	}
	err := a.start(ctx)
	if err == nil {
		err = a.wait(ctx)
	}
	a.stop()
	return err
}

// Shutdown asks Run to stop the agent and waits until it has returned, or
// until ctx ends. It is safe to call more than once, and before Run (which
// then returns at once).
func (a *Agent) Shutdown(ctx context.Context) error {
	a.shutdownOnce.Do(func() { close(a.shutdown) })
	a.runMu.Lock()
	never := a.runState == runNew
	if never {
		a.runState = runNever
	}
	a.runMu.Unlock()
	if never {
		// Run never started: nothing runs, so give the data dir back.
		a.lock.release()
		close(a.done)
		return nil
	}
	select {
	case <-a.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// start brings the components up in lifecycle order. On error, the ones
// already started are left for stop.
func (a *Agent) start(ctx context.Context) error {
	cfg, logger := &a.cfg, a.log

	// 1. The files `drawbridge leave` and `drawbridge raft recover` read.
	if err := writeAgentFiles(cfg); err != nil {
		return err
	}
	a.pidFile = true

	// 2. Raft: open the stores and replay the log into the table.
	node, err := cluster.New(cluster.Config{
		NodeID:            cfg.NodeName,
		DataDir:           filepath.Join(cfg.DataDir, "raft"),
		BindAddr:          cfg.Raft.Addr,
		AdvertiseAddr:     cfg.Raft.Advertise,
		Bootstrap:         cfg.Raft.Bootstrap,
		ApplyTimeout:      cfg.API.ApplyTimeout,
		HeartbeatTimeout:  cfg.Raft.HeartbeatTimeout,
		ElectionTimeout:   cfg.Raft.ElectionTimeout,
		SnapshotThreshold: cfg.Raft.SnapshotThreshold,
		SnapshotInterval:  cfg.Raft.SnapshotInterval,
		TLS:               a.raftTLS,
	}, a.table, logger, a.reg)
	if err != nil {
		return err
	}
	a.node = node
	a.info.node = node

	// 3. HAProxy: adopt the running master, or start one from the last
	// config on disk. It keeps serving what it served before.
	if a.proxy != nil {
		if err := a.proxy.Start(ctx); err != nil {
			return fmt.Errorf("haproxy: %w", err)
		}
		a.proxyStarted = true
	}

	// 4. Gossip: listen and publish this node's metadata.
	members, err := cluster.NewMembership(cluster.GossipConfig{
		NodeName:       cfg.NodeName,
		BindAddr:       cfg.Gossip.Addr,
		AdvertiseAddr:  cfg.Gossip.Advertise,
		Key:            a.gossipKey,
		Label:          cfg.Gossip.Label,
		ProbeInterval:  cfg.Gossip.ProbeInterval,
		ProbeTimeout:   cfg.Gossip.ProbeTimeout,
		SuspicionMult:  cfg.Gossip.SuspicionMult,
		GossipInterval: cfg.Gossip.GossipInterval,
		AllowedCIDRs:   cfg.Gossip.AllowedCIDRs,
		ReapAfter:      cfg.Gossip.ReapAfter,
	}, a.info.meta, logger)
	if err != nil {
		return err
	}
	a.members = members
	a.clus = cluster.NewCluster(node, members, logger)
	a.info.cluster = a.clus
	if a.raftTLS != nil && cfg.API.ForwardCAFile == "" {
		// Forward only to the leader's own certificate (HTTPS), or to
		// its raft host (plain HTTP): never to an address gossip alone
		// vouches for.
		pool, err := tlsutil.CAPool(cfg.Raft.TLSCAFile)
		if err != nil {
			return fmt.Errorf("raft.tls_ca_file: %w", err)
		}
		a.forward = api.NewForwardClient(a.clus.ForwardTLS(pool))
	}

	// 5. The floating-IP owner (its loop starts with the others in 7).
	owner, err := newFloatingIPOwner(cfg, a.info, members, logger, a.reg)
	if err != nil {
		return fmt.Errorf("floating IP: %w", err)
	}
	a.owner = owner
	a.info.owner = owner

	// 6. The API: build it and bind its listener.
	reaper := cluster.NewLeaseReaper(cluster.LeaseConfig{
		Interval:    cfg.Leases.Interval,
		Grace:       cfg.Leases.Grace,
		MaxFraction: cfg.Leases.MaxFraction,
		Force:       cfg.Leases.Force,
	}, node, time.Now, logger, a.reg)
	server, err := api.New(api.Config{
		ScopedTokens:     a.tokens,
		LegacyHeader:     cfg.API.LegacyHeader,
		MaxBodyBytes:     cfg.API.MaxBodyBytes,
		MaxSnapshotBytes: cfg.Limits.MaxSnapshotBytes,
		HookLease:        cfg.API.HookLease,
		ReservedPorts:    a.reserved,
		OwnEndpoints:     cfg.ownEndpoints(),
		BackendPolicy:    a.policy,
		Limits:           cfg.apiLimits(),
		ApplyTimeout:     cfg.API.ApplyTimeout,
		TLSCertFile:      cfg.API.TLSCertFile,
		TLSKeyFile:       cfg.API.TLSKeyFile,
		MetricsPublic:    cfg.metricsPublic(),
		HoldTimeout:      holdTimeout(cfg.API.HoldTimeout),
	}, api.Deps{
		Leases:        leaseGuard{reaper},
		Applier:       node,
		State:         a.table,
		Status:        a.info,
		Logger:        logger,
		Registerer:    a.reg,
		Gatherer:      a.reg,
		Now:           time.Now,
		Leader:        a.clus,
		Consistency:   a.clus,
		AppliedWaiter: a.info,
		Cluster:       a.info,
		Admitter:      a.info,
		Peers:         peerRemover{node},
		ForwardClient: a.forward,
	})
	if err != nil {
		return err
	}
	a.tokenMu.Lock()
	a.server = server
	a.tokenMu.Unlock()
	ln, err := net.Listen("tcp", cfg.API.Addr)
	if err != nil {
		return fmt.Errorf("listen for the API on %s: %w", cfg.API.Addr, err)
	}
	a.ln = ln
	if cfg.Debug.PprofAddr != "" {
		pln, err := net.Listen("tcp", cfg.Debug.PprofAddr)
		if err != nil {
			return fmt.Errorf("listen for debug.pprof_addr on %s: %w", cfg.Debug.PprofAddr, err)
		}
		a.pprofLn = pln
	}

	// 7. The background loops, then the API serves.
	runCtx, cancel := context.WithCancel(context.Background())
	a.stopLoops = cancel
	spawn := func(f func(context.Context)) {
		a.loops.Add(1)
		go func() { defer a.loops.Done(); f(runCtx) }()
	}
	if a.proxy != nil {
		spawn(func(ctx context.Context) { feedHAProxy(ctx, node, a.table, a.proxy, logger) })
	}
	spawn(reaper.Run)
	spawn(a.watchTokenFiles)
	spawn(cluster.NewReconciler(node, members, cfg.BootstrapExpect, logger).Run)
	spawn(func(ctx context.Context) { members.RunRefresh(ctx, 100*time.Millisecond) })
	spawn(func(ctx context.Context) { members.RunReconnect(ctx, time.Second) })
	if len(cfg.Join) > 0 {
		spawn(func(ctx context.Context) { _ = members.Join(ctx, cfg.Join) })
	}
	if owner != nil {
		spawn(owner.Run)
	}
	if a.pprofLn != nil {
		logger.Warn("serving runtime profiles without authentication on loopback (debug.pprof_addr)", "addr", a.pprofLn.Addr().String())
		spawn(func(ctx context.Context) { servePprof(ctx, a.pprofLn, logger.With("component", "pprof")) })
	}
	a.serveErr = make(chan error, 1)
	go func() { a.serveErr <- server.Serve(runCtx, ln) }()

	scheme := "http"
	if cfg.API.TLSCertFile != "" {
		scheme = "https"
	}
	for _, w := range cfg.TrustWarnings() {
		logger.Warn(w)
	}
	logger.Info("drawbridge agent running", "version", a.version, "role", cfg.Role,
		"api", scheme+"://"+ln.Addr().String(), "raft", cfg.Raft.Addr, "gossip", cfg.Gossip.Addr,
		"data_dir", cfg.DataDir, "haproxy_bind", bindDescription(cfg.HAProxy.BindAddress))
	return nil
}

// wait serves until ctx ends, Shutdown is called, or the API server fails.
func (a *Agent) wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
	case <-a.shutdown:
	case err := <-a.serveErr:
		a.serveErr = nil // already received
		if err != nil {
			return fmt.Errorf("api server: %w", err)
		}
		return nil
	}
	a.log.Info("leaving the cluster; HAProxy keeps serving")
	return nil
}

// stop stops what start started, in lifecycle order (see the package
// documentation). It is safe after a partial start.
func (a *Agent) stop() {
	if a.stopLoops != nil {
		// 1. Give the floating IP up first so a peer claims it at once,
		// 2. then hand leadership over and say goodbye while the API
		// still answers, so forwarded writes find the new leader.
		if a.owner != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			a.owner.Stop(ctx)
			cancel()
		}
		a.clus.Leave(3 * time.Second)
		// 3. Stop the loops and the API server.
		a.stopLoops()
		a.loops.Wait()
		if a.serveErr != nil {
			<-a.serveErr
		}
	} else {
		// Start failed part way: nothing served yet, so close what
		// opened without the goodbyes.
		if a.ln != nil {
			a.ln.Close()
		}
		if a.pprofLn != nil {
			a.pprofLn.Close()
		}
		if a.members != nil {
			a.members.Shutdown()
		}
	}
	// 4. HAProxy's manager loop ends; HAProxy keeps serving.
	if a.proxyStarted {
		if err := a.proxy.Close(); err != nil {
			a.log.Warn("close haproxy manager", "err", err)
		}
	}
	// 5. Raft and its stores.
	if a.node != nil {
		if err := a.node.Shutdown(); err != nil {
			a.log.Warn("shut down raft", "err", err)
		}
	}
	// 6. The pid file and the data dir's lock: no agent runs here any more.
	if a.pidFile {
		os.Remove(PIDFile(a.cfg.DataDir))
	}
	a.lock.release()
}

// PIDFile is where a running agent records its PID (drawbridge leave reads it).
func PIDFile(dataDir string) string { return filepath.Join(dataDir, "agent.pid") }

// newHAProxyManager builds the HAProxy manager from the config.
func newHAProxyManager(cfg *Config, logger *slog.Logger, reg prometheus.Registerer) (*haproxy.Manager, error) {
	settings, err := cfg.haproxySettings()
	if err != nil {
		return nil, err
	}
	return haproxy.NewManager(haproxy.Config{
		Bin:                cfg.HAProxy.Bin,
		Dir:                cfg.HAProxy.Dir,
		Settings:           settings,
		OldWorkersMaxBytes: uint64(cfg.HAProxy.OldWorkersMaxMB) << 20,
		QuietWindow:        cfg.HAProxy.QuietWindow,
		MaxDelay:           cfg.HAProxy.MaxDelay,
		Isolation:          cfg.isolation(),
		Logger:             logger,
		Registerer:         reg,
	})
}

// writeAgentFiles records this agent's PID (for drawbridge leave) and node
// name (for drawbridge raft recover) in the data dir.
func writeAgentFiles(cfg *Config) error {
	if err := os.WriteFile(PIDFile(cfg.DataDir), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	if err := os.WriteFile(filepath.Join(cfg.DataDir, "node-name"), []byte(cfg.NodeName+"\n"), 0o644); err != nil {
		return fmt.Errorf("record node name: %w", err)
	}
	return nil
}

// loadGossipKey returns the gossip encryption key from config or its file.
func loadGossipKey(g GossipConfig) ([]byte, error) {
	s := g.Key
	if g.KeyFile != "" {
		b, err := os.ReadFile(g.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("read gossip.key_file: %w", err)
		}
		s = strings.TrimSpace(string(b))
	}
	key, err := cluster.ParseGossipKey(s)
	if err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	return key, nil
}

// newForwardClient returns the client that forwards writes to the leader's
// API, trusting caFile's certificates when given (else the system roots).
func newForwardClient(caFile string) (*http.Client, error) {
	tc, err := tlsutil.ClientConfig(caFile, false)
	if err != nil {
		return nil, fmt.Errorf("api.forward_ca_file: %w", err)
	}
	return api.NewForwardClient(tc), nil
}

// holdTimeout maps api.hold_timeout onto api.Config, where 0 means the
// default and a negative value no hold.
func holdTimeout(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

func bindDescription(addr string) string {
	if addr == "" {
		return "all addresses"
	}
	return addr
}

// feedHAProxy hands every new route-table state to the HAProxy manager. After a
// restart it first waits until the route table itself holds the local log
// (or everything the leader says is committed): see cluster.Node.Replayed.
// A half-replayed table never replaces the config HAProxy is serving.
func feedHAProxy(ctx context.Context, node *cluster.Node, table *fsm.FSM, proxy *haproxy.Manager, logger *slog.Logger) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !node.Replayed() {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
	logger.Debug("route table replayed", "index", table.State().Index)
	var prev *fsm.State
	var fes []haproxy.Frontend
	for {
		changed := table.Changed()
		st := table.State()
		fes, prev = frontendsSince(fes, prev, st), st
		proxy.SubmitShared(st.Index, fes) // never changed once built: see frontendsSince
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// Frontends converts routes into the HAProxy package's plain values.
func Frontends(routes []fsm.Route) []haproxy.Frontend {
	out := make([]haproxy.Frontend, 0, len(routes))
	for _, r := range routes {
		out = append(out, frontendOf(r))
	}
	return out
}

// frontendsSince returns Frontends of st's routes, given fes, the
// Frontends of prev's (nil and nil at first): only the routes that changed
// between them are converted, the others are taken from fes as they were
// (their Servers shared, never modified), so feeding HAProxy after a write
// converts one route, not the whole table.
func frontendsSince(fes []haproxy.Frontend, prev, st *fsm.State) []haproxy.Frontend {
	changes := st.ChangesSince(prev)
	if prev == nil || fes == nil {
		fes = nil // everything is in changes
	}
	if len(changes) == 0 && fes != nil {
		return fes
	}
	out := make([]haproxy.Frontend, 0, st.Len())
	i := 0
	for _, c := range changes {
		for i < len(fes) && fes[i].Port < c.Port {
			out = append(out, fes[i])
			i++
		}
		if i < len(fes) && fes[i].Port == c.Port {
			i++ // replaced or removed
		}
		if c.New != nil {
			out = append(out, frontendOf(*c.New))
		}
	}
	return append(out, fes[i:]...)
}

// frontendOf converts one route.
func frontendOf(r fsm.Route) haproxy.Frontend {
	fe := haproxy.Frontend{
		Port:          r.Port,
		Name:          r.Name,
		Balance:       r.Balance,
		Sticky:        r.Sticky,
		ProxyProtocol: r.ProxyProtocol,
		HealthCheck:   r.HealthCheck,
		CheckPort:     r.CheckPort,
		CheckHTTP:     r.CheckMode == fsm.CheckModeHTTP,
		Servers:       make([]haproxy.Server, 0, len(r.Backends)),
	}
	for _, b := range r.Backends {
		fe.Servers = append(fe.Servers, haproxy.Server{Address: b.Address, Port: b.Port})
	}
	return fe
}

func newToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// leaseGuard adapts the lease reaper's mass-expiry guard to the API.
type leaseGuard struct{ r *cluster.LeaseReaper }

var _ api.LeaseGuard = leaseGuard{}

func (g leaseGuard) HeldLeases() api.HeldLeases { return heldLeases(g.r.Held()) }

func (g leaseGuard) ReleaseHeld() (api.HeldLeases, error) {
	h, err := g.r.Release()
	if errors.Is(err, cluster.ErrNothingHeld) {
		return api.HeldLeases{}, api.ErrNothingHeld
	}
	return heldLeases(h), err
}

func heldLeases(h cluster.HeldLeases) api.HeldLeases {
	out := api.HeldLeases{Held: !h.Since.IsZero(), Since: h.Since, Expired: h.Expired, Total: h.Total,
		MaxFraction: h.MaxFraction, Backends: make([]api.HeldLease, 0, len(h.Backends))}
	for _, b := range h.Backends {
		out.Backends = append(out.Backends, api.HeldLease{Port: b.Port, Route: b.Route, Backend: b.Backend, ExpiredAt: b.ExpiredAt})
	}
	return out
}
