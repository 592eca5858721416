package api

import "time"

// SetCertClock replaces the clock a CertReloader uses to pace its checks, so
// tests can step past the once-per-second limit without sleeping.
func SetCertClock(c *CertReloader, now func() time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = now
}
