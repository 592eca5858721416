package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/drawbridge-lb/drawbridge/api/client"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// fastClusterEnv shortens raft and gossip timings for multi-process tests.
var fastClusterEnv = []string{
	"DRAWBRIDGE_RAFT_HEARTBEAT_TIMEOUT=500ms",
	"DRAWBRIDGE_RAFT_ELECTION_TIMEOUT=500ms",
	"DRAWBRIDGE_GOSSIP_PROBE_INTERVAL=200ms",
	"DRAWBRIDGE_GOSSIP_PROBE_TIMEOUT=100ms",
	"DRAWBRIDGE_LEASES_INTERVAL=1s",
	// A new leader still waits at least one lease TTL before expiring.
	"DRAWBRIDGE_LEASES_GRACE=1s",
}

// localCluster is N agents on loopback, each with its own HAProxy whose
// frontends bind 127.0.1.<i>.
type localCluster struct {
	t      testing.TB
	agents []*testAgent
	gossip []string
}

// startLocalCluster starts n agents that form a cluster by bootstrap-expect
// and waits until every one sees a leader.
func startLocalCluster(t testing.TB, n int) *localCluster {
	t.Helper()
	c := &localCluster{t: t}
	for i := 0; i < n; i++ {
		c.gossip = append(c.gossip, fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)))
	}
	var names []string
	for i := 0; i < n; i++ {
		names = append(names, fmt.Sprintf("edge-%d", i+1))
	}
	creds := testenv.ClusterCredentials(t, t.TempDir(), names...)
	for i := 0; i < n; i++ {
		a := &testAgent{t: t, dir: t.TempDir(), name: fmt.Sprintf("edge-%d", i+1), apiPort: testenv.FreePort(t)}
		a.args = []string{"agent",
			"--node-name", a.name,
			"--data-dir", a.dir,
			"--api-addr", fmt.Sprintf("127.0.0.1:%d", a.apiPort),
			"--raft-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
			"--gossip-addr", c.gossip[i],
			"--bootstrap-expect", strconv.Itoa(n),
			"--haproxy-bind-address", fmt.Sprintf("127.0.1.%d", i+1),
			"--log-level", "debug",
		}
		for j, g := range c.gossip {
			if j != i {
				a.args = append(a.args, "--join", g)
			}
		}
		a.env = append(append([]string(nil), fastClusterEnv...), creds[a.name]...)
		c.agents = append(c.agents, a)
		t.Cleanup(func() {
			a.stop()
			stopHAProxyIn(filepath.Join(a.dir, "haproxy"))
			if t.Failed() {
				t.Logf("%s logs:\n%s", a.name, a.logs.String())
			}
		})
		a.start()
	}
	for _, a := range c.agents {
		a.waitReady()
	}
	return c
}

// leader returns the agent that is raft leader now (or nil).
func (c *localCluster) leader() *testAgent {
	for _, a := range c.agents {
		if !a.running() {
			continue
		}
		var st struct {
			Raft struct {
				State string `json:"state"`
			} `json:"raft"`
		}
		code, body := a.tryRequest("GET", "/v1/status", bearer(), nil)
		if code == 200 && json.Unmarshal(body, &st) == nil && st.Raft.State == "Leader" {
			return a
		}
	}
	return nil
}

// followers returns the running agents that are not a.
func (c *localCluster) others(not *testAgent) []*testAgent {
	var out []*testAgent
	for _, a := range c.agents {
		if a != not && a.running() {
			out = append(out, a)
		}
	}
	return out
}

// hashes returns an agent's route-table hash and whether its HAProxy runs
// that table (on loopback every node binds its own address, so the rendered
// configs legitimately differ; in namespaces they are compared directly).
func (a *testAgent) hashes() (state string, applied bool, ok bool) {
	code, body := a.tryRequest("GET", "/v1/status", bearer(), nil)
	if code != 200 {
		return "", false, false
	}
	var st struct {
		State struct {
			Hash  string `json:"hash"`
			Index uint64 `json:"index"`
		} `json:"state"`
		HAProxy struct {
			AppliedIndex uint64 `json:"applied_index"`
		} `json:"haproxy"`
	}
	if json.Unmarshal(body, &st) != nil {
		return "", false, false
	}
	return st.State.Hash, st.HAProxy.AppliedIndex >= st.State.Index, true
}

// converged reports whether every running agent has the same table and its
// HAProxy runs it.
func (c *localCluster) converged() bool {
	var first string
	for _, a := range c.agents {
		if !a.running() {
			continue
		}
		s, applied, ok := a.hashes()
		if !ok || !applied {
			return false
		}
		if first == "" {
			first = s
		} else if s != first {
			return false
		}
	}
	return first != ""
}

func TestE2EClusterPostToFollowerGoesLiveEverywhere(t *testing.T) {
	requireHAProxy(t)
	c := startLocalCluster(t, 3)
	be := startBackend(t, "clustered")
	var leader *testAgent
	testenv.Eventually(t, 15*time.Second, "a leader", func() bool { leader = c.leader(); return leader != nil })
	follower := c.others(leader)[0]

	fport := testenv.FreePort(t)
	code, body := follower.request("POST", "/hooks/update-haproxy?wait=applied&timeout=15s",
		map[string]string{"X-Funkypenguin-Token": testToken}, hookPayload("clustered", fport, be.port(), "127.0.0.1", "add"))
	if code != 200 {
		t.Fatalf("post to follower: %d %s", code, body)
	}
	// wait=applied answered: every edge HAProxy runs the route already.
	for i := range c.agents {
		addr := fmt.Sprintf("127.0.1.%d:%d", i+1, fport)
		if got, err := dialRead(addr); err != nil || got != "clustered" {
			t.Errorf("node %d (%s): %q %v", i+1, addr, got, err)
		}
	}
	// The members view agrees.
	out, err := runCLI(follower, "members")
	if err != nil || strings.Count(out, "alive") != 3 {
		t.Errorf("members: %v\n%s", err, out)
	}
	testenv.Eventually(t, 10*time.Second, "all nodes converge on one config", c.converged)

	// A drawbridge client that starts at the followers learns from their
	// answers which member leads and writes there: raft's leader, named
	// by every node.
	others := c.others(leader)
	cl, err := client.New(client.Config{Members: []string{others[0].url(""), others[1].url(""), leader.url("")}, Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := cl.PutRoute(context.Background(), testenv.FreePort(t), client.RouteSpec{Name: fmt.Sprintf("follow-%d", i)}); err != nil {
			t.Fatalf("write %d through the client: %v", i, err)
		}
	}
	if cl.Member() != leader.url("") {
		t.Fatalf("after three writes the client sends to %s, want the leader %s at %s", cl.Member(), leader.name, leader.url(""))
	}

	// The leader dies: the client's next write finds its member refusing,
	// goes to a follower (held until the new leader is elected, then
	// committed), and the one after goes to the new leader.
	leader.kill()
	if _, err := cl.PutRoute(context.Background(), testenv.FreePort(t), client.RouteSpec{Name: "after-kill"}); err != nil {
		t.Fatalf("write after the leader's kill: %v", err)
	}
	var next *testAgent
	testenv.Eventually(t, 15*time.Second, "a new leader", func() bool { next = c.leader(); return next != nil })
	if _, err := cl.PutRoute(context.Background(), testenv.FreePort(t), client.RouteSpec{Name: "after-kill-2"}); err != nil {
		t.Fatalf("second write after the leader's kill: %v", err)
	}
	if cl.Member() != next.url("") {
		t.Fatalf("after the kill the client sends to %s, want the new leader %s at %s", cl.Member(), next.name, next.url(""))
	}
}

// kvOp is one operation of the history checked for linearizability: routes
// keyed by port act as registers whose value is their backend's port.
type kvInput struct {
	write bool
	key   int
	value int
}

type kvOutput struct {
	value   int
	unknown bool // the write's outcome is unknown (error or timeout)
}

var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[int][]porcupine.Operation{}
		var keys []int
		for _, op := range history {
			k := op.Input.(kvInput).key
			if _, ok := by[k]; !ok {
				keys = append(keys, k)
			}
			by[k] = append(by[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, by[k])
		}
		return out
	},
	Init: func() any { return 0 },
	Step: func(state, input, output any) (bool, any) {
		in, out := input.(kvInput), output.(kvOutput)
		if in.write {
			return true, in.value
		}
		return out.value == state.(int), state
	},
	Equal: func(a, b any) bool { return a == b },
	DescribeOperation: func(input, output any) string {
		in, out := input.(kvInput), output.(kvOutput)
		if in.write {
			return fmt.Sprintf("put(%d, %d) unknown=%v", in.key, in.value, out.unknown)
		}
		return fmt.Sprintf("get(%d) -> %d", in.key, out.value)
	},
}

// chaosRuns is how many leader-kill runs the linearizability test makes:
// two in `make test`, ten or more in `make chaos` (DRAWBRIDGE_CHAOS_RUNS).
func chaosRuns() int {
	if n, err := strconv.Atoi(os.Getenv("DRAWBRIDGE_CHAOS_RUNS")); err == nil && n > 0 {
		return n
	}
	return 2
}

// TestE2EClusterLeaderKillLinearizable kills the leader with SIGKILL while
// clients write to and read from every node, restarts it, and checks the
// whole history (including final reads on every node) with porcupine.
func TestE2EClusterLeaderKillLinearizable(t *testing.T) {
	requireHAProxy(t)
	for run := 1; run <= chaosRuns(); run++ {
		t.Run(fmt.Sprintf("run-%d", run), func(t *testing.T) { leaderKillRun(t, int64(run)) })
	}
}

func leaderKillRun(t *testing.T, seed int64) {
	c := startLocalCluster(t, 3)
	var leader *testAgent
	testenv.Eventually(t, 15*time.Second, "a leader", func() bool { leader = c.leader(); return leader != nil })

	keys := make([]int, 8)
	for i := range keys {
		keys[i] = testenv.FreePort(t)
	}
	start := time.Now()
	var (
		mu      sync.Mutex
		history []porcupine.Operation
		next    atomic.Int64
		acked   atomic.Int64
	)
	record := func(client int, in kvInput, out kvOutput, call, ret time.Time) {
		mu.Lock()
		history = append(history, porcupine.Operation{ClientId: client, Input: in, Output: out,
			Call: call.Sub(start).Nanoseconds(), Return: ret.Sub(start).Nanoseconds()})
		mu.Unlock()
	}
	client := &http.Client{Timeout: 3 * time.Second}
	do := func(a *testAgent, method, path string, body any) (int, []byte) {
		return a.requestWith(client, method, path, bearer(), body)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for cl := 0; cl < 4; cl++ {
		wg.Add(1)
		go func(cl int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(seed), uint64(cl)))
			for ctx.Err() == nil {
				// Paced, so each key's history stays small enough to check
				// exhaustively even with writes of unknown outcome.
				time.Sleep(time.Duration(10+rng.IntN(30)) * time.Millisecond)
				a := c.agents[rng.IntN(len(c.agents))]
				if !a.running() {
					continue
				}
				key := keys[rng.IntN(len(keys))]
				path := fmt.Sprintf("/v1/routes/%d", key)
				call := time.Now()
				if rng.IntN(2) == 0 {
					v := int(next.Add(1))
					code, _ := do(a, "PUT", path, map[string]any{"name": fmt.Sprintf("k%d", key),
						"backends": []map[string]any{{"address": "10.99.0.1", "port": v}}})
					if code == 200 {
						acked.Add(1)
						record(cl, kvInput{write: true, key: key, value: v}, kvOutput{}, call, time.Now())
					} else {
						// Unknown outcome: it may still commit at any later time.
						record(cl, kvInput{write: true, key: key, value: v}, kvOutput{unknown: true}, call, time.Now().Add(time.Hour))
					}
				} else {
					code, body := do(a, "GET", path+"?consistent=true", nil)
					if v, ok := backendPort(code, body); ok {
						record(cl, kvInput{key: key}, kvOutput{value: v}, call, time.Now())
					}
				}
			}
		}(cl)
	}

	time.Sleep(1500 * time.Millisecond) // let the clients build a history
	killed := leader
	killedAt := time.Now()
	killed.kill()
	var firstWrite time.Duration
	testenv.Eventually(t, 15*time.Second, "a write acknowledged after the kill", func() bool {
		before := acked.Load()
		time.Sleep(20 * time.Millisecond)
		if acked.Load() > before {
			firstWrite = time.Since(killedAt)
			return true
		}
		return false
	})
	time.Sleep(1500 * time.Millisecond)
	killed.start()
	killed.waitReady()
	time.Sleep(500 * time.Millisecond)
	cancel()
	wg.Wait()

	testenv.Eventually(t, 20*time.Second, "all three nodes converge (the restarted one caught up)", c.converged)
	// Final local reads on every node must see the last acknowledged writes.
	for _, a := range c.agents {
		for _, key := range keys {
			call := time.Now()
			code, body := a.request("GET", fmt.Sprintf("/v1/routes/%d", key), bearer(), nil)
			v, ok := backendPort(code, body)
			if !ok {
				t.Fatalf("%s: final read of %d: %d %s", a.name, key, code, body)
			}
			record(99, kvInput{key: key}, kvOutput{value: v}, call, time.Now())
		}
	}
	res, info := porcupine.CheckOperationsVerbose(kvModel, history, 30*time.Second)
	if res != porcupine.Ok {
		path := filepath.Join(t.TempDir(), "history.html")
		if f, err := os.Create(path); err == nil {
			porcupine.Visualize(kvModel, info, f)
			f.Close()
		}
		t.Fatalf("history of %d operations is not linearizable (%v); visualization in %s", len(history), res, path)
	}
	t.Logf("run %d: %d operations (%d acknowledged writes) linearizable; first write %v after killing leader %s",
		seed, len(history), acked.Load(), firstWrite.Round(time.Millisecond), killed.name)
}

// backendPort extracts the register value from a GET /v1/routes/{port}
// answer: the backend's port, 0 for no route.
func backendPort(code int, body []byte) (int, bool) {
	switch code {
	case 404:
		return 0, true
	case 200:
		var r struct {
			Backends []struct {
				Port int `json:"port"`
			} `json:"backends"`
		}
		if json.Unmarshal(body, &r) != nil || len(r.Backends) != 1 {
			return 0, false
		}
		return r.Backends[0].Port, true
	}
	return 0, false
}

// runCLI runs the built binary against an agent's API.
func runCLI(a *testAgent, args ...string) (string, error) {
	out, err := cliCommand(a, args...).CombinedOutput()
	return string(out), err
}
