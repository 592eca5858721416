package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// Cluster joins a raft Node with gossip Membership: it answers the questions
// the API asks of the cluster (who leads and where is its API, has every edge
// node applied index N) and runs the graceful leave.
type Cluster struct {
	node    *Node
	members *Membership
	log     *slog.Logger

	// readTerm is the latest raft term in which this node, leading, has
	// applied an entry of its own term (see termCommitted). barrier lets
	// one reader at a time run the barrier, so a burst of reads after an
	// election adds one entry to the log, not one per read.
	readTerm atomic.Uint64
	barrier  chan struct{}
	// leaderCertChecked is set once ForwardTLS is in use: https
	// forwards then prove the leader's name.
	leaderCertChecked atomic.Bool
}

// NewCluster returns the facade over node and members.
func NewCluster(node *Node, members *Membership, logger *slog.Logger) *Cluster {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Cluster{node: node, members: members, log: logger.With("component", "cluster"), barrier: make(chan struct{}, 1)}
}

// Node returns the raft node.
func (c *Cluster) Node() *Node { return c.node }

// Members returns the gossip membership.
func (c *Cluster) Members() *Membership { return c.members }

// member returns the gossip member with the given name.
func (c *Cluster) member(name string) (Member, bool) { return c.members.Member(name) }

// LeaderAPI returns the API base URL of the raft leader, and whether the
// leader is this node. The error explains why no leader is known.
func (c *Cluster) LeaderAPI() (string, bool, error) {
	if c.node.IsLeader() {
		return "", true, nil
	}
	addr, id := c.node.Leader()
	if addr == "" || c.node.raft.State() == raft.Shutdown {
		// No leader known, or stopped: checkLeader says why. (Asked
		// only then: it formats its error, and this runs per request.)
		if err := c.node.checkLeader(); errors.Is(err, ErrNoLeader) || errors.Is(err, ErrShutdown) {
			return "", false, err
		}
		addr, id = c.node.Leader()
	}
	m, ok := c.member(string(id))
	if !ok || m.Meta.APIURL == "" {
		return "", false, fmt.Errorf("%w: the leader %s is not visible in gossip yet", ErrNoLeader, id)
	}
	u, err := url.Parse(m.Meta.APIURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return "", false, fmt.Errorf("%w: the leader %s announces an unusable API address %q", ErrNoLeader, id, m.Meta.APIURL)
	}
	if !(u.Scheme == "https" && c.leaderCertChecked.Load()) {
		// Gossip alone vouches for this address: send a client's
		// request there only when it is on the host raft knows the
		// leader at (raft's address is bound to the leader's
		// certificate when raft runs TLS).
		raftHost, _, _ := net.SplitHostPort(string(addr))
		if u.Hostname() != raftHost {
			return "", false, fmt.Errorf("%w: the leader %s announces its API at %s, not on its raft host %s; not forwarding there (serve the API over TLS with a certificate from the cluster CA to forward across hosts)", ErrNoLeader, id, u.Host, raftHost)
		}
	}
	return m.Meta.APIURL, false, nil
}

// LeaderName returns the node name of the leader raft knows of (this
// node's when it leads), or "" when it knows none.
func (c *Cluster) LeaderName() string {
	_, id := c.node.Leader()
	return id
}

// ForwardTLS returns the TLS configuration a follower forwards requests to
// the leader's HTTPS API with: the server's certificate must chain to pool
// (the cluster CA) and name the node raft names leader at the moment of the
// handshake, so a client's token only ever reaches the leader itself. Host
// names are not checked: the node name is the identity. Once it is in use,
// LeaderAPI hands out https addresses on any host.
func (c *Cluster) ForwardTLS(pool *x509.CertPool) *tls.Config {
	c.leaderCertChecked.Store(true)
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The chain and the name are checked in VerifyConnection.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, id := c.node.Leader()
			if id == "" {
				return ErrNoLeader
			}
			if err := VerifyPeerIdentity(cs, pool, string(id)); err != nil {
				return fmt.Errorf("the leader's API: %w", err)
			}
			return nil
		},
	}
}

// VerifyLeader confirms with a quorum that this node still leads and that
// its table holds every entry committed before the call, so a read served
// after it is not stale.
func (c *Cluster) VerifyLeader(ctx context.Context) error {
	if err := c.termCommitted(ctx); err != nil {
		return err
	}
	commit := c.node.CommitIndex()
	if err := c.wait(ctx, "verify leadership", c.node.verifyLeader()); err != nil {
		return err
	}
	for c.node.AppliedIndex() < commit {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: apply up to index %d: %v", ErrCommitTimeout, commit, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// termCommitted returns once an entry of this leader's own term has been
// applied, which it checks with a barrier once per term. A newly elected
// leader learns which entries of its log are committed only when one of its
// own term commits (Raft §5.4.2, §8): until then its commit index can miss a
// write its predecessor acknowledged, and a read served on it would be stale.
func (c *Cluster) termCommitted(ctx context.Context) error {
	term := c.node.CurrentTerm()
	if c.readTerm.Load() == term {
		return nil
	}
	select {
	case c.barrier <- struct{}{}:
		defer func() { <-c.barrier }()
	case <-ctx.Done():
		return fmt.Errorf("%w: commit an entry of the new term: %v", ErrCommitTimeout, ctx.Err())
	}
	if c.readTerm.Load() == term { // another read's barrier covered this term
		return nil
	}
	timeout := 5 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if err := c.wait(ctx, "commit an entry of the new term", c.node.barrier(timeout)); err != nil {
		return err
	}
	// The barrier ran in term or a later one; a later term only costs
	// another barrier on the next read.
	c.readTerm.Store(term)
	return nil
}

// wait waits for a raft future, or for ctx; what names the step in errors.
func (c *Cluster) wait(ctx context.Context, what string, fut raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- fut.Error() }()
	select {
	case err := <-done:
		if err != nil {
			return c.node.translate(err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %s: %v", ErrCommitTimeout, what, ctx.Err())
	}
}

// Lag is an edge node that has not applied an index yet.
type Lag struct {
	Node    string
	Applied uint64
	Error   string
	// Held counts the routes its HAProxy holds back; HeldBack names the
	// first of their ports.
	Held     int
	HeldBack []int
}

// Lagging returns the alive edge nodes whose HAProxy runs a table older than
// index, per their gossiped metadata (this node's own is read fresh).
func (c *Cluster) Lagging(index uint64) []Lag {
	c.members.Refresh()
	var out []Lag
	for _, m := range c.members.Members() {
		if m.Meta.Role != RoleEdge || !m.Alive() {
			continue
		}
		if m.Meta.Applied < index {
			out = append(out, Lag{Node: m.Name, Applied: m.Meta.Applied, Error: m.Meta.Error,
				Held: m.Meta.Held, HeldBack: m.Meta.HeldBack})
		}
	}
	return out
}

// WaitApplied waits until every alive edge node has applied index, or ctx
// ends; then it returns the nodes still behind.
func (c *Cluster) WaitApplied(ctx context.Context, index uint64) ([]Lag, error) {
	for {
		changed := c.members.Changed()
		lag := c.Lagging(index)
		if len(lag) == 0 {
			return nil, nil
		}
		select {
		case <-ctx.Done():
			return lag, ctx.Err()
		case <-changed:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Voters returns the raft configuration's servers by ID.
func (c *Cluster) Voters() map[string]raft.Server {
	out := map[string]raft.Server{}
	servers, err := c.node.Servers()
	if err != nil {
		return out
	}
	for _, s := range servers {
		out[string(s.ID)] = s
	}
	return out
}

// Leave hands leadership over when this node leads, asks the leader to
// remove it from the voters (in the name its certificate proves; without
// raft TLS the leader acts on gossip's word), then tells gossip it is
// leaving, so peers stop waiting for it. Raft and the stores are closed by
// Node.Shutdown after.
func (c *Cluster) Leave(timeout time.Duration) {
	if _, voter := c.Voters()[c.node.ID()]; voter && len(c.Voters()) > 1 {
		c.members.MarkLeaving()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		if err := c.leaveVoters(ctx); err != nil {
			c.log.Warn("left without being removed from the voters; remove it with `drawbridge raft remove-peer "+c.node.ID()+"` on the leader", "err", err)
		}
		cancel()
	}
	if err := c.members.Leave(timeout); err != nil {
		c.log.Warn("leave gossip", "err", err)
	}
}

// leaveVoters hands leadership over while this node leads, then, with raft
// TLS, asks the leader to remove it; both are retried until ctx ends (a
// transfer fails while the others are busy or an election runs). A leader
// that left without handing over would leave a pair's survivor unable to
// elect itself: its configuration still counts the leaver. Without raft
// TLS the leader removes this node once gossip says it left.
func (c *Cluster) leaveVoters(ctx context.Context) error {
	var err error
	for {
		switch {
		case c.node.IsLeader():
			c.log.Info("transferring leadership before leaving")
			if err = c.node.transferLeadership(); err != nil {
				err = fmt.Errorf("leadership transfer: %w", err)
			}
		case !c.node.Secure():
			return nil
		default:
			if err = c.node.LeaveVoters(ctx); err == nil {
				c.log.Info("the leader removed this node from the voters")
				return nil
			}
		}
		if err == nil {
			if !c.node.IsLeader() {
				continue // handed over: now ask the new leader
			}
			err = errors.New("still the leader after handing leadership over")
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}
