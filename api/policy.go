package api

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"sync"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

// BackendPolicy decides which addresses may be backends. A backend is a
// data-plane destination a writer chooses and HAProxy connects to from the
// edge node, on a port the whole internet may reach: whatever it names is
// published. The policy runs on the leader before a command enters the log
// (see DESIGN.md), never in Apply.
type BackendPolicy struct {
	// AllowLoopback admits 127.0.0.0/8 and ::1 (local demos, `make
	// cluster`); the members' own ports on loopback stay refused. Nothing
	// admits link-local addresses.
	AllowLoopback bool
	// CIDRs, when set, are the only networks backends may be in (the VPC,
	// the Kubernetes nodes).
	CIDRs []netip.Prefix
	// DenyAddrs are refused outright: this node's other own addresses, the
	// floating IP.
	DenyAddrs []netip.Addr
}

// nat64 is the well-known NAT64 prefix (RFC 6052): an address in it reaches
// the IPv4 address in its last 32 bits.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// thisNetwork is 0.0.0.0/8, "this host on this network": connecting to it
// reaches the local machine on Linux.
var thisNetwork = netip.MustParsePrefix("0.0.0.0/8")

// Endpoint is one listener of a cluster member: no route may take its port,
// and no backend may point at it.
type Endpoint struct {
	// Node is the member's name.
	Node string
	// What is "API", "raft" or "gossip".
	What string
	// Addr is where it listens (as advertised).
	Addr netip.AddrPort
}

// MemberAddress is where one member listens, as the cluster view knows it.
type MemberAddress struct {
	Name, RaftAddr, GossipAddr, APIURL string
}

// MemberAddresser may be implemented by a ClusterSource: every member's
// listener addresses alone, as Cluster reports them. Every write checks its
// ports and backends against them; this spares building the whole cluster
// status per write.
type MemberAddresser interface {
	MemberAddresses() []MemberAddress
}

// memberView is the endpoints and reserved ports parsed from one list of
// member addresses. Members change rarely and writes often: the last view
// is kept and reused while the addresses are the same.
type memberView struct {
	mu       sync.Mutex
	members  []MemberAddress // the addresses the view was parsed from
	eps      []Endpoint
	reserved fsm.PortRanges
}

// endpoints returns every member's API, raft and gossip listener, as this
// node's cluster view knows them, plus this node's own. The slice is
// shared: callers only read it.
func (s *Server) endpoints() []Endpoint {
	eps, _ := s.members()
	return eps
}

// members returns the endpoints and the ports no route may take (see
// reservedPorts), parsed again only when a member's addresses changed.
func (s *Server) members() ([]Endpoint, fsm.PortRanges) {
	var ms []MemberAddress
	switch c := s.cluster.(type) {
	case nil:
	case MemberAddresser:
		ms = c.MemberAddresses()
	default:
		for _, m := range c.Cluster().Members {
			ms = append(ms, MemberAddress{Name: m.Name, RaftAddr: m.RaftAddr, GossipAddr: m.GossipAddr, APIURL: m.APIURL})
		}
	}
	v := &s.view
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.eps != nil && sameAddresses(v.members, ms) {
		return v.eps, v.reserved
	}
	eps := append([]Endpoint(nil), s.cfg.OwnEndpoints...)
	for _, m := range ms {
		add := func(what, hostport string) {
			if ap, err := netip.ParseAddrPort(hostport); err == nil {
				eps = append(eps, Endpoint{Node: m.Name, What: what, Addr: ap})
			}
		}
		add("raft", m.RaftAddr)
		add("gossip", m.GossipAddr)
		if u, err := url.Parse(m.APIURL); err == nil && u.Host != "" {
			add("API", u.Host)
		}
	}
	if eps == nil {
		eps = []Endpoint{} // cached: nil means "not parsed yet"
	}
	v.members = slices.Clone(ms)
	v.eps, v.reserved = eps, s.reservedPorts(eps)
	return v.eps, v.reserved
}

// sameAddresses reports whether a and b name the same members at the same
// addresses, in the same order.
func sameAddresses(a, b []MemberAddress) bool { return slices.Equal(a, b) }

// reservedPorts is Config.ReservedPorts plus every member's API, raft and
// gossip ports: a route on any of them would bind over that member's
// listener, or fail to, on that member.
func (s *Server) reservedPorts(eps []Endpoint) fsm.PortRanges {
	specs := []string{s.cfg.ReservedPorts.String()}
	for _, e := range eps {
		specs = append(specs, strconv.Itoa(int(e.Addr.Port())))
	}
	r, err := fsm.ParsePortRanges(specs)
	if err != nil {
		return s.cfg.ReservedPorts // member ports are 1-65535 by construction
	}
	return r
}

// checkBackend refuses a backend address the policy does not allow, with a
// message that names the reason. tok, when a register token, narrows it to
// its own CIDRs.
func (s *Server) checkBackend(address string, port int, tok *Token, eps []Endpoint) error {
	a, err := netip.ParseAddr(address)
	if err != nil {
		return errorf(400, "backend %s is not an IP address", quoteInput(address))
	}
	a = a.Unmap()
	if reason := addrRefusal(a, s.cfg.BackendPolicy.AllowLoopback); reason != "" {
		return errorf(400, "backend %s refused: %s", hostPort(a, port), reason)
	}
	if nat64.Contains(a) {
		b := a.As16()
		v4 := netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
		if reason := addrRefusal(v4, false); reason != "" {
			return errorf(400, "backend %s refused: it reaches %s through NAT64, and that is %s", hostPort(a, port), v4, reason)
		}
	}
	for _, d := range s.cfg.BackendPolicy.DenyAddrs {
		if d.Unmap() == a {
			return errorf(400, "backend %s refused: %s is an address of this cluster (floating IP or a node's own)", hostPort(a, port), a)
		}
	}
	for _, e := range eps {
		ea := e.Addr.Addr().Unmap()
		switch {
		case ea == a && !a.IsLoopback() && !ea.IsUnspecified():
			return errorf(400, "backend %s refused: %s is cluster member %s's own address (its %s listener is %s)",
				hostPort(a, port), a, e.Node, e.What, e.Addr)
		case a.IsLoopback() && int(e.Addr.Port()) == port:
			return errorf(400, "backend %s refused: port %d is cluster member %s's %s port", hostPort(a, port), port, e.Node, e.What)
		}
	}
	if cidrs := s.cfg.BackendPolicy.CIDRs; len(cidrs) > 0 && !a.IsLoopback() && !inAny(a, cidrs) {
		return errorf(400, "backend %s refused: not in routes.backend_cidrs (%s)", hostPort(a, port), prefixList(cidrs))
	}
	if tok != nil && tok.Role == RoleRegister && !tok.mayReach(a) {
		return errorf(403, "backend %s refused: token %s may only name backends in %s", hostPort(a, port), tok.Name, prefixList(tok.BackendCIDRs))
	}
	return nil
}

// addrRefusal is why a can never be a backend, or "".
func addrRefusal(a netip.Addr, allowLoopback bool) string {
	switch {
	case a.IsLinkLocalUnicast():
		return "link-local addresses (169.254.0.0/16, fe80::/10) are never backends: the cloud metadata service lives there"
	case a.IsLoopback() && !allowLoopback:
		return "loopback addresses would publish the edge node's own services (set routes.allow_loopback_backends for a local demo)"
	case a.IsUnspecified():
		return "the unspecified address is not a destination"
	case a.Is4() && thisNetwork.Contains(a):
		return "0.0.0.0/8 reaches the edge node itself"
	case a.IsMulticast():
		return "multicast addresses are not TCP destinations"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address is not a TCP destination"
	}
	return ""
}

func inAny(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func prefixList(ps []netip.Prefix) string {
	s := ""
	for i, p := range ps {
		if i > 0 {
			s += ", "
		}
		s += p.String()
	}
	return s
}

func hostPort(a netip.Addr, port int) string {
	return net.JoinHostPort(a.String(), strconv.Itoa(port))
}

// ParseCIDRs reads CIDR prefixes ("10.0.0.0/16"); a bare address is a /32
// or /128.
func ParseCIDRs(specs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range specs {
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("%q is not a CIDR prefix", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
