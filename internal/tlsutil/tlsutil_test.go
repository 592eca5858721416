package tlsutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestClientConfig(t *testing.T) {
	ca := writeCA(t)
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("-----BEGIN PRIVATE KEY-----\nnope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		caFile   string
		insecure bool
		wantNil  bool
		wantErr  string
	}{
		{name: "defaults", wantNil: true},
		{name: "CA file", caFile: ca},
		{name: "insecure", insecure: true},
		{name: "missing file", caFile: filepath.Join(t.TempDir(), "none.pem"), wantErr: "read CA file"},
		{name: "no certificate in file", caFile: garbage, wantErr: "holds no PEM certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc, err := ClientConfig(tt.caFile, tt.insecure)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (tc == nil) != tt.wantNil {
				t.Fatalf("config = %v, want nil: %v", tc, tt.wantNil)
			}
			if tc == nil {
				return
			}
			if tc.InsecureSkipVerify != tt.insecure || (tt.caFile != "") != (tc.RootCAs != nil) {
				t.Errorf("config skips verification %v with roots %v", tc.InsecureSkipVerify, tc.RootCAs != nil)
			}
		})
	}
}
