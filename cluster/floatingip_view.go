package cluster

import (
	"time"

	"github.com/hashicorp/raft"

	"github.com/drawbridge-lb/drawbridge/cluster/floatingip"
)

// FloatingIPView shows the floating-IP owner loop (floatingip.View) the
// other edge nodes through gossip. Only
// raft voters count (the members whose names raft's configuration holds,
// which with raft TLS each proved with its certificate): a gossip member
// that is not one can neither claim the address away from the holder nor
// swell the census.
type FloatingIPView struct {
	self    string
	members *Membership
	voters  func() map[string]raft.Server
}

var _ floatingip.View = (*FloatingIPView)(nil)

// NewFloatingIPView returns the view of members for the node named self
// (left out of the peers). voters returns raft's configuration
// (Cluster.Voters); an empty one means none is known yet, and every gossip
// member counts.
func NewFloatingIPView(self string, members *Membership, voters func() map[string]raft.Server) *FloatingIPView {
	return &FloatingIPView{self: self, members: members, voters: voters}
}

// voterSet is the names of raft's voters, nil while this node knows no
// configuration yet (before the cluster forms, gossip is all there is).
func (v *FloatingIPView) voterSet() map[string]bool {
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
func (v *FloatingIPView) Peers() []floatingip.Peer {
	var out []floatingip.Peer
	voters := v.voterSet()
	for _, m := range v.members.Members() {
		if m.Name == v.self || m.Meta.Role != RoleEdge || m.Meta.FIP == nil {
			continue
		}
		if voters != nil && !voters[m.Name] {
			continue
		}
		f := m.Meta.FIP
		p := floatingip.Peer{
			Name:     m.Name,
			Alive:    m.Status == StatusAlive && !m.Meta.Leaving,
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
func (v *FloatingIPView) Census() (alive, total int) {
	if voters := v.voterSet(); voters != nil {
		total = len(voters)
		for _, m := range v.members.Members() {
			if voters[m.Name] && (m.Status == StatusAlive || m.Name == v.self) {
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
		if m.Status == StatusLeft {
			continue
		}
		total++
		if m.Status == StatusAlive || m.Name == v.self {
			alive++
		}
	}
	return alive, total
}

// LocalHealth implements floatingip.View with gossip's awareness score.
func (v *FloatingIPView) LocalHealth() int { return v.members.HealthScore() }

// Changed implements floatingip.View.
func (v *FloatingIPView) Changed() <-chan struct{} { return v.members.Changed() }

// ClaimMeta is a node's floating-IP claim as its gossip metadata.
func ClaimMeta(c floatingip.Claim) *FIPMeta {
	m := &FIPMeta{Eligible: c.Eligible, Holding: c.Holding, Epoch: c.Epoch, Priority: c.Priority}
	if l := c.Last; l != nil {
		m.LastAt, m.LastFrom, m.LastMS, m.LastWhy = l.At.UnixMilli(), l.From, l.Duration.Milliseconds(), l.Reason
	}
	return m
}
