// Package tlsutil builds the TLS client configurations drawbridge's HTTPS
// clients share: the CLI, the sidecar (api/client) and the agent forwarding
// writes to the leader; raft's TLS reads its CA with CAPool too. One place
// reads CA files, so every client trusts the same way and reports a bad
// file in the same words.
package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// CAPool reads the PEM certificates in file into a new pool. A file that
// holds no certificate is an error, so a wrong path or a key file given by
// mistake fails at start rather than at the first handshake.
func CAPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", file)
	}
	return pool, nil
}

// ClientConfig returns the TLS configuration of a client of drawbridge's
// API: it trusts caFile's certificates when caFile is set (else the system
// roots), and skips verification only when insecure is set, which is an
// operator's explicit choice. It returns nil when neither is set: the
// transport's defaults apply.
func ClientConfig(caFile string, insecure bool) (*tls.Config, error) {
	if caFile == "" && !insecure {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: insecure} //nolint:gosec // explicit operator choice
	if caFile != "" {
		pool, err := CAPool(caFile)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = pool
	}
	return tc, nil
}
