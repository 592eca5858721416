package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/drawbridge-lb/drawbridge/internal/tlsutil"
)

// Mutual TLS for the raft transport.
//
// Every raft peer is both a server (it accepts AppendEntries, votes, snapshot
// installs) and a client (it sends them), so one *tls.Config serves both
// sides: each side presents its node certificate and requires the other's to
// chain to the cluster CA. A peer without such a certificate can neither
// replicate from nor vote in the cluster.
//
// Peers dial each other by IP:port (the raft server address), and node
// certificates are issued per node, often without the address in them. So
// the check is "signed by our CA, for the node we expect" (its common name,
// see identity.go), not "issued for this host name": the client side turns
// off the standard library's verification (InsecureSkipVerify) and does the
// chain check itself in VerifyConnection, against the same CA pool, with no
// host name; the stream layer adds the node-name check on every dial and
// every message. InsecureSkipVerify is never set without that custom
// verification.

const (
	// tlsReloadInterval is how often, at most, the certificate, key and CA
	// files are checked for changes (by modification time and size).
	tlsReloadInterval = 5 * time.Second
	// tlsHandshakeTimeout bounds the TLS handshake of one raft connection, so
	// a peer that connects and stalls holds nothing but its own goroutine.
	tlsHandshakeTimeout = 10 * time.Second
)

// TLSFiles names the PEM files for raft mutual TLS. All three are required.
type TLSFiles struct {
	// CAFile holds the certificate(s) of the CA that signs every node's
	// certificate. Only peers with a certificate chaining to it may connect.
	CAFile string
	// CertFile is this node's certificate, optionally followed by
	// intermediates. It is presented both when accepting and when dialing,
	// so it should allow both server and client authentication (or carry no
	// extended key usage at all).
	CertFile string
	// KeyFile is the private key of CertFile.
	KeyFile string
}

// LoadRaftTLS loads the CA, certificate and key named by f and returns a
// config for both ends of a raft connection: the accepting side requires a
// client certificate signed by the CA; the dialing side verifies the peer's
// certificate against the CA without a host name check (see the note at
// the top of this file) and presents its own. TLS 1.2 is the minimum; Go
// negotiates 1.3 whenever both ends support it. Set the result as
// Config.TLS.
//
// The files are read now, and again when their modification time or size
// changes (checked at most every few seconds, on the next handshake), so
// certificates can be rotated without a restart. A rotation that leaves the
// files inconsistent (a key that does not match the certificate, a CA that
// did not sign it) keeps the previous material in use and is retried at the
// next check.
func LoadRaftTLS(f TLSFiles) (*tls.Config, error) {
	return loadRaftTLS(f, time.Now)
}

// loadRaftTLS is LoadRaftTLS with the reload clock injected for tests.
func loadRaftTLS(f TLSFiles, now func() time.Time) (*tls.Config, error) {
	r := &tlsReloader{files: f, now: now}
	if err := r.load(); err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Accepting side.
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  r.current().pool,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return r.current().cert, nil
		},
		// Dialing side. The chain check moved to VerifyConnection, which runs
		// on both sides; see the note at the top of this file on why there
		// is no host name. RootCAs is unused while InsecureSkipVerify is set
		// and only keeps the config self-describing.
		RootCAs:            r.current().pool,
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return r.current().cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyPeerChain(cs, r.current().pool)
		},
	}
	// Hand every accepted handshake the current CA pool, so a rotated CA
	// applies to the accepting side's standard verification too.
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := cfg.Clone()
		c.ClientCAs = r.current().pool
		return c, nil
	}
	return cfg, nil
}

// verifyPeerChain checks that the peer's leaf certificate chains to pool,
// with any intermediates the peer sent, for any key usage and no host name.
func verifyPeerChain(cs tls.ConnectionState, pool *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("raft tls: peer presented no certificate")
	}
	opts := x509.VerifyOptions{
		Roots:         pool,
		Intermediates: x509.NewCertPool(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
		return fmt.Errorf("raft tls: peer certificate %q is not signed by the cluster CA: %w",
			cs.PeerCertificates[0].Subject.CommonName, err)
	}
	return nil
}

// check reports a missing file name.
func (f TLSFiles) check() error {
	switch {
	case f.CAFile == "":
		return errors.New("raft tls: CA file is not set")
	case f.CertFile == "":
		return errors.New("raft tls: certificate file is not set")
	case f.KeyFile == "":
		return errors.New("raft tls: key file is not set")
	}
	return nil
}

// tlsMaterial is one consistent set of loaded files.
type tlsMaterial struct {
	cert  *tls.Certificate
	pool  *x509.CertPool
	stamp [3]fileStamp // CA, cert, key, as they were when read
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// tlsReloader holds the current material and reloads it from disk when the
// files change, at most once per tlsReloadInterval.
type tlsReloader struct {
	files TLSFiles
	now   func() time.Time

	mu        sync.Mutex
	mat       *tlsMaterial
	lastCheck time.Time
}

// current returns the material to use for a handshake, reloading it first
// when the check interval has passed and the files changed.
func (r *tlsReloader) current() *tlsMaterial {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := r.now(); now.Sub(r.lastCheck) >= tlsReloadInterval {
		r.lastCheck = now
		if st, err := r.stamps(); err == nil && st != r.mat.stamp {
			// On error the old material stays; the next check retries.
			if mat, err := loadTLSMaterial(r.files); err == nil {
				mat.stamp = st
				r.mat = mat
			}
		}
	}
	return r.mat
}

// load reads the files for the first time; any problem is an error.
func (r *tlsReloader) load() error {
	if err := r.files.check(); err != nil {
		return err
	}
	st, err := r.stamps()
	if err != nil {
		return err
	}
	mat, err := loadTLSMaterial(r.files)
	if err != nil {
		return err
	}
	mat.stamp = st
	r.mu.Lock()
	r.mat, r.lastCheck = mat, r.now()
	r.mu.Unlock()
	return nil
}

func (r *tlsReloader) stamps() ([3]fileStamp, error) {
	var st [3]fileStamp
	for i, name := range []string{r.files.CAFile, r.files.CertFile, r.files.KeyFile} {
		fi, err := os.Stat(name)
		if err != nil {
			return st, fmt.Errorf("raft tls: %w", err)
		}
		st[i] = fileStamp{mod: fi.ModTime(), size: fi.Size()}
	}
	return st, nil
}

// loadTLSMaterial reads and cross-checks the three files: the key matches
// the certificate and the certificate chains to the CA, so a misconfigured
// node fails at start rather than at its first handshake.
func loadTLSMaterial(f TLSFiles) (*tlsMaterial, error) {
	pool, err := tlsutil.CAPool(f.CAFile)
	if err != nil {
		return nil, fmt.Errorf("raft tls: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("raft tls: load certificate %s and key %s: %w", f.CertFile, f.KeyFile, err)
	}
	leaf := cert.Leaf
	if leaf == nil { // LoadX509KeyPair fills Leaf since Go 1.23; be safe.
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("raft tls: parse certificate %s: %w", f.CertFile, err)
		}
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("raft tls: parse intermediate in %s: %w", f.CertFile, err)
		}
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("raft tls: certificate %s does not verify against CA %s: %w", f.CertFile, f.CAFile, err)
	}
	return &tlsMaterial{cert: &cert, pool: pool}, nil
}

// tlsStreamLayer is a raft.StreamLayer over TLS. Accept never handshakes:
// a goroutine per inbound connection runs the handshake, bounded by a
// deadline, and hands raft only connections that passed it (see admit in
// identity.go), so one slow or bad client never holds up the accept loop or
// other peers.
type tlsStreamLayer struct {
	ln               net.Listener
	advertise        net.Addr
	config           *tls.Config
	handshakeTimeout time.Duration
	log              *slog.Logger

	conns     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once

	mu sync.Mutex
	// expect returns the names raft's configuration has at an address:
	// a dialed server must prove one of them. Nil until raft runs; until
	// then nothing is dialed.
	expect func(address string) []string
	// onRequest serves peer requests (nil: "not ready").
	onRequest func(peer string, req peerRequest) error
	// open holds the accepted connections, closed with the layer so no
	// message reaches raft after its transport closed.
	open map[net.Conn]struct{}
}

var _ raft.StreamLayer = (*tlsStreamLayer)(nil)

// newTLSStreamLayer listens on bindAddr. config is used for both accepted
// and dialed connections (LoadRaftTLS builds one that fits).
func newTLSStreamLayer(bindAddr string, advertise net.Addr, config *tls.Config, logger *slog.Logger) (*tlsStreamLayer, error) {
	if config == nil {
		return nil, errors.New("raft tls: no TLS config")
	}
	ln, err := net.Listen("tcp", bindAddr)
	if err != nil {
		return nil, err
	}
	if advertise == nil {
		advertise = ln.Addr()
	}
	l := &tlsStreamLayer{
		ln:               ln,
		advertise:        advertise,
		config:           config.Clone(),
		handshakeTimeout: tlsHandshakeTimeout,
		log:              logger,
		conns:            make(chan net.Conn),
		closed:           make(chan struct{}),
		open:             map[net.Conn]struct{}{},
	}
	go l.acceptLoop()
	return l, nil
}

// newTLSTransport builds a raft transport whose connections all use mutual
// TLS with config. It listens on bindAddr and tells peers advertise.
func newTLSTransport(layer *tlsStreamLayer, hlog hclog.Logger) *raft.NetworkTransport {
	c := transportConfig(hlog)
	c.Stream = layer
	return raft.NewNetworkTransportWithConfig(c)
}

// transportConfig is the raft transport's configuration, with or without
// TLS. Pipelined replication is off (MaxRPCsInFlight 1): in hashicorp/raft
// 1.7 a follower's refusal (Success=false) can wedge the pipeline's two
// goroutines on its unbuffered channels, and the leader then heartbeats
// that follower forever without sending it another entry, so its HAProxy
// stops following the table until the leader restarts (hashicorp/raft
// issue 612). Synchronous replication still batches entries. It once
// cost 15-20 % of peak writes per second in our three-node benchmark; on
// 2026-12-02 a build with pipelining back on (behind a wrapper that kept
// draining the pipeline's answers, so it could not wedge) was no faster
// than this, within the benchmark's noise (README, "Write throughput on
// three nodes").
func transportConfig(hlog hclog.Logger) *raft.NetworkTransportConfig {
	return &raft.NetworkTransportConfig{
		MaxPool:         3,
		Timeout:         10 * time.Second,
		Logger:          hlog,
		MaxRPCsInFlight: 1,
	}
}

func (l *tlsStreamLayer) acceptLoop() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-l.closed:
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		go l.admit(c)
	}
}

// setIdentity installs the lookups that need raft running.
func (l *tlsStreamLayer) setIdentity(expect func(string) []string, onRequest func(string, peerRequest) error) {
	l.mu.Lock()
	l.expect, l.onRequest = expect, onRequest
	l.mu.Unlock()
}

func (l *tlsStreamLayer) handler() func(string, peerRequest) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.onRequest
}

// Accept returns the next inbound connection that proved its certificate.
func (l *tlsStreamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close stops accepting connections.
func (l *tlsStreamLayer) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	err := l.ln.Close()
	l.mu.Lock()
	open := l.open
	l.open = map[net.Conn]struct{}{}
	l.mu.Unlock()
	for c := range open {
		c.Close()
	}
	return err
}

// track records an accepted connection until it closes; false means the
// layer is closed.
func (l *tlsStreamLayer) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.closed:
		return false
	default:
	}
	l.open[c] = struct{}{}
	return true
}

func (l *tlsStreamLayer) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.open, c)
	l.mu.Unlock()
}

// Addr is the address peers dial (the advertise address).
func (l *tlsStreamLayer) Addr() net.Addr { return l.advertise }

// Dial connects to a peer raft's configuration has at address, and
// completes a handshake in which the peer proves one of the names the
// configuration gives that address.
func (l *tlsStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	l.mu.Lock()
	expect := l.expect
	l.mu.Unlock()
	var names []string
	if expect != nil {
		names = expect(string(address))
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("raft tls: no server in the raft configuration at %s", address)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return l.dialPeer(ctx, string(address), names)
}
