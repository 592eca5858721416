package pki

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCreateCAAndNodeCert(t *testing.T) {
	dir := t.TempDir()
	caCert, caKey, err := CreateCA(dir, CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := CreateCA(dir, CAOptions{}); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second CreateCA: %v", err)
	}
	out := filepath.Join(dir, "certs")
	certFile, keyFile, err := CreateNodeCert(dir, out, CertOptions{Node: "edge-1", IPs: []net.IP{net.ParseIP("10.0.0.5")}, DNSNames: []string{"edge-1.example.net"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{caCert, caKey, certFile, keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	leaf := pair.Leaf
	if leaf.Subject.CommonName != "edge-1" {
		t.Errorf("common name %q, want the node name", leaf.Subject.CommonName)
	}
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(caCert)
	pool.AppendCertsFromPEM(caPEM)
	for _, host := range []string{"10.0.0.5", "127.0.0.1", "edge-1.example.net", "edge-1", "localhost"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("verify for %s: %v", host, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("verify as a client: %v", err)
	}
	if _, _, err := CreateNodeCert(dir, out, CertOptions{Node: "edge-1"}); err == nil {
		t.Error("a second certificate overwrote the first")
	}
	for _, bad := range []string{"", "../x", "a b", "-x", strings.Repeat("a", 64)} {
		if _, _, err := CreateNodeCert(dir, out, CertOptions{Node: bad}); err == nil {
			t.Errorf("node name %q accepted", bad)
		}
	}
	if _, _, err := CreateNodeCert(t.TempDir(), out, CertOptions{Node: "x"}); err == nil {
		t.Error("signed without a CA")
	}
}
