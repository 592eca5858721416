package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/cluster"
	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/haproxy"
)

func newAgentCmd() *cobra.Command {
	var configFile string
	var checkOnly bool
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run a drawbridge node: raft, API and the managed HAProxy",
		Long: `Run a drawbridge node. It keeps the replicated route table, serves the
webhook and REST API, and renders, validates and reloads its own HAProxy.

Configuration comes from --config (default /etc/drawbridge/drawbridge.yaml when
it exists), DRAWBRIDGE_* environment variables (DRAWBRIDGE_API_TOKEN,
DRAWBRIDGE_HAPROXY_BIND_ADDRESS, ...) and flags, later ones winning.

--dev runs one self-bootstrapped node on loopback with data in
./drawbridge-data and a generated token: the quickest way to try it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(configFile, cmd.Flags())
			if err != nil {
				return err
			}
			if checkOnly {
				fmt.Fprintf(cmd.OutOrStdout(), "configuration is valid (node %s)\n", cfg.NodeName)
				return nil
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runAgent(ctx, cfg, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "config file (YAML/JSON/TOML)")
	f.BoolVar(&checkOnly, "check-config", false, "validate the configuration and exit")
	f.Bool("dev", false, "single node on loopback with embedded defaults")
	f.String("data-dir", "", "data directory (default /var/lib/drawbridge; ./drawbridge-data with --dev)")
	f.String("node-name", "", "node name (default: hostname)")
	f.String("api-addr", "", "API listen address (default :9000)")
	f.String("raft-addr", "", "raft listen address (default :9001)")
	f.String("raft-advertise", "", "raft address peers dial (default: --raft-addr)")
	f.String("gossip-addr", "", "gossip listen address, TCP and UDP (default :9002)")
	f.String("gossip-advertise", "", "gossip address peers reach (default: detected private IP)")
	f.StringArray("join", nil, "gossip address of a member to join (repeatable; retried until one answers)")
	f.Int("bootstrap-expect", 0, "form a new cluster once this many servers see each other")
	f.Bool("witness", false, "run as a witness: a raft voter without HAProxy that never holds the floating IP")
	f.Bool("bootstrap", false, "form a new cluster with this node as its only voter when it has no state")
	f.String("haproxy-bind-address", "", "address HAProxy frontends bind (default: all addresses)")
	f.String("haproxy-bin", "", "HAProxy binary (default haproxy)")
	f.String("haproxy-dir", "", "HAProxy runtime directory (default DATA_DIR/haproxy)")
	f.String("log-level", "", "debug, info, warn or error")
	return cmd
}

func newLogger(c LogConfig, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// runAgent starts every component, serves until ctx ends, then leaves the
// cluster and stops them in order. HAProxy is left running on purpose: an
// agent that stops or crashes never stops traffic, and the next agent adopts
// the running master.
func runAgent(ctx context.Context, cfg *Config, stdout, stderr io.Writer) error {
	logger := newLogger(cfg.Log, stderr).With("node", cfg.NodeName)

	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	tokens, err := resolveTokens(cfg, stdout)
	if err != nil {
		return err
	}
	reserved, err := cfg.reservedPorts()
	if err != nil {
		return err
	}
	if err := writeAgentFiles(cfg); err != nil {
		return err
	}
	defer os.Remove(agentPIDFile(cfg.DataDir))
	gossipKey, err := loadGossipKey(cfg.Gossip)
	if err != nil {
		return err
	}
	var raftTLS *tls.Config
	if cfg.Raft.TLSCAFile != "" {
		raftTLS, err = cluster.LoadRaftTLS(cluster.TLSFiles{CAFile: cfg.Raft.TLSCAFile, CertFile: cfg.Raft.TLSCertFile, KeyFile: cfg.Raft.TLSKeyFile})
		if err != nil {
			return fmt.Errorf("raft TLS: %w", err)
		}
	}
	forwardClient, err := newForwardClient(cfg.API.ForwardCAFile)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// A witness runs no HAProxy; an edge node refuses to start without one.
	var proxy *haproxy.Manager
	if cfg.Role == roleEdge {
		proxy, err = newHAProxyManager(cfg, logger, reg)
		if err != nil {
			return err
		}
	}

	table := fsm.New()
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
		TLS:               raftTLS,
	}, table, logger, reg)
	if err != nil {
		return err
	}
	bootIndex := node.Status().LastIndex

	if proxy != nil {
		if err := proxy.Start(ctx); err != nil {
			node.Shutdown()
			return fmt.Errorf("start haproxy: %w", err)
		}
	}
	// From here on, stop everything started so far on the way out.
	var cleanups []func()
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	cleanups = append(cleanups, func() {
		if err := node.Shutdown(); err != nil {
			logger.Warn("shut down raft", "err", err)
		}
	})
	if proxy != nil {
		cleanups = append(cleanups, func() {
			if err := proxy.Close(); err != nil {
				logger.Warn("close haproxy manager", "err", err)
			}
		})
	}

	info := &nodeInfo{cfg: cfg, node: node, table: table, proxy: proxy}
	members, err := cluster.NewMembership(cluster.GossipConfig{
		NodeName:       cfg.NodeName,
		BindAddr:       cfg.Gossip.Addr,
		AdvertiseAddr:  cfg.Gossip.Advertise,
		Key:            gossipKey,
		Label:          cfg.Gossip.Label,
		ProbeInterval:  cfg.Gossip.ProbeInterval,
		ProbeTimeout:   cfg.Gossip.ProbeTimeout,
		SuspicionMult:  cfg.Gossip.SuspicionMult,
		GossipInterval: cfg.Gossip.GossipInterval,
	}, info.meta, logger)
	if err != nil {
		cleanup()
		return err
	}
	clus := cluster.NewCluster(node, members, logger)
	info.cluster = clus
	owner, err := newFloatingIPOwner(cfg, info, members, logger, reg)
	if err != nil {
		members.Shutdown()
		cleanup()
		return fmt.Errorf("floating IP: %w", err)
	}
	info.owner = owner

	server, err := api.New(api.Config{
		Tokens:        tokens,
		LegacyHeader:  cfg.API.LegacyHeader,
		MaxBodyBytes:  cfg.API.MaxBodyBytes,
		HookLease:     cfg.API.HookLease,
		ReservedPorts: reserved,
		ApplyTimeout:  cfg.API.ApplyTimeout,
		TLSCertFile:   cfg.API.TLSCertFile,
		TLSKeyFile:    cfg.API.TLSKeyFile,
		MetricsPublic: cfg.API.MetricsPublic,
	}, api.Deps{
		Applier:       node,
		State:         table,
		Status:        info,
		Logger:        logger,
		Registerer:    reg,
		Gatherer:      reg,
		Now:           time.Now,
		Leader:        clus,
		Consistency:   clus,
		AppliedWaiter: info,
		Cluster:       info,
		ForwardClient: forwardClient,
	})
	if err != nil {
		members.Shutdown()
		cleanup()
		return err
	}
	ln, err := net.Listen("tcp", cfg.API.Addr)
	if err != nil {
		members.Shutdown()
		cleanup()
		return fmt.Errorf("listen for the API on %s: %w", cfg.API.Addr, err)
	}

	runCtx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	spawn := func(f func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); f(runCtx) }()
	}
	if proxy != nil {
		spawn(func(ctx context.Context) { feedHAProxy(ctx, node, table, proxy, bootIndex, logger) })
	}
	spawn(cluster.NewLeaseReaper(cluster.LeaseConfig{
		Interval:    cfg.Leases.Interval,
		Grace:       cfg.Leases.Grace,
		MaxFraction: cfg.Leases.MaxFraction,
		Force:       cfg.Leases.Force,
	}, node, time.Now, logger, reg).Run)
	spawn(cluster.NewReconciler(node, members, cfg.BootstrapExpect, logger).Run)
	spawn(func(ctx context.Context) { members.RunRefresh(ctx, 100*time.Millisecond) })
	spawn(func(ctx context.Context) { members.RunReconnect(ctx, time.Second) })
	if len(cfg.Join) > 0 {
		spawn(func(ctx context.Context) { _ = members.Join(ctx, cfg.Join) })
	}
	if owner != nil {
		spawn(owner.Run)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- server.Serve(runCtx, ln) }()

	scheme := "http"
	if cfg.API.TLSCertFile != "" {
		scheme = "https"
	}
	logger.Info("drawbridge agent running", "version", version, "role", cfg.Role,
		"api", scheme+"://"+ln.Addr().String(), "raft", cfg.Raft.Addr, "gossip", cfg.Gossip.Addr,
		"data_dir", cfg.DataDir, "haproxy_bind", bindDescription(cfg.HAProxy.BindAddress))

	var result error
	select {
	case <-ctx.Done():
		logger.Info("leaving the cluster; HAProxy keeps serving")
	case err := <-serveErr:
		if err != nil {
			result = fmt.Errorf("api server: %w", err)
		}
	}
	// Give the floating IP up first so a peer claims it at once, then hand
	// leadership over and say goodbye while the API still answers, so
	// forwarded writes find the new leader; then stop the rest.
	if owner != nil {
		stopCtx, stopCancel := context.WithTimeout(context.Background(), 5*time.Second)
		owner.Stop(stopCtx)
		stopCancel()
	}
	clus.Leave(3 * time.Second)
	cancel()
	wg.Wait()
	if result == nil {
		<-serveErr
	}
	cleanup()
	return result
}

// newHAProxyManager builds the HAProxy manager from the config.
func newHAProxyManager(cfg *Config, logger *slog.Logger, reg prometheus.Registerer) (*haproxy.Manager, error) {
	return haproxy.NewManager(haproxy.Config{
		Bin: cfg.HAProxy.Bin,
		Dir: cfg.HAProxy.Dir,
		Settings: haproxy.Settings{
			BindAddress:   cfg.HAProxy.BindAddress,
			HardStopAfter: cfg.HAProxy.HardStopAfter,
			MaxReloads:    cfg.HAProxy.MaxReloads,
			MaxConn:       cfg.HAProxy.MaxConn,
			TimeoutClient: cfg.HAProxy.TimeoutClient,
			TimeoutServer: cfg.HAProxy.TimeoutServer,
			StatsSocket:   filepath.Join(cfg.HAProxy.Dir, "admin.sock"),
		},
		QuietWindow: cfg.HAProxy.QuietWindow,
		MaxDelay:    cfg.HAProxy.MaxDelay,
		Logger:      logger,
		Registerer:  reg,
	})
}

// writeAgentFiles records this agent's PID (for drawbridge leave) and node
// name (for drawbridge raft recover) in the data dir.
func writeAgentFiles(cfg *Config) error {
	if err := os.WriteFile(agentPIDFile(cfg.DataDir), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
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
	if caFile == "" {
		return api.NewForwardClient(nil), nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read api.forward_ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("api.forward_ca_file %s holds no certificates", caFile)
	}
	return api.NewForwardClient(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}), nil
}

func bindDescription(addr string) string {
	if addr == "" {
		return "all addresses"
	}
	return addr
}

// feedHAProxy hands every new route-table state to the HAProxy manager. After a
// restart it first waits until the local log has been replayed (or the node
// has caught up with the cluster), so a half-replayed table never replaces
// the config HAProxy is serving.
func feedHAProxy(ctx context.Context, node *cluster.Node, table *fsm.FSM, proxy *haproxy.Manager, bootIndex uint64, logger *slog.Logger) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !caughtUp(node, bootIndex) {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
	logger.Debug("route table replayed", "index", table.State().Index)
	for {
		changed := table.Changed()
		st := table.State()
		proxy.Submit(st.Index, frontends(st.Routes()))
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

func caughtUp(node *cluster.Node, bootIndex uint64) bool {
	s := node.Status()
	if s.AppliedIndex >= bootIndex {
		return true
	}
	// A log tail that was never committed can be replaced by the leader's;
	// once we apply everything the leader says is committed we are current.
	return s.Leader != "" && s.CommitIndex > 0 && s.AppliedIndex >= s.CommitIndex
}

// frontends converts routes into the HAProxy package's plain values.
func frontends(routes []fsm.Route) []haproxy.Frontend {
	out := make([]haproxy.Frontend, 0, len(routes))
	for _, r := range routes {
		fe := haproxy.Frontend{
			Port:          r.Port,
			Name:          r.Name,
			Balance:       r.Balance,
			Sticky:        r.Sticky,
			ProxyProtocol: r.ProxyProtocol,
			HealthCheck:   r.HealthCheck,
			Servers:       make([]haproxy.Server, 0, len(r.Backends)),
		}
		for _, b := range r.Backends {
			fe.Servers = append(fe.Servers, haproxy.Server{Address: b.Address, Port: b.Port})
		}
		out = append(out, fe)
	}
	return out
}

// resolveTokens returns the API tokens. In --dev without any, one is
// generated, stored in the data dir (mode 0600) and printed once.
func resolveTokens(cfg *Config, stdout io.Writer) ([]string, error) {
	tokens := append([]string(nil), cfg.API.Tokens...)
	if cfg.API.TokenFile != "" {
		b, err := os.ReadFile(cfg.API.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("read api.token_file: %w", err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
				tokens = append(tokens, t)
			}
		}
	}
	for _, t := range tokens {
		if len(t) < 16 {
			return nil, errors.New("api token too short: use at least 16 characters (drawbridge keygen prints a good one)")
		}
	}
	if len(tokens) > 0 {
		return tokens, nil
	}
	if !cfg.Dev {
		return nil, errors.New("no API token configured: set DRAWBRIDGE_API_TOKEN, api.token or api.token_file")
	}
	path := filepath.Join(cfg.DataDir, "dev-token")
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) >= 16 {
		fmt.Fprintf(stdout, "dev API token is in %s\n", path)
		return []string{strings.TrimSpace(string(b))}, nil
	}
	t, err := newToken()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, []byte(t+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("store dev token: %w", err)
	}
	fmt.Fprintf(stdout, "generated a dev API token (kept in %s):\n\n    export DRAWBRIDGE_API_TOKEN=%s\n\n", path, t)
	return []string{t}, nil
}

func newToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate token: %w", err)
	}
	return hex.EncodeToString(b), nil
}
