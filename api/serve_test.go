package api_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// writeCertPair writes a fresh self-signed certificate for 127.0.0.1 with
// common name cn, replacing the files the way certbot does (write aside,
// rename over). It returns the certificate.
func writeCertPair(t *testing.T, certFile, keyFile, cn string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	replaceFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	replaceFile(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	return cert
}

func replaceFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// serve runs the API on a loopback listener until the test ends, and checks
// that Serve returns nil after a graceful shutdown.
func serve(t *testing.T, e *env) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.server.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve after shutdown: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after its context ended")
		}
	})
	return l.Addr().String()
}

// peerCommonName opens a new TLS connection and returns the server
// certificate's common name. The pool trusts both test certificates, so the
// chain is verified for real.
func peerCommonName(t *testing.T, addr string, roots *x509.CertPool) string {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("tls dial: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
}

func TestServeTLSReloadsCertificate(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "fullchain.pem"), filepath.Join(dir, "privkey.pem")
	first := writeCertPair(t, certFile, keyFile, "first")
	e := newEnv(t, func(c *api.Config) { c.TLSCertFile, c.TLSKeyFile = certFile, keyFile })
	addr := serve(t, e)

	roots := x509.NewCertPool()
	roots.AddCert(first)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	t.Cleanup(client.CloseIdleConnections)
	resp, err := client.Get("https://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("https healthz: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok\n" {
		t.Fatalf("https healthz: %d %q", resp.StatusCode, body)
	}
	if cn := peerCommonName(t, addr, roots); cn != "first" {
		t.Fatalf("serving %q, want first", cn)
	}

	roots.AddCert(writeCertPair(t, certFile, keyFile, "second"))
	deadline := time.Now().Add(10 * time.Second)
	for cn := peerCommonName(t, addr, roots); cn != "second"; cn = peerCommonName(t, addr, roots) {
		if time.Now().After(deadline) {
			t.Fatalf("still serving %q after the files were replaced", cn)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestServePlainHTTP(t *testing.T) {
	e := newEnv(t)
	addr := serve(t, e)
	resp, err := http.Get("http://" + addr + "/v1/routes")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("plain http without token: %d", resp.StatusCode)
	}
}

func TestCertReloader(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeCertPair(t, certFile, keyFile, "first")
	logs := &testenv.Buffer{}
	c, err := api.NewCertReloader(certFile, keyFile, slog.New(slog.NewTextHandler(io.MultiWriter(t.Output(), logs), nil)))
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	api.SetCertClock(c, func() time.Time { return clock })
	serving := func() string {
		t.Helper()
		cert, err := c.GetCertificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		return cert.Leaf.Subject.CommonName
	}
	step := func() { clock = clock.Add(time.Second) }

	steps := []struct {
		name    string
		change  func()
		advance bool
		want    string
	}{
		{"initial", func() {}, false, "first"},
		{"renewed, checked at most once a second", func() { writeCertPair(t, certFile, keyFile, "second") }, false, "first"},
		{"renewal picked up a second later", func() {}, true, "second"},
		{"half-written renewal keeps the old cert", func() { replaceFile(t, keyFile, []byte("-----BEGIN PRIVATE KEY-----\ngarbage")) }, true, "second"},
		{"broken pair is not retried while unchanged", func() {}, true, "second"},
		{"completed renewal", func() { writeCertPair(t, certFile, keyFile, "third") }, true, "third"},
		{"files gone keeps the cert", func() { os.Remove(certFile) }, true, "third"},
	}
	for _, s := range steps {
		s.change()
		if s.advance {
			step()
		}
		if got := serving(); got != s.want {
			t.Fatalf("%s: serving %q, want %q", s.name, got, s.want)
		}
	}
	if n := strings.Count(logs.String(), "tls certificate not reloaded"); n != 2 {
		t.Fatalf("logged %d reload failures, want 2 (broken pair once, missing file once):\n%s", n, logs)
	}
}
