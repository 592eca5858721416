package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	sockaddr "github.com/hashicorp/go-sockaddr"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/cluster"
	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/haproxy"
)

// Node roles (see cluster.RoleEdge / cluster.RoleWitness).
const (
	roleEdge    = cluster.RoleEdge
	roleWitness = cluster.RoleWitness
)

// Config is the agent's whole configuration. cmd/drawbridge fills it from
// defaults, then the config file, then DRAWBRIDGE_* environment variables,
// then flags (the mapstructure tags name the keys), calls Fill and Validate,
// and hands it to New; every package below receives typed sub-structs.
type Config struct {
	NodeName string `mapstructure:"node_name"`
	DataDir  string `mapstructure:"data_dir"`
	Dev      bool   `mapstructure:"dev"`
	// Role is "edge" (runs HAProxy) or "witness" (a raft voter only).
	Role string `mapstructure:"role"`
	// Join lists gossip addresses of existing members, tried until one answers.
	Join []string `mapstructure:"join"`
	// BootstrapExpect forms a new cluster once this many servers see each
	// other in gossip (0 = off; use raft.bootstrap for a single node).
	BootstrapExpect int `mapstructure:"bootstrap_expect"`

	API     APIConfig     `mapstructure:"api"`
	Raft    RaftConfig    `mapstructure:"raft"`
	Gossip  GossipConfig  `mapstructure:"gossip"`
	HAProxy HAProxyConfig `mapstructure:"haproxy"`
	Routes  RoutesConfig  `mapstructure:"routes"`
	Leases  LeasesConfig  `mapstructure:"leases"`
	Limits  LimitsConfig  `mapstructure:"limits"`
	// FloatingIP configures the public address that moves between edge nodes.
	FloatingIP FloatingIPConfig `mapstructure:"floating_ip"`
	// Cluster is cluster-wide trust (see CheckTrust).
	Cluster ClusterConfig `mapstructure:"cluster"`
	Log     LogConfig     `mapstructure:"log"`
	// Debug holds diagnostics, all off by default (see DebugConfig).
	Debug DebugConfig `mapstructure:"debug"`

	// devIsolationOff records that Fill switched HAProxy's isolation off
	// for --dev (Warnings says so).
	devIsolationOff bool
}

// APIConfig configures the HTTP API (webhook, REST, metrics).
type APIConfig struct {
	Addr string `mapstructure:"addr"`
	// Token and TokenFile hold the single admin token of the recipe's
	// sidecars (legacy: every writer shares it); Tokens are named, scoped
	// tokens (see TokenConfig).
	Token        string        `mapstructure:"token"`
	Tokens       []TokenConfig `mapstructure:"tokens"`
	TokenFile    string        `mapstructure:"token_file"`
	LegacyHeader string        `mapstructure:"legacy_header"`
	TLSCertFile  string        `mapstructure:"tls_cert_file"`
	TLSKeyFile   string        `mapstructure:"tls_key_file"`
	// Advertise is the URL other nodes forward writes to (default: scheme,
	// the raft advertise host and the API port).
	Advertise string `mapstructure:"advertise"`
	// ForwardCAFile verifies other nodes' API certificates when forwarding
	// (default: the system roots).
	ForwardCAFile string        `mapstructure:"forward_ca_file"`
	MaxBodyBytes  int64         `mapstructure:"max_body_bytes"`
	HookLease     time.Duration `mapstructure:"hook_lease"`
	ApplyTimeout  time.Duration `mapstructure:"apply_timeout"`
	MetricsPublic bool          `mapstructure:"metrics_public"`
	// HoldTimeout is how long a write waits for a leader during an
	// election before it is answered 503 (0: at once).
	HoldTimeout time.Duration `mapstructure:"hold_timeout"`
}

// RaftConfig configures replication.
type RaftConfig struct {
	Addr              string        `mapstructure:"addr"`
	Advertise         string        `mapstructure:"advertise"`
	Bootstrap         bool          `mapstructure:"bootstrap"`
	HeartbeatTimeout  time.Duration `mapstructure:"heartbeat_timeout"`
	ElectionTimeout   time.Duration `mapstructure:"election_timeout"`
	SnapshotThreshold uint64        `mapstructure:"snapshot_threshold"`
	SnapshotInterval  time.Duration `mapstructure:"snapshot_interval"`
	// TLS files turn on mutual TLS for raft: every node needs a certificate
	// from the CA, and a node without one cannot join.
	TLSCAFile   string `mapstructure:"tls_ca_file"`
	TLSCertFile string `mapstructure:"tls_cert_file"`
	TLSKeyFile  string `mapstructure:"tls_key_file"`
}

// GossipConfig configures membership (hashicorp/memberlist).
type GossipConfig struct {
	Addr      string `mapstructure:"addr"`
	Advertise string `mapstructure:"advertise"`
	// Key is the base64 gossip encryption key (drawbridge keygen); KeyFile
	// holds it instead.
	Key     string `mapstructure:"key"`
	KeyFile string `mapstructure:"key_file"`
	// Label keeps two clusters on one network apart.
	Label          string        `mapstructure:"label"`
	ProbeInterval  time.Duration `mapstructure:"probe_interval"`
	ProbeTimeout   time.Duration `mapstructure:"probe_timeout"`
	SuspicionMult  int           `mapstructure:"suspicion_mult"`
	GossipInterval time.Duration `mapstructure:"gossip_interval"`
	// AllowedCIDRs limits gossip to peers in these networks (memberlist's
	// CIDRsAllowed); it must include this node's own gossip address.
	AllowedCIDRs []string `mapstructure:"allowed_cidrs"`
	// ReapAfter is how long failed and departed members are remembered
	// (default 72h).
	ReapAfter time.Duration `mapstructure:"reap_after"`
}

// ClusterConfig is cluster-wide trust.
type ClusterConfig struct {
	// Insecure lets the agent run outside --dev without gossip encryption
	// or raft mutual TLS: for a lab on a private network only. The agent
	// says so at start and in every /v1/status.
	Insecure bool `mapstructure:"insecure"`
}

// HAProxyConfig configures the managed HAProxy.
type HAProxyConfig struct {
	Bin           string        `mapstructure:"bin"`
	Dir           string        `mapstructure:"dir"`
	BindAddress   string        `mapstructure:"bind_address"`
	HardStopAfter time.Duration `mapstructure:"hard_stop_after"`
	MaxReloads    int           `mapstructure:"max_reloads"`
	MaxConn       int           `mapstructure:"maxconn"`
	QuietWindow   time.Duration `mapstructure:"quiet_window"`
	MaxDelay      time.Duration `mapstructure:"max_delay"`
	TimeoutClient time.Duration `mapstructure:"timeout_client"`
	TimeoutServer time.Duration `mapstructure:"timeout_server"`
	// DynamicPorts ("FIRST-LAST", or "off") is the port range one
	// pre-bound frontend serves: routes in it are added, changed and
	// removed through HAProxy's runtime API, never by a reload.
	DynamicPorts string `mapstructure:"dynamic_ports"`
	// OldWorkersMaxMB is the memory budget of HAProxy workers left from
	// reloads (serving their long-lived connections): above it the oldest
	// are stopped. 0 turns it off (only hard_stop_after bounds them).
	OldWorkersMaxMB int `mapstructure:"old_workers_max_mb"`
	// User and Group HAProxy runs as (started through setpriv; the agent
	// needs CAP_SETUID and CAP_SETGID). Empty: the agent's own user.
	User  string `mapstructure:"user"`
	Group string `mapstructure:"group"`
	// Chroot makes HAProxy's workers chroot into an empty directory.
	Chroot bool `mapstructure:"chroot"`
}

// DynamicRange parses haproxy.dynamic_ports ("off" and "" are empty).
func (h HAProxyConfig) DynamicRange() (haproxy.PortRange, error) {
	if h.DynamicPorts == "off" {
		return haproxy.PortRange{}, nil
	}
	return haproxy.ParsePortRange(h.DynamicPorts)
}

// RoutesConfig holds route policy.
type RoutesConfig struct {
	// DenyPorts are ports (or "lo-hi" ranges) no route may use, on top of the
	// node's own API, raft and gossip ports.
	DenyPorts []string `mapstructure:"deny_ports"`
	// BackendCIDRs, when set, are the only networks backends may be in.
	BackendCIDRs []string `mapstructure:"backend_cidrs"`
	// AllowLoopbackBackends admits loopback backends (local demos, make
	// cluster); --dev sets it. Nothing admits link-local ones.
	AllowLoopbackBackends bool `mapstructure:"allow_loopback_backends"`
}

// LimitsConfig bounds what writers can make the cluster hold (see api.Limits).
type LimitsConfig struct {
	MaxRoutes           int           `mapstructure:"max_routes"`
	MaxBackendsPerRoute int           `mapstructure:"max_backends_per_route"`
	MaxBackends         int           `mapstructure:"max_backends"`
	MaxTTL              time.Duration `mapstructure:"max_ttl"`
	// Rate and Burst: each token's request rate per second on each node
	// (0 = no limit) and its bucket.
	Rate  float64 `mapstructure:"rate"`
	Burst int     `mapstructure:"burst"`
	// MaxSnapshotBytes bounds POST /v1/snapshot.
	MaxSnapshotBytes int64 `mapstructure:"max_snapshot_bytes"`
}

// FloatingIPConfig selects how the floating IP moves (see cluster/floatingip).
type FloatingIPConfig struct {
	Provider  string `mapstructure:"provider"`
	Address   string `mapstructure:"address"`
	Interface string `mapstructure:"interface"`
	PrefixLen int    `mapstructure:"prefix_len"`
	// Priority: the eligible node with the highest priority claims first.
	Priority int `mapstructure:"priority"`
	// HoldDown: after losing the address (to a newer claim) or rejoining
	// from a minority view, a node waits this long before claiming again.
	HoldDown time.Duration `mapstructure:"hold_down"`
	// LagGrace: how long HAProxy may run an older table than this node's
	// before the node stops being eligible (and a holder hands over).
	LagGrace     time.Duration      `mapstructure:"lag_grace"`
	Exec         FloatingIPExec     `mapstructure:"exec"`
	DigitalOcean FloatingIPDOConfig `mapstructure:"digitalocean"`
}

// FloatingIPExec configures the exec provider.
type FloatingIPExec struct {
	Command string        `mapstructure:"command"`
	Timeout time.Duration `mapstructure:"timeout"`
	Retries int           `mapstructure:"retries"`
}

// FloatingIPDOConfig configures the digitalocean provider. The API token
// comes from TokenFile or the DIGITALOCEAN_TOKEN environment variable.
type FloatingIPDOConfig struct {
	TokenFile string `mapstructure:"token_file"`
	DropletID int    `mapstructure:"droplet_id"`
	APIURL    string `mapstructure:"api_url"`
}

// LeasesConfig tunes backend lease expiry.
type LeasesConfig struct {
	Interval    time.Duration `mapstructure:"interval"`
	Grace       time.Duration `mapstructure:"grace"`
	MaxFraction float64       `mapstructure:"max_fraction"`
	Force       bool          `mapstructure:"force"`
}

// LogConfig selects log level and format.
type LogConfig struct {
	Level  string `mapstructure:"level"`
	Format string `mapstructure:"format"`
}

// Fill derives values that depend on others: the node name from the host
// name, the HAProxy directory, the advertise addresses. Call it before
// Validate.
func (c *Config) Fill() {
	c.absPaths()
	if c.NodeName == "" {
		if h, err := os.Hostname(); err == nil {
			c.NodeName = strings.ToLower(h)
		}
	}
	if c.HAProxy.Dir == "" {
		c.HAProxy.Dir = filepath.Join(c.DataDir, "haproxy")
	}
	c.absPaths()
	if c.Role == roleWitness {
		c.HAProxy.Dir = ""
	}
	// --dev is the zero-setup loopback node, run by whoever tries it:
	// HAProxy runs as that user, not isolated (Warnings says so when a
	// configuration asked for isolation).
	if c.Dev && (c.HAProxy.User != "" || c.HAProxy.Group != "" || c.HAProxy.Chroot) {
		c.HAProxy.User, c.HAProxy.Group, c.HAProxy.Chroot = "", "", false
		c.devIsolationOff = true
	}
	// Peers dial the raft and API advertise addresses: when the listeners
	// bind every address, advertise this host's private IP (as gossip does).
	host := advertiseHost(c.Raft.Advertise, c.Raft.Addr)
	if c.Raft.Advertise == "" && host != "" {
		if p, err := listenPort(c.Raft.Addr); err == nil {
			c.Raft.Advertise = net.JoinHostPort(host, strconv.Itoa(p))
		}
	}
	if c.API.Advertise == "" && host != "" {
		if p, err := listenPort(c.API.Addr); err == nil {
			scheme := "http"
			if c.API.TLSCertFile != "" {
				scheme = "https"
			}
			apiHost := host
			if h, _, err := net.SplitHostPort(c.API.Addr); err == nil && h != "" && !isUnspecified(h) {
				apiHost = h
			}
			c.API.Advertise = scheme + "://" + net.JoinHostPort(apiHost, strconv.Itoa(p))
		}
	}
}

// advertiseHost picks the host peers should dial: the advertise address's,
// else the listen address's when it names one, else this machine's private IP.
func advertiseHost(advertise, listen string) string {
	for _, a := range []string{advertise, listen} {
		if h, _, err := net.SplitHostPort(a); err == nil && h != "" && !isUnspecified(h) {
			return h
		}
	}
	ip, err := sockaddr.GetPrivateIP()
	if err != nil || ip == "" {
		return ""
	}
	return ip
}

func isUnspecified(h string) bool {
	a, err := netip.ParseAddr(h)
	return err == nil && a.IsUnspecified()
}

// CheckTrust refuses, outside --dev and without cluster.insecure, a node
// whose cluster ports would admit strangers: gossip must be encrypted and
// raft must run mutual TLS. The error is one line naming the missing
// setting and how to create it.
func (c *Config) CheckTrust() error {
	if c.Dev || c.Cluster.Insecure {
		return nil
	}
	const lab = "; or set cluster.insecure: true (DRAWBRIDGE_CLUSTER_INSECURE=true) for a lab on a private network"
	if c.Gossip.Key == "" && c.Gossip.KeyFile == "" {
		return errors.New("gossip encryption is off: set gossip.key_file (create a key with `drawbridge keygen > gossip.key`)" + lab)
	}
	if c.Raft.TLSCAFile == "" {
		return fmt.Errorf("raft mutual TLS is off: set raft.tls_ca_file, raft.tls_cert_file and raft.tls_key_file (create them with `drawbridge tls ca create` and `drawbridge tls cert create --node %s`)%s", c.NodeName, lab)
	}
	return nil
}

// TrustWarnings lists what this node runs without (empty under --dev,
// which only listens on loopback).
func (c *Config) TrustWarnings() []string {
	if c.Dev {
		return nil
	}
	var w []string
	if c.Gossip.Key == "" && c.Gossip.KeyFile == "" {
		w = append(w, "INSECURE: gossip is not encrypted: anyone who reaches "+c.Gossip.Addr+" can join the membership and forge member state")
	}
	if c.Raft.TLSCAFile == "" {
		w = append(w, "INSECURE: raft runs without mutual TLS: anyone who reaches "+c.Raft.Addr+" can vote and rewrite the route table")
	}
	if c.API.TLSCertFile == "" {
		w = append(w, "the API is plain HTTP: tokens cross the network in clear")
	}
	return w
}

// Validate reports the first configuration error in words an operator can act on.
func (c *Config) Validate() error {
	var errs []error
	if err := fsm.ValidateName("node_name", c.NodeName); err != nil {
		errs = append(errs, fmt.Errorf("node_name: %w (set --node-name)", err))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir is empty"))
	}
	if c.Role != roleEdge && c.Role != roleWitness {
		errs = append(errs, fmt.Errorf("role %q must be edge or witness", c.Role))
	}
	if c.BootstrapExpect < 0 {
		errs = append(errs, errors.New("bootstrap_expect must not be negative"))
	}
	if c.BootstrapExpect > 0 && c.Raft.Bootstrap {
		errs = append(errs, errors.New("set either raft.bootstrap (a single node) or bootstrap_expect (a new cluster), not both"))
	}
	if c.Gossip.Key != "" && c.Gossip.KeyFile != "" {
		errs = append(errs, errors.New("set gossip.key or gossip.key_file, not both"))
	}
	if c.Gossip.Key != "" {
		if _, err := cluster.ParseGossipKey(c.Gossip.Key); err != nil {
			errs = append(errs, fmt.Errorf("gossip.key: %w", err))
		}
	}
	tlsSet := 0
	for _, f := range []string{c.Raft.TLSCAFile, c.Raft.TLSCertFile, c.Raft.TLSKeyFile} {
		if f != "" {
			tlsSet++
		}
	}
	if tlsSet != 0 && tlsSet != 3 {
		errs = append(errs, errors.New("raft.tls_ca_file, raft.tls_cert_file and raft.tls_key_file must be set together"))
	}
	if c.API.Advertise != "" {
		if u, err := url.Parse(c.API.Advertise); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("api.advertise %q must be a URL like https://edge-1.example.com:9000", c.API.Advertise))
		}
	}
	for key, addr := range map[string]string{"api.addr": c.API.Addr, "raft.addr": c.Raft.Addr, "gossip.addr": c.Gossip.Addr} {
		if _, err := listenPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", key, err))
		}
	}
	if c.HAProxy.BindAddress != "" {
		if _, err := netip.ParseAddr(c.HAProxy.BindAddress); err != nil {
			errs = append(errs, fmt.Errorf("haproxy.bind_address %q is not an IP address (leave it empty to bind all addresses)", c.HAProxy.BindAddress))
		}
	}
	if _, err := c.HAProxy.DynamicRange(); err != nil {
		errs = append(errs, fmt.Errorf("haproxy.dynamic_ports: %w (or \"off\")", err))
	}
	if c.HAProxy.OldWorkersMaxMB < 0 {
		errs = append(errs, errors.New("haproxy.old_workers_max_mb must not be negative (0 = no budget)"))
	}
	if c.Gossip.ReapAfter < 0 {
		errs = append(errs, errors.New("gossip.reap_after must not be negative"))
	}
	for _, cidr := range c.Gossip.AllowedCIDRs {
		if _, err := netip.ParsePrefix(cidr); err != nil {
			errs = append(errs, fmt.Errorf("gossip.allowed_cidrs: %q is not a network like 10.0.0.0/8", cidr))
		}
	}
	if (c.API.TLSCertFile == "") != (c.API.TLSKeyFile == "") {
		errs = append(errs, errors.New("api.tls_cert_file and api.tls_key_file must be set together"))
	}
	if c.API.HoldTimeout < 0 || c.API.HoldTimeout > time.Minute {
		errs = append(errs, fmt.Errorf("api.hold_timeout %s must be between 0 (answer 503 at once during an election) and 1m", c.API.HoldTimeout))
	}
	if c.API.HookLease < 0 {
		errs = append(errs, errors.New("api.hook_lease must not be negative (0 = hook registrations never expire)"))
	}
	if _, err := fsm.ParsePortRanges(c.Routes.DenyPorts); err != nil {
		errs = append(errs, fmt.Errorf("routes.deny_ports: %w", err))
	}
	if _, err := api.ParseCIDRs(c.Routes.BackendCIDRs); err != nil {
		errs = append(errs, fmt.Errorf("routes.backend_cidrs: %w", err))
	}
	for i, t := range c.API.Tokens {
		if err := t.check(); err != nil {
			errs = append(errs, fmt.Errorf("api.tokens[%d]: %w", i, err))
		}
	}
	l := c.Limits
	if l.MaxRoutes < 0 || l.MaxBackendsPerRoute < 0 || l.MaxBackends < 0 || l.MaxTTL < 0 || l.Rate < 0 || l.Burst < 0 || l.MaxSnapshotBytes < 0 {
		errs = append(errs, errors.New("limits.* must not be negative"))
	}
	if l.MaxTTL > 0 && c.API.HookLease > l.MaxTTL {
		errs = append(errs, fmt.Errorf("api.hook_lease %s is above limits.max_ttl %s", c.API.HookLease, l.MaxTTL))
	}
	if c.HAProxy.Group != "" && c.HAProxy.User == "" {
		errs = append(errs, errors.New("haproxy.group needs haproxy.user"))
	}
	switch c.FloatingIP.Provider {
	case "none", "":
	case "digitalocean", "vip", "exec":
		if c.Role == roleWitness {
			errs = append(errs, errors.New("floating_ip: a witness never holds the floating IP; set floating_ip.provider: none on it"))
		}
		if _, err := netip.ParseAddr(c.FloatingIP.Address); err != nil {
			errs = append(errs, fmt.Errorf("floating_ip.address %q is not an IP address", c.FloatingIP.Address))
		}
		if c.FloatingIP.Provider == "exec" && c.FloatingIP.Exec.Command == "" {
			errs = append(errs, errors.New("floating_ip.exec.command is required with provider exec"))
		}
	default:
		errs = append(errs, fmt.Errorf("floating_ip.provider %q must be digitalocean, vip, exec or none", c.FloatingIP.Provider))
	}
	if c.Leases.MaxFraction < 0 || c.Leases.MaxFraction > 1 {
		errs = append(errs, errors.New("leases.max_fraction must be between 0 and 1"))
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level %q must be debug, info, warn or error", c.Log.Level))
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log.format %q must be text or json", c.Log.Format))
	}
	if err := c.Debug.check(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.checkWorkable()...)
	return errors.Join(errs...)
}

// reservedPorts are the ports routes may never take on this node: its own
// listeners and the deny list.
func (c *Config) reservedPorts() (fsm.PortRanges, error) {
	list := append([]string(nil), c.Routes.DenyPorts...)
	for _, addr := range []string{c.API.Addr, c.Raft.Addr, c.Gossip.Addr} {
		p, err := listenPort(addr)
		if err != nil {
			return nil, err
		}
		list = append(list, strconv.Itoa(p))
	}
	return fsm.ParsePortRanges(list)
}

// listenPort returns the port of a host:port listen address.
func listenPort(addr string) (int, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, fmt.Errorf("address %q: %w", addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("address %q: port must be 1-65535", addr)
	}
	return p, nil
}
