package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/haproxy"
	"github.com/drawbridge-lb/drawbridge/internal/netns"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// Network-namespace tests: every drawbridge node is a host of its own on a
// lab bridge, with its own address, and the tests break the network between
// them. They need root and HAProxy, and skip otherwise.
//
// Each lab also holds a "backend" host (a TCP server that greets with a line)
// and a "client" host, from which every API call and traffic check is made,
// so the client always reaches both sides of a partition.

// Fixed ports: every node has its own network namespace, so they never clash.
const (
	nsAPIPort     = 9000
	nsRaftPort    = 9001
	nsGossipPort  = 9002
	nsBackendPort = 7000
	nsGreeting    = "drawbridge-ns-backend"

	// nsReadTimeout bounds a read of the API; nsWriteTimeout one write
	// attempt, as a sidecar would bound it before retrying. A write that
	// finds no quorum is answered well within it.
	nsReadTimeout  = 5 * time.Second
	nsWriteTimeout = 4 * time.Second
)

// nsFastEnv shortens raft and gossip timings so a lost node is noticed
// within about a second, and holds writes during an election for 2 s (not
// the default 7 s), so a write without quorum answers its 503 within
// nsWriteTimeout.
var nsFastEnv = []string{
	"DRAWBRIDGE_API_HOLD_TIMEOUT=2s",
	"DRAWBRIDGE_RAFT_HEARTBEAT_TIMEOUT=500ms",
	"DRAWBRIDGE_RAFT_ELECTION_TIMEOUT=500ms",
	"DRAWBRIDGE_GOSSIP_PROBE_INTERVAL=200ms",
	"DRAWBRIDGE_GOSSIP_PROBE_TIMEOUT=100ms",
}

// nsSpec describes one node of a lab cluster.
type nsSpec struct {
	name    string
	witness bool
}

func nsEdge(name string) nsSpec    { return nsSpec{name: name} }
func nsWitness(name string) nsSpec { return nsSpec{name: name, witness: true} }

// nsNode is one agent running inside its own network namespace.
type nsNode struct {
	nsSpec
	host *netns.Host
	dir  string
	args []string
	// creds turn on gossip encryption and raft mutual TLS.
	creds []string
	agentProc
}

func (n *nsNode) String() string { return n.name + "(" + n.host.IP + ")" }

// start runs the agent inside its namespace.
func (n *nsNode) start(t testing.TB) {
	t.Helper()
	n.launch(t, n.host.Command(context.Background(), binPath, n.args...), append(append([]string(nil), nsFastEnv...), n.creds...))
}

// stop sends SIGTERM, then SIGKILL when the agent has not exited after 5 s,
// and kills the HAProxy master it leaves running on purpose.
func (n *nsNode) stop() {
	n.stopOrKill(5 * time.Second)
	if !n.witness {
		stopHAProxyIn(filepath.Join(n.dir, "haproxy"))
	}
}

// nsLab is a cluster of agents on one lab bridge, with a backend and a client.
type nsLab struct {
	t       *testing.T
	lab     *netns.Lab
	client  *netns.Host
	backend *netns.Host
	nodes   []*nsNode
	http    *http.Client
}

// nsStatus is the part of GET /v1/status the tests read.
type nsStatus struct {
	Raft struct {
		State  string `json:"state"`
		Leader string `json:"leader"`
	} `json:"raft"`
	State struct {
		Index uint64 `json:"index"`
		Hash  string `json:"hash"`
	} `json:"state"`
	HAProxy struct {
		Running    bool   `json:"running"`
		ConfigHash string `json:"config_hash"`
		LastError  string `json:"last_error"`
	} `json:"haproxy"`
}

// nsSkip skips unless network namespaces and HAProxy are available.
func nsSkip(t *testing.T) {
	t.Helper()
	testenv.Root(t, "network-namespace tests")
	netns.SkipIfUnavailable(t)
	requireHAProxy(t)
}

// nsStartLab builds a lab with a backend, a client and one host per spec,
// starts an agent on each that forms the cluster with --bootstrap-expect,
// and waits until every node agrees on a leader and every member is a
// voter. Agents are stopped and their HAProxies killed at the end of the
// test; their logs are printed when it failed.
func nsStartLab(t *testing.T, specs ...nsSpec) *nsLab {
	t.Helper()
	nsSkip(t)
	l := &nsLab{t: t, lab: netns.NewLab(t, "")}
	l.backend = l.lab.AddHost("backend")
	l.client = l.lab.AddHost("client")
	l.http = &http.Client{
		Transport: &http.Transport{
			DialContext:       l.client.DialContext,
			DisableKeepAlives: true,
		},
	}
	l.serveBackend()

	for _, s := range specs {
		n := &nsNode{nsSpec: s, host: l.lab.AddHost(s.name), dir: t.TempDir()}
		l.nodes = append(l.nodes, n)
	}
	// One cleanup stops every agent at once: a graceful leave can take a
	// few seconds when peers are unreachable. It runs before the lab's.
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, n := range l.nodes {
			wg.Add(1)
			go func() { defer wg.Done(); n.stop() }()
		}
		wg.Wait()
		if t.Failed() {
			for _, n := range l.nodes {
				if n.logs != nil {
					t.Logf("---- %s logs ----\n%s", n, n.logs.String())
				}
			}
		}
	})
	var names []string
	for _, n := range l.nodes {
		names = append(names, n.name)
	}
	creds := testenv.ClusterCredentials(t, t.TempDir(), names...)
	for _, n := range l.nodes {
		n.creds = creds[n.name]
		n.args = []string{"agent",
			"--node-name", n.name,
			"--data-dir", n.dir,
			"--api-addr", net.JoinHostPort(n.host.IP, strconv.Itoa(nsAPIPort)),
			"--raft-addr", net.JoinHostPort(n.host.IP, strconv.Itoa(nsRaftPort)),
			"--gossip-addr", net.JoinHostPort(n.host.IP, strconv.Itoa(nsGossipPort)),
			"--bootstrap-expect", strconv.Itoa(len(specs)),
			"--haproxy-bind-address", "",
			"--log-level", "debug",
		}
		if n.witness {
			n.args = append(n.args, "--witness")
		}
		for _, o := range l.nodes {
			if o != n {
				n.args = append(n.args, "--join", net.JoinHostPort(o.host.IP, strconv.Itoa(nsGossipPort)))
			}
		}
		n.start(t)
	}
	start := time.Now()
	l.poll(30*time.Second, "the cluster to form", func() bool {
		for _, n := range l.nodes {
			if !n.running() {
				t.Fatalf("%s exited early:\n%s", n, n.logs.String())
			}
		}
		leader := l.agreedLeader(l.nodes)
		if leader == nil {
			return false
		}
		var cs struct {
			Members []struct {
				Name   string `json:"name"`
				Status string `json:"status"`
				Voter  bool   `json:"voter"`
			} `json:"members"`
		}
		code, body := l.do(leader, "GET", "/v1/cluster", nil)
		if code != 200 || json.Unmarshal(body, &cs) != nil || len(cs.Members) != len(l.nodes) {
			return false
		}
		for _, m := range cs.Members {
			if m.Status != "alive" || !m.Voter {
				return false
			}
		}
		for _, n := range l.nodes {
			if st, ok := l.status(n); !ok || (!n.witness && !st.HAProxy.Running) {
				return false
			}
		}
		return true
	})
	t.Logf("cluster of %d formed in %v", len(l.nodes), time.Since(start).Round(time.Millisecond))
	return l
}

// serveBackend runs a TCP server in the backend host that greets every
// connection with nsGreeting.
func (l *nsLab) serveBackend() {
	serveGreetingIn(l.t, l.backend, nsBackendPort, nsGreeting)
}

// poll is testenv.Eventually on the lab's test.
func (l *nsLab) poll(timeout time.Duration, what string, cond func() bool) {
	l.t.Helper()
	testenv.Eventually(l.t, timeout, what, cond)
}

// do sends an API request to n from the client host: status 0 and the error
// text on a transport error.
func (l *nsLab) do(n *nsNode, method, path string, body any) (int, []byte) {
	return l.doHeaders(n, nsReadTimeout, method, path, map[string]string{"Authorization": "Bearer " + testToken}, body)
}

func (l *nsLab) doHeaders(n *nsNode, timeout time.Duration, method, path string, headers map[string]string, body any) (int, []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return 0, []byte(err.Error())
		}
		rd = strings.NewReader(string(data))
	}
	url := fmt.Sprintf("http://%s%s", net.JoinHostPort(n.host.IP, strconv.Itoa(nsAPIPort)), path)
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0, []byte(err.Error())
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := l.http.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// write posts the recipe's webhook to n: route name on frontend port,
// forwarding to the lab backend. Status 0 means no answer within
// nsWriteTimeout (or another transport error).
func (l *nsLab) write(n *nsNode, name string, port int) (int, string) {
	code, body := l.doHeaders(n, nsWriteTimeout, "POST", "/hooks/update-haproxy",
		map[string]string{"X-Funkypenguin-Token": testToken},
		hookPayload(name, port, nsBackendPort, l.backend.IP, "add"))
	return code, strings.TrimSpace(string(body))
}

// mustWrite retries the same write, as a sidecar does, until it is
// accepted, and returns how long that took. The add is idempotent, so an
// attempt that got no answer but was committed later does no harm. Failed
// attempts are logged (consecutive repeats once).
func (l *nsLab) mustWrite(n *nsNode, name string, port int, within time.Duration) time.Duration {
	l.t.Helper()
	start := time.Now()
	deadline := start.Add(within)
	var last string
	for attempt := 1; ; attempt++ {
		began := time.Now()
		code, body := l.write(n, name, port)
		if code == 200 {
			return time.Since(start)
		}
		answer := fmt.Sprintf("%d %s", code, body)
		if answer != last {
			l.t.Logf("write %s:%d via %s, attempt %d at +%v: %s (after %v)", name, port, n, attempt,
				began.Sub(start).Round(time.Millisecond), answer, time.Since(began).Round(time.Millisecond))
			last = answer
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("write %s:%d via %s not accepted within %v: last answer %s", name, port, n, within, answer)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// status returns n's /v1/status.
func (l *nsLab) status(n *nsNode) (nsStatus, bool) {
	var st nsStatus
	code, body := l.do(n, "GET", "/v1/status", nil)
	return st, code == 200 && json.Unmarshal(body, &st) == nil
}

// hasRoute reports whether n's local table holds a route on port.
func (l *nsLab) hasRoute(n *nsNode, port int) (bool, error) {
	code, body := l.do(n, "GET", fmt.Sprintf("/v1/routes/%d", port), nil)
	switch code {
	case 200:
		return true, nil
	case 404:
		return false, nil
	}
	return false, fmt.Errorf("GET /v1/routes/%d on %s: %d %s", port, n, code, body)
}

// agreedLeader returns the node every one of nodes names as leader, when
// they agree and it is among them; otherwise nil.
func (l *nsLab) agreedLeader(nodes []*nsNode) *nsNode {
	var name string
	for _, n := range nodes {
		st, ok := l.status(n)
		if !ok || st.Raft.Leader == "" || (name != "" && st.Raft.Leader != name) {
			return nil
		}
		name = st.Raft.Leader
	}
	for _, n := range nodes {
		if n.name == name {
			if st, ok := l.status(n); ok && st.Raft.State == "Leader" {
				return n
			}
		}
	}
	return nil
}

// memberStatus returns the gossip status of member name in n's
// /v1/cluster, "" when unknown.
func (l *nsLab) memberStatus(n *nsNode, name string) string {
	var cs struct {
		Members []struct {
			Name   string `json:"name"`
			Status string `json:"status"`
		} `json:"members"`
	}
	code, body := l.do(n, "GET", "/v1/cluster", nil)
	if code != 200 || json.Unmarshal(body, &cs) != nil {
		return ""
	}
	for _, m := range cs.Members {
		if m.Name == name {
			return m.Status
		}
	}
	return ""
}

// others returns the nodes that are not one of skip.
func (l *nsLab) others(skip ...*nsNode) []*nsNode {
	var out []*nsNode
next:
	for _, n := range l.nodes {
		for _, s := range skip {
			if n == s {
				continue next
			}
		}
		out = append(out, n)
	}
	return out
}

func (l *nsLab) edges() []*nsNode {
	var out []*nsNode
	for _, n := range l.nodes {
		if !n.witness {
			out = append(out, n)
		}
	}
	return out
}

// greet connects from the client host to n's HAProxy frontend on port and
// returns the first line it reads.
func (l *nsLab) greet(n *nsNode, port int) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := l.client.DialContext(ctx, "tcp", net.JoinHostPort(n.host.IP, strconv.Itoa(port)))
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// waitLive waits until the route on port forwards to the backend through
// the HAProxy of every given edge node.
func (l *nsLab) waitLive(nodes []*nsNode, port int, within time.Duration) {
	l.t.Helper()
	for _, n := range nodes {
		if n.witness {
			continue
		}
		l.poll(within, fmt.Sprintf("port %d live through %s's HAProxy", port, n), func() bool {
			got, err := l.greet(n, port)
			return err == nil && got == nsGreeting
		})
	}
}

// backendsHealthy reports whether every server of n's HAProxy is fully up
// with a passed health check (not in the state after a start or reload in
// which a single failed check takes a server down), and otherwise which is
// not. It asks HAProxy's runtime API on the stats socket in n's data dir.
func (n *nsNode) backendsHealthy() (bool, string) {
	c, err := net.DialTimeout("unix", filepath.Join(n.dir, "haproxy", "admin.sock"), time.Second)
	if err != nil {
		return false, err.Error()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "show stat\n"); err != nil {
		return false, err.Error()
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return false, err.Error()
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	col := map[string]int{}
	for i, name := range strings.Split(strings.TrimPrefix(lines[0], "# "), ",") {
		col[name] = i
	}
	st, chk, sv := col["status"], col["check_status"], col["svname"]
	if st == 0 || chk == 0 || sv == 0 {
		return false, "unexpected stats header: " + lines[0]
	}
	servers := 0
	for _, line := range lines[1:] {
		f := strings.Split(line, ",")
		if len(f) <= max(st, chk) || f[sv] == "FRONTEND" || f[sv] == "BACKEND" {
			continue
		}
		servers++
		if f[st] != "UP" || (f[chk] != "" && f[chk] != "L4OK") {
			return false, fmt.Sprintf("%s/%s: %s %s", f[0], f[sv], f[st], f[chk])
		}
	}
	return servers > 0, ""
}

// normalizedConfigHash is the hash of the HAProxy config n runs with n's own
// data directory (which appears in the stats socket path) replaced by a
// placeholder, so that nodes running the same routes have the same hash. It
// also checks that the file on disk is the config n reports running.
func (n *nsNode) normalizedConfigHash(reported string) (string, error) {
	b, err := os.ReadFile(filepath.Join(n.dir, "haproxy", "haproxy.cfg"))
	if err != nil {
		return "", err
	}
	if got := haproxy.Hash(b); got != reported {
		return "", fmt.Errorf("%s: haproxy.cfg has hash %.12s, status reports %.12s", n, got, reported)
	}
	return haproxy.Hash([]byte(strings.ReplaceAll(string(b), n.dir, "$DATA_DIR"))), nil
}

// converged reports whether nodes agree on the leader and the route table,
// and every edge node's HAProxy runs the same config; otherwise it says why.
func (l *nsLab) converged(nodes []*nsNode) (bool, string) {
	var leader, hash, cfg string
	for _, n := range nodes {
		st, ok := l.status(n)
		switch {
		case !ok:
			return false, n.String() + ": no status"
		case st.Raft.Leader == "":
			return false, n.String() + ": no leader"
		case leader != "" && st.Raft.Leader != leader:
			return false, fmt.Sprintf("%s: leader %s, others %s", n, st.Raft.Leader, leader)
		case hash != "" && st.State.Hash != hash:
			return false, fmt.Sprintf("%s: state hash %.12s (index %d), others %.12s", n, st.State.Hash, st.State.Index, hash)
		}
		leader, hash = st.Raft.Leader, st.State.Hash
		if n.witness {
			continue
		}
		if !st.HAProxy.Running || st.HAProxy.ConfigHash == "" {
			return false, fmt.Sprintf("%s: HAProxy not running a config (%s)", n, st.HAProxy.LastError)
		}
		h, err := n.normalizedConfigHash(st.HAProxy.ConfigHash)
		if err != nil {
			return false, err.Error()
		}
		if cfg != "" && h != cfg {
			return false, fmt.Sprintf("%s: HAProxy config %.12s, others %.12s", n, h, cfg)
		}
		cfg = h
	}
	return true, ""
}

// waitConverged waits until converged holds for every node and returns how
// long it took.
func (l *nsLab) waitConverged(within time.Duration) time.Duration {
	l.t.Helper()
	start := time.Now()
	var why string
	deadline := start.Add(within)
	for {
		var ok bool
		if ok, why = l.converged(l.nodes); ok {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("nodes did not converge within %v: %s", within, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// partition blocks every frame between n and each of others; the client and
// the backend still reach everyone. heal undoes it.
func (l *nsLab) partition(n *nsNode, others []*nsNode) {
	l.t.Helper()
	for _, o := range others {
		if err := n.host.Block(o.host); err != nil {
			l.t.Fatal(err)
		}
	}
}

func (l *nsLab) heal(n *nsNode, others []*nsNode) {
	l.t.Helper()
	for _, o := range others {
		if err := n.host.Unblock(o.host); err != nil {
			l.t.Fatal(err)
		}
	}
}

// nsQuorumLost reports whether a write answer is the 503 that says quorum is
// lost and how to recover.
func nsQuorumLost(code int, body string) bool {
	return code == http.StatusServiceUnavailable && strings.Contains(body, "quorum") &&
		strings.Contains(body, "drawbridge raft recover")
}

// TestNetnsLeaderPartition cuts the leader of three nodes off from the other
// two (the client still reaches everyone): the old leader refuses writes with
// an explanatory 503 within seconds, the majority elects a leader and accepts
// writes through either node, and after healing all three converge on one
// table and one HAProxy config, without any write the minority refused.
func TestNetnsLeaderPartition(t *testing.T) {
	l := nsStartLab(t, nsEdge("n1"), nsEdge("n2"), nsEdge("n3"))
	l.mustWrite(l.nodes[1], "before", 8001, 10*time.Second)
	l.waitLive(l.nodes, 8001, 10*time.Second)

	var old *nsNode
	l.poll(10*time.Second, "a leader", func() bool { old = l.agreedLeader(l.nodes); return old != nil })
	majority := l.others(old)
	l.partition(old, majority)
	cut := time.Now()
	t.Logf("partitioned leader %s from %s and %s", old, majority[0], majority[1])

	// The minority refuses writes, soon with the explanatory 503. Every
	// attempt uses a port of its own so none can hide in a later table.
	var refused []int
	port := 8100
	var lastCode int
	var lastBody string
	l.poll(10*time.Second, "the minority to refuse writes with a quorum-lost 503", func() bool {
		port++
		refused = append(refused, port)
		lastCode, lastBody = l.write(old, "minority", port)
		if lastCode == 200 {
			t.Fatalf("isolated node %s accepted a write: %s", old, lastBody)
		}
		return nsQuorumLost(lastCode, lastBody)
	})
	refusedAfter := time.Since(cut)
	t.Logf("minority refuses writes %v after the partition: %d %s", refusedAfter.Round(time.Millisecond), lastCode, lastBody)

	// The majority elects one of its own and accepts writes via either node.
	var leader *nsNode
	l.poll(10*time.Second, "the majority to elect a leader", func() bool {
		leader = l.agreedLeader(majority)
		return leader != nil
	})
	electedAfter := time.Since(cut)
	follower := l.others(old, leader)[0]
	took := l.mustWrite(follower, "majority-a", 8201, 10*time.Second)
	t.Logf("new leader %s after %v; write via follower %s accepted in %v",
		leader, electedAfter.Round(time.Millisecond), follower, took.Round(time.Millisecond))
	l.mustWrite(leader, "majority-b", 8202, 10*time.Second)
	l.waitLive(majority, 8201, 10*time.Second)
	l.waitLive(majority, 8202, 10*time.Second)

	// The minority keeps serving existing routes and keeps refusing writes.
	if got, err := l.greet(old, 8001); err != nil || got != nsGreeting {
		t.Errorf("minority HAProxy stopped serving an existing route: %q %v", got, err)
	}
	port++
	refused = append(refused, port)
	if code, body := l.write(old, "minority", port); !nsQuorumLost(code, body) {
		t.Errorf("minority after the majority moved on: want a quorum-lost 503, got %d %s", code, body)
	}

	// Heal: everyone converges, the minority serves the majority's routes
	// and accepts writes again (forwarded to the leader).
	l.heal(old, majority)
	healed := time.Now()
	convergedIn := l.waitConverged(20 * time.Second)
	t.Logf("converged %v after healing", convergedIn.Round(time.Millisecond))
	l.waitLive([]*nsNode{old}, 8201, 10*time.Second)
	l.waitLive([]*nsNode{old}, 8202, 10*time.Second)
	l.mustWrite(old, "after", 8301, 15*time.Second)
	t.Logf("write via the former minority accepted %v after healing", time.Since(healed).Round(time.Millisecond))
	l.waitLive(l.nodes, 8301, 10*time.Second)
	l.waitConverged(10 * time.Second)

	for _, n := range l.nodes {
		for _, p := range refused {
			has, err := l.hasRoute(n, p)
			if err != nil {
				t.Error(err)
			} else if has {
				t.Errorf("%s holds route %d, a write the minority refused", n, p)
			}
		}
		for _, p := range []int{8001, 8201, 8202, 8301} {
			if has, err := l.hasRoute(n, p); err != nil || !has {
				t.Errorf("%s lacks route %d: %v", n, p, err)
			}
		}
	}
}

// TestNetnsWitnessPairSurvivesEdgeLoss unplugs each edge node of a pair
// with a witness in turn, first the one that leads, then the other: writes
// via the remaining edge keep being accepted and go live on its HAProxy,
// and after the lost node is plugged back in everything converges.
func TestNetnsWitnessPairSurvivesEdgeLoss(t *testing.T) {
	l := nsStartLab(t, nsEdge("e1"), nsEdge("e2"), nsWitness("w"))
	edges, witness := l.edges(), l.nodes[2]
	l.mustWrite(edges[0], "before", 8001, 10*time.Second)
	l.waitLive(edges, 8001, 10*time.Second)

	// Losing the leader is the harder case: when the witness leads, make
	// an edge node lead by partitioning the witness off for a moment.
	var leader *nsNode
	l.poll(10*time.Second, "a leader", func() bool { leader = l.agreedLeader(l.nodes); return leader != nil })
	if leader == witness {
		l.partition(witness, edges)
		l.poll(10*time.Second, "the edge nodes to elect one of them", func() bool { return l.agreedLeader(edges) != nil })
		l.heal(witness, edges)
		l.poll(10*time.Second, "an edge leader known to all", func() bool {
			leader = l.agreedLeader(l.nodes)
			return leader != nil && leader != witness
		})
		t.Logf("moved leadership from the witness to %s", leader)
	}
	first := leader
	for i, lost := range []*nsNode{first, l.others(first, witness)[0]} {
		survivor := l.others(lost, witness)[0]
		l.poll(15*time.Second, survivor.name+"'s HAProxy health checks to pass", func() bool {
			ok, _ := survivor.backendsHealthy()
			return ok
		})
		st, _ := l.status(lost)
		if err := lost.host.Cut(); err != nil {
			t.Fatal(err)
		}
		port := 8101 + i
		took := l.mustWrite(survivor, "without-"+lost.name, port, 20*time.Second)
		t.Logf("%s unplugged while %s: write via %s accepted after %v",
			lost, strings.ToLower(st.Raft.State), survivor, took.Round(time.Millisecond))
		if took > 10*time.Second {
			t.Errorf("the first write via %s was accepted %v after losing %s; want within 10s", survivor, took, lost)
		}
		l.waitLive([]*nsNode{survivor}, port, 10*time.Second)
		if got, err := l.greet(survivor, 8001); err != nil || got != nsGreeting {
			t.Errorf("%s stopped serving an existing route: %q %v", survivor, got, err)
		}

		if err := lost.host.Heal(); err != nil {
			t.Fatal(err)
		}
		in := l.waitConverged(20 * time.Second)
		l.waitLive([]*nsNode{lost}, port, 10*time.Second)
		t.Logf("%s plugged back in: converged in %v", lost, in.Round(time.Millisecond))
	}
	for _, n := range l.nodes {
		for _, p := range []int{8001, 8101, 8102} {
			if has, err := l.hasRoute(n, p); err != nil || !has {
				t.Errorf("%s lacks route %d: %v", n, p, err)
			}
		}
	}
}

// TestNetnsPairWithoutWitness unplugs one node of a two-node cluster, first
// the leader, then (after healing) the follower: the survivor's HAProxy keeps
// forwarding traffic for existing routes without a single failed
// connection, its reads still answer, and writes are refused with the 503
// that says quorum is lost and how to recover. Healing restores writes.
func TestNetnsPairWithoutWitness(t *testing.T) {
	l := nsStartLab(t, nsEdge("e1"), nsEdge("e2"))
	l.mustWrite(l.nodes[0], "before", 8001, 10*time.Second)
	l.waitLive(l.nodes, 8001, 10*time.Second)

	port := 8100
	for _, lose := range []string{"leader", "follower"} {
		var leader *nsNode
		l.poll(10*time.Second, "a leader", func() bool { leader = l.agreedLeader(l.nodes); return leader != nil })
		lost := leader
		if lose == "follower" {
			lost = l.others(leader)[0]
		}
		survivor := l.others(lost)[0]

		// A node that was unplugged before may still be bringing its
		// backends back up (HAProxy health checks); wait until they are.
		l.poll(15*time.Second, survivor.name+"'s HAProxy health checks to pass", func() bool {
			ok, _ := survivor.backendsHealthy()
			return ok
		})
		probe := l.client.Probe(net.JoinHostPort(survivor.host.IP, "8001"), netns.ProbeConfig{Expect: nsGreeting})
		if err := probe.WaitFor(true, 5*time.Second); err != nil {
			t.Fatalf("probe %s: %v", survivor, err)
		}
		if err := lost.host.Cut(); err != nil {
			t.Fatal(err)
		}
		cut := time.Now()
		var code int
		var body string
		var uncertain []int // refused while still leader: the outcome is open
		l.poll(10*time.Second, "the survivor to refuse writes with a quorum-lost 503", func() bool {
			port++
			code, body = l.write(survivor, "no-quorum", port)
			if code == 200 {
				t.Fatalf("%s accepted a write without quorum: %s", survivor, body)
			}
			if !nsQuorumLost(code, body) {
				uncertain = append(uncertain, port)
				t.Logf("%s answered %d %s", survivor, code, body)
			}
			return nsQuorumLost(code, body)
		})
		t.Logf("%s lost: %s refuses writes %v later: %d %s", lose, survivor,
			time.Since(cut).Round(time.Millisecond), code, body)
		refused := []int{port}
		for range 3 {
			port++
			refused = append(refused, port)
			if code, body := l.write(survivor, "no-quorum", port); !nsQuorumLost(code, body) {
				t.Errorf("write without quorum: want the quorum-lost 503, got %d %s", code, body)
			}
		}
		if has, err := l.hasRoute(survivor, 8001); err != nil || !has {
			t.Errorf("reads on %s without quorum: route 8001 %v %v", survivor, has, err)
		}
		// Keep the traffic probe running until the survivor has also
		// noticed the loss in gossip, and check that it reports it.
		l.poll(10*time.Second, survivor.name+" to report "+lost.name+" dead", func() bool {
			return l.memberStatus(survivor, lost.name) == "dead"
		})
		probe.Stop()
		if ok, failed := probe.Counts(); failed > 0 || ok == 0 {
			errs := map[string]int{}
			for _, a := range probe.Attempts() {
				if !a.OK {
					errs[a.Err]++
				}
			}
			t.Errorf("traffic through %s while %s was unplugged: %d ok, %d failed (outages %v, errors %v)",
				survivor, lost, ok, failed, probe.Outages(), errs)
		} else {
			t.Logf("traffic through %s while %s was unplugged: %d connections, none failed", survivor, lost, ok)
		}

		if err := lost.host.Heal(); err != nil {
			t.Fatal(err)
		}
		port++
		took := l.mustWrite(survivor, "healed-"+lose, port, 15*time.Second)
		t.Logf("healed: write via %s accepted after %v", survivor, took.Round(time.Millisecond))
		l.waitLive(l.nodes, port, 10*time.Second)
		l.waitConverged(15 * time.Second)
		for _, p := range refused {
			for _, n := range l.nodes {
				if has, err := l.hasRoute(n, p); err != nil || has {
					t.Errorf("%s: route %d, a write refused for lost quorum: %v %v", n, p, has, err)
				}
			}
		}
		for _, p := range uncertain {
			has, err := l.hasRoute(survivor, p)
			if err != nil {
				t.Error(err)
			}
			t.Logf("write on port %d answered 503 before the quorum-lost message; present after healing: %v", p, has)
		}
	}
}
