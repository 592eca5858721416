package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/drawbridge-lb/drawbridge/cluster"
	"github.com/drawbridge-lb/drawbridge/cluster/floatingip"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

func TestCheckTrustRefusesAnOpenClusterOutsideDev(t *testing.T) {
	base := Config{NodeName: "edge-1", Gossip: GossipConfig{Addr: ":9002"}, Raft: RaftConfig{Addr: ":9001"}}
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{"nothing", func(*Config) {}, "gossip encryption is off: set gossip.key_file"},
		{"gossip key only", func(c *Config) { c.Gossip.KeyFile = "/k" }, "raft mutual TLS is off: set raft.tls_ca_file"},
		{"both", func(c *Config) {
			c.Gossip.KeyFile = "/k"
			c.Raft.TLSCAFile, c.Raft.TLSCertFile, c.Raft.TLSKeyFile = "/ca", "/c", "/k"
		}, ""},
		{"insecure", func(c *Config) { c.Cluster.Insecure = true }, ""},
		{"dev", func(c *Config) { c.Dev = true }, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			tc.mod(&c)
			err := c.CheckTrust()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckTrust: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("CheckTrust = %v, want one line with %q", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), "cluster.insecure") {
				t.Errorf("the error does not name the insecure switch: %v", err)
			}
		})
	}
	c := base
	c.Cluster.Insecure = true
	w := strings.Join(c.TrustWarnings(), "\n")
	for _, want := range []string{"gossip is not encrypted", "raft runs without mutual TLS"} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings %q lack %q", w, want)
		}
	}
	c.Dev = true
	if w := c.TrustWarnings(); len(w) != 0 {
		t.Errorf("--dev warns %q", w)
	}
}

// TestFloatingIPViewCountsOnlyVoters: a gossip member that is not a raft
// voter (it never proved a name) claiming the floating IP with a newer
// epoch is not a peer of the owner loop, and does not count in the census.
func TestFloatingIPViewCountsOnlyVoters(t *testing.T) {
	self, err := cluster.NewMembership(cluster.GossipConfig{NodeName: "edge-1", BindAddr: testenv.FreeAddr(t)},
		func() cluster.Meta {
			return cluster.Meta{Role: roleEdge, FIP: &cluster.FIPMeta{Eligible: true, Holding: true, Epoch: 3}}
		}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer self.Shutdown()
	var fakes []*cluster.Membership
	for _, name := range []string{"mallory-1", "mallory-2", "mallory-3"} {
		m, err := cluster.NewMembership(cluster.GossipConfig{NodeName: name, BindAddr: testenv.FreeAddr(t)},
			func() cluster.Meta {
				return cluster.Meta{Role: roleEdge, Index: 1 << 60, Applied: 1 << 60, Healthy: true,
					FIP: &cluster.FIPMeta{Eligible: true, Holding: true, Epoch: 1 << 60, Priority: 1000}}
			}, testenv.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		defer m.Shutdown()
		fakes = append(fakes, m)
	}
	selfAddr := ""
	for _, m := range self.Members() {
		if m.Name == "edge-1" {
			selfAddr = m.Addr
		}
	}
	for _, f := range fakes {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := f.Join(ctx, []string{selfAddr}); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	testenv.Eventually(t, 5*time.Second, "the fake members in gossip", func() bool { return len(self.Members()) == 4 })

	view := cluster.NewFloatingIPView("edge-1", self, func() map[string]raft.Server {
		return map[string]raft.Server{"edge-1": {ID: "edge-1", Suffrage: raft.Voter}}
	})
	if peers := view.Peers(); len(peers) != 0 {
		t.Errorf("non-voters are floating-IP peers: %+v", peers)
	}
	if alive, total := view.Census(); alive != 1 || total != 1 {
		t.Errorf("census = %d of %d, want 1 of 1 (the voters)", alive, total)
	}
	// Before a raft configuration is known, gossip is all there is.
	view = cluster.NewFloatingIPView("edge-1", self, func() map[string]raft.Server { return nil })
	if _, total := view.Census(); total != 4 {
		t.Errorf("census without voters counts %d, want every member (4)", total)
	}
}

// TestFloatingIPHolderIgnoresUnprovenMembers runs the floating-IP owner
// loop (exec provider, a script that records its calls) with the agent's
// view, then lets gossip members that are not raft voters attack it: first
// by claiming the address with a newer epoch and a higher priority, then by
// dying, which would make the holder see itself in a minority of a census
// counting everything gossip saw. The holder keeps the address. The control
// run, with the view counting every gossip member (as before voters were
// required), shows the same attack makes it release.
func TestFloatingIPHolderIgnoresUnprovenMembers(t *testing.T) {
	for _, tc := range []struct {
		name        string
		votersOnly  bool
		wantRelease bool
	}{
		{"voters only", true, false},
		{"control: every gossip member counts", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			calls := filepath.Join(dir, "calls")
			script := filepath.Join(dir, "move-ip")
			if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$1 $2 $3\" >> "+calls+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			prov, err := floatingip.New(floatingip.Config{Provider: floatingip.ProviderExec, Address: "192.0.2.10", NodeName: "edge-1",
				ExecCommand: script, ExecTimeout: 5 * time.Second, Logger: testenv.Logger(t)})
			if err != nil {
				t.Fatal(err)
			}
			var owner *floatingip.Owner
			var ownerReady atomic.Bool
			self, err := cluster.NewMembership(cluster.GossipConfig{NodeName: "edge-1", BindAddr: testenv.FreeAddr(t),
				ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 50 * time.Millisecond, SuspicionMult: 2, GossipInterval: 20 * time.Millisecond},
				func() cluster.Meta {
					m := cluster.Meta{Role: roleEdge, Healthy: true}
					if ownerReady.Load() {
						m.FIP = cluster.ClaimMeta(owner.Claim())
					}
					return m
				}, testenv.Logger(t))
			if err != nil {
				t.Fatal(err)
			}
			defer self.Shutdown()
			view := cluster.NewFloatingIPView("edge-1", self, func() map[string]raft.Server {
				if !tc.votersOnly {
					return nil
				}
				return map[string]raft.Server{"edge-1": {ID: "edge-1", Suffrage: raft.Voter}}
			})
			owner = floatingip.NewOwner(floatingip.OwnerConfig{NodeName: "edge-1", Address: "192.0.2.10", Priority: 1,
				HoldDown: 200 * time.Millisecond, StartupWait: 100 * time.Millisecond, MinorityClaimAfter: 500 * time.Millisecond,
				Interval: 20 * time.Millisecond},
				prov, view, func() bool { return true }, self.Refresh, testenv.Logger(t), prometheus.NewRegistry())
			ownerReady.Store(true)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go owner.Run(ctx)
			testenv.Eventually(t, 10*time.Second, "edge-1 to hold the address", func() bool { return owner.Claim().Holding })

			selfAddr := ""
			for _, m := range self.Members() {
				selfAddr = m.Addr
			}
			var fakes []*cluster.Membership
			for _, name := range []string{"mallory-1", "mallory-2", "mallory-3"} {
				m, err := cluster.NewMembership(cluster.GossipConfig{NodeName: name, BindAddr: testenv.FreeAddr(t),
					ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 50 * time.Millisecond, SuspicionMult: 2, GossipInterval: 20 * time.Millisecond},
					func() cluster.Meta {
						return cluster.Meta{Role: roleEdge, Healthy: true, Index: 1 << 60, Applied: 1 << 60,
							FIP: &cluster.FIPMeta{Eligible: true, Holding: true, Epoch: 1 << 60, Priority: 1000}}
					}, testenv.Logger(t))
				if err != nil {
					t.Fatal(err)
				}
				jctx, jcancel := context.WithTimeout(context.Background(), 5*time.Second)
				err = m.Join(jctx, []string{selfAddr})
				jcancel()
				if err != nil {
					t.Fatal(err)
				}
				fakes = append(fakes, m)
			}
			testenv.Eventually(t, 5*time.Second, "the fake members in gossip", func() bool { return len(self.Members()) == 4 })
			// They die (no goodbye): a census of everything gossip saw
			// would now count 1 alive of 4.
			time.Sleep(time.Second) // observation window: newer claims in gossip
			for _, f := range fakes {
				f.Shutdown()
			}
			deadline := time.Now().Add(3 * time.Second) // observation window: suspicion, death, minority wait
			released := false
			for time.Now().Before(deadline) && !released {
				released = !owner.Claim().Holding
				time.Sleep(20 * time.Millisecond)
			}
			if released != tc.wantRelease {
				b, _ := os.ReadFile(calls)
				t.Fatalf("released = %v, want %v; provider calls:\n%s", released, tc.wantRelease, b)
			}
		})
	}
}
