package client

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/api/client/clienttest"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// realCluster is three real APIs as one cluster (node-0 leads) with the
// test token.
func realCluster(t *testing.T) []*clienttest.RealAPI {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Tokens = []string{testToken}
	cfg.Limits.Rate = 0
	return clienttest.NewRealCluster(t, cfg, 3, testenv.Logger(t))
}

func putRoute(t *testing.T, c *Client, port int) {
	t.Helper()
	if _, err := c.PutRoute(context.Background(), port, RouteSpec{Name: "r", Backends: []BackendSpec{{Address: "10.0.0.1", Port: 30000}}}); err != nil {
		t.Fatalf("PUT %d: %v", port, err)
	}
}

// A client that starts at a follower learns the leader's member from the
// answers and sends its writes there: at most one write per other member
// is forwarded.
func TestClientSendsWritesToTheLeader(t *testing.T) {
	nodes := realCluster(t)
	leader, f1, f2 := nodes[0], nodes[1], nodes[2]
	c := newClient(t, f1.URL(), f2.URL(), leader.URL())
	for port := 8000; port < 8010; port++ {
		putRoute(t, c, port)
	}
	// f1 answers first and names node-0, whose member is not known yet:
	// the next write goes to f2, the member not heard from, which names
	// node-0 too; the third goes to the leader, and all after it.
	if got := [3]int64{f1.Requests.Load(), f2.Requests.Load(), leader.Requests.Load()}; got != [3]int64{1, 1, 8 + 2} {
		t.Fatalf("requests at follower 1, follower 2, leader = %v, want [1 1 10] (8 direct, 2 forwarded)", got)
	}
	if c.Member() != leader.URL() {
		t.Fatalf("next member %s, want the leader's %s", c.Member(), leader.URL())
	}
	if n := len(leader.FSM.State().Routes()); n != 10 {
		t.Fatalf("the leader holds %d routes, want 10", n)
	}
}

// A leader a member names is followed only to a configured member: a name
// that is an address, a name no member answered with, or garbage never
// sends the client anywhere else, and it keeps writing.
func TestClientFollowsOnlyItsMembers(t *testing.T) {
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
	}))
	t.Cleanup(other.Close)
	for _, leader := range []string{other.URL, other.Listener.Addr().String(), "edge-9", "edge 1", "édge-1", strings.Repeat("e", 200)} {
		var asked [2]atomic.Int64
		member := func(i int, name string) *httptest.Server {
			s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				asked[i].Add(1)
				w.Header().Set(api.NodeHeader, name)
				w.Header()[api.LeaderHeader] = []string{leader}
				w.Header().Set("Content-Type", "application/json")
				w.Write([]byte(`{"port":8000,"name":"r"}`))
			}))
			t.Cleanup(s.Close)
			return s
		}
		a, b := member(0, "edge-1"), member(1, "edge-2")
		c := newClient(t, a.URL, b.URL)
		for port := 8000; port < 8006; port++ {
			putRoute(t, c, port)
		}
		// a names a leader that is neither: the client asks b, not heard
		// from yet, which names it too, and stays with b. A name that
		// cannot be a node's is ignored: the client stays with a.
		got := [2]int64{asked[0].Load(), asked[1].Load()}
		if (got != [2]int64{1, 5} && got != [2]int64{6, 0}) || elsewhere.Load() != 0 {
			t.Fatalf("leader %q: members asked %v, elsewhere %d; want [1 5] or [6 0], none elsewhere", leader, got, elsewhere.Load())
		}
		if c.Member() != a.URL && c.Member() != b.URL {
			t.Fatalf("leader %q: next member %s is not configured", leader, c.Member())
		}
	}
}

// A member that cannot be reached is asked once while the client looks for
// the leader, not on every write.
func TestClientLooksForTheLeaderPastADeadMember(t *testing.T) {
	nodes := realCluster(t)
	leader, f1 := nodes[0], nodes[1]
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close() // connections to it are refused
	c := newClient(t, f1.URL(), dead, leader.URL())
	for port := 8000; port < 8010; port++ {
		putRoute(t, c, port)
	}
	// f1 names node-0; the dead member is tried next and fails over to
	// the leader, which answers this and every later write.
	if got := [2]int64{f1.Requests.Load(), leader.Requests.Load()}; got != [2]int64{1, 10} {
		t.Fatalf("requests at follower, leader = %v, want [1 10]", got)
	}
	if c.Member() != leader.URL() {
		t.Fatalf("next member %s, want the leader's %s", c.Member(), leader.URL())
	}

	// Without the leader among its members, the client keeps writing
	// through the follower and asks a member that answers 503 once.
	var unavailable atomic.Int64
	busy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		unavailable.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(busy.Close)
	f2 := nodes[2]
	c = newClient(t, f2.URL(), busy.URL)
	for port := 9000; port < 9010; port++ {
		putRoute(t, c, port)
	}
	if got := [2]int64{f2.Requests.Load(), unavailable.Load()}; got != [2]int64{10, 1} {
		t.Fatalf("requests at follower, unavailable member = %v, want [10 1]", got)
	}
}
