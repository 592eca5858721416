package cluster

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"

	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// tlsTestCA is a throwaway certificate authority for raft TLS tests.
type tlsTestCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

var tlsTestSerial struct {
	sync.Mutex
	n int64
}

func nextTLSTestSerial() *big.Int {
	tlsTestSerial.Lock()
	defer tlsTestSerial.Unlock()
	tlsTestSerial.n++
	return big.NewInt(tlsTestSerial.n)
}

func newTLSTestCA(t testing.TB, name string) *tlsTestCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextTLSTestSerial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &tlsTestCA{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a PEM certificate and key for a node reachable at
// 127.0.0.1, usable as both TLS server and client.
func (ca *tlsTestCA) issue(t testing.TB, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: nextTLSTestSerial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// writeTLSFiles writes the CA and a fresh certificate for cn into dir.
func (ca *tlsTestCA) writeTLSFiles(t testing.TB, dir, cn string) TLSFiles {
	t.Helper()
	certPEM, keyPEM := ca.issue(t, cn)
	f := TLSFiles{
		CAFile:   filepath.Join(dir, "ca.pem"),
		CertFile: filepath.Join(dir, cn+".pem"),
		KeyFile:  filepath.Join(dir, cn+"-key.pem"),
	}
	writePEMFile(t, f.CAFile, ca.certPEM)
	writePEMFile(t, f.CertFile, certPEM)
	writePEMFile(t, f.KeyFile, keyPEM)
	return f
}

func writePEMFile(t testing.TB, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// raftTLS loads a node's TLS config signed by ca.
func (ca *tlsTestCA) raftTLS(t testing.TB, cn string) *tls.Config {
	t.Helper()
	cfg, err := LoadRaftTLS(ca.writeTLSFiles(t, t.TempDir(), cn))
	if err != nil {
		t.Fatalf("load raft tls for %s: %v", cn, err)
	}
	return cfg
}

// joinerConfig is a non-bootstrapping node config with fast timings.
func joinerConfig(t testing.TB, id string) Config {
	cfg := fastConfig(t, t.TempDir())
	cfg.NodeID = id
	cfg.Bootstrap = false
	return cfg
}

func addVoterTo(leader *Node, cfg Config) error {
	return leader.raft.AddVoter(raft.ServerID(cfg.NodeID), raft.ServerAddress(cfg.BindAddr), 0, 5*time.Second).Error()
}

func applyOrFatal(t testing.TB, n *Node, cmd fsm.Command) {
	t.Helper()
	res, err := n.Apply(context.Background(), cmd)
	if err == nil {
		err = res.Err
	}
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
}

func TestTLSClusterReplicatesAndRejectsNodesWithoutAValidCertificate(t *testing.T) {
	testenv.SkipShort(t, "a TLS cluster and nodes without valid certificates")
	ca := newTLSTestCA(t, "drawbridge test CA")
	pair := newFollowerTarget(t, ca)
	n1, f1, f2 := pair.leader, pair.lfsm, pair.ffsm

	strangers := []struct {
		name string
		tls  *tls.Config
	}{
		{"certificate from another CA", newTLSTestCA(t, "someone else's CA").raftTLS(t, "stranger")},
		{"plain TCP", nil},
	}
	for i, s := range strangers {
		t.Run(s.name, func(t *testing.T) {
			cfg := tlsTimings(joinerConfig(t, "stranger"))
			cfg.TLS = s.tls
			bad, badFSM := startNode(t, cfg)
			// n1 and n2 are a majority of the three voters, so adding the
			// stranger commits; replicating to it must fail.
			if err := addVoterTo(n1, cfg); err != nil {
				t.Fatalf("add voter: %v", err)
			}
			port := 9100 + i
			applyOrFatal(t, n1, register(port, "after", "10.0.0.2", 30081))
			testenv.Eventually(t, 10*time.Second, "n2 to replicate", func() bool {
				_, ok := f2.State().Route(port)
				return ok
			})
			// The leader retries replication to the stranger every few
			// heartbeats; over many heartbeat intervals it never gets in.
			watch := time.Now().Add(3 * time.Second) // observation window: many heartbeats
			for time.Now().Before(watch) {
				if got := badFSM.State().Len(); got != 0 {
					t.Fatalf("stranger has %d routes; it must not replicate", got)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if idx := bad.raft.LastIndex(); idx != 0 {
				t.Errorf("stranger has raft log up to %d, want none", idx)
			}
			if lc := bad.raft.LastContact(); !lc.IsZero() {
				t.Errorf("stranger heard from a leader at %s", lc)
			}
			if err := n1.raft.RemoveServer(raft.ServerID(cfg.NodeID), 0, 5*time.Second).Error(); err != nil {
				t.Fatalf("remove stranger: %v", err)
			}
		})
	}

	// The cluster is unharmed.
	applyOrFatal(t, n1, register(8081, "api", "10.0.0.3", 30082))
	testenv.Eventually(t, 10*time.Second, "n2 to converge", func() bool { return f2.State().Hash() == f1.State().Hash() })
}

// encodeRaftMessage returns a raft message as raft's transport sends it:
// its type byte, then the msgpack-encoded request.
func encodeRaftMessage(t testing.TB, typ uint8, req any) []byte {
	t.Helper()
	var buf bytes.Buffer
	buf.WriteByte(typ)
	if err := codec.NewEncoder(&buf, &codec.MsgpackHandle{}).Encode(req); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestTLSStreamLayerBadClientsDoNotBlockOthers checks that connections
// which stall or fail the handshake neither block the accept loop nor
// reach the caller, and that the handshake has a deadline.
func TestTLSStreamLayerBadClientsDoNotBlockOthers(t *testing.T) {
	ca := newTLSTestCA(t, "drawbridge test CA")
	srv, err := newTLSStreamLayer("127.0.0.1:0", nil, ca.raftTLS(t, "server"), testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	srv.mu.Lock()
	srv.handshakeTimeout = 300 * time.Millisecond
	srv.mu.Unlock()
	t.Cleanup(func() { srv.Close() })

	// Serve like raft's transport: accept in a loop, one goroutine per
	// connection, echoing until the connection fails.
	go func() {
		for {
			c, err := srv.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	addr := raft.ServerAddress(srv.Addr().String())

	silent, err := net.Dial("tcp", string(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	garbage, err := net.Dial("tcp", string(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer garbage.Close()
	if _, err := garbage.Write([]byte("GET / HTTP/1.0\r\n\n")); err != nil {
		t.Fatal(err)
	}

	msg := encodeRaftMessage(t, rpcAppendEntries, &raft.AppendEntriesRequest{
		RPCHeader: raft.RPCHeader{ID: []byte("client"), Addr: []byte("127.0.0.1:1")}, Term: 1,
	})
	echo := func(c net.Conn) error {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write(msg); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if !bytes.Equal(buf, msg) {
			t.Errorf("echo returned %q", buf)
		}
		return nil
	}

	// A peer with a certificate from the CA gets through while the silent
	// connection is still handshaking.
	good, err := newTLSStreamLayer("127.0.0.1:0", nil, ca.raftTLS(t, "client"), testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	good.setIdentity(func(string) []string { return []string{"server"} }, nil)
	c, err := good.Dial(addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial with a valid certificate: %v", err)
	}
	if err := echo(c); err != nil {
		t.Fatalf("echo with a valid certificate: %v", err)
	}
	c.Close()

	// A peer with another CA's certificate does not accept the server.
	other, err := newTLSStreamLayer("127.0.0.1:0", nil, newTLSTestCA(t, "other CA").raftTLS(t, "client"), testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	other.setIdentity(func(string) []string { return []string{"server"} }, nil)
	if c, err := other.Dial(addr, 2*time.Second); err == nil {
		c.Close()
		t.Fatal("dial verified a server certificate from another CA")
	}

	// A client that trusts anything but has no certificate is refused by
	// the server (in TLS 1.3 the client learns it on its first read).
	noCert := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}
	if c, err := tls.Dial("tcp", string(addr), noCert); err == nil {
		if err := echo(c); err == nil {
			t.Error("a client without a certificate got an echo")
		}
		c.Close()
	}

	// The silent connection runs into the handshake deadline: the server
	// closes it.
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the silent connection was not closed by the handshake deadline: %v", err)
	}
}

func TestLoadRaftTLS(t *testing.T) {
	ca := newTLSTestCA(t, "drawbridge test CA")
	dir := t.TempDir()
	good := ca.writeTLSFiles(t, dir, "n1")
	_, otherKey := ca.issue(t, "n2")
	writePEMFile(t, filepath.Join(dir, "other-key.pem"), otherKey)
	writePEMFile(t, filepath.Join(dir, "garbage.pem"), []byte("not a certificate\n"))
	foreignCert, foreignKey := newTLSTestCA(t, "other CA").issue(t, "n1")
	writePEMFile(t, filepath.Join(dir, "foreign.pem"), foreignCert)
	writePEMFile(t, filepath.Join(dir, "foreign-key.pem"), foreignKey)

	with := func(mod func(*TLSFiles)) TLSFiles {
		f := good
		mod(&f)
		return f
	}
	for _, tc := range []struct {
		name  string
		files TLSFiles
		want  string // substring of the error; "" means success
	}{
		{"valid", good, ""},
		{"CA file not set", with(func(f *TLSFiles) { f.CAFile = "" }), "CA file is not set"},
		{"key file not set", with(func(f *TLSFiles) { f.KeyFile = "" }), "key file is not set"},
		{"missing CA file", with(func(f *TLSFiles) { f.CAFile = filepath.Join(dir, "nope.pem") }), "no such file"},
		{"missing certificate", with(func(f *TLSFiles) { f.CertFile = filepath.Join(dir, "nope.pem") }), "no such file"},
		{"key does not match certificate", with(func(f *TLSFiles) { f.KeyFile = filepath.Join(dir, "other-key.pem") }), "private key does not match"},
		{"CA file without certificates", with(func(f *TLSFiles) { f.CAFile = filepath.Join(dir, "garbage.pem") }), "holds no PEM certificate"},
		{"certificate from another CA", with(func(f *TLSFiles) {
			f.CertFile, f.KeyFile = filepath.Join(dir, "foreign.pem"), filepath.Join(dir, "foreign-key.pem")
		}), "does not verify against CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := LoadRaftTLS(tc.files)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if cfg.MinVersion != tls.VersionTLS12 || cfg.ClientAuth != tls.RequireAndVerifyClientCert {
					t.Errorf("min version %x, client auth %v", cfg.MinVersion, cfg.ClientAuth)
				}
				if cfg.InsecureSkipVerify && cfg.VerifyConnection == nil {
					t.Error("InsecureSkipVerify without custom verification")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestRaftTLSReloadsRotatedCertificate(t *testing.T) {
	ca := newTLSTestCA(t, "drawbridge test CA")
	files := ca.writeTLSFiles(t, t.TempDir(), "n1")
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	cfg, err := loadRaftTLS(files, clock)
	if err != nil {
		t.Fatal(err)
	}
	serial := func() string {
		t.Helper()
		c, err := cfg.GetCertificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		return c.Leaf.SerialNumber.String()
	}
	first := serial()

	// Rotate non-atomically: the certificate lands before its key. Bump
	// the modification times so the change shows on any file system.
	newCert, newKey := ca.issue(t, "n1")
	writePEMFile(t, files.CertFile, newCert)
	touch := now.Add(time.Minute)
	if err := os.Chtimes(files.CertFile, touch, touch); err != nil {
		t.Fatal(err)
	}
	if got := serial(); got != first {
		t.Fatalf("reloaded before the check interval: %s", got)
	}
	advance(tlsReloadInterval)
	if got := serial(); got != first {
		t.Fatalf("half-rotated files replaced the certificate: %s", got)
	}

	writePEMFile(t, files.KeyFile, newKey)
	if err := os.Chtimes(files.KeyFile, touch, touch); err != nil {
		t.Fatal(err)
	}
	advance(tlsReloadInterval)
	second := serial()
	if second == first {
		t.Fatal("rotated certificate was not picked up")
	}
	c, err := cfg.GetClientCertificate(nil)
	if err != nil || c.Leaf.SerialNumber.String() != second {
		t.Fatalf("client side certificate not rotated: %v", err)
	}
}
