package api

import (
	"math"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// rateLimiter keeps one token bucket per API token name. Every node limits
// the requests it receives; writes are also limited again on the leader
// (forwarded requests are authenticated there too), so the leader's bucket
// bounds a token's cluster-wide write rate.
type rateLimiter struct {
	rate  float64 // requests per second; 0: no limit
	burst int
	now   func() time.Time

	mu      sync.Mutex
	buckets map[string]*rate.Limiter
}

func newRateLimiter(perSecond float64, burst int, now func() time.Time) *rateLimiter {
	return &rateLimiter{rate: perSecond, burst: burst, now: now, buckets: map[string]*rate.Limiter{}}
}

// allow takes one request from tok's bucket. When the bucket is empty it
// returns false and how long until a request would be allowed.
func (l *rateLimiter) allow(tok *Token) (time.Duration, bool) {
	r, b := l.rate, l.burst
	if tok.Rate > 0 {
		r = tok.Rate
	}
	if tok.Burst > 0 {
		b = tok.Burst
	}
	if r <= 0 {
		return 0, true
	}
	if b <= 0 {
		b = max(1, int(math.Ceil(r)))
	}
	l.mu.Lock()
	lim, ok := l.buckets[tok.Name]
	if !ok {
		lim = rate.NewLimiter(rate.Limit(r), b)
		l.buckets[tok.Name] = lim
	}
	l.mu.Unlock()
	now := l.now()
	res := lim.ReserveN(now, 1)
	if !res.OK() {
		return time.Second, false
	}
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return d, false
	}
	return 0, true
}

// reset forgets every bucket (a token reload may change rates).
func (l *rateLimiter) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buckets = map[string]*rate.Limiter{}
}

// retryAfter renders a wait as whole seconds for Retry-After, at least 1.
func retryAfter(d time.Duration) string {
	return strconv.Itoa(max(1, int(math.Ceil(d.Seconds()))))
}
