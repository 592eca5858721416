package haproxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Frontend is one public port and the servers behind it. It is a plain value:
// the caller converts from its route table, so this package never depends on
// how routes are stored or replicated.
type Frontend struct {
	Port int    // public TCP port, 1-65535, unique among frontends
	Name string // route name, [a-z0-9][a-z0-9._-]{0,62}; rendered as a comment only

	// Balance is the HAProxy balance algorithm: roundrobin, leastconn, source,
	// first or random. Empty means roundrobin.
	Balance string
	// Sticky pins a client (by source address) to the server it first reached.
	Sticky bool
	// ProxyProtocol is "", "v1" or "v2": send the PROXY protocol header to the
	// servers (send-proxy / send-proxy-v2).
	ProxyProtocol string
	// HealthCheck enables health checks on every server: a TCP connect,
	// unless CheckHTTP.
	HealthCheck bool
	// CheckPort, when not 0, sends the checks to this port of each server
	// instead of the server's own port (`check port N`): kube-proxy's
	// healthCheckNodePort for a Service with externalTrafficPolicy Local.
	CheckPort int
	// CheckHTTP makes the check `GET /healthz` wanting status 200 instead of
	// a TCP connect. A connect is not enough for kube-proxy's health port:
	// it accepts on every node and answers 503 where the Service has no
	// ready local endpoint, so only the status tells the nodes apart.
	CheckHTTP bool
	Servers   []Server
}

// httpCheck is the backend part of an HTTP health check (Frontend.CheckHTTP):
// kube-proxy's health port answers GET with 200 where the Service has a
// ready local endpoint and 503 where it has none, so exactly 200 is UP. The
// request and status are fixed text: nothing a route carries reaches them.
const httpCheck = "    option httpchk GET /healthz\n    http-check expect status 200\n"

// Server is one backend endpoint. Address is a canonical IPv4 or IPv6 literal
// (as netip.Addr.String prints it, no zone).
type Server struct {
	Address string
	Port    int
}

// Settings are the node-wide parts of the rendered configuration.
type Settings struct {
	// BindAddress is the address frontends bind to. Empty binds the IPv4
	// wildcard, so a floating IP attached to the node later is served without
	// a reload; otherwise a canonical IP literal.
	BindAddress string
	// HardStopAfter bounds how long old workers (kept alive by long-lived TCP
	// connections) survive a reload. Default 30m.
	HardStopAfter time.Duration
	// MaxReloads is mworker-max-reloads: a worker that survived this many
	// reloads is killed. Default 50.
	MaxReloads int
	// MaxConn is the global connection limit. 0 (the default) leaves it out,
	// so HAProxy sizes it from its file-descriptor limit, leaving room for
	// every listener and health check: a fixed value needs about two
	// descriptors per connection plus one per listener and server, and a
	// reload that does not fit fails (seen here at 81 routes with maxconn
	// 9900 under a 20000 limit).
	MaxConn int
	// Timeouts; defaults 5s, 1h, 1h.
	TimeoutConnect, TimeoutClient, TimeoutServer time.Duration
	// CheckInterval is the health check interval of servers. Default 2s.
	CheckInterval time.Duration
	// StatsSocket is the runtime API socket path (admin level, mode 600), an
	// absolute path of [A-Za-z0-9._/-]. Empty renders none.
	StatsSocket string
	// SharedSockets renders the stats socket mode 660: HAProxy runs as its
	// own user and the agent reaches the socket through the group.
	SharedSockets bool
	// Chroot, when set, is the empty directory workers chroot into after
	// binding (an absolute path of [A-Za-z0-9._/-]).
	Chroot string
	// DynamicPorts is the port range served by one pre-bound frontend whose
	// routes change through the runtime API without a reload (see
	// dynamic.go). Empty disables it: every route gets its own frontend.
	DynamicPorts PortRange
	// MapFile is the map (port -> slot backend) the dynamic frontend reads,
	// an absolute path of [A-Za-z0-9._/-]; required with DynamicPorts.
	MapFile string
}

// Defaults applied by WithDefaults.
const (
	DefaultHardStopAfter  = 30 * time.Minute
	DefaultMaxReloads     = 50
	DefaultTimeoutConnect = 5 * time.Second
	DefaultTimeoutClient  = time.Hour
	DefaultTimeoutServer  = time.Hour
	DefaultCheckInterval  = 2 * time.Second
)

// maxTimer is the largest timer HAProxy accepts (2^31-1 ms, about 24.8 days);
// we keep to whole days below it.
const maxTimer = 24 * 24 * time.Hour

// WithDefaults returns s with every zero field replaced by its default.
func (s Settings) WithDefaults() Settings {
	if s.HardStopAfter == 0 {
		s.HardStopAfter = DefaultHardStopAfter
	}
	if s.MaxReloads == 0 {
		s.MaxReloads = DefaultMaxReloads
	}
	if s.TimeoutConnect == 0 {
		s.TimeoutConnect = DefaultTimeoutConnect
	}
	if s.TimeoutClient == 0 {
		s.TimeoutClient = DefaultTimeoutClient
	}
	if s.TimeoutServer == 0 {
		s.TimeoutServer = DefaultTimeoutServer
	}
	if s.CheckInterval == 0 {
		s.CheckInterval = DefaultCheckInterval
	}
	return s
}

// ErrRejected wraps every problem RenderChecked reports: a value outside the
// allow-lists that was left out of (or defaulted in) the rendered file.
var ErrRejected = errors.New("value rejected by render allow-list")

var (
	nameRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	socketRE = regexp.MustCompile(`^/[A-Za-z0-9._/-]{1,200}$`)
	balances = map[string]bool{"roundrobin": true, "leastconn": true, "source": true, "first": true, "random": true}
)

// Rendered is a complete configuration: haproxy.cfg and the map file its
// dynamic frontend reads (empty without a dynamic range).
type Rendered struct {
	Config []byte
	Map    []byte
}

// Hash identifies the rendered pair; without a map it is Hash(Config).
func (r Rendered) Hash() string {
	if len(r.Map) == 0 {
		return Hash(r.Config)
	}
	return Hash(append(append(slices.Clip(r.Config), "\n# map\n"...), r.Map...))
}

// Render returns the complete haproxy.cfg for fes. The output is
// deterministic: the same frontends in any order (servers in any order) give
// the same bytes. Anything outside the allow-lists is left out (a frontend or
// server) or replaced by its default (a setting); use RenderChecked to learn
// what was dropped.
func Render(s Settings, fes []Frontend) []byte {
	cfg, _ := RenderChecked(s, fes)
	return cfg
}

// RenderChecked is Render that also reports, as errors wrapping ErrRejected,
// every value it refused. The returned configuration is always usable: it is
// rendered from the accepted values only, so no input can break out of its
// field (a defence in depth behind the route table's own validation).
func RenderChecked(s Settings, fes []Frontend) ([]byte, error) {
	r, _, err := render(s, fes, nil, nil)
	return r.Config, err
}

// RenderAll is RenderChecked with the map file of the dynamic range. Routes
// in the range take slots in port order, with free slots to spare.
func RenderAll(s Settings, fes []Frontend) (Rendered, error) {
	r, _, err := render(s, fes, nil, nil)
	return r, err
}

// render renders fes. Dynamic routes take the slots lay gives them, or a
// compact layout (leaving holes unbound) when lay is nil; the layout used is
// returned. A dynamic route lay has no slot for is left out.
func render(s Settings, fes []Frontend, lay *layout, holes []int) (Rendered, *layout, error) {
	var errs []error
	reject := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrRejected}, args...)...))
	}
	s, bindHost, v6 := checkSettings(s, reject)

	sorted := slices.Clone(fes)
	slices.SortFunc(sorted, func(a, b Frontend) int {
		if a.Port != b.Port {
			return a.Port - b.Port
		}
		// Only duplicate ports get here (they are rejected); compare whole
		// values so which one wins does not depend on input order.
		return strings.Compare(fmt.Sprintf("%#v", a), fmt.Sprintf("%#v", b))
	})

	var b bytes.Buffer
	b.WriteString("# drawbridge: generated configuration, do not edit\n")
	b.WriteString("global\n")
	fmt.Fprintf(&b, "    hard-stop-after %s\n", formatDuration(s.HardStopAfter))
	fmt.Fprintf(&b, "    mworker-max-reloads %d\n", s.MaxReloads)
	if s.MaxConn > 0 {
		fmt.Fprintf(&b, "    maxconn %d\n", s.MaxConn)
	}
	if s.Chroot != "" {
		fmt.Fprintf(&b, "    chroot %s\n", s.Chroot)
	}
	if s.StatsSocket != "" {
		mode := "600"
		if s.SharedSockets {
			mode = "660"
		}
		fmt.Fprintf(&b, "    stats socket %s mode %s level admin\n", s.StatsSocket, mode)
	}
	b.WriteString("\ndefaults\n")
	b.WriteString("    mode tcp\n")
	b.WriteString("    option dontlognull\n")
	fmt.Fprintf(&b, "    timeout connect %s\n", formatDuration(s.TimeoutConnect))
	fmt.Fprintf(&b, "    timeout client %s\n", formatDuration(s.TimeoutClient))
	fmt.Fprintf(&b, "    timeout server %s\n", formatDuration(s.TimeoutServer))

	var dyn []Frontend
	for i, fe := range sorted {
		if i > 0 && sorted[i-1].Port == fe.Port {
			reject("frontend %q: port %d already used by %q", fe.Name, fe.Port, sorted[i-1].Name)
			continue
		}
		if err := checkFrontend(fe); err != nil {
			reject("%v", err)
			continue
		}
		if s.DynamicPorts.Contains(fe.Port) {
			if slices.Contains(holes, fe.Port) {
				continue
			}
			dyn = append(dyn, fe)
			continue
		}
		balance := fe.Balance
		if balance == "" {
			balance = "roundrobin"
		}
		fmt.Fprintf(&b, "\nfrontend fe_%d\n", fe.Port)
		fmt.Fprintf(&b, "    # route %s\n", fe.Name)
		fmt.Fprintf(&b, "    bind %s:%d\n", bindHost, fe.Port)
		fmt.Fprintf(&b, "    default_backend be_%d\n", fe.Port)
		fmt.Fprintf(&b, "\nbackend be_%d\n", fe.Port)
		fmt.Fprintf(&b, "    balance %s\n", balance)
		if fe.Sticky {
			typ := "ip"
			if v6 {
				typ = "ipv6"
			}
			fmt.Fprintf(&b, "    stick-table type %s size 200k expire 30m\n", typ)
			b.WriteString("    stick on src\n")
		}
		if fe.HealthCheck && fe.CheckHTTP {
			b.WriteString(httpCheck)
		}
		opts := serverOptions(s, fe)
		for _, sv := range sortServers(fe, reject) {
			fmt.Fprintf(&b, "    server %s %s%s\n", serverName(sv), serverAddr(sv), opts)
		}
	}
	if s.DynamicPorts.Empty() {
		return Rendered{Config: b.Bytes()}, nil, errors.Join(errs...)
	}
	if lay == nil {
		lay = compactLayout(s, dyn, holes)
	} else {
		placed := dyn[:0]
		for _, fe := range dyn {
			if n, ok := lay.Ports[fe.Port]; ok && n < lay.Pool[classOf(fe).key()] {
				placed = append(placed, fe)
			} else {
				reject("frontend %q: port %d has no slot", fe.Name, fe.Port)
			}
		}
		dyn = placed
	}
	m := renderDynamic(&b, s, bindHost, v6, dyn, lay, reject)
	return Rendered{Config: b.Bytes(), Map: m}, lay, errors.Join(errs...)
}

// checkSettings applies defaults and replaces invalid settings by defaults.
// It returns the bind host as rendered before ":port" and whether clients
// are IPv6 (which needs an ipv6 stick table).
func checkSettings(s Settings, reject func(string, ...any)) (Settings, string, bool) {
	s = s.WithDefaults()
	d := Settings{}.WithDefaults()
	timer := func(name string, v *time.Duration, def time.Duration) {
		if *v < time.Millisecond || *v > maxTimer {
			reject("setting %s %v out of range [1ms, %v]", name, *v, maxTimer)
			*v = def
		}
	}
	timer("HardStopAfter", &s.HardStopAfter, d.HardStopAfter)
	timer("TimeoutConnect", &s.TimeoutConnect, d.TimeoutConnect)
	timer("TimeoutClient", &s.TimeoutClient, d.TimeoutClient)
	timer("TimeoutServer", &s.TimeoutServer, d.TimeoutServer)
	timer("CheckInterval", &s.CheckInterval, d.CheckInterval)
	if s.MaxReloads < 1 || s.MaxReloads > 1_000_000 {
		reject("setting MaxReloads %d out of range [1, 1000000]", s.MaxReloads)
		s.MaxReloads = d.MaxReloads
	}
	if s.MaxConn < 0 || s.MaxConn > 10_000_000 {
		reject("setting MaxConn %d out of range [0, 10000000]", s.MaxConn)
		s.MaxConn = d.MaxConn
	}
	if s.Chroot != "" && (!socketRE.MatchString(s.Chroot) || strings.Contains(s.Chroot, "..")) {
		reject("setting Chroot %q is not an absolute path of [A-Za-z0-9._/-]", s.Chroot)
		s.Chroot = ""
	}
	if s.StatsSocket != "" && (!socketRE.MatchString(s.StatsSocket) || strings.Contains(s.StatsSocket, "..")) {
		reject("setting StatsSocket %q is not an absolute path of [A-Za-z0-9._/-]", s.StatsSocket)
		s.StatsSocket = ""
	}
	if err := s.DynamicPorts.Validate(); err != nil {
		reject("setting DynamicPorts: %v; no dynamic range", err)
		s.DynamicPorts = PortRange{}
	}
	if !s.DynamicPorts.Empty() && (!socketRE.MatchString(s.MapFile) || strings.Contains(s.MapFile, "..")) {
		reject("setting MapFile %q is not an absolute path of [A-Za-z0-9._/-]; no dynamic range", s.MapFile)
		s.DynamicPorts = PortRange{}
	}
	bindHost, v6 := "", false
	if s.BindAddress != "" {
		a, ok := canonicalAddr(s.BindAddress)
		switch {
		case !ok:
			reject("setting BindAddress %q is not a canonical IP literal; binding all addresses", s.BindAddress)
			s.BindAddress = ""
		case a.Is4():
			bindHost = s.BindAddress
		default:
			bindHost, v6 = "["+s.BindAddress+"]", true
		}
	}
	return s, bindHost, v6
}

func checkFrontend(fe Frontend) error {
	switch {
	case fe.Port < 1 || fe.Port > 65535:
		return fmt.Errorf("frontend %q: port %d out of range", fe.Name, fe.Port)
	case !nameRE.MatchString(fe.Name):
		return fmt.Errorf("frontend port %d: invalid name %q", fe.Port, fe.Name)
	case fe.Balance != "" && !balances[fe.Balance]:
		return fmt.Errorf("frontend %q: invalid balance %q", fe.Name, fe.Balance)
	case fe.ProxyProtocol != "" && fe.ProxyProtocol != "v1" && fe.ProxyProtocol != "v2":
		return fmt.Errorf("frontend %q: invalid proxy protocol %q", fe.Name, fe.ProxyProtocol)
	case fe.CheckPort < 0 || fe.CheckPort > 65535:
		return fmt.Errorf("frontend %q: check port %d out of range", fe.Name, fe.CheckPort)
	}
	return nil
}

// sortServers returns the valid, distinct servers of fe in a stable order.
func sortServers(fe Frontend, reject func(string, ...any)) []Server {
	out := make([]Server, 0, len(fe.Servers))
	for _, sv := range fe.Servers {
		if _, ok := canonicalAddr(sv.Address); !ok {
			reject("frontend %q: server address %q is not a canonical IP literal", fe.Name, sv.Address)
			continue
		}
		if sv.Port < 1 || sv.Port > 65535 {
			reject("frontend %q: server port %d out of range", fe.Name, sv.Port)
			continue
		}
		out = append(out, sv)
	}
	slices.SortFunc(out, func(a, b Server) int {
		if c := strings.Compare(a.Address, b.Address); c != 0 {
			return c
		}
		return a.Port - b.Port
	})
	return slices.Compact(out)
}

// canonicalAddr accepts only an IP literal in its canonical text form, which
// guarantees it contains nothing but hex digits, dots and colons.
func canonicalAddr(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" || a.String() != s {
		return netip.Addr{}, false
	}
	return a, true
}

// serverName is unique per address and port: dots and colons become
// underscores (an IPv4 name has four groups, an IPv6 one eight or a "__").
// addrNameReplacer turns an address into a server-name fragment; built once
// (building a Replacer costs more than using it, and names are made for
// every server of every runtime plan).
var addrNameReplacer = strings.NewReplacer(".", "_", ":", "_")

func serverName(sv Server) string {
	return "s_" + addrNameReplacer.Replace(sv.Address) + "_" + strconv.Itoa(sv.Port)
}

func serverAddr(sv Server) string {
	if strings.Contains(sv.Address, ":") {
		return "[" + sv.Address + "]:" + strconv.Itoa(sv.Port)
	}
	return sv.Address + ":" + strconv.Itoa(sv.Port)
}

// formatDuration prints d in the largest HAProxy time unit that divides it
// exactly, rounding sub-millisecond values up to the next millisecond.
func formatDuration(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	case d%time.Second == 0:
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	default:
		return strconv.FormatInt(int64((d+time.Millisecond-1)/time.Millisecond), 10) + "ms"
	}
}

// Hash returns the hex SHA-256 of a rendered configuration.
func Hash(cfg []byte) string {
	sum := sha256.Sum256(cfg)
	return hex.EncodeToString(sum[:])
}

// maxSocketPath is the longest path of a Unix socket (sun_path holds 108
// bytes with the terminating NUL): HAProxy cannot bind a longer one.
const maxSocketPath = 107

// Validate reports every setting Render would reject (and replace by a
// default or leave out), so a configuration loader can refuse it instead of
// running with a setting silently dropped.
func (s Settings) Validate() error {
	var errs []error
	checkSettings(s, func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) })
	if s.StatsSocket != "" {
		if err := CheckSocketPath(s.StatsSocket); err != nil {
			errs = append(errs, fmt.Errorf("setting StatsSocket: %w", err))
		}
	}
	return errors.Join(errs...)
}

// CheckSocketPath reports whether path can name a Unix socket HAProxy binds.
func CheckSocketPath(path string) error {
	if !strings.HasPrefix(path, "/") {
		return fmt.Errorf("socket path %q is not absolute", path)
	}
	if len(path) > maxSocketPath {
		return fmt.Errorf("socket path %q is %d bytes, longer than a Unix socket path may be (%d)", path, len(path), maxSocketPath)
	}
	return nil
}
