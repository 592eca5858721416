package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// TestRecoverPeersLetsASurvivorContinueAlone plays the runbook for a pair
// without a witness: one node is gone for good, the survivor is stopped,
// its peer set rewritten to just itself, and started again.
func TestRecoverPeersLetsASurvivorContinueAlone(t *testing.T) {
	c1 := fastConfig(t, t.TempDir())
	c1.SnapshotThreshold = 10
	c1.SnapshotInterval = 50 * time.Millisecond
	c1.TrailingLogs = 5
	n1, f1 := startNode(t, c1)
	c2 := joinerConfig(t, "n2")
	n2, f2 := startNode(t, c2)
	if err := addVoterTo(n1, c2); err != nil {
		t.Fatalf("add n2: %v", err)
	}
	for i := 0; i < 30; i++ {
		applyOrFatal(t, n1, register(10000+i, fmt.Sprintf("svc-%d", i), "10.0.0.1", 30000+i))
		if i == 20 {
			// Recovery then goes through a snapshot and the log after it.
			if err := n1.Snapshot(); err != nil {
				t.Fatalf("snapshot: %v", err)
			}
		}
	}
	want := f1.State().Hash()
	testenv.Eventually(t, 10*time.Second, "n2 to catch up", func() bool { return f2.State().Hash() == want })
	if err := n2.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := n1.Shutdown(); err != nil {
		t.Fatal(err)
	}

	peers, err := ReadPeers(c1.DataDir)
	if err != nil {
		t.Fatalf("read peers: %v", err)
	}
	if got := serverIDs(peers); got != "n1,n2" {
		t.Fatalf("peers before recovery: %s, want n1,n2", got)
	}

	self := []raft.Server{{Suffrage: raft.Voter, ID: "n1", Address: raft.ServerAddress(c1.BindAddr)}}
	if err := RecoverPeers(c1.DataDir, self, testenv.Logger(t)); err != nil {
		t.Fatalf("recover: %v", err)
	}
	peers, err = ReadPeers(c1.DataDir)
	if err != nil {
		t.Fatalf("read peers after recovery: %v", err)
	}
	if got := serverIDs(peers); got != "n1" || peers[0].Address != raft.ServerAddress(c1.BindAddr) || peers[0].Suffrage != raft.Voter {
		t.Fatalf("peers after recovery: %+v, want only n1 as a voter", peers)
	}

	c1.Bootstrap = false // it must lead on its recovered state alone
	n1, f1 = startNode(t, c1)
	testenv.Eventually(t, 10*time.Second, "the survivor to lead alone", n1.IsLeader)
	testenv.Eventually(t, 10*time.Second, "the survivor's state to be restored", func() bool { return f1.State().Hash() == want })
	applyOrFatal(t, n1, register(20000, "after", "10.0.0.9", 1))
	if got := f1.State().Len(); got != 31 {
		t.Errorf("%d routes after a write, want 31", got)
	}
}

func TestRecoverPeersRefusesWhileTheAgentRuns(t *testing.T) {
	cfg := fastConfig(t, t.TempDir())
	startNode(t, cfg)
	self := []raft.Server{{Suffrage: raft.Voter, ID: "n1", Address: raft.ServerAddress(cfg.BindAddr)}}

	start := time.Now()
	err := RecoverPeers(cfg.DataDir, self, testenv.Logger(t))
	if !errors.Is(err, ErrDataDirInUse) || !strings.Contains(err.Error(), "stop the agent first") {
		t.Fatalf("recover on a running node: %v, want ErrDataDirInUse", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s to notice the lock", d)
	}
	if _, err := ReadPeers(cfg.DataDir); !errors.Is(err, ErrDataDirInUse) {
		t.Fatalf("read peers on a running node: %v, want ErrDataDirInUse", err)
	}
}

func TestRecoverPeersRefusesWithoutStateOrPeers(t *testing.T) {
	self := []raft.Server{{Suffrage: raft.Voter, ID: "n1", Address: "127.0.0.1:9001"}}

	// A node that started but never bootstrapped or joined has a raft.db
	// and no state.
	unjoined := fastConfig(t, t.TempDir())
	unjoined.Bootstrap = false
	n, _ := startNode(t, unjoined)
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}
	// A node with state, for the empty peer set.
	withState := fastConfig(t, t.TempDir())
	n, _ = startNode(t, withState)
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}

	empty := t.TempDir()
	for _, tc := range []struct {
		name  string
		dir   string
		peers []raft.Server
		is    error
		want  string
	}{
		{"empty dir", empty, self, ErrNoRaftState, "raft.db does not exist"},
		{"missing dir", filepath.Join(empty, "nope"), self, ErrNoRaftState, "does not exist"},
		{"never joined", unjoined.DataDir, self, ErrNoRaftState, "no raft state"},
		{"no peers", withState.DataDir, nil, nil, "peer set is empty"},
		{"peer without address", withState.DataDir, []raft.Server{{Suffrage: raft.Voter, ID: "n1"}}, nil, "empty address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := RecoverPeers(tc.dir, tc.peers, testenv.Logger(t))
			if err == nil || !strings.Contains(err.Error(), tc.want) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Fatalf("error %v, want %v containing %q", err, tc.is, tc.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(empty, "raft.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("recover created raft.db in an empty dir: %v", err)
	}
	if _, err := ReadPeers(empty); !errors.Is(err, ErrNoRaftState) {
		t.Errorf("read peers of an empty dir: %v, want ErrNoRaftState", err)
	}
	// The refused recoveries left the state alone.
	peers, err := ReadPeers(withState.DataDir)
	if err != nil || serverIDs(peers) != "n1" {
		t.Fatalf("peers after refused recoveries: %+v, %v", peers, err)
	}
	n, _ = startNode(t, withState)
	applyOrFatal(t, n, register(8080, "web", "10.0.0.1", 1))
}

func serverIDs(servers []raft.Server) string {
	ids := make([]string, len(servers))
	for i, s := range servers {
		ids[i] = string(s.ID)
	}
	return strings.Join(ids, ",")
}
