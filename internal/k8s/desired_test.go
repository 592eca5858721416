package k8s

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

func TestRouteNamesAreValidUniqueAndOwned(t *testing.T) {
	long := strings.Repeat("a", 63)
	cases := []struct{ ns, name string }{
		{"default", "web"},
		{"default", "web-2"},
		{long, long},
		{long, long[:62] + "b"},
		{long[:62] + "b", long},
		{"a", long},
		{long, "a"},
		{"default", "web_80"}, // not a valid Service name, but must not confuse ownership
	}
	seen := map[string]string{}
	for _, c := range cases {
		for _, port := range []int32{1, 80, 65535} {
			n := routeName(DefaultNamePrefix, c.ns, c.name, port)
			if err := fsm.ValidateName("name", n); err != nil {
				t.Errorf("%s/%s:%d: %q is not a valid route name: %v", c.ns, c.name, port, n, err)
			}
			key := fmt.Sprintf("%s/%s:%d", c.ns, c.name, port)
			if other, dup := seen[n]; dup {
				t.Errorf("%s and %s share route name %q", key, other, n)
			}
			seen[n] = key
			if !ownedByService(routeStem(DefaultNamePrefix, c.ns, c.name), n) {
				t.Errorf("%q is not recognised as %s/%s's", n, c.ns, c.name)
			}
		}
	}
	// A Service's stem never claims another Service's routes.
	for n, key := range seen {
		for _, c := range cases {
			stem := routeStem(DefaultNamePrefix, c.ns, c.name)
			if ownedByService(stem, n) && !strings.HasPrefix(key, c.ns+"/"+c.name+":") {
				t.Errorf("stem %q of %s/%s claims %q of %s", stem, c.ns, c.name, n, key)
			}
		}
	}
	if ownedByService("k8s.default_web_", "k8s.default_web_80x") || ownedByService("k8s.default_web_", "k8s.default_web_") {
		t.Error("a name that is not stem+digits was claimed")
	}
}

func readyNode(name, ip string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
			Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}},
		},
	}
}

func lbService(ns, name string, ports ...corev1.ServicePort) *corev1.Service {
	class := DefaultClass
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type:              corev1.ServiceTypeLoadBalancer,
			LoadBalancerClass: &class,
			Ports:             ports,
		},
	}
}

func tcpPort(name string, port, nodePort int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: port, NodePort: nodePort, Protocol: corev1.ProtocolTCP}
}

func TestDesiredRoutes(t *testing.T) {
	notReady := readyNode("n-notready", "10.0.0.9")
	notReady.Status.Conditions[0].Status = corev1.ConditionFalse
	excluded := readyNode("n-excluded", "10.0.0.8")
	excluded.Labels = map[string]string{LabelExcludeFromLB: ""}
	badAddr := readyNode("n-badaddr", "10.0.0.7\n  server evil 1.2.3.4:22")
	noAddr := readyNode("n-noaddr", "")
	noAddr.Status.Addresses = nil
	nodes := []*corev1.Node{readyNode("n2", "10.0.0.2"), readyNode("n1", "10.0.0.1"), notReady, excluded, badAddr, noAddr}

	yes, no := true, false
	n1, n2 := "n1", "n2"
	slice := &discoveryv1.EndpointSlice{Endpoints: []discoveryv1.Endpoint{
		{NodeName: &n1, Conditions: discoveryv1.EndpointConditions{Ready: &no}},
		{NodeName: &n2, Conditions: discoveryv1.EndpointConditions{Ready: &yes}},
	}}

	type want struct {
		routes   []string // "port name backends"
		problems []string // reasons
	}
	cases := []struct {
		name string
		svc  *corev1.Service
		want want
	}{
		{"two tcp ports", lbService("ns", "web", tcpPort("http", 80, 30080), tcpPort("", 443, 30443)),
			want{routes: []string{"80 k8s.ns_web_80 10.0.0.1:30080,10.0.0.2:30080", "443 k8s.ns_web_443 10.0.0.1:30443,10.0.0.2:30443"}}},
		{"udp and sctp refused, tcp served", lbService("ns", "dns",
			corev1.ServicePort{Name: "dns", Port: 53, NodePort: 30053, Protocol: corev1.ProtocolUDP},
			corev1.ServicePort{Port: 9, NodePort: 30009, Protocol: corev1.ProtocolSCTP},
			tcpPort("dnstcp", 53, 30054)),
			want{routes: []string{"53 k8s.ns_dns_53 10.0.0.1:30054,10.0.0.2:30054"},
				problems: []string{ReasonUnsupportedProtocol, ReasonUnsupportedProtocol}}},
		{"no node port", lbService("ns", "np", tcpPort("", 80, 0)),
			want{problems: []string{ReasonNoNodePort}}},
		{"public port annotation by number and name", func() *corev1.Service {
			s := lbService("ns", "web", tcpPort("http", 80, 30080), tcpPort("https", 443, 30443))
			s.Annotations = map[string]string{AnnotationPublicPorts: "80=8080, https=8443"}
			return s
		}(), want{routes: []string{"8080 k8s.ns_web_80 10.0.0.1:30080,10.0.0.2:30080", "8443 k8s.ns_web_443 10.0.0.1:30443,10.0.0.2:30443"}}},
		{"two ports on one public port", func() *corev1.Service {
			s := lbService("ns", "web", tcpPort("a", 80, 30080), tcpPort("b", 81, 30081))
			s.Annotations = map[string]string{AnnotationPublicPorts: "81=80"}
			return s
		}(), want{routes: []string{"80 k8s.ns_web_80 10.0.0.1:30080,10.0.0.2:30080"}, problems: []string{ReasonPortConflict}}},
		{"bad annotations fall back", func() *corev1.Service {
			s := lbService("ns", "web", tcpPort("", 80, 30080))
			s.Annotations = map[string]string{AnnotationPublicPorts: "80=99999", AnnotationBalance: "roundrobin\n  server x 1.2.3.4:22",
				AnnotationProxyProtocol: "v3"}
			return s
		}(), want{routes: []string{"80 k8s.ns_web_80 10.0.0.1:30080,10.0.0.2:30080"},
			problems: []string{ReasonInvalidAnnotation, ReasonInvalidAnnotation, ReasonInvalidAnnotation}}},
		{"local traffic policy: only nodes with a ready endpoint", func() *corev1.Service {
			s := lbService("ns", "web", tcpPort("", 80, 30080))
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			return s
		}(), want{routes: []string{"80 k8s.ns_web_80 10.0.0.2:30080"}}},
		{"local traffic policy: checks on healthCheckNodePort by HTTP", func() *corev1.Service {
			s := lbService("ns", "web", tcpPort("", 80, 30080), tcpPort("", 443, 30443))
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			s.Spec.HealthCheckNodePort = 31500
			return s
		}(), want{routes: []string{"80 k8s.ns_web_80 10.0.0.2:30080 check 31500 http", "443 k8s.ns_web_443 10.0.0.2:30443 check 31500 http"}}},
		{"cluster traffic policy: no check port even if one is set", func() *corev1.Service {
			s := lbService("ns", "web", tcpPort("", 80, 30080))
			s.Spec.HealthCheckNodePort = 31500
			return s
		}(), want{routes: []string{"80 k8s.ns_web_80 10.0.0.1:30080,10.0.0.2:30080"}}},
		{"local traffic policy: a healthCheckNodePort out of range", func() *corev1.Service {
			s := lbService("ns", "web", tcpPort("", 80, 30080))
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			s.Spec.HealthCheckNodePort = 70000
			return s
		}(), want{routes: []string{"80 k8s.ns_web_80 10.0.0.2:30080"}, problems: []string{ReasonInvalidHealthCheckPort}}},
		{"local traffic policy: a negative healthCheckNodePort", func() *corev1.Service {
			s := lbService("ns", "web", tcpPort("", 80, 30080))
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			s.Spec.HealthCheckNodePort = -5
			return s
		}(), want{routes: []string{"80 k8s.ns_web_80 10.0.0.2:30080"}, problems: []string{ReasonInvalidHealthCheckPort}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			routes, problems := desiredRoutes(DefaultNamePrefix, c.svc, nodes, []*discoveryv1.EndpointSlice{slice})
			var got []string
			for _, r := range routes {
				var bs []string
				for _, b := range r.Backends {
					bs = append(bs, b.Key())
				}
				line := fmt.Sprintf("%d %s %s", r.Port, r.Name, strings.Join(bs, ","))
				if r.CheckPort != 0 || r.CheckMode != "" {
					line += fmt.Sprintf(" check %d %s", r.CheckPort, r.CheckMode)
				}
				got = append(got, line)
				if err := r.Validate(); err != nil {
					t.Errorf("route %d does not validate: %v", r.Port, err)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(c.want.routes) {
				t.Errorf("routes:\n got %q\nwant %q", got, c.want.routes)
			}
			var reasons []string
			for _, p := range problems {
				reasons = append(reasons, p.Reason)
			}
			if fmt.Sprint(reasons) != fmt.Sprint(c.want.problems) {
				t.Errorf("problems: got %v (%v), want %v", reasons, problems, c.want.problems)
			}
		})
	}
}

func TestParsePublicPorts(t *testing.T) {
	for _, bad := range []string{"80", "=80", "80=", "80=0", "80=65536", "80=x", "80=1,80=2"} {
		if _, err := parsePublicPorts(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	m, err := parsePublicPorts(" 80=8080 ,https=8443,")
	if err != nil || m["80"] != 8080 || m["https"] != 8443 || len(m) != 2 {
		t.Errorf("got %v, %v", m, err)
	}
}
