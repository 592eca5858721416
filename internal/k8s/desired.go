package k8s

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

// Annotations a Service may carry.
const (
	// AnnotationPublicPorts maps Service ports to other public ports:
	// "80=8080,https=8443" (a port's number or name = the public port).
	// Ports not named keep the Service port as the public port.
	AnnotationPublicPorts = "drawbridge.io/public-ports"
	// AnnotationBalance sets the routes' balance algorithm (roundrobin,
	// leastconn, source, first, random).
	AnnotationBalance = "drawbridge.io/balance"
	// AnnotationProxyProtocol sends the PROXY protocol (v1 or v2) to the
	// nodes.
	AnnotationProxyProtocol = "drawbridge.io/proxy-protocol"
)

// LabelExcludeFromLB is Kubernetes' well-known node label that keeps a node
// out of every load balancer's backends.
const LabelExcludeFromLB = "node.kubernetes.io/exclude-from-external-load-balancers"

// problem is something about a Service the controller cannot serve as
// asked; it becomes a Warning Event with Reason.
type problem struct {
	Reason  string
	Message string
}

// desiredRoutes computes the routes a Service should have: one per TCP
// port, on the public port (the Service port, or the one the annotation
// names), with the eligible nodes' InternalIP:NodePort as backends. For
// externalTrafficPolicy Local only nodes with a ready endpoint of the
// Service are eligible. Ports it cannot serve (UDP, SCTP, no NodePort, a bad
// annotation, two ports on one public port) come back as problems; the
// other ports are still served.
func desiredRoutes(prefix string, svc *corev1.Service, nodes []*corev1.Node, slices_ []*discoveryv1.EndpointSlice) ([]fsm.Route, []problem) {
	var problems []problem
	bad := func(reason, format string, args ...any) {
		problems = append(problems, problem{Reason: reason, Message: fmt.Sprintf(format, args...)})
	}

	publicPorts, err := parsePublicPorts(svc.Annotations[AnnotationPublicPorts])
	if err != nil {
		bad(ReasonInvalidAnnotation, "annotation %s: %v; using the Service ports", AnnotationPublicPorts, err)
		publicPorts = nil
	}
	balance := fsm.BalanceRoundRobin
	if v, ok := svc.Annotations[AnnotationBalance]; ok {
		switch v {
		case fsm.BalanceRoundRobin, fsm.BalanceLeastConn, fsm.BalanceSource, fsm.BalanceFirst, fsm.BalanceRandom:
			balance = v
		default:
			bad(ReasonInvalidAnnotation, "annotation %s %q must be roundrobin, leastconn, source, first or random; using roundrobin", AnnotationBalance, v)
		}
	}
	proxyProtocol := ""
	if v, ok := svc.Annotations[AnnotationProxyProtocol]; ok {
		switch v {
		case fsm.ProxyProtocolV1, fsm.ProxyProtocolV2:
			proxyProtocol = v
		case "", "off":
		default:
			bad(ReasonInvalidAnnotation, "annotation %s %q must be v1, v2 or off; sending none", AnnotationProxyProtocol, v)
		}
	}

	eligible := eligibleNodes(nodes)
	// With externalTrafficPolicy Local, kube-proxy answers GET on the
	// Service's healthCheckNodePort with 200 on nodes that have a ready
	// local endpoint and 503 on the others. HAProxy checks every backend
	// there by HTTP (a TCP connect succeeds on every node), so a node that
	// loses its last endpoint is taken out before the EndpointSlice watch
	// catches up.
	checkPort := 0
	if svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal {
		withEndpoints := nodesWithReadyEndpoints(slices_)
		eligible = slices.DeleteFunc(eligible, func(n nodeAddr) bool { return !withEndpoints[n.name] })
		switch hc := svc.Spec.HealthCheckNodePort; {
		case hc >= 1 && hc <= 65535:
			checkPort = int(hc)
		case hc != 0:
			bad(ReasonInvalidHealthCheckPort, "healthCheckNodePort %d is out of range 1-65535; backends are checked by TCP on their own port", hc)
		}
	}

	var routes []fsm.Route
	used := map[int]string{}
	for _, p := range svc.Spec.Ports {
		label := portLabel(p)
		proto := p.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		if proto != corev1.ProtocolTCP {
			bad(ReasonUnsupportedProtocol, "port %s is %s: drawbridge routes TCP only, so this port is not served", label, proto)
			continue
		}
		if p.NodePort == 0 {
			bad(ReasonNoNodePort, "port %s has no nodePort (spec.allocateLoadBalancerNodePorts is false?): drawbridge routes to node ports, so this port is not served", label)
			continue
		}
		public := int(p.Port)
		if v, ok := publicPorts[strconv.Itoa(int(p.Port))]; ok {
			public = v
		} else if v, ok := publicPorts[p.Name]; ok && p.Name != "" {
			public = v
		}
		if other, dup := used[public]; dup {
			bad(ReasonPortConflict, "ports %s and %s both want public port %d; only %s is served", other, label, public, other)
			continue
		}
		used[public] = label

		r := fsm.NewRoute(public, routeName(prefix, svc.Namespace, svc.Name, p.Port))
		r.Balance = balance
		r.ProxyProtocol = proxyProtocol
		if checkPort != 0 {
			r.CheckPort, r.CheckMode = checkPort, fsm.CheckModeHTTP
		}
		for _, n := range eligible {
			b := fsm.Backend{Address: n.addr, Port: int(p.NodePort)}
			if fsm.ValidateName("owner", n.name) == nil {
				b.Owner = n.name
			}
			r.Backends = append(r.Backends, b)
		}
		slices.SortFunc(r.Backends, fsm.CompareBackends)
		routes = append(routes, r)
	}
	return routes, problems
}

// portLabel names a Service port in messages: "http (80/TCP)" or "80/UDP".
func portLabel(p corev1.ServicePort) string {
	proto := p.Protocol
	if proto == "" {
		proto = corev1.ProtocolTCP
	}
	if p.Name != "" {
		return fmt.Sprintf("%s (%d/%s)", p.Name, p.Port, proto)
	}
	return fmt.Sprintf("%d/%s", p.Port, proto)
}

// parsePublicPorts reads the public-ports annotation: comma-separated
// "servicePort=publicPort" pairs, the Service port by number or name.
func parsePublicPorts(v string) (map[string]int, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return nil, nil
	}
	out := map[string]int{}
	for part := range strings.SplitSeq(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		from, to, ok := strings.Cut(part, "=")
		from, to = strings.TrimSpace(from), strings.TrimSpace(to)
		if !ok || from == "" {
			return nil, fmt.Errorf("%q is not servicePort=publicPort", part)
		}
		p, err := strconv.Atoi(to)
		if err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("%q: the public port must be a number from 1 to 65535", part)
		}
		if _, dup := out[from]; dup {
			return nil, fmt.Errorf("port %q is named twice", from)
		}
		out[from] = p
	}
	return out, nil
}

// nodeAddr is a node that may carry traffic and the address it gets it on.
type nodeAddr struct {
	name string
	addr string
}

// eligibleNodes returns the nodes that may be backends: Ready, not being
// deleted, not labelled out of load balancers, with an InternalIP. The
// result is ordered by name.
func eligibleNodes(nodes []*corev1.Node) []nodeAddr {
	var out []nodeAddr
	for _, n := range nodes {
		if n.DeletionTimestamp != nil || !nodeReady(n) {
			continue
		}
		if _, excluded := n.Labels[LabelExcludeFromLB]; excluded {
			continue
		}
		addr := nodeInternalIP(n)
		if addr == "" {
			continue
		}
		out = append(out, nodeAddr{name: n.Name, addr: addr})
	}
	slices.SortFunc(out, func(a, b nodeAddr) int { return strings.Compare(a.name, b.name) })
	return out
}

// nodeReady reports the node's Ready condition is True.
func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// nodeInternalIP returns the node's first InternalIP that parses, IPv4
// preferred, canonical; "" when it has none. A node's status is written by
// its kubelet, so the address is validated like any other input.
func nodeInternalIP(n *corev1.Node) string {
	var v6 string
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(strings.TrimSpace(a.Address))
		if err != nil || ip.Zone() != "" || ip.IsUnspecified() || ip.IsMulticast() {
			continue
		}
		ip = ip.Unmap()
		if ip.Is4() {
			return ip.String()
		}
		if v6 == "" {
			v6 = ip.String()
		}
	}
	return v6
}

// nodesWithReadyEndpoints returns the names of the nodes that host a ready
// endpoint in the Service's EndpointSlices. An endpoint whose ready
// condition is unset counts as ready, as the API defines.
func nodesWithReadyEndpoints(eps []*discoveryv1.EndpointSlice) map[string]bool {
	out := map[string]bool{}
	for _, s := range eps {
		for _, e := range s.Endpoints {
			if e.NodeName == nil || *e.NodeName == "" {
				continue
			}
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			out[*e.NodeName] = true
		}
	}
	return out
}

// sameRoute reports whether the route drawbridge has matches the desired
// one in everything the controller sets.
func sameRoute(have, want fsm.Route) bool {
	if have.Port != want.Port || have.Name != want.Name || have.Implicit ||
		have.Balance != want.Balance || have.Sticky != want.Sticky ||
		have.ProxyProtocol != want.ProxyProtocol || have.HealthCheck != want.HealthCheck ||
		have.CheckPort != want.CheckPort || have.CheckMode != want.CheckMode ||
		len(have.Backends) != len(want.Backends) {
		return false
	}
	h := slices.Clone(have.Backends)
	slices.SortFunc(h, fsm.CompareBackends)
	for i, b := range h {
		w := want.Backends[i]
		if b.Address != w.Address || b.Port != w.Port || b.Owner != w.Owner || !b.ExpiresAt.IsZero() {
			return false
		}
	}
	return true
}
