package agent

import (
	"log/slog"
	"os"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/cluster"
	"github.com/drawbridge-lb/drawbridge/cluster/floatingip"
)

// newFloatingIPOwner builds the provider and owner loop for an edge node
// whose config manages a floating IP; nil when it does not.
func newFloatingIPOwner(cfg *Config, info *nodeInfo, members *cluster.Membership, logger *slog.Logger, reg prometheus.Registerer) (*floatingip.Owner, error) {
	f := cfg.FloatingIP
	if cfg.Role != roleEdge || f.Provider == "" || f.Provider == floatingip.ProviderNone {
		return nil, nil
	}
	prov, err := floatingip.New(floatingip.Config{
		Provider:    f.Provider,
		Address:     f.Address,
		NodeName:    cfg.NodeName,
		Interface:   f.Interface,
		PrefixLen:   f.PrefixLen,
		ExecCommand: f.Exec.Command,
		ExecTimeout: f.Exec.Timeout,
		ExecRetries: f.Exec.Retries,
		DOTokenFile: f.DigitalOcean.TokenFile,
		DOToken:     os.Getenv("DIGITALOCEAN_TOKEN"),
		DODropletID: f.DigitalOcean.DropletID,
		DOAPIURL:    f.DigitalOcean.APIURL,
		Logger:      logger,
	})
	if err != nil {
		return nil, err
	}
	view := &fipView{self: cfg.NodeName, members: members, voters: info.cluster.Voters}
	return floatingip.NewOwner(floatingip.OwnerConfig{
		NodeName: cfg.NodeName,
		Address:  f.Address,
		Priority: f.Priority,
		HoldDown: f.HoldDown,
	}, prov, view, info.eligible, members.Refresh, logger, reg), nil
}

// fipView shows the owner loop the other edge nodes through gossip. Only
// raft voters count (the members whose names raft's configuration holds,
// which with raft TLS each proved with its certificate): a gossip member
// that is not one can neither claim the address away from the holder nor
// swell the census.
type fipView struct {
	self    string
	members *cluster.Membership
	voters  func() map[string]raft.Server
}

// voterSet is the names of raft's voters, nil while this node knows no
// configuration yet (before the cluster forms, gossip is all there is).
func (v *fipView) voterSet() map[string]bool {
	servers := v.voters()
	if len(servers) == 0 {
		return nil
	}
	out := make(map[string]bool, len(servers))
	for id, s := range servers {
		if s.Suffrage == raft.Voter {
			out[id] = true
		}
	}
	return out
}

// Peers implements floatingip.View.
func (v *fipView) Peers() []floatingip.Peer {
	var out []floatingip.Peer
	voters := v.voterSet()
	for _, m := range v.members.Members() {
		if m.Name == v.self || m.Meta.Role != roleEdge || m.Meta.FIP == nil {
			continue
		}
		if voters != nil && !voters[m.Name] {
			continue
		}
		f := m.Meta.FIP
		p := floatingip.Peer{
			Name:     m.Name,
			Alive:    m.Status == "alive" && !m.Meta.Leaving,
			Eligible: f.Eligible,
			Priority: f.Priority,
			Holding:  f.Holding,
			Epoch:    f.Epoch,
		}
		if f.LastAt != 0 {
			p.Last = &floatingip.Failover{At: time.UnixMilli(f.LastAt), From: f.LastFrom, To: m.Name,
				Duration: time.Duration(f.LastMS) * time.Millisecond, Reason: f.LastWhy}
		}
		out = append(out, p)
	}
	return out
}

// Census implements floatingip.View: the raft voters, this node and
// witnesses included, and how many of them gossip sees alive. Before this
// node knows a raft configuration, every member gossip knows.
func (v *fipView) Census() (alive, total int) {
	if voters := v.voterSet(); voters != nil {
		total = len(voters)
		for _, m := range v.members.Members() {
			if voters[m.Name] && (m.Status == "alive" || m.Name == v.self) {
				alive++
			}
		}
		if !voters[v.self] {
			// Not a voter (yet): it still sees itself.
			alive++
			total++
		}
		return alive, total
	}
	for _, m := range v.members.Members() {
		if m.Status == "left" {
			continue
		}
		total++
		if m.Status == "alive" || m.Name == v.self {
			alive++
		}
	}
	return alive, total
}

// Changed implements floatingip.View.
func (v *fipView) Changed() <-chan struct{} { return v.members.Changed() }

// fipMeta is this node's claim as gossip metadata.
func fipMeta(c floatingip.Claim) *cluster.FIPMeta {
	m := &cluster.FIPMeta{Eligible: c.Eligible, Holding: c.Holding, Epoch: c.Epoch, Priority: c.Priority}
	if l := c.Last; l != nil {
		m.LastAt, m.LastFrom, m.LastMS, m.LastWhy = l.At.UnixMilli(), l.From, l.Duration.Milliseconds(), l.Reason
	}
	return m
}

// floatingIPStatus reports who holds the address: the alive holder with the
// newest claim, as gossip (and this node) see it.
func (s *nodeInfo) floatingIPStatus(members []cluster.Member) *api.FloatingIPStatus {
	f := s.cfg.FloatingIP
	if f.Provider == "" || f.Provider == floatingip.ProviderNone {
		return nil
	}
	st := &api.FloatingIPStatus{Address: f.Address, Provider: f.Provider}
	var best *cluster.FIPMeta
	for _, m := range members {
		fm := m.Meta.FIP
		if fm == nil || !fm.Holding || m.Status != "alive" {
			continue
		}
		if best == nil || fm.Epoch > best.Epoch {
			best, st.Holder = fm, m.Name
		}
	}
	if best != nil && best.LastAt != 0 {
		st.LastFailover = &api.Failover{At: time.UnixMilli(best.LastAt), From: best.LastFrom, To: st.Holder,
			Duration: time.Duration(best.LastMS) * time.Millisecond, Reason: best.LastWhy}
	}
	return st
}
