package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// Attacks on cluster membership and on the raft port, with raft TLS on.
// Each test first shows the cluster working, then tries the attack, then
// checks the cluster is unchanged.

// secureThree starts three members with TLS certificates naming them and
// an encrypted gossip, formed by bootstrap-expect with no hand-holding.
func secureThree(t *testing.T, ca *tlsTestCA) []*testMember {
	t.Helper()
	return startThree(t, memberOpts{ca: ca, key: make([]byte, 32), label: "test"})
}

// tlsTimings relaxes fastConfig's 50ms timings to raft's defaults: a
// first TLS handshake under the race detector on a busy machine can take
// longer than a short leader lease, and the leader would step down
// mid-test.
func tlsTimings(c Config) Config {
	c.HeartbeatTimeout = time.Second
	c.ElectionTimeout = time.Second
	c.LeaderLeaseTimeout = 500 * time.Millisecond
	return c
}

func voterNames(m *testMember) []string {
	var out []string
	for id := range m.cluster.Voters() {
		out = append(out, id)
	}
	return out
}

// TestSecureClusterFormsAndRefusesUnprovenVoters: credentialed members
// join by themselves; gossip members that cannot prove their names at the
// raft address they announce never become voters, and a voter is never
// re-pointed to an address that does not prove its name.
func TestSecureClusterFormsAndRefusesUnprovenVoters(t *testing.T) {
	testenv.SkipShort(t, "a three-node TLS cluster and unproven members")
	ca := newTLSTestCA(t, "cluster CA")
	ms := secureThree(t, ca)
	l := leaderOf(ms...)
	applyOrFatal(t, l.node, register(8080, "web", "10.0.0.1", 30080))

	// A node that holds a valid certificate, but for "mallory", listening
	// on its own raft port (not in gossip).
	mallory := startMember(t, "mallory", memberOpts{ca: ca, key: make([]byte, 32), label: "test"}, nil)

	attackers := []struct {
		name string
		o    memberOpts
	}{
		// Joins gossip (it has the key) and announces a raft address
		// where nothing listens: the original attack made it a voter.
		{"ghost", memberOpts{key: make([]byte, 32), label: "test", raftAddr: "127.0.0.1:1"}},
		// Announces the raft address of a node whose certificate names
		// someone else.
		{"imposter", memberOpts{key: make([]byte, 32), label: "test", raftAddr: mallory.raft}},
		// Runs raft with its own name, from another CA.
		{"otherca", memberOpts{ca: newTLSTestCA(t, "other CA"), key: make([]byte, 32), label: "test"}},
	}
	for _, a := range attackers {
		startMember(t, a.name, a.o, []string{l.gossip})
	}
	testenv.Eventually(t, 10*time.Second, "every attacker visible in gossip", func() bool {
		return len(l.members.Members()) == 3+len(attackers)
	})
	// The reconciler runs every 50ms and on every change; give it many
	// rounds, then check nothing changed.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if v := l.cluster.Voters(); len(v) != 3 {
			t.Fatalf("voters changed to %v", voterNames(l))
		}
		time.Sleep(20 * time.Millisecond)
	}
	applyOrFatal(t, l.node, register(8081, "api", "10.0.0.2", 30081))

	if idx := mallory.node.raft.LastIndex(); idx != 0 {
		t.Errorf("mallory received raft log up to %d", idx)
	}
}

// TestGossipCannotRepointAVoter: a voter gossip has not seen (down since
// before the leader started, say) cannot be moved by a gossip member that
// takes its name and announces an address where another certificate
// holder listens.
func TestGossipCannotRepointAVoter(t *testing.T) {
	testenv.SkipShort(t, "a TLS cluster and a gossip member taking a voter's name")
	ca := newTLSTestCA(t, "cluster CA")
	o := memberOpts{ca: ca, key: make([]byte, 32), label: "test", expect: 2}
	a := startMember(t, "a", o, nil)
	b := startMember(t, "b", o, []string{a.gossip})
	testenv.Eventually(t, 15*time.Second, "a pair", func() bool {
		l := leaderOf(a, b)
		return l != nil && len(l.cluster.Voters()) == 2
	})
	l := leaderOf(a, b)
	// "c" is a voter at an address where nothing listens now.
	if err := l.node.raft.AddNonvoter("c", "127.0.0.1:1", 0, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	mallory := startMember(t, "mallory", memberOpts{ca: ca, key: make([]byte, 32), label: "test"}, nil)
	startMember(t, "c", memberOpts{key: make([]byte, 32), label: "test", raftAddr: mallory.raft}, []string{l.gossip})
	testenv.Eventually(t, 10*time.Second, "the impostor alive in gossip", func() bool {
		for _, m := range l.members.Members() {
			if m.Name == "c" {
				return m.Status == "alive"
			}
		}
		return false
	})
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		s := l.cluster.Voters()["c"]
		if s.Address != "127.0.0.1:1" || s.Suffrage != raft.Nonvoter {
			t.Fatalf("server c changed to %+v by gossip alone", s)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if idx := mallory.node.raft.LastIndex(); idx != 0 {
		t.Errorf("mallory received raft log up to %d", idx)
	}
	applyOrFatal(t, l.node, register(8080, "web", "10.0.0.1", 30080))
}

// TestSecureLeaveNeedsTheLeaversOwnWord: a graceful leave removes the
// voter (it asks the leader in its own name); gossip saying a member left
// does not.
func TestSecureLeaveNeedsTheLeaversOwnWord(t *testing.T) {
	ca := newTLSTestCA(t, "cluster CA")
	ms := secureThree(t, ca)
	l := leaderOf(ms...)
	var f1, f2 *testMember
	for _, m := range ms {
		if m == l {
			continue
		}
		if f1 == nil {
			f1 = m
		} else {
			f2 = m
		}
	}
	// f1 only says goodbye in gossip (as anyone holding the gossip key
	// could say of it), then stops.
	f1.stopped = true
	f1.cancel()
	if err := f1.members.Leave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "f1 seen as left", func() bool {
		for _, m := range l.members.Members() {
			if m.Name == f1.name {
				return m.Status == "left"
			}
		}
		return false
	})
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if _, ok := l.cluster.Voters()[f1.name]; !ok {
			t.Fatal("gossip alone removed a voter")
		}
		time.Sleep(20 * time.Millisecond)
	}
	f1.node.Shutdown()
	// Removing it takes the operator (remove-peer goes to the leader).
	if err := f2.node.RemovePeer(f1.name); err == nil {
		t.Fatal("a follower removed a peer")
	}
	if err := l.node.RemovePeer(f1.name); err != nil {
		t.Fatalf("remove-peer on the leader: %v", err)
	}
	if err := l.node.RemovePeer("nobody"); err == nil || !strings.Contains(err.Error(), "no such raft server") {
		t.Fatalf("remove-peer of an unknown name: %v", err)
	}

	// f2 leaves gracefully: it asks the leader itself.
	f2.leave()
	testenv.Eventually(t, 10*time.Second, "f2 removed at its own request", func() bool {
		_, ok := l.cluster.Voters()[f2.name]
		return !ok
	})
	applyOrFatal(t, l.node, register(9200, "solo", "10.0.0.3", 1))
}

// followerTarget is a two-voter TLS cluster and the follower's raft state,
// to aim raft messages at.
type followerTarget struct {
	leader, follower *Node
	lfsm, ffsm       *fsm.FSM
	addr             string
}

// newFollowerTarget starts a two-node TLS cluster, n1 leading, with one
// route replicated to n2.
func newFollowerTarget(t *testing.T, ca *tlsTestCA) *followerTarget {
	c1 := tlsTimings(fastConfig(t, t.TempDir()))
	c1.TLS = ca.raftTLS(t, "n1")
	n1, f1 := startNode(t, c1)
	c2 := tlsTimings(joinerConfig(t, "n2"))
	c2.TLS = ca.raftTLS(t, "n2")
	n2, f2 := startNode(t, c2)
	if err := addVoterTo(n1, c2); err != nil {
		t.Fatalf("add n2: %v", err)
	}
	applyOrFatal(t, n1, register(8080, "web", "10.0.0.1", 30080))
	testenv.Eventually(t, 10*time.Second, "n2 to replicate", func() bool {
		_, ok := f2.State().Route(8080)
		return ok
	})
	return &followerTarget{leader: n1, follower: n2, lfsm: f1, ffsm: f2, addr: c2.BindAddr}
}

// forgedAppend is an AppendEntries in the leader's name, from a much later
// term, that would overwrite the follower's table with one route.
func (ft *followerTarget) forgedAppend(t *testing.T, id string) []byte {
	data, err := fsm.Encode(register(6666, "evil", "203.0.113.66", 6666))
	if err != nil {
		t.Fatal(err)
	}
	last := ft.follower.raft.LastIndex()
	term := ft.follower.raft.CurrentTerm()
	req := &raft.AppendEntriesRequest{
		RPCHeader:         raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(id), Addr: []byte("127.0.0.1:1")},
		Term:              term + 100,
		PrevLogEntry:      last,
		PrevLogTerm:       term,
		Entries:           []*raft.Log{{Index: last + 1, Term: term + 100, Type: raft.LogCommand, Data: data}},
		LeaderCommitIndex: last + 1,
	}
	return encodeRaftMessage(t, rpcAppendEntries, req)
}

// send writes msg on c and reads until the connection closes or answers.
func send(c net.Conn, msg []byte) {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	c.Write(msg)
	io.ReadAll(io.LimitReader(c, 1<<16))
	c.Close()
}

func (ft *followerTarget) unchanged(t *testing.T, term uint64, attack string) {
	t.Helper()
	time.Sleep(200 * time.Millisecond) // observation window for a change that must not come
	if got := ft.follower.raft.CurrentTerm(); got != term {
		t.Errorf("%s: the follower's term moved from %d to %d", attack, term, got)
	}
	if _, ok := ft.ffsm.State().Route(6666); ok {
		t.Errorf("%s: the forged route reached the follower's table", attack)
	}
}

// TestRaftRefusesUnauthenticatedAndMisnamedMessages sends a forged
// AppendEntries (a later term, a route of the attacker's) to a follower
// over every way in; only the last, sent by a certificate holder in its
// own name, is let through to raft (credentialed nodes are trusted),
// which shows the message itself would have worked.
func TestRaftRefusesUnauthenticatedAndMisnamedMessages(t *testing.T) {
	testenv.SkipShort(t, "forged raft messages against a three-node TLS cluster")
	ca := newTLSTestCA(t, "cluster CA")
	ft := newFollowerTarget(t, ca)
	term := ft.follower.raft.CurrentTerm()

	// Plain TCP.
	c, err := net.Dial("tcp", ft.addr)
	if err != nil {
		t.Fatal(err)
	}
	send(c, ft.forgedAppend(t, "n1"))
	ft.unchanged(t, term, "plain TCP")

	// TLS without a client certificate.
	if tc, err := tls.Dial("tcp", ft.addr, &tls.Config{InsecureSkipVerify: true}); err == nil {
		send(tc, ft.forgedAppend(t, "n1"))
	}
	ft.unchanged(t, term, "TLS without a certificate")

	// A certificate from another CA, naming the leader.
	other := newTLSTestCA(t, "other CA").raftTLS(t, "n1")
	if tc, err := tls.Dial("tcp", ft.addr, other); err == nil {
		send(tc, ft.forgedAppend(t, "n1"))
	}
	ft.unchanged(t, term, "another CA's certificate")

	// A valid certificate from the cluster CA for "mallory", sending in
	// the leader's name.
	mallory := ca.raftTLS(t, "mallory")
	tc, err := tls.Dial("tcp", ft.addr, mallory)
	if err != nil {
		t.Fatalf("mallory's handshake: %v", err)
	}
	send(tc, ft.forgedAppend(t, "n1"))
	ft.unchanged(t, term, "a valid certificate for another name")

	// A vote request from a much later term, in the leader's name with
	// mallory's certificate, and over plain TCP: a follower that granted
	// it, or merely saw the term, would depose the leader.
	vote := encodeRaftMessage(t, rpcRequestVote, &raft.RequestVoteRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("n1"), Addr: []byte("127.0.0.1:1")},
		Term:      term + 200, LastLogIndex: 1 << 40, LastLogTerm: term + 199,
	})
	if c, err := net.Dial("tcp", ft.addr); err == nil {
		send(c, vote)
	}
	if tc, err := tls.Dial("tcp", ft.addr, mallory); err == nil {
		send(tc, vote)
	}
	ft.unchanged(t, term, "a vote request in another node's name")

	// The cluster still works.
	applyOrFatal(t, ft.leader, register(8081, "api", "10.0.0.2", 30081))
	testenv.Eventually(t, 10*time.Second, "n2 to replicate after the attacks", func() bool {
		_, ok := ft.ffsm.State().Route(8081)
		return ok
	})

	// Control: the same message in mallory's own name passes the identity
	// check and raft takes its term (which is why only CA holders may
	// reach raft at all).
	tc, err = tls.Dial("tcp", ft.addr, mallory)
	if err != nil {
		t.Fatal(err)
	}
	send(tc, ft.forgedAppend(t, "mallory"))
	testenv.Eventually(t, 5*time.Second, "raft to see the control message", func() bool {
		return ft.follower.raft.CurrentTerm() > term
	})
	// Stop the leader first: its heartbeats in the new term must not reach
	// the follower while the follower's store closes.
	ft.leader.Shutdown()
}

// TestLeaderReplicatesOnlyToTheNamedServer: a server added at an address
// where another certificate holder listens receives nothing.
func TestLeaderReplicatesOnlyToTheNamedServer(t *testing.T) {
	testenv.SkipShort(t, "a TLS cluster and a server at the wrong address")
	ca := newTLSTestCA(t, "cluster CA")
	c1 := tlsTimings(fastConfig(t, t.TempDir()))
	c1.TLS = ca.raftTLS(t, "n1")
	n1, _ := startNode(t, c1)
	c2 := tlsTimings(joinerConfig(t, "n2"))
	c2.TLS = ca.raftTLS(t, "n2")
	startNode(t, c2)
	if err := addVoterTo(n1, c2); err != nil {
		t.Fatal(err)
	}
	cm := tlsTimings(joinerConfig(t, "mallory"))
	cm.TLS = ca.raftTLS(t, "mallory")
	mal, malFSM := startNode(t, cm)
	// "n3" is configured at mallory's address (as a lying gossip member
	// would have had it before identity checks).
	if err := n1.raft.AddVoter("n3", raft.ServerAddress(cm.BindAddr), 0, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	applyOrFatal(t, n1, register(8080, "web", "10.0.0.1", 30080))
	watch := time.Now().Add(3 * time.Second) // observation window: many heartbeats
	for time.Now().Before(watch) {
		if malFSM.State().Len() != 0 || mal.raft.LastIndex() != 0 {
			t.Fatal("mallory received the log of n3")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !mal.raft.LastContact().IsZero() {
		t.Error("mallory heard from the leader")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := n1.VerifyPeer(ctx, "n3", cm.BindAddr); err == nil {
		t.Error("VerifyPeer accepted mallory's certificate for n3")
	}
	if err := n1.VerifyPeer(ctx, "n2", c2.BindAddr); err != nil {
		t.Errorf("VerifyPeer of n2: %v", err)
	}
}

// tokenSink is an HTTPS server that records every token sent to it.
type tokenSink struct {
	srv    *httptest.Server
	mu     sync.Mutex
	tokens []string
}

func newTokenSink(t *testing.T, ca *tlsTestCA, name string) *tokenSink {
	s := &tokenSink{}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.tokens = append(s.tokens, r.Header.Get("Authorization"))
		s.mu.Unlock()
	}))
	if ca != nil {
		certPEM, keyPEM := ca.issue(t, name)
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
		s.srv.StartTLS()
	} else {
		s.srv.Start()
	}
	t.Cleanup(s.srv.Close)
	return s
}

func (s *tokenSink) got() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.tokens...)
}

// TestForwardingReachesOnlyTheLeader: a follower forwards a client's token
// only to the node raft names leader. A gossip member that points the
// leader's API address at its own server (with a valid certificate for
// another name, or none) never receives the token.
func TestForwardingReachesOnlyTheLeader(t *testing.T) {
	ca := newTLSTestCA(t, "cluster CA")
	ms := secureThree(t, ca)
	l := leaderOf(ms...)
	var f *testMember
	for _, m := range ms {
		if m != l {
			f = m
			break
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: f.cluster.ForwardTLS(pool)}}
	forward := func() error {
		base, self, err := f.cluster.LeaderAPI()
		if err != nil {
			return err
		}
		if self {
			t.Fatal("the follower thinks it leads")
		}
		req, _ := http.NewRequest(http.MethodPost, base+"/v1/routes", nil)
		req.Header.Set("Authorization", "Bearer client-secret-token")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	pointLeaderAt := func(url string) {
		l.api.Store(url)
		testenv.Eventually(t, 5*time.Second, "the follower to see the leader's new API address", func() bool {
			got, _, err := f.cluster.LeaderAPI()
			return (err == nil && got == url) || (err != nil && strings.Contains(err.Error(), "not forwarding"))
		})
	}

	// The real leader, with its own certificate, receives the request.
	real := newTokenSink(t, ca, l.name)
	pointLeaderAt(real.srv.URL)
	if err := forward(); err != nil {
		t.Fatalf("forward to the real leader: %v", err)
	}
	if len(real.got()) != 1 {
		t.Fatalf("the leader got %d requests, want 1", len(real.got()))
	}

	// A forged leader: gossip points the leader's API at a server with a
	// valid certificate from the cluster CA, for another name.
	forged := newTokenSink(t, ca, "mallory")
	pointLeaderAt(forged.srv.URL)
	if err := forward(); err == nil || !strings.Contains(err.Error(), "identity") {
		t.Errorf("forward to a server with another node's certificate: %v", err)
	}
	// A server with a certificate from another CA naming the leader.
	otherCA := newTokenSink(t, newTLSTestCA(t, "other CA"), l.name)
	pointLeaderAt(otherCA.srv.URL)
	if err := forward(); err == nil {
		t.Error("forward to a server with another CA's certificate succeeded")
	}
	// Plain HTTP on another host: gossip alone vouches for it.
	pointLeaderAt("http://192.0.2.10:9000")
	if err := forward(); err == nil || !strings.Contains(err.Error(), "not forwarding") {
		t.Errorf("forward to plain HTTP on another host: %v", err)
	}
	for _, s := range []*tokenSink{forged, otherCA} {
		if got := s.got(); len(got) != 0 {
			t.Errorf("a forged leader received %d requests: %q", len(got), got)
		}
	}
}
