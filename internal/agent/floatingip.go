package agent

import (
	"log/slog"
	"os"
	"time"

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
	view := &fipView{self: cfg.NodeName, members: members}
	return floatingip.NewOwner(floatingip.OwnerConfig{
		NodeName: cfg.NodeName,
		Address:  f.Address,
		Priority: f.Priority,
		HoldDown: f.HoldDown,
	}, prov, view, info.eligible, members.Refresh, logger, reg), nil
}

// fipView shows the owner loop the other edge nodes through gossip.
type fipView struct {
	self    string
	members *cluster.Membership
}

// Peers implements floatingip.View.
func (v *fipView) Peers() []floatingip.Peer {
	var out []floatingip.Peer
	for _, m := range v.members.Members() {
		if m.Name == v.self || m.Meta.Role != roleEdge || m.Meta.FIP == nil {
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

// Census implements floatingip.View: every member gossip knows, this node
// and witnesses included.
func (v *fipView) Census() (alive, total int) {
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
