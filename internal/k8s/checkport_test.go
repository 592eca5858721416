package k8s

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// A Service with externalTrafficPolicy Local gets HTTP checks on its
// healthCheckNodePort; switching to Cluster takes them off; a check port
// changed by hand in drawbridge is repaired. The fake clientset stands in
// for the API server.
func TestControllerLocalServiceChecksHealthCheckNodePort(t *testing.T) {
	h := newHarness(t, Config{ExternalIP: "203.0.113.10"}, readyNode("n1", "10.0.0.1"), readyNode("n2", "10.0.0.2"))
	yes := true
	n2 := "n2"
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "web-abc", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.1.0.5"}, NodeName: &n2, Conditions: discoveryv1.EndpointConditions{Ready: &yes}}},
	}
	if _, err := h.kube.DiscoveryV1().EndpointSlices("default").Create(h.ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := lbService("default", "web", tcpPort("http", 80, 30080))
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	svc.Spec.HealthCheckNodePort = 31500
	h.create(svc)
	checked := func(port int, mode string, backends string) func() bool {
		return func() bool {
			r, ok := h.routes.get(80)
			return ok && r.CheckPort == port && r.CheckMode == mode && r.HealthCheck && backendKeys(r) == backends
		}
	}
	testenv.Eventually(t, 10*time.Second, "route 80 checked on 31500 by HTTP", checked(31500, fsm.CheckModeHTTP, "10.0.0.2:30080"))

	// Drift: someone puts the route back with TCP checks; the resync of
	// the Service repairs it.
	r, _ := h.routes.get(80)
	r.CheckPort, r.CheckMode = 0, ""
	h.routes.set(r)
	s := h.service("default", "web")
	s.Annotations = map[string]string{"touch": "1"}
	h.updateService(s)
	testenv.Eventually(t, 10*time.Second, "check port repaired", checked(31500, fsm.CheckModeHTTP, "10.0.0.2:30080"))

	// Cluster policy: every ready node, checked on its own port by TCP.
	s = h.service("default", "web")
	s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
	s.Spec.HealthCheckNodePort = 0
	h.updateService(s)
	testenv.Eventually(t, 10*time.Second, "checks back to TCP on the node port", checked(0, "", "10.0.0.1:30080,10.0.0.2:30080"))
}
