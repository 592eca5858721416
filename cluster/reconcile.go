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
//   - on the leader, it adds alive servers that are not voters yet and
//     updates a voter whose address changed. Members that failed are
//     reported and kept: removing them could cost the quorum that removing
//     them needs.
//
// With raft TLS (Node.Secure), gossip is only a hint: a member becomes a
// voter, or a voter moves, only after a handshake at the announced raft
// address proves the member's name with a certificate from the cluster CA
// (Node.VerifyPeer), and a voter is removed only at its own request over
// such a connection (Node.LeaveVoters) or by `drawbridge raft remove-peer`.
// Without TLS the cluster runs insecure: gossip's word is taken, and a
// member that left gracefully is removed.
type Reconciler struct {
	node     *Node
	members  *Membership
	expect   int
	interval time.Duration
	log      *slog.Logger
	reported map[string]bool
	// proofs remembers recent identity checks by name and address, so a
	// member that cannot prove its name costs one handshake per
	// proofRetry, and one log line.
	proofs map[proofKey]proof
	// lastBlocker is the last reason logged for batch entries being off
	// ("" when on), so each change is logged once.
	lastBlocker string
}

type proofKey struct{ name, addr string }

type proof struct {
	err error
	at  time.Time
}

// proofRetry is how long an identity check's failure is remembered;
// proofKeep how long a success is.
const (
	proofRetry = 10 * time.Second
	proofKeep  = time.Minute
)

// NewReconciler returns a reconciler. expect is --bootstrap-expect (0 = off).
func NewReconciler(node *Node, members *Membership, expect int, logger *slog.Logger) *Reconciler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Reconciler{
		node: node, members: members, expect: expect, interval: time.Second,
		log: logger.With("component", "reconcile"), reported: map[string]bool{},
		proofs: map[proofKey]proof{}, lastBlocker: "not checked yet",
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
	term := r.node.CurrentTerm()
	servers, err := r.node.Servers()
	if err != nil {
		r.log.Warn("read raft configuration", "err", err)
		return
	}
	// Before any voter is added: a member that cannot read batch entries
	// turns them off first.
	blocker := r.batchBlocker(servers)
	r.node.allowBatches(term, blocker == "")
	if blocker != r.lastBlocker {
		if blocker == "" {
			r.log.Info("batch log entries on: every voter reads them")
		} else {
			r.log.Info("batch log entries off: one log entry per write", "reason", blocker)
		}
		r.lastBlocker = blocker
	}
	voters := map[raft.ServerID]raft.Server{}
	for _, s := range servers {
		voters[s.ID] = s
	}
	self := raft.ServerID(r.node.ID())
	for _, m := range r.servers() {
		id := raft.ServerID(m.Name)
		cur, known := voters[id]
		// A member on its way out is never added back.
		departing := r.node.departing(m.Name, !m.Alive()) || m.Meta.Leaving
		switch {
		case m.Alive() && !departing && (!known || cur.Address != raft.ServerAddress(m.Meta.RaftAddr)):
			if id == self {
				continue
			}
			if !r.proven(m) {
				continue
			}
			r.log.Info("adding voter", "member", m.Name, "raft_addr", m.Meta.RaftAddr, "role", m.Meta.Role)
			if err := r.node.addVoter(m.Name, m.Meta.RaftAddr, 10*time.Second); err != nil {
				r.log.Warn("add voter", "member", m.Name, "err", err)
			}
			delete(r.reported, m.Name)
		case m.Status == StatusLeft && known && id != self && !r.node.Secure():
			r.log.Info("removing voter that left", "member", m.Name)
			if err := r.node.removeServer(m.Name, 10*time.Second); err != nil {
				r.log.Warn("remove voter", "member", m.Name, "err", err)
			}
		case (m.Status == StatusLeft || m.Status == StatusDead) && known && !r.reported[m.Name]:
			r.log.Warn("voter "+string(m.Status)+"; keeping it in the configuration (run `drawbridge raft remove-peer "+m.Name+"` if it is gone for good)", "member", m.Name)
			r.reported[m.Name] = true
		}
	}
}

// batchBlocker says why the leader may not write batch entries: the first
// member that may become a voter and does not announce that it reads them,
// or the first voter gossip does not show announcing it; "" when none.
func (r *Reconciler) batchBlocker(servers []raft.Server) string {
	members := r.servers()
	reads := make(map[string]bool, len(members))
	for _, m := range members {
		if !m.Meta.Batches {
			return "member " + m.Name + " does not announce that it reads batch entries (a build before them?)"
		}
		reads[m.Name] = true
	}
	for _, s := range servers {
		if !reads[string(s.ID)] {
			return "voter " + string(s.ID) + " is not in gossip as a member that reads batch entries"
		}
	}
	return ""
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
		if m.Name != r.node.ID() && !r.proven(m) {
			continue
		}
		alive = append(alive, m)
	}
	if len(alive) < r.expect {
		return
	}
	sort.Slice(alive, func(i, j int) bool { return alive[i].Name < alive[j].Name })
	var servers []raft.Server
	for _, m := range alive {
		servers = append(servers, raft.Server{
			Suffrage: raft.Voter, ID: raft.ServerID(m.Name), Address: raft.ServerAddress(m.Meta.RaftAddr),
		})
	}
	names := make([]string, len(alive))
	for i, m := range alive {
		names[i] = m.Name
	}
	r.log.Info("bootstrapping the cluster", "expect", r.expect, "voters", names)
	if err := r.node.bootstrap(servers); err != nil && err != raft.ErrCantBootstrap {
		r.log.Warn("bootstrap", "err", fmt.Sprint(err))
	}
}

// proven reports whether m proved its name at its announced raft address
// (always true without raft TLS). Results are kept for proofRetry.
func (r *Reconciler) proven(m Member) bool {
	if !r.node.Secure() {
		return true
	}
	k := proofKey{m.Name, m.Meta.RaftAddr}
	if p, ok := r.proofs[k]; ok && ((p.err == nil && time.Since(p.at) < proofKeep) || (p.err != nil && time.Since(p.at) < proofRetry)) {
		return p.err == nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	err := r.node.VerifyPeer(ctx, m.Name, m.Meta.RaftAddr)
	cancel()
	if err != nil {
		if _, seen := r.proofs[k]; !seen {
			r.log.Warn("gossip member did not prove its name at its raft address; not a voter", "member", m.Name, "raft_addr", m.Meta.RaftAddr, "err", err)
		}
	} else {
		r.log.Info("member proved its name", "member", m.Name, "raft_addr", m.Meta.RaftAddr)
	}
	if len(r.proofs) > 1024 {
		r.proofs = map[proofKey]proof{}
	}
	r.proofs[k] = proof{err: err, at: time.Now()}
	return err == nil
}
