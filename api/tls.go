package api

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// certCheckInterval is how often, at most, the certificate files are stat'ed.
const certCheckInterval = time.Second

// CertReloader serves a TLS certificate from a cert/key file pair and picks
// up renewals (certbot, cert-manager, ACME clients) without a restart: on a
// handshake, at most once per second, it stats both files and reloads the
// pair when either file's modification time or size changed. A pair that
// fails to load (a renewal half written, a key that does not match) is logged
// and the previous certificate kept; the pair is tried again when the files
// change again.
type CertReloader struct {
	certFile, keyFile string
	log               *slog.Logger
	interval          time.Duration
	now               func() time.Time

	mu        sync.Mutex
	cert      *tls.Certificate
	certStamp fileStamp
	keyStamp  fileStamp
	checked   time.Time
	lastErr   string
}

// fileStamp is what tells a changed file: modification time and size (of the
// target, when the path is a symlink, as certbot's live/ files are).
type fileStamp struct {
	modTime time.Time
	size    int64
}

// NewCertReloader loads the pair once; it fails if that first load fails.
func NewCertReloader(certFile, keyFile string, log *slog.Logger) (*CertReloader, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &CertReloader{
		certFile: certFile,
		keyFile:  keyFile,
		log:      log,
		interval: certCheckInterval,
		now:      time.Now,
	}
	cs, ks, err := c.stamps()
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load tls certificate %s: %w", certFile, err)
	}
	c.cert, c.certStamp, c.keyStamp, c.checked = &cert, cs, ks, c.now()
	return c, nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (c *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := c.now(); now.Sub(c.checked) >= c.interval {
		c.checked = now
		c.reloadIfChanged()
	}
	return c.cert, nil
}

// TLSConfig returns a server TLS configuration serving c's certificate.
func (c *CertReloader) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: c.GetCertificate,
	}
}

// reloadIfChanged must be called with c.mu held.
func (c *CertReloader) reloadIfChanged() {
	cs, ks, err := c.stamps()
	if err != nil {
		c.logFailure(err)
		return
	}
	if cs.same(c.certStamp) && ks.same(c.keyStamp) {
		return
	}
	// Remember this pair whatever the outcome: a broken pair is not retried
	// every second, only once either file changes again.
	c.certStamp, c.keyStamp = cs, ks
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		c.logFailure(fmt.Errorf("load tls certificate %s: %w", c.certFile, err))
		return
	}
	c.cert = &cert
	c.lastErr = ""
	attrs := []any{"cert", c.certFile}
	if cert.Leaf != nil {
		attrs = append(attrs, "subject", cert.Leaf.Subject.String(), "not_after", cert.Leaf.NotAfter)
	}
	c.log.Info("tls certificate reloaded", attrs...)
}

// logFailure logs a reload failure once per distinct error.
func (c *CertReloader) logFailure(err error) {
	if msg := err.Error(); msg != c.lastErr {
		c.lastErr = msg
		c.log.Error("tls certificate not reloaded, keeping the previous one", "err", err)
	}
}

func (a fileStamp) same(b fileStamp) bool {
	return a.size == b.size && a.modTime.Equal(b.modTime)
}

func (c *CertReloader) stamps() (cert, key fileStamp, err error) {
	cert, cerr := stat(c.certFile)
	key, kerr := stat(c.keyFile)
	return cert, key, errors.Join(cerr, kerr)
}

func stat(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, fmt.Errorf("stat tls file: %w", err)
	}
	return fileStamp{modTime: fi.ModTime(), size: fi.Size()}, nil
}
