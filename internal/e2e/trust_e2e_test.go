package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"

	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// Attacks on a secure three-process cluster (raft mutual TLS, encrypted
// gossip), each followed by a check that the cluster is unchanged. The
// protocol-level variants (messages in another node's name, forged
// leaders, certificates for other names) run in-process in cluster/.

type clusterView struct {
	Leader  string `json:"leader"`
	Members []struct {
		Name   string `json:"name"`
		Status string `json:"status"`
		Voter  bool   `json:"voter"`
	} `json:"members"`
}

func (c *localCluster) view(t *testing.T, via *testAgent) clusterView {
	t.Helper()
	var v clusterView
	code, body := via.tryRequest("GET", "/v1/cluster", bearer(), nil)
	if code != 200 || json.Unmarshal(body, &v) != nil {
		t.Fatalf("GET /v1/cluster: %d %s", code, body)
	}
	return v
}

func (v clusterView) voters() []string {
	var out []string
	for _, m := range v.Members {
		if m.Voter {
			out = append(out, m.Name)
		}
	}
	return out
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return ""
}

func argValue(args []string, flag string) string {
	for i := range args[:len(args)-1] {
		if args[i] == flag {
			return args[i+1]
		}
	}
	return ""
}

// runAgentBriefly runs an agent that is expected to refuse to start.
func runAgentBriefly(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Env = append([]string{"DRAWBRIDGE_API_TOKEN=" + testToken, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
	ownConfigFile(t, cmd)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatalf("run agent: %v", err)
	}
	return 0, string(out)
}

func TestSecureClusterRefusesIntruders(t *testing.T) {
	requireHAProxy(t)
	c := startLocalCluster(t, 3)
	leader := c.leader()
	if leader == nil {
		t.Fatal("no leader")
	}
	code, body := leader.tryRequest("PUT", "/v1/routes/18080", bearer(), map[string]any{"name": "web",
		"backends": []map[string]any{{"address": "10.0.0.1", "port": 80}}})
	if code != 200 {
		t.Fatalf("write: %d %s", code, body)
	}
	edge1 := c.agents[0]
	gossipKey := envValue(edge1.env, "DRAWBRIDGE_GOSSIP_KEY")

	t.Run("no credentials: refuses to start, exit 2, one line", func(t *testing.T) {
		code, out := runAgentBriefly(t, nil, "agent", "--node-name", "stranger", "--data-dir", t.TempDir(), "--witness",
			"--api-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), "--raft-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
			"--gossip-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)))
		if code != 2 || !strings.Contains(out, "gossip encryption is off") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Fatalf("exit %d, output %q; want exit 2 and one line about gossip encryption", code, out)
		}
	})

	t.Run("another node's certificate: refuses to start", func(t *testing.T) {
		env := []string{"DRAWBRIDGE_GOSSIP_KEY=" + gossipKey,
			"DRAWBRIDGE_RAFT_TLS_CA_FILE=" + envValue(edge1.env, "DRAWBRIDGE_RAFT_TLS_CA_FILE"),
			"DRAWBRIDGE_RAFT_TLS_CERT_FILE=" + envValue(edge1.env, "DRAWBRIDGE_RAFT_TLS_CERT_FILE"),
			"DRAWBRIDGE_RAFT_TLS_KEY_FILE=" + envValue(edge1.env, "DRAWBRIDGE_RAFT_TLS_KEY_FILE")}
		code, out := runAgentBriefly(t, env, "agent", "--node-name", "edge-9", "--data-dir", t.TempDir(), "--witness",
			"--api-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), "--raft-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
			"--gossip-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), "--join", argValue(edge1.args, "--gossip-addr"))
		if code == 0 || !strings.Contains(out, `the certificate names node "edge-1" but this node is "edge-9"`) {
			t.Fatalf("exit %d, output %q", code, out)
		}
	})

	t.Run("gossip key but no certificate: joins gossip, never votes", func(t *testing.T) {
		intruder := &testAgent{t: t, dir: t.TempDir(), name: "intruder", apiPort: testenv.FreePort(t)}
		intruder.args = []string{"agent", "--node-name", "intruder", "--data-dir", intruder.dir, "--witness",
			"--api-addr", fmt.Sprintf("127.0.0.1:%d", intruder.apiPort),
			"--raft-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
			"--gossip-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
			"--join", argValue(edge1.args, "--gossip-addr"), "--log-level", "debug"}
		intruder.env = append(append([]string(nil), fastClusterEnv...), "DRAWBRIDGE_GOSSIP_KEY="+gossipKey, "DRAWBRIDGE_CLUSTER_INSECURE=true")
		t.Cleanup(func() {
			intruder.stop()
			if t.Failed() {
				t.Logf("intruder logs:\n%s", intruder.logs.String())
			}
		})
		intruder.start()
		testenv.Eventually(t, 20*time.Second, "the intruder alive in gossip", func() bool {
			for _, m := range c.view(t, leader).Members {
				if m.Name == "intruder" && m.Status == "alive" {
					return true
				}
			}
			return false
		})
		// The leader reconciles every second and on every change.
		deadline := time.Now().Add(4 * time.Second)
		for time.Now().Before(deadline) {
			if v := c.view(t, leader).voters(); len(v) != 3 {
				t.Fatalf("voters are %v", v)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !strings.Contains(leader.logs.String(), "did not prove its name") {
			t.Error("the leader did not say why the intruder is not a voter")
		}
		// cluster.insecure says so at start and in every status.
		code, body := intruder.tryRequest("GET", "/v1/status", bearer(), nil)
		var st struct {
			Warnings []string `json:"warnings"`
		}
		if code != 200 || json.Unmarshal(body, &st) != nil || !strings.Contains(strings.Join(st.Warnings, "\n"), "INSECURE: raft runs without mutual TLS") {
			t.Errorf("the insecure node's status: %d %s", code, body)
		}
		if !strings.Contains(intruder.logs.String(), "INSECURE") {
			t.Error("the insecure node did not warn at start")
		}
	})

	t.Run("unauthenticated raft message: refused, table unchanged", func(t *testing.T) {
		var follower *testAgent
		for _, a := range c.others(leader) {
			follower = a
			break
		}
		before, _, _ := follower.hashes()
		data, err := fsm.Encode(&fsm.RegisterBackend{Port: 16666, Name: "evil",
			Backend: fsm.Backend{Address: "203.0.113.66", Port: 6666}, Create: &fsm.Route{Port: 16666, Name: "evil"}})
		if err != nil {
			t.Fatal(err)
		}
		var msg bytes.Buffer
		msg.WriteByte(0) // AppendEntries
		codec.NewEncoder(&msg, &codec.MsgpackHandle{}).Encode(&raft.AppendEntriesRequest{
			RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(leader.name), Addr: []byte("127.0.0.1:1")},
			Term:      1 << 40, PrevLogEntry: 0, PrevLogTerm: 0,
			Entries:           []*raft.Log{{Index: 1, Term: 1 << 40, Type: raft.LogCommand, Data: data}},
			LeaderCommitIndex: 1,
		})
		raftAddr := argValue(follower.args, "--raft-addr")
		send := func(conn net.Conn) {
			conn.SetDeadline(time.Now().Add(3 * time.Second))
			conn.Write(msg.Bytes())
			io.Copy(io.Discard, conn)
			conn.Close()
		}
		if conn, err := net.Dial("tcp", raftAddr); err == nil {
			send(conn)
		}
		if conn, err := tls.Dial("tcp", raftAddr, &tls.Config{InsecureSkipVerify: true}); err == nil {
			send(conn)
		}
		time.Sleep(500 * time.Millisecond) // observation window for a change that must not come
		after, _, _ := follower.hashes()
		if before != after {
			t.Fatalf("the follower's table changed from %s to %s", before, after)
		}
		if code, _ := follower.tryRequest("GET", "/v1/routes/16666", bearer(), nil); code != 404 {
			t.Fatalf("the forged route is there (GET answered %d)", code)
		}
		if l := c.leader(); l != leader {
			t.Fatalf("leadership moved (to %v) after the forged message", l)
		}
		if !strings.Contains(follower.logs.String(), "rejected raft connection") {
			t.Error("the follower did not log the rejected connection")
		}
	})

	t.Run("remove-peer through a follower", func(t *testing.T) {
		var victim, via *testAgent
		for _, a := range c.others(leader) {
			if victim == nil {
				victim = a
			} else {
				via = a
			}
		}
		victim.kill()
		cmd := exec.Command(binPath, "raft", "remove-peer", victim.name, "--addr", via.url(""))
		cmd.Env = []string{"DRAWBRIDGE_API_TOKEN=" + testToken}
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "removed "+victim.name) {
			t.Fatalf("remove-peer: %v: %s", err, out)
		}
		// Gossip may still show the killed node alive for a moment: the
		// leader must not add it straight back.
		deadline := time.Now().Add(3 * time.Second) // observation window: several reconcile rounds
		for time.Now().Before(deadline) {
			if v := c.view(t, leader).voters(); len(v) != 2 {
				t.Fatalf("voters after remove-peer: %v", v)
			}
			time.Sleep(100 * time.Millisecond)
		}
		cmd = exec.Command(binPath, "raft", "remove-peer", "nobody", "--addr", via.url(""))
		cmd.Env = []string{"DRAWBRIDGE_API_TOKEN=" + testToken}
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "no such raft server") {
			t.Fatalf("remove-peer of an unknown name: %v: %s", err, out)
		}
		code, body := via.tryRequest("PUT", "/v1/routes/18081", bearer(), map[string]any{"name": "api",
			"backends": []map[string]any{{"address": "10.0.0.2", "port": 80}}})
		if code != 200 {
			t.Fatalf("write after remove-peer: %d %s", code, body)
		}
	})
}
