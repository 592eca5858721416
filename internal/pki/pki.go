// Package pki creates the certificates a drawbridge cluster trusts: one CA
// per cluster and one certificate per node, whose subject common name is
// the node's name. That name is the node's identity in the cluster: raft
// accepts a connection only from the node its certificate names, a node
// becomes a voter only under the name it proves, and a follower forwards a
// client's request only to an API that proves the leader's name.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// File names in a CA directory and for node certificates.
const (
	CAFile    = "ca.pem"
	CAKeyFile = "ca-key.pem"
)

// NodeFiles returns the certificate and key file names for node in dir.
func NodeFiles(dir, node string) (certFile, keyFile string) {
	return filepath.Join(dir, node+".pem"), filepath.Join(dir, node+"-key.pem")
}

// Defaults for validity, as consul's tls commands use.
const (
	DefaultCADays   = 5 * 365
	DefaultCertDays = 365
)

// nodeNameRE is what a node name may be: it becomes a file name and a DNS
// name in the certificate, so it is kept to a DNS label's characters.
var nodeNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// CheckNodeName reports whether name can be a node's certificate identity.
func CheckNodeName(name string) error {
	if !nodeNameRE.MatchString(name) {
		return fmt.Errorf("node name %q: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

// CAOptions configure a new CA.
type CAOptions struct {
	// CommonName of the CA (default "drawbridge cluster CA").
	CommonName string
	// Days of validity (default DefaultCADays).
	Days int
	// Now is the issue time (default time.Now).
	Now func() time.Time
}

// CreateCA writes a new CA certificate and key (ECDSA P-256, PEM, mode
// 0600) into dir, creating it. It refuses to overwrite an existing CA.
func CreateCA(dir string, o CAOptions) (certFile, keyFile string, err error) {
	if o.CommonName == "" {
		o.CommonName = "drawbridge cluster CA"
	}
	if o.Days <= 0 {
		o.Days = DefaultCADays
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	certFile, keyFile = filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	if err := refuseExisting(certFile, keyFile); err != nil {
		return "", "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return "", "", err
	}
	now := o.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: o.CommonName, Organization: []string{"drawbridge"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Duration(o.Days) * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", fmt.Errorf("create CA certificate: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("create %s: %w", dir, err)
	}
	if err := writeKeyPair(certFile, keyFile, der, key); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// CertOptions configure a node certificate.
type CertOptions struct {
	// Node is the node name, the certificate's identity (its subject common
	// name, and a DNS name in it).
	Node string
	// IPs and DNSNames the node's API is reached at (127.0.0.1 and
	// localhost are always included, for the CLI on the node itself).
	IPs      []net.IP
	DNSNames []string
	// Days of validity (default DefaultCertDays).
	Days int
	Now  func() time.Time
}

// CreateNodeCert signs a certificate for o.Node with the CA in caDir and
// writes it and its key (PEM, mode 0600) into outDir. It serves both ends
// of a connection (server and client authentication): raft mutual TLS and
// the HTTPS API. It refuses to overwrite existing files.
func CreateNodeCert(caDir, outDir string, o CertOptions) (certFile, keyFile string, err error) {
	if err := CheckNodeName(o.Node); err != nil {
		return "", "", err
	}
	if o.Days <= 0 {
		o.Days = DefaultCertDays
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	caCert, caKey, err := LoadCA(caDir)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = NodeFiles(outDir, o.Node)
	if err := refuseExisting(certFile, keyFile); err != nil {
		return "", "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return "", "", err
	}
	now := o.Now()
	notAfter := now.Add(time.Duration(o.Days) * 24 * time.Hour)
	if notAfter.After(caCert.NotAfter) {
		notAfter = caCert.NotAfter
	}
	dns := []string{o.Node, "localhost"}
	for _, d := range o.DNSNames {
		if d != o.Node && d != "localhost" {
			dns = append(dns, d)
		}
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1)}
	for _, ip := range o.IPs {
		if !ip.Equal(ips[0]) {
			ips = append(ips, ip)
		}
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: o.Node, Organization: []string{"drawbridge"}},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return "", "", fmt.Errorf("sign certificate for %s: %w", o.Node, err)
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return "", "", fmt.Errorf("create %s: %w", outDir, err)
	}
	if err := writeKeyPair(certFile, keyFile, der, key); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// LoadCA reads the CA certificate and key from dir.
func LoadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, nil, fmt.Errorf("read CA certificate (create one with `drawbridge tls ca create`): %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("read CA key: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("%s holds no PEM certificate", filepath.Join(dir, CAFile))
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, nil, fmt.Errorf("%s holds no PEM key", filepath.Join(dir, CAKeyFile))
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parse CA key: %w", err)
	}
	if !cert.IsCA {
		return nil, nil, errors.New("the CA certificate is not a CA")
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, nil, errors.New("the CA key does not match the CA certificate")
	}
	return cert, key, nil
}

func refuseExisting(files ...string) error {
	for _, f := range files {
		if _, err := os.Stat(f); err == nil {
			return fmt.Errorf("%s exists; refusing to overwrite it", f)
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return s, nil
}

// writeKeyPair writes the certificate and key PEM files, both mode 0600,
// failing if either exists (O_EXCL), so a race never overwrites a key.
func writeKeyPair(certFile, keyFile string, der []byte, key *ecdsa.PrivateKey) error {
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode key: %w", err)
	}
	if err := writeExclusive(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})); err != nil {
		return err
	}
	if err := writeExclusive(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})); err != nil {
		os.Remove(keyFile)
		return err
	}
	return nil
}

func writeExclusive(name string, data []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(name)
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(name)
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// NodeCreds are one node's certificate files.
type NodeCreds struct {
	CAFile, CertFile, KeyFile string
}

// Env returns the DRAWBRIDGE_* settings that turn on raft mutual TLS with
// these files.
func (n NodeCreds) Env() []string {
	return []string{
		"DRAWBRIDGE_RAFT_TLS_CA_FILE=" + n.CAFile,
		"DRAWBRIDGE_RAFT_TLS_CERT_FILE=" + n.CertFile,
		"DRAWBRIDGE_RAFT_TLS_KEY_FILE=" + n.KeyFile,
	}
}

// CreateCluster creates a CA in dir and a certificate for each named node
// (valid for ips too) in dir/nodes: what a lab or a test cluster needs.
func CreateCluster(dir string, ips []net.IP, names ...string) (map[string]NodeCreds, error) {
	caFile, _, err := CreateCA(dir, CAOptions{})
	if err != nil {
		return nil, err
	}
	out := map[string]NodeCreds{}
	for _, name := range names {
		cert, key, err := CreateNodeCert(dir, filepath.Join(dir, "nodes"), CertOptions{Node: name, IPs: ips})
		if err != nil {
			return nil, err
		}
		out[name] = NodeCreds{CAFile: caFile, CertFile: cert, KeyFile: key}
	}
	return out, nil
}
