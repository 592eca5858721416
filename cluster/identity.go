package cluster

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
)

// Identity on the raft port.
//
// A node's certificate names the node it may be (CertNodeName). With raft
// TLS on, that name is checked at every step where a node could pose as
// another:
//   - an accepted connection carries the name of its client certificate,
//     and every raft message on it must be sent in that name (the ID in
//     raft's RPC header); a message in another name closes the connection
//     before raft sees it;
//   - a dialed connection must reach a server whose certificate names a
//     server that raft's configuration has at that address;
//   - the leader adds (or re-points) a voter only after a handshake with the
//     address gossip announced proves the name (VerifyPeer);
//   - a node that leaves asks the leader, over such a connection, to remove
//     it (peer requests below), so gossip never removes a voter.

// CertNodeName is the node name a certificate vouches for: its subject
// common name (drawbridge tls cert create writes the node name there).
func CertNodeName(c *x509.Certificate) string { return c.Subject.CommonName }

// ErrIdentity means a peer's certificate does not name the node expected.
var ErrIdentity = errors.New("peer identity mismatch")

// VerifyPeerIdentity checks that the peer's leaf certificate chains to pool
// and names one of names. It is the check both ends of a raft connection
// run, and the one a follower runs on the leader's API before sending it a
// client's request.
func VerifyPeerIdentity(cs tls.ConnectionState, pool *x509.CertPool, names ...string) error {
	if err := verifyPeerChain(cs, pool); err != nil {
		return err
	}
	got := CertNodeName(cs.PeerCertificates[0])
	if !slices.Contains(names, got) {
		return fmt.Errorf("%w: the certificate names %q, want %q", ErrIdentity, got, names)
	}
	return nil
}

// peerRequestByte starts a drawbridge request on the raft port instead of
// a raft message (raft's message types are 0 to 4).
const peerRequestByte = 0xD0

// maxPeerMessage bounds a peer request or answer.
const maxPeerMessage = 4 << 10

// peerRequest is a request one node makes of another on the raft port, in
// the name its certificate proves.
type peerRequest struct {
	// Op is "leave": remove me from the voters (sent to the leader).
	Op string `json:"op"`
}

type peerAnswer struct {
	Error string `json:"error,omitempty"`
}

// admit runs the handshake of one accepted connection, learns the name its
// certificate proves, and hands it to raft with every message checked
// against that name, or serves a peer request on it. Anything else closes
// it. It runs in its own goroutine, so a slow or bad client holds up no one.
func (l *tlsStreamLayer) admit(c net.Conn) {
	if !l.track(c) {
		c.Close()
		return
	}
	defer l.untrack(c)
	tc := tls.Server(c, l.config)
	l.mu.Lock()
	timeout := l.handshakeTimeout
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		l.log.Warn("rejected raft connection", "remote", c.RemoteAddr().String(), "error", err)
		tc.Close()
		return
	}
	peer := CertNodeName(tc.ConnectionState().PeerCertificates[0])
	// A raft connection is dialed to send a message at once; a connection
	// that sends nothing (an identity probe) is closed after the deadline.
	tc.SetReadDeadline(time.Now().Add(timeout))
	br := bufio.NewReaderSize(tc, 64<<10)
	first, err := br.Peek(1)
	if err != nil {
		tc.Close()
		return
	}
	tc.SetReadDeadline(time.Time{})
	if first[0] == peerRequestByte {
		l.servePeerRequest(tc, br, peer)
		return
	}
	conn := newIdentityConn(tc, br, peer, l.log)
	select {
	case l.conns <- conn:
		// Raft owns it now; the layer closes it too when it closes.
		<-conn.done
	case <-l.closed:
		conn.Close()
	}
}

// servePeerRequest answers one peer request and closes the connection.
func (l *tlsStreamLayer) servePeerRequest(tc *tls.Conn, br *bufio.Reader, peer string) {
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(tlsHandshakeTimeout))
	br.ReadByte()
	var req peerRequest
	if err := json.NewDecoder(io.LimitReader(br, maxPeerMessage)).Decode(&req); err != nil {
		return
	}
	ans := peerAnswer{}
	handler := l.handler()
	if handler == nil {
		ans.Error = "this node is not ready"
	} else if err := handler(peer, req); err != nil {
		ans.Error = err.Error()
	}
	json.NewEncoder(tc).Encode(ans)
}

// identityConn is an accepted raft connection whose inbound messages are
// checked, one by one, against the name its certificate proves before raft
// reads them. A pump goroutine reads the TLS stream, decodes each message's
// header, and copies the message's bytes unchanged into a pipe that raft
// reads; writes go straight to the TLS connection.
type identityConn struct {
	*tls.Conn
	pr   *io.PipeReader
	once sync.Once
	// done is closed when the pump stops (the connection is finished).
	done chan struct{}
}

func newIdentityConn(tc *tls.Conn, br *bufio.Reader, peer string, log *slog.Logger) *identityConn {
	pr, pw := io.Pipe()
	c := &identityConn{Conn: tc, pr: pr, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		err := pumpRaftMessages(br, pw, peer)
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.ErrClosedPipe) {
			log.Warn("refused raft connection", "remote", tc.RemoteAddr().String(), "certificate", peer, "error", err)
		}
		pw.CloseWithError(err)
		if err != nil {
			tc.Close()
		}
	}()
	return c
}

// Read reads checked raft messages.
func (c *identityConn) Read(p []byte) (int, error) { return c.pr.Read(p) }

// Close closes the TLS connection and the pipe.
func (c *identityConn) Close() error {
	var err error
	c.once.Do(func() {
		err = c.Conn.Close()
		c.pr.Close()
	})
	return err
}

// rpcHead is the part of every raft request the check needs: the sender's
// header (inlined in the encoding, as raft embeds it) and, for a snapshot,
// the size of the data that follows the message.
type rpcHead struct {
	raft.RPCHeader
	Size int64
}

// Raft's message types (raft's net_transport.go).
const (
	rpcAppendEntries uint8 = iota
	rpcRequestVote
	rpcInstallSnapshot
	rpcTimeoutNow
	rpcRequestPreVote
)

// recordingReader reads from r and keeps a copy of what it read.
type recordingReader struct {
	r   *bufio.Reader
	buf []byte
}

func (rr *recordingReader) Read(p []byte) (int, error) {
	n, err := rr.r.Read(p)
	rr.buf = append(rr.buf, p[:n]...)
	return n, err
}

func (rr *recordingReader) ReadByte() (byte, error) {
	b, err := rr.r.ReadByte()
	if err == nil {
		rr.buf = append(rr.buf, b)
	}
	return b, err
}

func (rr *recordingReader) UnreadByte() error {
	if err := rr.r.UnreadByte(); err != nil {
		return err
	}
	rr.buf = rr.buf[:len(rr.buf)-1]
	return nil
}

// pumpRaftMessages copies raft messages from br to w while each is sent in
// peer's name. It returns the first error: a read or write failure, a
// message it cannot decode, or one sent in another name.
func pumpRaftMessages(br *bufio.Reader, w io.Writer, peer string) error {
	rec := &recordingReader{r: br}
	dec := codec.NewDecoder(rec, &codec.MsgpackHandle{})
	for {
		t, err := br.ReadByte()
		if err != nil {
			return err
		}
		if t > rpcRequestPreVote {
			return fmt.Errorf("unknown raft message type %d", t)
		}
		rec.buf = append(rec.buf[:0], t)
		var head rpcHead
		if err := dec.Decode(&head); err != nil {
			return fmt.Errorf("decode raft message: %w", err)
		}
		if id := string(head.ID); id != peer {
			return fmt.Errorf("%w: a raft message in the name of %q on a connection whose certificate names %q", ErrIdentity, id, peer)
		}
		if _, err := w.Write(rec.buf); err != nil {
			return err
		}
		if t == rpcInstallSnapshot {
			if head.Size < 0 {
				return fmt.Errorf("snapshot of negative size %d", head.Size)
			}
			if _, err := io.CopyN(w, br, head.Size); err != nil {
				return err
			}
		}
		if cap(rec.buf) > 1<<20 {
			rec.buf = nil // do not keep a large message's buffer alive
		}
	}
}

// dialPeer connects to address and completes a handshake that proves the
// server holds a certificate from the CA (the config's own check) naming
// one of names.
func (l *tlsStreamLayer) dialPeer(ctx context.Context, address string, names []string) (*tls.Conn, error) {
	cfg := l.config.Clone()
	chain := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if chain != nil {
			if err := chain(cs); err != nil {
				return err
			}
		}
		if len(cs.PeerCertificates) == 0 {
			return errors.New("raft tls: peer presented no certificate")
		}
		if got := CertNodeName(cs.PeerCertificates[0]); !slices.Contains(names, got) {
			return fmt.Errorf("%w: the server at %s has a certificate for %q, want %q", ErrIdentity, address, got, names)
		}
		return nil
	}
	if cfg.ServerName == "" && !cfg.InsecureSkipVerify {
		// A config with standard verification checks the peer's name;
		// peers are dialed by IP, so verify against that.
		host, _, err := net.SplitHostPort(address)
		if err != nil {
			return nil, fmt.Errorf("raft tls: peer address %q: %w", address, err)
		}
		cfg.ServerName = host
	}
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: cfg}
	c, err := d.DialContext(ctx, "tcp", address)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	return c.(*tls.Conn), nil
}

// VerifyPeer proves that the node listening on the raft address addr holds
// a certificate from the cluster CA naming name. Without raft TLS there is
// nothing to prove with and it returns nil: the cluster runs insecure.
func (n *Node) VerifyPeer(ctx context.Context, name, addr string) error {
	if n.layer == nil {
		return nil
	}
	c, err := n.layer.dialPeer(ctx, addr, []string{name})
	if err != nil {
		return err
	}
	return c.Close()
}

// Secure reports whether raft runs mutual TLS with identity checks.
func (n *Node) Secure() bool { return n.layer != nil }

// askLeader sends a peer request to the leader over a connection that
// proves both names, and returns the leader's answer.
func (n *Node) askLeader(ctx context.Context, req peerRequest) error {
	addr, id := n.raft.LeaderWithID()
	if addr == "" {
		return ErrNoLeader
	}
	c, err := n.layer.dialPeer(ctx, string(addr), []string{string(id)})
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	b, _ := json.Marshal(req)
	if _, err := c.Write(append([]byte{peerRequestByte}, append(b, '\n')...)); err != nil {
		return err
	}
	var ans peerAnswer
	if err := json.NewDecoder(io.LimitReader(c, maxPeerMessage)).Decode(&ans); err != nil {
		return fmt.Errorf("read the leader's answer: %w", err)
	}
	if ans.Error != "" {
		return errors.New(ans.Error)
	}
	return nil
}

// handlePeerRequest serves a request from the node named peer (proven by
// its certificate).
func (n *Node) handlePeerRequest(peer string, req peerRequest) error {
	switch req.Op {
	case "leave":
		if !n.IsLeader() {
			return fmt.Errorf("%s is not the leader", n.cfg.NodeID)
		}
		if peer == n.cfg.NodeID {
			return errors.New("the leader cannot remove itself this way")
		}
		n.log.Info("removing voter at its own request", "member", peer)
		return n.RemovePeer(peer)
	}
	return fmt.Errorf("unknown request %q", req.Op)
}

// LeaveVoters asks the leader to remove this node from the voters, in the
// name its certificate proves. Without raft TLS it does nothing (the
// leader then trusts gossip's word that this node left). The leader
// cannot remove itself: it hands leadership over first (Cluster.Leave).
func (n *Node) LeaveVoters(ctx context.Context) error {
	if n.layer == nil {
		return nil
	}
	if n.IsLeader() {
		return errors.New("this node leads: it must hand leadership over before it leaves the voters")
	}
	return n.askLeader(ctx, peerRequest{Op: "leave"})
}

// ErrNotVoter means remove-peer named a server raft does not know.
var ErrNotVoter = errors.New("no such raft server")

// RemovePeer removes the named server from the raft configuration. It runs
// on the leader only (ErrNotLeader otherwise).
func (n *Node) RemovePeer(name string) error {
	if err := n.checkLeader(); err != nil {
		return err
	}
	fut := n.raft.GetConfiguration()
	if err := fut.Error(); err != nil {
		return n.translate(err)
	}
	found := false
	for _, s := range fut.Configuration().Servers {
		if string(s.ID) == name {
			found = true
		}
	}
	if !found {
		return fmt.Errorf("%w: %q", ErrNotVoter, name)
	}
	if name == n.cfg.NodeID {
		return errors.New("the leader cannot remove itself: stop it (it hands leadership over) or remove it from another node once another leads")
	}
	// Gossip may still show the member alive for a while (a graceful
	// leave, a node just killed): the reconciler must not add it straight
	// back. It may join again once gossip has seen it gone.
	n.mu.Lock()
	if n.departed == nil {
		n.departed = map[string]bool{}
	}
	n.departed[name] = true
	n.mu.Unlock()
	return n.translateOrNil(n.raft.RemoveServer(raft.ServerID(name), 0, n.cfg.ApplyTimeout).Error())
}

// serversAt returns the IDs raft's configuration has at address.
func (n *Node) serversAt(address string) []string {
	r := n.raftPtr.Load()
	if r == nil {
		return nil
	}
	var out []string
	for _, s := range r.GetConfiguration().Configuration().Servers {
		if string(s.Address) == address {
			out = append(out, string(s.ID))
		}
	}
	return out
}

// departing reports whether name asked to leave and gossip has not yet
// shown it gone; seenGone clears that once gossip does.
func (n *Node) departing(name string, seenGone bool) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if seenGone {
		delete(n.departed, name)
		return false
	}
	return n.departed[name]
}
