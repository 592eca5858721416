package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/hashicorp/raft"
)

// Reconciler keeps raft's voter set in line with gossip. It runs on every
// node but acts only where it can:
//   - before a cluster exists, with BootstrapExpect > 0, it bootstraps raft
//     once that many servers are alive in gossip and none of them already
//     belongs to a cluster (every one of them computes the same voter set);
//   - on the leader, it adds alive servers that are not voters yet, updates a
//     voter whose address changed, and removes members that left gracefully.
//     Members that failed are reported and kept: removing them could cost
//     the quorum that removing them needs.
type Reconciler struct {
	node     *Node
	members  *Membership
	expect   int
	interval time.Duration
	log      *slog.Logger
	reported map[string]bool
}

// NewReconciler returns a reconciler. expect is --bootstrap-expect (0 = off).
func NewReconciler(node *Node, members *Membership, expect int, logger *slog.Logger) *Reconciler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Reconciler{
		node: node, members: members, expect: expect, interval: time.Second,
		log: logger.With("component", "reconcile"), reported: map[string]bool{},
	}
}

// Run reconciles on every membership change and every second until ctx ends.
func (r *Reconciler) Run(ctx context.Context) {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		changed := r.members.Changed()
		r.step()
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-t.C:
		}
	}
}

// servers returns the gossip members that take part in raft.
func (r *Reconciler) servers() []Member {
	var out []Member
	for _, m := range r.members.Members() {
		if m.Meta.RaftAddr != "" && (m.Meta.Role == RoleEdge || m.Meta.Role == RoleWitness) {
			out = append(out, m)
		}
	}
	return out
}

func (r *Reconciler) step() {
	if !r.node.HasState() {
		r.maybeBootstrap()
		return
	}
	if !r.node.IsLeader() {
		return
	}
	fut := r.node.raft.GetConfiguration()
	if err := fut.Error(); err != nil {
		r.log.Warn("read raft configuration", "err", err)
		return
	}
	voters := map[raft.ServerID]raft.Server{}
	for _, s := range fut.Configuration().Servers {
		voters[s.ID] = s
	}
	self := raft.ServerID(r.node.cfg.NodeID)
	for _, m := range r.servers() {
		id := raft.ServerID(m.Name)
		cur, known := voters[id]
		switch {
		case m.Alive() && (!known || cur.Address != raft.ServerAddress(m.Meta.RaftAddr)):
			if id == self {
				continue
			}
			r.log.Info("adding voter", "member", m.Name, "raft_addr", m.Meta.RaftAddr, "role", m.Meta.Role)
			if err := r.node.raft.AddVoter(id, raft.ServerAddress(m.Meta.RaftAddr), 0, 10*time.Second).Error(); err != nil {
				r.log.Warn("add voter", "member", m.Name, "err", err)
			}
			delete(r.reported, m.Name)
		case m.Status == "left" && known && id != self:
			r.log.Info("removing voter that left", "member", m.Name)
			if err := r.node.raft.RemoveServer(id, 0, 10*time.Second).Error(); err != nil {
				r.log.Warn("remove voter", "member", m.Name, "err", err)
			}
		case m.Status == "dead" && known && !r.reported[m.Name]:
			r.log.Warn("voter failed; keeping it in the configuration (run `drawbridge raft remove-peer` if it is gone for good)", "member", m.Name)
			r.reported[m.Name] = true
		}
	}
}

func (r *Reconciler) maybeBootstrap() {
	if r.expect <= 0 {
		return
	}
	var alive []Member
	for _, m := range r.servers() {
		if !m.Alive() {
			continue
		}
		if m.Meta.Bootstrapped {
			// A cluster exists: wait for its leader to add us.
			return
		}
		alive = append(alive, m)
	}
	if len(alive) < r.expect {
		return
	}
	sort.Slice(alive, func(i, j int) bool { return alive[i].Name < alive[j].Name })
	conf := raft.Configuration{}
	for _, m := range alive {
		conf.Servers = append(conf.Servers, raft.Server{
			Suffrage: raft.Voter, ID: raft.ServerID(m.Name), Address: raft.ServerAddress(m.Meta.RaftAddr),
		})
	}
	names := make([]string, len(alive))
	for i, m := range alive {
		names[i] = m.Name
	}
	r.log.Info("bootstrapping the cluster", "expect", r.expect, "voters", names)
	if err := r.node.raft.BootstrapCluster(conf).Error(); err != nil && err != raft.ErrCantBootstrap {
		r.log.Warn("bootstrap", "err", fmt.Sprint(err))
	}
}
