package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/drawbridge-lb/drawbridge/cluster"
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

	view := &fipView{self: "edge-1", members: self, voters: func() map[string]raft.Server {
		return map[string]raft.Server{"edge-1": {ID: "edge-1", Suffrage: raft.Voter}}
	}}
	if peers := view.Peers(); len(peers) != 0 {
		t.Errorf("non-voters are floating-IP peers: %+v", peers)
	}
	if alive, total := view.Census(); alive != 1 || total != 1 {
		t.Errorf("census = %d of %d, want 1 of 1 (the voters)", alive, total)
	}
	// Before a raft configuration is known, gossip is all there is.
	view.voters = func() map[string]raft.Server { return nil }
	if _, total := view.Census(); total != 4 {
		t.Errorf("census without voters counts %d, want every member (4)", total)
	}
}
